/* CRC-32C: both implementations against published vectors (RFC 3720 B.4) and each other. */
#include <criterion/criterion.h>
#include <string.h>

#include "raft/wal/crc32c.h"

static const struct {
    const char *name;
    uint8_t buf[48];
    size_t len;
    uint32_t crc;
} vectors[] = {
    {"32 zeros", {0}, 32, 0x8A9136AAu},
    {"32 0xff", {[0 ... 31] = 0xff}, 32, 0x62A8AB43u},
    {"0..31", {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22,
               23, 24, 25, 26, 27, 28, 29, 30, 31},
     32, 0x46DD794Eu},
    {"31..0", {31, 30, 29, 28, 27, 26, 25, 24, 23, 22, 21, 20, 19, 18, 17, 16, 15, 14, 13, 12,
               11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0},
     32, 0x113FDB5Cu},
    {"123456789", {'1', '2', '3', '4', '5', '6', '7', '8', '9'}, 9, 0xE3069283u},
    {"empty", {0}, 0, 0},
};

Test(crc32c, software_matches_known_vectors)
{
    for (size_t i = 0; i < sizeof vectors / sizeof vectors[0]; i++)
        cr_expect_eq(crc32c_sw(0, vectors[i].buf, vectors[i].len), vectors[i].crc,
                     "%s: %08x", vectors[i].name, crc32c_sw(0, vectors[i].buf, vectors[i].len));
}

Test(crc32c, hardware_matches_known_vectors)
{
    if (!crc32c_hw_available())
        cr_skip_test("no SSE4.2 on this CPU");
    for (size_t i = 0; i < sizeof vectors / sizeof vectors[0]; i++)
        cr_expect_eq(crc32c_hw(0, vectors[i].buf, vectors[i].len), vectors[i].crc, "%s",
                     vectors[i].name);
    cr_expect_eq(crc32c(0, "123456789", 9), 0xE3069283u);
}

Test(crc32c, implementations_agree_on_every_length_alignment_and_split)
{
    uint8_t buf[300];
    uint64_t s = 42;
    for (size_t i = 0; i < sizeof buf; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        buf[i] = (uint8_t)(s >> 56);
    }
    for (size_t off = 0; off < 8; off++)
        for (size_t len = 0; len + off <= sizeof buf; len += 7) {
            uint32_t sw = crc32c_sw(0, buf + off, len);
            cr_assert_eq(crc32c(0, buf + off, len), sw, "off %zu len %zu", off, len);
            if (crc32c_hw_available())
                cr_assert_eq(crc32c_hw(0, buf + off, len), sw, "off %zu len %zu", off, len);
            /* Extending a checksum equals checksumming the whole. */
            size_t half = len / 2;
            cr_assert_eq(crc32c(crc32c(0, buf + off, half), buf + off + half, len - half), sw);
        }
}

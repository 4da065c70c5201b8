/* crc32c.h: CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), the checksum of every WAL
 * record, snapshot file (raft/snap) and KV snapshot payload. crc32c() uses the SSE4.2 CRC32
 * instruction when the CPU has it (detected once at run time) and a table-driven software
 * version otherwise; both give identical results.
 * The checksum of a buffer is crc32c(0, buf, len); pass a previous result as `crc` to extend it. */
#ifndef CRAFT_RAFT_CRC32C_H
#define CRAFT_RAFT_CRC32C_H

#include <stddef.h>
#include <stdint.h>

uint32_t crc32c(uint32_t crc, const void *buf, size_t len);

/* The two implementations, exposed so tests can check they agree. */
uint32_t crc32c_sw(uint32_t crc, const void *buf, size_t len);
int crc32c_hw_available(void); /* 1 when crc32c_hw may be called */
uint32_t crc32c_hw(uint32_t crc, const void *buf, size_t len);

#endif

/* Fuzz target for the cluster configuration decoder (raft_conf_decode, raft/core/raft_conf.c):
 * configurations arrive from peers inside log entries and snapshots, and from snapshot files.
 * Any byte string must be accepted or refused with RAFT_EINVAL - never a crash, an out-of-bounds
 * read (ASan) or undefined behaviour (UBSan). What is accepted must be a valid configuration (it
 * re-encodes to exactly the input: one encoding per configuration), and a core must start from
 * it as a restored snapshot's configuration, and must refuse it at start if it was refused here.
 * Built with clang's libFuzzer (run_conf_fuzz.sh) and as a corpus replay (replay_main.c). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "raft/core/raft.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct raft_conf c;
    const uint8_t *ctx = NULL;
    uint32_t ctx_len = 0;
    int rc = raft_conf_decode(data, size, &c, &ctx, &ctx_len);
    if (rc != 0 && rc != RAFT_EINVAL)
        abort();
    if (rc == 0) {
        if (!c.n_voters || (ctx_len && (ctx < data || ctx + ctx_len != data + size)))
            abort();
        uint8_t *again;
        uint32_t len;
        if (raft_conf_encode(&c, ctx, ctx_len, &again, &len) != 0 || len != size ||
            memcmp(again, data, size) != 0)
            abort();
        free(again);
    }
    /* A restart from a snapshot carrying these bytes. */
    struct raft_config cfg;
    raft_config_default(&cfg);
    cfg.id = 1;
    struct raft_restore rs = {.hs = {.term = 1}, .snapshot_index = 5, .snapshot_term = 1,
                              .conf = data, .conf_len = (uint32_t)size};
    struct raft *r = NULL;
    int nrc = size ? raft_new(&cfg, &rs, &r) : RAFT_EINVAL;
    if ((nrc == 0) != (rc == 0 && size))
        abort();
    raft_free(r);
    return 0;
}

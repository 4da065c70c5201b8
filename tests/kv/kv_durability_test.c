/* kv_durability_test.c: the store syncs in the background (kv_store.h "Durability"), so what it
 * keeps across crashes depends on which kind of crash: a clean close or a process crash keeps
 * every applied write; a machine crash (another boot id) with unsynced writes discards the store,
 * to be rebuilt from the Raft log, and says so; an unreadable kv.state is treated the same way.
 * Process crashes are real (a forked child exits without closing); machine crashes are simulated
 * by opening with another boot id. */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "services/kvstore/kv_cmd.h"
#include "tests/kv/kv_test_util.h"

static void put_keys(struct kvt *t, int first, int n)
{
    for (int i = first; i < first + n; i++) {
        char key[32];
        snprintf(key, sizeof key, "key%04d", i);
        kvt_put_ok(t, key, "value");
    }
}

/* Opens t->dir with t->opts in a child that writes n more keys and exits without closing: a
 * process crash (the page cache keeps its unsynced writes). */
static void crash_after_puts(struct kvt *t, int first, int n)
{
    kv_store_close(t->s);
    t->s = NULL;
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        char err[256];
        t->s = kv_store_open(t->dir, &t->opts, err, sizeof err);
        if (!t->s)
            _exit(3);
        t->index = kv_store_applied_index(t->s);
        put_keys(t, first, n);
        _exit(kv_store_applied_index(t->s) == t->index ? 0 : 4);
    }
    int st;
    cr_assert_eq(waitpid(pid, &st, 0), pid);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child failed: %d", st);
}

static void open_as(struct kvt *t, const char *boot)
{
    t->opts.boot_id = boot;
    char err[256];
    t->s = kv_store_open(t->dir, &t->opts, err, sizeof err);
    cr_assert(t->s, "open: %s", err);
    t->index = kv_store_applied_index(t->s);
}

Test(kv_durability, clean_close_survives_a_machine_restart)
{
    struct kvt t;
    struct kv_store_opts o = {.boot_id = "boot-A"};
    kvt_open(&t, &o);
    put_keys(&t, 0, 10);
    uint64_t applied = kv_store_applied_index(t.s);
    kv_store_close(t.s);
    open_as(&t, "boot-B");
    cr_assert_eq(kv_store_applied_index(t.s), applied);
    cr_assert_eq(kvt_count(&t), 10);
    cr_assert_str_empty(kv_store_open_note(t.s));
    kvt_close(&t);
}

Test(kv_durability, process_crash_keeps_unsynced_writes)
{
    struct kvt t;
    /* A sync interval far longer than the test: nothing is synced before the crash. */
    struct kv_store_opts o = {.boot_id = "boot-A", .sync_interval_ms = 60000};
    kvt_open(&t, &o);
    put_keys(&t, 0, 5);
    crash_after_puts(&t, 5, 20);
    open_as(&t, "boot-A");
    cr_assert_eq(kvt_count(&t), 25);
    cr_assert_eq(kv_store_applied_index(t.s), 25);
    cr_assert_str_empty(kv_store_open_note(t.s));
    kvt_close(&t);
}

Test(kv_durability, machine_crash_with_unsynced_writes_discards_the_store)
{
    struct kvt t;
    struct kv_store_opts o = {.boot_id = "boot-A", .sync_interval_ms = 60000};
    kvt_open(&t, &o);
    put_keys(&t, 0, 5);
    crash_after_puts(&t, 5, 20);
    open_as(&t, "boot-B");
    /* Empty at applied index 0: the node replays the whole log into it. */
    cr_assert_eq(kv_store_applied_index(t.s), 0);
    cr_assert_eq(kvt_count(&t), 0);
    cr_assert(strstr(kv_store_open_note(t.s), "machine restarted"), "note: %s",
              kv_store_open_note(t.s));
    /* The rebuilt store works, and a clean close makes it trusted again. */
    put_keys(&t, 0, 3);
    kv_store_close(t.s);
    open_as(&t, "boot-C");
    cr_assert_eq(kvt_count(&t), 3);
    cr_assert_str_empty(kv_store_open_note(t.s));
    kvt_close(&t);
}

Test(kv_durability, sync_every_batch_survives_a_machine_crash)
{
    struct kvt t;
    struct kv_store_opts o = {.boot_id = "boot-A", .sync_every_batch = true};
    kvt_open(&t, &o);
    crash_after_puts(&t, 0, 10);
    t.opts.sync_every_batch = false; /* the next run may change the flag */
    open_as(&t, "boot-B");
    cr_assert_eq(kvt_count(&t), 10);
    cr_assert_str_empty(kv_store_open_note(t.s));
    kvt_close(&t);
}

Test(kv_durability, unreadable_state_file_discards_an_existing_store)
{
    struct kvt t;
    struct kv_store_opts o = {.boot_id = "boot-A"};
    kvt_open(&t, &o);
    put_keys(&t, 0, 4);
    kv_store_close(t.s);
    static const char *bad[] = {"", "garbage\n", "craft-kv-state 1\nmaybe\n",
                                "craft-kv-state 1\ndirty\n", "craft-kv-state 1\nclean\nextra\n",
                                "craft-kv-state 2\nclean\n"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char path[128];
        snprintf(path, sizeof path, "%s/kv.state", t.dir);
        FILE *f = fopen(path, "w");
        cr_assert(f);
        fputs(bad[i], f);
        fclose(f);
        open_as(&t, "boot-A");
        cr_assert(strstr(kv_store_open_note(t.s), "kv.state is unreadable"), "case %zu: %s", i,
                  kv_store_open_note(t.s));
        cr_assert_eq(kvt_count(&t), 0);
        put_keys(&t, 0, 1);
        kv_store_close(t.s);
    }
    t.s = NULL;
    kvt_close(&t);
}

Test(kv_durability, sync_interval_is_bounded)
{
    struct kv_store_opts o = {.sync_interval_ms = 60001};
    char dir[] = "/tmp/kvsync.XXXXXX", err[256] = "";
    cr_assert(mkdtemp(dir));
    cr_assert_null(kv_store_open(dir, &o, err, sizeof err));
    cr_assert(strstr(err, "sync interval"), "%s", err);
    rmdir(dir);
}

Test(kv_durability, failed_sync_stops_apply_and_the_store_is_not_marked_clean)
{
    struct kvt t;
    struct kv_store_opts o = {.boot_id = "boot-A", .sync_interval_ms = 60000, .fail_sync = true};
    kvt_open(&t, &o);
    put_keys(&t, 0, 3);
    cr_assert_eq(kv_store_sync(t.s), -EIO);
    /* Sticky: the next batch is refused (the node fail-stops; its log keeps the entries). */
    Etcdserverpb__PutRequest p = ETCDSERVERPB__PUT_REQUEST__INIT;
    p.key = kvt_bin("after");
    uint8_t *cmd;
    size_t len;
    cr_assert_eq(kv_cmd_encode_put(&p, &cmd, &len), 0);
    struct raft_entry e = {.index = ++t.index, .term = 1, .type = RAFT_ENTRY_NORMAL,
                           .data = cmd, .len = (uint32_t)len};
    struct raft_fsm_result res = {0};
    struct raft_fsm *f = kv_store_fsm(t.s);
    cr_assert_eq(f->apply(f->ctx, &e, 1, e.index, &res), -EIO);
    free(cmd);
    free(res.data);
    /* Close could not sync, so it must not say clean: after a machine crash the store is
     * discarded, not trusted. */
    kv_store_close(t.s);
    t.opts.fail_sync = false;
    open_as(&t, "boot-B");
    cr_assert(strstr(kv_store_open_note(t.s), "machine restarted"), "note: %s",
              kv_store_open_note(t.s));
    cr_assert_eq(kvt_count(&t), 0);
    kvt_close(&t);
}

/* kv_index.h against a plain model (a sorted array of keys, each with its writes): random adds
 * and removals (oldest first, as compaction does, and from the middle), then every query -
 * find, the ordered list of keys with a delete (seek, iteration), every node, at, before -
 * compared after each step. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "services/kvstore/kv_index.h"

#define NKEYS 64
#define MAXW 256

struct mkey {
    char key[8];
    size_t klen;
    struct kv_index_ent w[MAXW];
    size_t n;
};

static struct mkey model[NKEYS]; /* sorted by key: keys are "k" + 2 hex digits, or "" */

static uint64_t rng = 12345;
static uint64_t next_rand(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static int bytes_cmp(const void *a, size_t an, const void *b, size_t bn)
{
    size_t m = an < bn ? an : bn;
    int c = m ? memcmp(a, b, m) : 0;
    return c ? c : an < bn ? -1 : an > bn ? 1 : 0;
}

static bool has_delete(const struct mkey *m)
{
    for (size_t j = 0; j < m->n; j++)
        if (m->w[j].type == KV_INDEX_DELETE)
            return true;
    return false;
}

static void check(const struct kv_index *x)
{
    size_t keys = 0, ents = 0, dels = 0;
    const struct kv_index_node *it = kv_index_first(x);
    for (size_t i = 0; i < NKEYS; i++) {
        const struct mkey *m = &model[i];
        const struct kv_index_node *n = kv_index_find(x, m->key, m->klen);
        if (!m->n) {
            cr_assert_null(n, "key %zu present without writes", i);
            continue;
        }
        cr_assert_not_null(n, "key %zu missing", i);
        if (has_delete(m)) {
            cr_assert_eq(it, n, "iteration order differs at key %zu", i);
            it = kv_index_next(it);
            dels++;
        }
        keys++;
        ents += m->n;
        size_t cnt, kl;
        const struct kv_index_ent *e = kv_index_ents(n, &cnt);
        const uint8_t *k = kv_index_key(n, &kl);
        cr_assert(kl == m->klen && bytes_cmp(k, kl, m->key, m->klen) == 0);
        cr_assert_eq(cnt, m->n);
        for (size_t j = 0; j < cnt; j++)
            cr_assert(e[j].rev == m->w[j].rev && e[j].sub == m->w[j].sub &&
                      e[j].type == m->w[j].type);
        /* at: every revision around the writes */
        for (int64_t r = m->w[0].rev - 1; r <= m->w[m->n - 1].rev + 1; r++) {
            const struct kv_index_ent *want = NULL;
            for (size_t j = 0; j < m->n; j++)
                if (m->w[j].rev <= r)
                    want = &e[j];
            cr_assert_eq(kv_index_at(n, r), want, "at(%lld) of key %zu", (long long)r, i);
        }
        cr_assert_eq(kv_index_at(n, INT64_MAX), &e[cnt - 1]);
        for (size_t j = 0; j < m->n; j++)
            cr_assert_eq(kv_index_before(n, m->w[j].rev, m->w[j].sub), j ? &e[j - 1] : NULL);
    }
    cr_assert_null(it, "iteration goes past the last key");
    cr_assert_eq(kv_index_keys(x), keys);
    cr_assert_eq(kv_index_entries(x), ents);
    cr_assert_eq(kv_index_deleted_keys(x), dels);
    const struct kv_index_node *all[NKEYS];
    cr_assert_eq(kv_index_nodes(x, all), keys);
    for (size_t i = 0; i < keys; i++) {
        size_t kl;
        const uint8_t *k = kv_index_key(all[i], &kl);
        cr_assert_eq(kv_index_find(x, k, kl), all[i]);
    }
    /* seek: from every key and from between keys */
    for (size_t i = 0; i < NKEYS; i++) {
        char probe[9];
        memcpy(probe, model[i].key, model[i].klen);
        probe[model[i].klen] = '\0';
        for (int between = 0; between < 2; between++) {
            size_t pl = model[i].klen + (size_t)between; /* with a trailing NUL: just after */
            const struct mkey *want = NULL;
            for (size_t j = 0; j < NKEYS && !want; j++)
                if (has_delete(&model[j]) &&
                    bytes_cmp(model[j].key, model[j].klen, probe, pl) >= 0)
                    want = &model[j];
            const struct kv_index_node *got = kv_index_seek(x, probe, pl);
            if (!want) {
                cr_assert_null(got);
            } else {
                cr_assert_not_null(got);
                size_t kl;
                const uint8_t *k = kv_index_key(got, &kl);
                cr_assert(bytes_cmp(k, kl, want->key, want->klen) == 0, "seek differs");
            }
        }
    }
}

Test(kv_index, matches_a_model_through_adds_and_removals)
{
    for (size_t i = 0; i < NKEYS; i++) { /* "" sorts first, then k00..k3e */
        if (i == 0) {
            model[i].klen = 0;
        } else {
            snprintf(model[i].key, sizeof model[i].key, "k%02zx", i - 1);
            model[i].klen = 3;
        }
        model[i].n = 0;
    }
    struct kv_index *x = kv_index_new();
    cr_assert_not_null(x);
    int64_t rev = 1;
    for (int step = 0; step < 6000; step++) {
        uint64_t r = next_rand();
        struct mkey *m = &model[r % NKEYS];
        int op = (int)(r >> 20) % 10;
        if (op < 6 && m->n < MAXW) { /* a write: one revision, or a second sub in it */
            uint64_t sub = (r >> 40) % 3 == 0 ? 1 : 0;
            if (!sub)
                rev++;
            struct kv_index_ent e = {rev, sub, (uint8_t)((r >> 50) % 4 == 0)};
            if (m->n && !(e.rev > m->w[m->n - 1].rev ||
                          (e.rev == m->w[m->n - 1].rev && e.sub > m->w[m->n - 1].sub)))
                e.sub = m->w[m->n - 1].sub + 1;
            cr_assert_eq(kv_index_add(x, m->key, m->klen, &e), 0);
            m->w[m->n++] = e;
            /* out of order is refused and changes nothing */
            cr_assert_eq(kv_index_add(x, m->key, m->klen, &m->w[0]), -2);
        } else if (m->n) { /* a removal: the oldest mostly, sometimes one in the middle */
            size_t j = op < 9 ? 0 : (size_t)(r >> 30) % m->n;
            cr_assert_eq(kv_index_remove(x, m->key, m->klen, m->w[j].rev, m->w[j].sub), 0);
            memmove(&m->w[j], &m->w[j + 1], (m->n - j - 1) * sizeof m->w[0]);
            m->n--;
            cr_assert_eq(kv_index_remove(x, m->key, m->klen, -5, 0), -1);
        }
        if (step % 50 == 0 || step > 5900)
            check(x);
    }
    check(x);
    /* empty everything: every node goes */
    for (size_t i = 0; i < NKEYS; i++)
        while (model[i].n) {
            cr_assert_eq(kv_index_remove(x, model[i].key, model[i].klen, model[i].w[0].rev,
                                         model[i].w[0].sub), 0);
            memmove(&model[i].w[0], &model[i].w[1], --model[i].n * sizeof model[i].w[0]);
        }
    check(x);
    cr_assert_null(kv_index_first(x));
    cr_assert_eq(kv_index_remove(x, "k00", 3, 1, 0), -1);
    kv_index_free(x);
}

Test(kv_index, many_keys_stay_ordered)
{
    struct kv_index *x = kv_index_new();
    char k[16];
    for (int i = 0; i < 100000; i++) {
        int v = (int)((uint64_t)i * 2654435761u % 100000);
        snprintf(k, sizeof k, "%06d", v);
        struct kv_index_ent e = {i + 1, 0, KV_INDEX_DELETE}; /* deleted keys are ordered */
        cr_assert_eq(kv_index_add(x, k, 6, &e), 0);
    }
    cr_assert_eq(kv_index_keys(x), 100000);
    int last = -1;
    size_t n = 0;
    for (const struct kv_index_node *it = kv_index_first(x); it; it = kv_index_next(it), n++) {
        size_t kl;
        const uint8_t *kk = kv_index_key(it, &kl);
        memcpy(k, kk, kl);
        k[kl] = '\0';
        int v = atoi(k);
        cr_assert_gt(v, last);
        last = v;
    }
    cr_assert_eq(n, 100000);
    /* the hash table keeps finding every key as others go (its deletion moves entries back) */
    for (int i = 0; i < 100000; i += 3) {
        int v = (int)((uint64_t)i * 2654435761u % 100000);
        snprintf(k, sizeof k, "%06d", v);
        cr_assert_eq(kv_index_remove(x, k, 6, i + 1, 0), 0);
    }
    for (int i = 0; i < 100000; i++) {
        int v = (int)((uint64_t)i * 2654435761u % 100000);
        snprintf(k, sizeof k, "%06d", v);
        const struct kv_index_node *f = kv_index_find(x, k, 6);
        if (i % 3 == 0) {
            cr_assert_null(f, "%s found after its removal", k);
        } else {
            cr_assert_not_null(f, "%s lost", k);
            size_t cnt;
            cr_assert_eq(kv_index_ents(f, &cnt)[0].rev, i + 1);
        }
    }
    cr_assert_eq(kv_index_keys(x), 100000 - 33334);
    cr_assert_eq(kv_index_deleted_keys(x), 100000 - 33334);
    last = -1;
    n = 0;
    for (const struct kv_index_node *it = kv_index_first(x); it; it = kv_index_next(it), n++) {
        size_t kl;
        const uint8_t *kk = kv_index_key(it, &kl);
        memcpy(k, kk, kl);
        k[kl] = '\0';
        cr_assert_gt(atoi(k), last);
        last = atoi(k);
    }
    cr_assert_eq(n, 100000 - 33334);
    kv_index_free(x);
}

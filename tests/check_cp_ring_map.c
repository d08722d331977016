/* Check suite for the GPU ring's host map (src/attn/cp/cp_ring_map.h): over
 * zig-zag layouts (cp_zigzag) of slices with and without cached prefixes,
 * N = 1 .. 8, odd lengths, blocks of 16 and 64, units of one and four blocks:
 *  - the runs of all ranks partition the slice, in position order, their
 *    row offsets count the rank's rows;
 *  - every (query row, key) pair with key <= row is attended at exactly one
 *    ring step, and no pair with key > row at any, when each step's view is
 *    read as attn_cuda.h reads a q_pos0 view (key i visible to row r of the
 *    run iff i < kv_len and i <= q_pos0 + r);
 *  - the pair kinds: none without keys, causal only on the rank's own pack
 *    (step 0), full otherwise; the runs a step computes are a suffix;
 *  - on a slice from position 0 in whole units, rank i's rows are chunks i
 *    and 2N-1-i (one run when they touch), all ranks the same size. */
#include <check.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "attn/cp/cp_attn.h"
#include "attn/cp/cp_ring_map.h"
#include "common/status.h"
#include "testutil.h"

/* Owners of a sequence written as a prefix slice [0, pos0) and then the slice
 * [pos0, pos0 + n_tok), both zig-zag. */
static uint8_t *layout(int n, int bs, int align, int64_t pos0, int64_t n_tok) {
    const int64_t nb = (pos0 + n_tok + bs - 1) / bs;
    uint8_t *owner = calloc((size_t)nb + 1, 1);
    if (pos0 > 0) cp_zigzag(n, bs, align, 0, pos0, owner);
    cp_zigzag(n, bs, align, pos0, n_tok, owner);
    return owner;
}

/* View index of key u in pack j's view for a run ending in block b_last, or
 * -1 when the view does not hold it; rank_in_pack[b]: blocks of b's owner
 * before b. */
static int64_t view_index(const uint8_t *owner, const int64_t *rank_in_pack, int bs, int64_t b_last, int j, int64_t u) {
    const int64_t b = u / bs;
    if (b > b_last || owner[b] != j) return -1;
    return rank_in_pack[b] * bs + u % bs;
}

static void check_layout(int n, int bs, int align, int64_t pos0, int64_t n_tok) {
    const int64_t end = pos0 + n_tok, nb = (end + bs - 1) / bs;
    uint8_t *owner = layout(n, bs, align, pos0, n_tok);
    // hits[(t - pos0) * end + u]: steps that attended (row t, key u)
    uint8_t *hits = calloc((size_t)(n_tok * end), 1);
    uint8_t *covered = calloc((size_t)n_tok, 1);
    int64_t keys_total = 0, *rank_in_pack = calloc((size_t)nb, sizeof(int64_t)), seen[CP_MAX_RANKS] = {0};
    for (int64_t b = 0; b < nb; b++) rank_in_pack[b] = seen[owner[b]]++;
    for (int j = 0; j < n; j++) {
        keys_total += cp_ring_keys(owner, nb, bs, end, j);
        ck_assert_int_eq(cp_ring_pack(owner, nb, j, NULL),
                         cp_ring_keys(owner, nb, bs, end, j) / bs + ((cp_ring_keys(owner, nb, bs, end, j) % bs) != 0));
    }
    ck_assert_int_eq(keys_total, end);
    for (int r = 0; r < n; r++) {
        cp_ring_run_t runs[CP_RING_MAX_RUNS];
        const int nr = cp_ring_runs(owner, bs, pos0, n_tok, r, runs, CP_RING_MAX_RUNS);
        ck_assert_int_ge(nr, 0);
        int64_t rows = 0;
        for (int i = 0; i < nr; i++) {
            ck_assert_int_eq(runs[i].row0, rows);
            ck_assert(i == 0 || runs[i].p0 > runs[i - 1].p0 + runs[i - 1].n); // maximal runs
            for (int64_t t = runs[i].p0; t < runs[i].p0 + runs[i].n; t++) {
                ck_assert_int_eq(owner[t / bs], r);
                ck_assert_int_eq(covered[t - pos0], 0);
                covered[t - pos0] = 1;
            }
            rows += runs[i].n;
        }
        for (int k = 0; k < n; k++) {
            const int j = cp_ring_visitor(r, k, n);
            int computed = 0;
            for (int i = 0; i < nr; i++) {
                cp_ring_view_t v;
                ck_assert_int_eq(cp_ring_view(owner, bs, end, &runs[i], j, &v), 0);
                const int64_t b_last = (runs[i].p0 + runs[i].n - 1) / bs;
                ck_assert_int_eq(v.kind, v.kv_len == 0 ? CP_PAIR_NONE : j == r ? CP_PAIR_CAUSAL : CP_PAIR_FULL);
                ck_assert(v.kind != CP_PAIR_FULL || v.q_pos0 >= v.kv_len);
                ck_assert(v.kind != CP_PAIR_CAUSAL || v.q_pos0 < v.kv_len);
                ck_assert_msg(v.kind == CP_PAIR_NONE ? !computed : 1, "step %d of rank %d: not a suffix", k, r);
                computed |= v.kind != CP_PAIR_NONE;
                int64_t pages = 0;
                for (int64_t b = 0; b <= b_last; b++) pages += owner[b] == j;
                ck_assert_int_eq(v.n_pages, pages);
                if (v.kind == CP_PAIR_NONE) continue;
                for (int64_t t = runs[i].p0; t < runs[i].p0 + runs[i].n; t++)
                    for (int64_t u = 0; u < end; u++) {
                        const int64_t x = view_index(owner, rank_in_pack, bs, b_last, j, u);
                        if (x >= 0 && x < v.kv_len && x <= v.q_pos0 + (t - runs[i].p0)) hits[(t - pos0) * end + u]++;
                    }
            }
        }
    }
    for (int64_t t = pos0; t < end; t++) {
        ck_assert_msg(covered[t - pos0], "position %lld has no rank", (long long)t);
        for (int64_t u = 0; u < end; u++)
            ck_assert_msg(hits[(t - pos0) * end + u] == (u <= t),
                          "N %d bs %d align %d slice %lld+%lld: row %lld key %lld attended %d times", n, bs, align,
                          (long long)pos0, (long long)n_tok, (long long)t, (long long)u, hits[(t - pos0) * end + u]);
    }
    free(hits);
    free(rank_in_pack);
    free(covered);
    free(owner);
}

START_TEST(test_cover) {
    const int ns[] = {1, 2, 3, 4, 8};
    const struct {
        int bs, align;
        int64_t pos0, n_tok;
    } c[] = {{16, 16, 0, 1},    {16, 16, 0, 333},  {16, 64, 0, 1000}, {64, 64, 0, 1025},    {16, 16, 100, 257},
             {16, 64, 77, 500}, {64, 64, 64, 700}, {16, 16, 5, 3},    {64, 256, 1000, 1100}};
    for (size_t i = 0; i < sizeof ns / sizeof ns[0]; i++)
        for (size_t k = 0; k < sizeof c / sizeof c[0]; k++)
            check_layout(ns[i], c[k].bs, c[k].align, c[k].pos0, c[k].n_tok);
}
END_TEST

START_TEST(test_zigzag_chunks) {
    for (int n = 1; n <= 8; n++) {
        const int bs = 16, T = 2 * n * bs * 3; // 3 blocks per chunk
        uint8_t *owner = layout(n, bs, bs, 0, T);
        for (int r = 0; r < n; r++) {
            cp_ring_run_t runs[CP_RING_MAX_RUNS];
            const int nr = cp_ring_runs(owner, bs, 0, T, r, runs, CP_RING_MAX_RUNS);
            const int64_t C = T / (2 * n);
            if (r == n - 1) { // chunks n-1 and n touch
                ck_assert_int_eq(nr, 1);
                ck_assert_int_eq(runs[0].p0, r * C);
                ck_assert_int_eq(runs[0].n, 2 * C);
            } else {
                ck_assert_int_eq(nr, 2);
                ck_assert_int_eq(runs[0].p0, r * C);
                ck_assert_int_eq(runs[0].n, C);
                ck_assert_int_eq(runs[1].p0, (2 * n - 1 - r) * C);
                ck_assert_int_eq(runs[1].n, C);
            }
        }
        free(owner);
    }
}
END_TEST

START_TEST(test_bad_input) {
    uint8_t owner[4] = {0, 1, 1, 0};
    cp_ring_run_t runs[1];
    ck_assert_int_eq(cp_ring_runs(owner, 16, 0, 0, 0, runs, 1), LC_EINVAL);
    ck_assert_int_eq(cp_ring_runs(owner, 0, 0, 10, 0, runs, 1), LC_EINVAL);
    ck_assert_int_eq(cp_ring_runs(owner, 16, 0, 64, 0, runs, 1), LC_ERANGE); // two runs, room for one
    ck_assert_int_eq(cp_ring_runs(owner, 16, 0, 64, 1, runs, 1), 1);
    ck_assert_int_eq(cp_ring_runs(owner, 16, 0, 64, 2, runs, 1), 0);
}
END_TEST

/* The ring's choice: pass-Q only on a cached prefix, when the slice's
 * queries (n_tok x H) weigh no more than the KV (end x KH). */
START_TEST(test_pass_q_rule) {
    ck_assert_int_eq(cp_pass_q_pays(0, 1, 32, 8), 0);         // no prefix: pass-KV
    ck_assert_int_eq(cp_pass_q_pays(3000, 1000, 32, 8), 1);   // 32,000 <= 32,000
    ck_assert_int_eq(cp_pass_q_pays(2999, 1000, 32, 8), 0);   // 32,000 > 31,992
    ck_assert_int_eq(cp_pass_q_pays(126976, 4096, 32, 8), 1); // a 4K chunk on 124K
    ck_assert_int_eq(cp_pass_q_pays(3001, 5000, 32, 8), 0);
    ck_assert_int_eq(cp_pass_q_pays(100, 100, 8, 8), 1); // MHA: any prefix
}
END_TEST

int main(void) {
    Suite *s = suite_create("cp_ring_map");
    TCase *tc = tcase_create("map");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_cover);
    tcase_add_test(tc, test_zigzag_chunks);
    tcase_add_test(tc, test_bad_input);
    tcase_add_test(tc, test_pass_q_rule);
    suite_add_tcase(s, tc);
    return tu_run(s);
}

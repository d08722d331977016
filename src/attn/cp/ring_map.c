/* The pass-KV ring's map on the host (cp_ring_map.h). */
#include "attn/cp/cp_ring_map.h"

#include "common/status.h"

int64_t cp_ring_pack(const uint8_t *owner, int64_t n_blocks, int j, int32_t *idx) {
    int64_t n = 0;
    for (int64_t b = 0; b < n_blocks; b++)
        if (owner[b] == j) {
            if (idx) idx[n] = (int32_t)b;
            n++;
        }
    return n;
}

int64_t cp_ring_keys(const uint8_t *owner, int64_t n_blocks, int bs, int64_t end, int j) {
    int64_t keys = 0;
    for (int64_t b = 0; b < n_blocks; b++)
        if (owner[b] == j) keys += end - b * bs < bs ? end - b * bs : bs;
    return keys;
}

int cp_ring_runs(const uint8_t *owner, int bs, int64_t pos0, int64_t n_tok, int r, cp_ring_run_t *runs, int max_runs) {
    if (bs < 1 || pos0 < 0 || n_tok < 1) return LC_EINVAL;
    const int64_t end = pos0 + n_tok;
    int n = 0;
    int64_t rows = 0;
    // Walk the slice block by block: a run is a stretch of r's blocks.
    for (int64_t t = pos0; t < end;) {
        const int64_t b = t / bs, stop = (b + 1) * bs < end ? (b + 1) * bs : end;
        if (owner[b] == r) {
            if (n > 0 && runs[n - 1].p0 + runs[n - 1].n == t) {
                runs[n - 1].n += stop - t;
            } else {
                if (n == max_runs) return LC_ERANGE;
                runs[n++] = (cp_ring_run_t){.p0 = t, .n = stop - t, .row0 = rows};
            }
            rows += stop - t;
        }
        t = stop;
    }
    return n;
}

int cp_ring_view(const uint8_t *owner, int bs, int64_t end, const cp_ring_run_t *run, int j, cp_ring_view_t *v) {
    const int64_t b_first = run->p0 / bs, b_last = (run->p0 + run->n - 1) / bs;
    int64_t pages = 0, keys = 0, before = 0;
    for (int64_t b = 0; b <= b_last; b++) {
        if (owner[b] != j) continue;
        const int64_t valid = end - b * bs < bs ? end - b * bs : bs;
        if (b < b_first) before += valid;
        // the run's first block holds keys before its first row (a cached prefix's tail)
        if (b == b_first) before += run->p0 - b * bs;
        pages++;
        keys += valid;
    }
    if (keys > INT32_MAX || before + run->n > INT32_MAX) return LC_ERANGE;
    v->n_pages = (int32_t)pages;
    v->kv_len = (int32_t)keys;
    v->q_pos0 = (int32_t)before;
    v->kind = keys == 0 ? CP_PAIR_NONE : before >= keys ? CP_PAIR_FULL : CP_PAIR_CAUSAL;
    return 0;
}

int cp_pass_q_pays(int64_t pos0, int64_t n_tok, int n_heads, int n_kv_heads) {
    return pos0 > 0 && (double)n_tok * n_heads <= (double)(pos0 + n_tok) * n_kv_heads;
}

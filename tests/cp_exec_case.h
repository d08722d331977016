/* One context-parallel scenario through an executor, shared by the CPU suite
 * (check_cp_model.c) and the GPU suite (gpu/check_cuda_cp.c): the same model
 * through an executor with `ranks` ranks and through one with one rank, on
 * the same tokens: a prompt in two slices, a second sequence on a shared
 * (forked) prefix of the first, then teacher-forced decode steps of the
 * first (the one-rank executor's greedy tokens). After each part the caller's
 * compare gets both executors' logits of that part's rows. */
#ifndef LC_TESTS_CP_EXEC_CASE_H
#define LC_TESTS_CP_EXEC_CASE_H

#include <stdint.h>

#include "attn/attn.h"
#include "kv/kv.h"
#include "model/exec.h"
#include "model/model.h"

typedef struct {
    const char *device;   // "cpu", "cuda:0"
    int block_size;       // 0: the device's
    int64_t kv_blocks;    // the pool
    int max_batch_tokens; // >= the slices
    int64_t min_tokens;   // the sharded executor's context_min_tokens
    int n_prompt, split;  // the prompt and its first slice
    int fork;             // the forked sequence keeps this prefix (whole blocks)
    int n_decode;         // decode steps
    int prompt_end;       // 1: the prompt slices say where the prompt ends (attn_seq_t's prompt_end)
    unsigned seed;        // the prompt's tokens
    int keep_sliding;     // 1: the sliding layers keep every position (engine.kv_keep_sliding)
    /* GPU: the sharded executor's parallel.devices (NULL: none; the batch
     * run's executors both), and the reference executor's ranks (0: one;
     * more: sharded alike without devices, its pool shared) */
    const char *devices;
    int ref_ranks;
} cp_exec_case_t;

/* part: "first prompt slice", "second prompt slice", "prompt on a shared
 * prefix" or "decode step"; sharded and one: (rows, V) logits. */
typedef void (*cp_exec_compare_fn)(void *ud, const char *part, const float *sharded, const float *one, int rows, int V);

typedef struct {
    model_exec_cp_stats_t cp; // the sharded executor's, at the end
    int64_t kv_used;          // its pool's blocks in use, at the end
    attn_stats_t st[2];       // the first sequence's attention counters: one rank, sharded (pol only)
} cp_exec_result_t;

/* Runs the scenario (pol NULL: dense); check assertions fail the test. */
void cp_exec_case_run(const model_t *m, const cp_exec_case_t *cs, int ranks, const attn_policy_t *pol,
                      cp_exec_compare_fn compare, void *ud, cp_exec_result_t *out);

/* Batch invariance: a sequence A (a 421-token prompt in slices of 300 and
 * 121, then a decode row) alone on one executor with `ranks` ranks and, on a
 * second one configured alike, in steps with B (40 tokens: below min_tokens
 * of 100, never sharded) and C (200 tokens: sharded from its first slice)
 * placed before and after it: A's logits must be the same bits (asserted).
 * Needs max_batch_tokens >= 700. */
void cp_exec_batch_run(const model_t *m, const cp_exec_case_t *cs, int ranks, const attn_policy_t *pol);

/* Tokens [pos0, pos0 + n) of one sequence through e (its KV reserved and
 * written in kv), every row's logits; end: the prompt's end for a prompt
 * slice (attn_seq_t's prompt_end; 0: none), st its attention state or NULL.
 * Check assertions on any failure. */
void cp_exec_forward(model_exec_t *e, kv_pool_t *kv, kv_seq_t *s, const int32_t *tok, int n, int64_t pos0,
                     int generated, int64_t end, attn_state_t *st, float *logits);

#endif

/* Token sampling. The order of operations is the one sampler.h states (as
 * vLLM). Candidates are selected, never fully sorted: top-k is a quickselect,
 * top-p sorts only a growing prefix of the best candidates until it holds the
 * requested mass, min-p is a linear filter. The RNG (xoshiro256**, seeded by
 * splitmix64) lives in the sampler, so a seed gives the same tokens whatever
 * else shares the batch. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/cpu.h"
#include "common/status.h"
#include "model/sampler.h"

struct sampler {
    sampler_params_t p;
    int n_vocab;
    uint64_t rng[4];
    /* Only what the parameters use is allocated: the engine creates a
     * sampler per choice and updates it on its one thread, where the page
     * faults of a fresh vocabulary-sized array touched at random token ids
     * cost more than the rest of a token's bookkeeping. */
    int32_t *count; // (n_vocab) times each token was generated; NULL without penalties
    uint8_t *seen;  // (n_vocab) in the prompt or generated (repetition penalty); NULL without penalties
    int32_t *idx;   // (n_vocab) candidate ids; NULL when greedy
    float *val;     // (n_vocab) candidate logits / probabilities, by id; NULL when greedy
    int n_output;
};

/* ---- RNG ----------------------------------------------------------------------- */
static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static uint64_t xoshiro_next(uint64_t *s) {
    uint64_t r = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return r;
}

/* Uniform double in [0, 1). */
static double rng_uniform(sampler_t *s) { return (double)(xoshiro_next(s->rng) >> 11) * 0x1.0p-53; }

/* ---- lifecycle ----------------------------------------------------------------- */
void sampler_params_default(sampler_params_t *p) {
    memset(p, 0, sizeof *p);
    p->temperature = 1.0f;
    p->top_p = 1.0f;
    p->top_k = 0;
    p->min_p = 0.0f;
    p->repetition_penalty = 1.0f;
}

sampler_t *sampler_create(const sampler_params_t *p, int n_vocab, const int32_t *prompt, int n_prompt) {
    if (!p || n_vocab <= 0) return NULL;
    sampler_t *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->p = *p;
    if (s->p.n_logprobs < 0) s->p.n_logprobs = 0;
    if (s->p.n_logprobs > SAMPLER_MAX_LOGPROBS) s->p.n_logprobs = SAMPLER_MAX_LOGPROBS;
    s->n_vocab = n_vocab;
    /* apply_penalties and sampler_sample's candidates read these only under
     * these conditions. */
    const int penalties = (p->repetition_penalty > 0 && p->repetition_penalty != 1.0f) || p->presence_penalty != 0 ||
                          p->frequency_penalty != 0;
    const int greedy = p->temperature <= 0 || p->top_k == 1;
    if (penalties &&
        (!(s->count = calloc((size_t)n_vocab, sizeof *s->count)) || !(s->seen = calloc((size_t)n_vocab, 1))))
        goto fail;
    if (!greedy &&
        (!(s->idx = malloc((size_t)n_vocab * sizeof *s->idx)) || !(s->val = malloc((size_t)n_vocab * sizeof *s->val))))
        goto fail;
    uint64_t x = p->seed;
    for (int i = 0; i < 4; i++) s->rng[i] = splitmix64(&x);
    for (int i = 0; s->seen && i < n_prompt; i++)
        if (prompt[i] >= 0 && prompt[i] < n_vocab) s->seen[prompt[i]] = 1;
    return s;
fail:
    sampler_destroy(s);
    return NULL;
}

void sampler_destroy(sampler_t *s) {
    if (!s) return;
    free(s->count);
    free(s->seen);
    free(s->idx);
    free(s->val);
    free(s);
}

void sampler_accept(sampler_t *s, int32_t token) {
    if (token < 0 || token >= s->n_vocab) return;
    if (s->count) {
        s->count[token]++;
        s->seen[token] = 1;
    }
    s->n_output++;
}

/* ---- selection ----------------------------------------------------------------- */
/* Total order: larger value first, then lower id. */
static int better(const float *v, int32_t a, int32_t b) { return v[a] > v[b] || (v[a] == v[b] && a < b); }

/* Rearranges idx[0..n) so that its first k entries are the k best (in any
 * order). Quickselect with a median-of-three pivot. */
static void select_top(int32_t *idx, int n, int k, const float *v) {
    int lo = 0, hi = n - 1;
    while (lo < hi) {
        int mid = lo + (hi - lo) / 2;
        /* median of three to idx[hi] as pivot */
        if (better(v, idx[mid], idx[lo])) {
            int32_t t = idx[mid];
            idx[mid] = idx[lo];
            idx[lo] = t;
        }
        if (better(v, idx[hi], idx[lo])) {
            int32_t t = idx[hi];
            idx[hi] = idx[lo];
            idx[lo] = t;
        }
        if (better(v, idx[mid], idx[hi])) {
            int32_t t = idx[mid];
            idx[mid] = idx[hi];
            idx[hi] = t;
        }
        int32_t pv = idx[hi];
        int st = lo;
        for (int i = lo; i < hi; i++)
            if (better(v, idx[i], pv)) {
                int32_t t = idx[i];
                idx[i] = idx[st];
                idx[st] = t;
                st++;
            }
        idx[hi] = idx[st];
        idx[st] = pv;
        if (st == k - 1 || st == k) return; // idx[0..k) all beat idx[k]
        if (st < k - 1)
            lo = st + 1;
        else
            hi = st - 1;
    }
}

/* qsort has no context argument; the key array travels in a thread-local. */
static _Thread_local const float *tl_sort_v;

static int cmp_desc(const void *a, const void *b) {
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    const float *v = tl_sort_v;
    if (v[x] != v[y]) return v[x] > v[y] ? -1 : 1;
    return x < y ? -1 : x > y;
}

static void sort_desc(int32_t *idx, int n, const float *v) {
    tl_sort_v = v;
    qsort(idx, (size_t)n, sizeof *idx, cmp_desc);
}

/* The best n_top ids of logits (n) in order, written to ids. */
static int top_n(const float *logits, int n, int n_top, int32_t *ids) {
    int m = 0;
    for (int i = 0; i < n; i++) {
        if (logits[i] == -INFINITY || isnan(logits[i])) continue;
        if (m == n_top && !better(logits, i, ids[m - 1])) continue;
        int j = m < n_top ? m++ : m - 1;
        while (j > 0 && better(logits, i, ids[j - 1])) {
            ids[j] = ids[j - 1];
            j--;
        }
        ids[j] = i;
    }
    return m;
}

static double log_sum_exp(const float *x, int n) {
    float mx = -INFINITY;
    for (int i = 0; i < n; i++) mx = x[i] > mx ? x[i] : mx;
    if (mx == -INFINITY) return -INFINITY;
    double sum = 0;
    for (int i = 0; i < n; i++) sum += expf(x[i] - mx);
    return mx + log(sum);
}

static void fill_logprobs(const float *logits, int n_vocab, int32_t token, int n_top, double lse,
                          sampler_result_t *out) {
    out->token = token;
    out->logprob = (float)(logits[token] - lse);
    if (n_top > SAMPLER_MAX_LOGPROBS) n_top = SAMPLER_MAX_LOGPROBS;
    out->n_top = n_top > 0 ? top_n(logits, n_vocab, n_top, out->top_ids) : 0;
    for (int i = 0; i < out->n_top; i++) out->top_logprobs[i] = (float)(logits[out->top_ids[i]] - lse);
}

void sampler_logprobs_of(const float *logits, int n_vocab, int32_t token, int n_top, sampler_result_t *out) {
    memset(out, 0, sizeof *out);
    if (token < 0 || token >= n_vocab) return;
    fill_logprobs(logits, n_vocab, token, n_top, log_sum_exp(logits, n_vocab), out);
}

/* ---- greedy -------------------------------------------------------------------- */
/* The greedy token of x (n): the largest value, ties to the lowest id; NaN
 * and -inf never win; -1 when every value is NaN or -inf. That is the serial
 * scan "if (x[i] > x[best]) best = i", whose every compare waits on the
 * previous one's outcome (a load from x[best]): ~200 us for a row of 49,152
 * on the development VM. Here lanes of W values each keep their first
 * maximum (strictly greater replaces) in one streaming pass, and the lanes
 * and the tail then merge by (value, lowest id): ~20 us with SSE2 (W = 4),
 * ~13 with AVX2 (8), ~9 with AVX-512 (16). One kernel in GCC/Clang vector
 * extensions, instantiated per width (a width the target lacks is lowered
 * to scalar code, so the wider ones are compiled for their instruction set
 * and chosen at run time by lc_cpu_level); comparisons are exact, so every
 * width gives the same token. */
static int32_t argmax_merge(const float *bv, const int32_t *bi, int lanes, const float *x, int i, int n) {
    int32_t best = -1;
    float bestv = -INFINITY;
    for (int l = 0; l < lanes; l++)
        if (bi[l] >= 0 && (bv[l] > bestv || (bv[l] == bestv && bi[l] < best))) best = bi[l], bestv = bv[l];
    for (; i < n; i++)
        if (x[i] > bestv) best = i, bestv = x[i];
    return best;
}

/* Two accumulators of W lanes keep two loads in flight. A vector
 * comparison yields -1 (true) or 0 per lane, false for NaN. */
#define ARGMAX_FN(name, W, ATTR)                                                                                       \
    ATTR static int32_t name(const float *x, int n) {                                                                  \
        typedef float vf __attribute__((vector_size(4 * (W))));                                                        \
        typedef int32_t vi __attribute__((vector_size(4 * (W))));                                                      \
        vf bv0, bv1;                                                                                                   \
        vi bi0, bi1, i0, i1;                                                                                           \
        for (int l = 0; l < (W); l++) bv0[l] = bv1[l] = -INFINITY, bi0[l] = bi1[l] = -1, i0[l] = l, i1[l] = (W) + l;   \
        int i = 0;                                                                                                     \
        for (; i + 2 * (W) <= n; i += 2 * (W)) {                                                                       \
            vf v0, v1;                                                                                                 \
            memcpy(&v0, x + i, sizeof v0);                                                                             \
            memcpy(&v1, x + i + (W), sizeof v1);                                                                       \
            const vi g0 = v0 > bv0, g1 = v1 > bv1;                                                                     \
            bv0 = (vf)((g0 & (vi)v0) | (~g0 & (vi)bv0));                                                               \
            bv1 = (vf)((g1 & (vi)v1) | (~g1 & (vi)bv1));                                                               \
            bi0 = (g0 & i0) | (~g0 & bi0);                                                                             \
            bi1 = (g1 & i1) | (~g1 & bi1);                                                                             \
            i0 += 2 * (W);                                                                                             \
            i1 += 2 * (W);                                                                                             \
        }                                                                                                              \
        float v[2 * (W)];                                                                                              \
        int32_t b[2 * (W)];                                                                                            \
        memcpy(v, &bv0, sizeof bv0);                                                                                   \
        memcpy(v + (W), &bv1, sizeof bv1);                                                                             \
        memcpy(b, &bi0, sizeof bi0);                                                                                   \
        memcpy(b + (W), &bi1, sizeof bi1);                                                                             \
        return argmax_merge(v, b, 2 * (W), x, i, n);                                                                   \
    }

ARGMAX_FN(argmax_w4, 4, )
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
ARGMAX_FN(argmax_w8, 8, __attribute__((target("avx2"))))
ARGMAX_FN(argmax_w16, 16, __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl"))))
#endif

int32_t sampler_argmax(const float *x, int n) {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    const lc_cpu_level_t l = lc_cpu_level();
    if (l >= LC_CPU_AVX512) return argmax_w16(x, n);
    if (l >= LC_CPU_AVX2) return argmax_w8(x, n);
#endif
    return argmax_w4(x, n);
}

/* ---- sampling ------------------------------------------------------------------ */
static void apply_penalties(sampler_t *s, float *logits) {
    const sampler_params_t *p = &s->p;
    int V = s->n_vocab;
    float rp = p->repetition_penalty;
    if (rp > 0 && rp != 1.0f)
        for (int i = 0; i < V; i++)
            if (s->seen[i]) logits[i] = logits[i] > 0 ? logits[i] / rp : logits[i] * rp;
    if (s->n_output && (p->presence_penalty != 0 || p->frequency_penalty != 0))
        for (int i = 0; i < V; i++)
            if (s->count[i]) logits[i] -= p->presence_penalty + p->frequency_penalty * (float)s->count[i];
}

static int plain_rest(const sampler_params_t *p) {
    const int no_rp = p->repetition_penalty <= 0 || p->repetition_penalty == 1.0f;
    return p->skip_logprob && p->n_logit_bias == 0 && no_rp && p->presence_penalty == 0 && p->frequency_penalty == 0;
}

int sampler_plain_temperature(const sampler_t *s) {
    const sampler_params_t *p = &s->p;
    return p->temperature > 0 && (p->top_k <= 0 || p->top_k >= s->n_vocab) && (p->top_p <= 0 || p->top_p >= 1.0f) &&
           p->min_p <= 0 && plain_rest(p);
}

float sampler_temperature(const sampler_t *s) { return s->p.temperature; }

double sampler_peek_uniform(const sampler_t *s) {
    uint64_t st[4];
    memcpy(st, s->rng, sizeof st);
    return (double)(xoshiro_next(st) >> 11) * 0x1.0p-53;
}

void sampler_skip_uniform(sampler_t *s) { (void)rng_uniform(s); }

int sampler_plain_greedy(const sampler_t *s) {
    const sampler_params_t *p = &s->p;
    return (p->temperature <= 0 || p->top_k == 1) && plain_rest(p);
}

int sampler_sample(sampler_t *s, float *logits, const int32_t *banned, int n_banned, sampler_result_t *out) {
    const sampler_params_t *p = &s->p;
    int V = s->n_vocab;
    memset(out, 0, sizeof *out);
    /* 1. logit bias (<= -100 bans outright) and banned tokens */
    for (int i = 0; i < p->n_logit_bias; i++) {
        int32_t t = p->logit_bias[i].token;
        if (t < 0 || t >= V) continue;
        logits[t] = p->logit_bias[i].bias <= -100.0f ? -INFINITY : logits[t] + p->logit_bias[i].bias;
    }
    for (int i = 0; i < n_banned; i++)
        if (banned[i] >= 0 && banned[i] < V) logits[banned[i]] = -INFINITY;
    const int greedy = p->temperature <= 0 || p->top_k == 1;
    if (greedy && p->skip_logprob) {
        /* Greedy without log-probabilities: the penalties (when set) and
         * one pass of argmax, which never picks a NaN (a penalty keeps NaN
         * NaN and -inf -inf), so NaNs need no rewriting first. */
        apply_penalties(s, logits);
        const int32_t t = sampler_argmax(logits, V);
        if (t < 0) return LC_EINVAL; // everything banned
        out->token = t;
        out->logprob = NAN;
        return 0;
    }
    for (int i = 0; i < V; i++)
        if (isnan(logits[i])) logits[i] = -INFINITY;
    /* 2. penalties */
    apply_penalties(s, logits);
    /* 3. log-probabilities come from these logits */
    double lse = 0;
    if (!p->skip_logprob) {
        lse = log_sum_exp(logits, V);
        if (lse == -INFINITY) return LC_EINVAL; // everything banned
    } else {
        int allowed = 0;
        for (int i = 0; i < V && !allowed; i++) allowed = logits[i] != -INFINITY;
        if (!allowed) return LC_EINVAL;
    }

    int32_t token;
    int top_k = p->top_k;
    if (greedy) {
        token = sampler_argmax(logits, V); // 4. greedy (not -1: some logit is allowed)
    } else {
        /* candidates: every token that is still allowed, logits / T in val */
        float invt = 1.0f / p->temperature;
        int n = 0;
        for (int i = 0; i < V; i++) {
            s->val[i] = logits[i] * invt;
            if (logits[i] != -INFINITY) s->idx[n++] = i;
        }
        /* 5. top-k */
        if (top_k > 0 && top_k < n) {
            select_top(s->idx, n, top_k, s->val);
            n = top_k;
        }
        /* probabilities over the surviving candidates (unnormalised, max = 1) */
        float mx = -INFINITY;
        for (int i = 0; i < n; i++) mx = s->val[s->idx[i]] > mx ? s->val[s->idx[i]] : mx;
        double sum = 0;
        for (int i = 0; i < n; i++) {
            float e = expf(s->val[s->idx[i]] - mx);
            s->val[s->idx[i]] = e;
            sum += e;
        }
        /* 6. top-p: sort a growing prefix of the best candidates until it
         * holds the mass, then cut after the token that crosses p */
        if (p->top_p > 0 && p->top_p < 1.0f && n > 1) {
            double want = p->top_p * sum;
            int m = n < 64 ? n : 64;
            for (;;) {
                if (m < n) select_top(s->idx, n, m, s->val);
                sort_desc(s->idx, m, s->val);
                double cum = 0;
                int cut = -1;
                for (int i = 0; i < m; i++) {
                    cum += s->val[s->idx[i]];
                    if (cum >= want) {
                        cut = i + 1;
                        break;
                    }
                }
                if (cut > 0) {
                    n = cut;
                    break;
                }
                if (m == n) break; // rounding: keep everything
                m = m * 4 < n ? m * 4 : n;
            }
        }
        /* 7. min-p relative to the most likely candidate (whose value is 1) */
        if (p->min_p > 0) {
            int k = 0;
            for (int i = 0; i < n; i++)
                if (s->val[s->idx[i]] >= p->min_p) s->idx[k++] = s->idx[i];
            n = k;
        }
        /* 8. draw */
        double tot = 0;
        for (int i = 0; i < n; i++) tot += s->val[s->idx[i]];
        double u = rng_uniform(s) * tot, acc = 0;
        token = s->idx[n - 1];
        for (int i = 0; i < n; i++) {
            acc += s->val[s->idx[i]];
            if (u < acc) {
                token = s->idx[i];
                break;
            }
        }
    }
    if (p->skip_logprob) {
        out->token = token;
        out->logprob = NAN;
        return 0;
    }
    fill_logprobs(logits, V, token, p->n_logprobs, lse, out);
    return 0;
}

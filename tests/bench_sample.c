/* Benchmark of the host work of a decode step after the forward pass: the
 * engine's own step (sched__plan, sched__draw, sched__commit, sched__sweep)
 * with synthetic logits in place of the forward pass, so what it times is
 * what a GPU step adds on the host once the logits are there. Rounds of C
 * concurrent requests (distinct random 24-token prompts, ignore_eos,
 * max_tokens N) run to the end; each step's rows get logits copied from a
 * pool of random rows, then the engine thread sleeps G ms (the forward
 * pass on the device, during which the OpenMP team falls asleep as it does
 * in lacunad) before the timed part. Steps in which every request decodes
 * are reported (with how many of them the OpenMP team drew, output.c's
 * choice): mean, median and 90th percentile microseconds of the draw, the
 * serial commit (events, detokenizing, stop matching, prefix cache) and
 * their sum (what engine_sample_seconds_total counts), and the sweep (wake-up
 * callbacks, here none). The checksum covers every event's token, text,
 * log-probabilities and finish reason: two builds that print the same one
 * gave the client the same output.
 *
 * Usage: bench_sample [-m MODEL] [-c C] [-n N] [-r ROUNDS] [-g MS] [-t TEMP]
 *                     [-l LOGPROBS] [-b BLOCK] [-j THREADS]
 * (defaults: the default model, 64, 128, 4, 4, 0 (greedy), -1 (none), 64,
 * all CPUs). */
#include <getopt.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/status.h"
#include "common/timeutil.h"
#include "model/model.h"
#include "ops/ops.h"
#include "scheduler/sched_internal.h"

#define POOL_ROWS 97 // synthetic logits rows (prime: rows and steps do not line up)
#define PROMPT_LEN 24

static uint64_t rs = 0x9e3779b97f4a7c15ull;
static uint64_t next_u64(void) {
    rs ^= rs << 13;
    rs ^= rs >> 7;
    rs ^= rs << 17;
    return rs;
}
static double urand(void) { return (double)(next_u64() >> 11) * 0x1.0p-53; }

/* FNV-1a over the client-visible part of the events. */
static uint64_t fnv(uint64_t h, const void *p, size_t n) {
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 0x100000001b3ull;
    return h;
}

static uint64_t hash_event(uint64_t h, int req, const sched_event_t *ev) {
    h = fnv(h, &req, sizeof req);
    h = fnv(h, &ev->kind, sizeof ev->kind);
    h = fnv(h, &ev->choice, sizeof ev->choice);
    if (ev->kind == SCHED_EV_TOKEN) {
        h = fnv(h, &ev->token, sizeof ev->token);
        h = fnv(h, ev->text, ev->text_len);
        h = fnv(h, &ev->has_lp, sizeof ev->has_lp);
        if (ev->has_lp) {
            h = fnv(h, &ev->lp.logprob, sizeof ev->lp.logprob);
            h = fnv(h, &ev->lp.n_top, sizeof ev->lp.n_top);
            h = fnv(h, ev->lp.top_ids, (size_t)ev->lp.n_top * sizeof *ev->lp.top_ids);
            h = fnv(h, ev->lp.top_logprobs, (size_t)ev->lp.n_top * sizeof *ev->lp.top_logprobs);
        }
    } else if (ev->kind == SCHED_EV_FINISH) {
        h = fnv(h, &ev->finish, sizeof ev->finish);
        h = fnv(h, &ev->status, sizeof ev->status);
    }
    return h;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

typedef struct {
    double *v;
    int n, cap;
} series_t;

static void series_add(series_t *s, double x) {
    if (s->n == s->cap) {
        s->cap = s->cap ? 2 * s->cap : 256;
        s->v = realloc(s->v, (size_t)s->cap * sizeof *s->v);
        if (!s->v) abort();
    }
    s->v[s->n++] = x;
}

static void series_print(const char *name, series_t *s) {
    double sum = 0;
    for (int i = 0; i < s->n; i++) sum += s->v[i];
    qsort(s->v, (size_t)s->n, sizeof *s->v, cmp_double);
    printf("  %-8s mean %8.1f us  median %8.1f us  p90 %8.1f us\n", name, s->n ? sum / s->n * 1e6 : 0,
           s->n ? s->v[s->n / 2] * 1e6 : 0, s->n ? s->v[s->n * 9 / 10] * 1e6 : 0);
}

static void sleep_ms(double ms) {
    if (ms <= 0) return;
    struct timespec ts = {.tv_sec = (time_t)(ms / 1e3), .tv_nsec = (long)(fmod(ms, 1e3) * 1e6)};
    nanosleep(&ts, NULL);
}

int main(int argc, char **argv) {
    const char *model_path = getenv("LACUNA_MODEL");
    if (!model_path) model_path = "models/SmolLM2-135M-Instruct.Q4_1.gguf";
    int conc = 64, max_tokens = 128, rounds = 4, logprobs = -1, block = 64, threads = 0;
    double gap_ms = 4, temperature = 0;
    int o;
    while ((o = getopt(argc, argv, "m:c:n:r:g:t:l:b:j:")) != -1) {
        switch (o) {
        case 'm': model_path = optarg; break;
        case 'c': conc = atoi(optarg); break;
        case 'n': max_tokens = atoi(optarg); break;
        case 'r': rounds = atoi(optarg); break;
        case 'g': gap_ms = atof(optarg); break;
        case 't': temperature = atof(optarg); break;
        case 'l': logprobs = atoi(optarg); break;
        case 'b': block = atoi(optarg); break;
        case 'j': threads = atoi(optarg); break;
        default:
            fprintf(stderr, "usage: bench_sample [-m MODEL] [-c C] [-n N] [-r ROUNDS] [-g MS] [-t TEMP] "
                            "[-l LOGPROBS] [-b BLOCK] [-j THREADS]\n");
            return 2;
        }
    }
    if (conc < 1 || max_tokens < 2 || rounds < 1 || block < 1) return 2;
    /* As lacunad: libgomp's spin and the team size (may re-execute). */
    const int team = ops_cpu_init(argv, threads);

    char err[512];
    model_t *m = model_load(model_path, err, sizeof err);
    if (!m) {
        fprintf(stderr, "bench_sample: %s (skipped)\n", err);
        return 77;
    }
    const int nv = model_hparams(m)->n_vocab;
    sched_config_t c;
    sched_config_default(&c);
    c.max_running = conc;
    c.max_waiting = conc;
    c.max_batch_tokens = conc * PROMPT_LEN > 2048 ? conc * PROMPT_LEN : 2048;
    c.block_size = block;
    c.kv_blocks = (int64_t)conc * ((PROMPT_LEN + max_tokens + block - 1) / block + 1) + 8;
    sched_t *s = sched_create(m, &c, err, sizeof err);
    if (!s) {
        fprintf(stderr, "bench_sample: %s\n", err);
        return 1;
    }
    float *pool = malloc((size_t)POOL_ROWS * (size_t)nv * sizeof *pool);
    sched_req_t **reqs = calloc((size_t)conc, sizeof *reqs);
    if (!pool || !reqs) return 1;
    /* Logits of a small model's scale: N(0, 2.5) by Box-Muller. */
    for (size_t i = 0; i < (size_t)POOL_ROWS * (size_t)nv; i++)
        pool[i] = (float)(2.5 * sqrt(-2.0 * log(urand() + 1e-300)) * cos(6.283185307179586 * urand()));

    series_t draw = {0}, commit = {0}, total = {0}, sweep = {0};
    uint64_t h = 0xcbf29ce484222325ull;
    long tokens = 0;
    int step = 0, n_team = 0;
    for (int round = 0; round < rounds; round++) {
        for (int i = 0; i < conc; i++) {
            int32_t prompt[PROMPT_LEN];
            for (int j = 0; j < PROMPT_LEN; j++) prompt[j] = 3 + (int32_t)(next_u64() % (uint64_t)(nv - 3));
            sched_params_t p;
            memset(&p, 0, sizeof p);
            p.prompt = prompt;
            p.n_prompt = PROMPT_LEN;
            p.n_choices = 1;
            p.max_tokens = max_tokens;
            p.ignore_eos = 1;
            p.logprobs = logprobs;
            p.prompt_logprobs = -1;
            sampler_params_default(&p.sampling);
            p.sampling.temperature = (float)temperature;
            p.sampling.seed = (uint64_t)(round * conc + i);
            sched_attn_spec_default(&p.attn);
            int st;
            if (!(reqs[i] = sched_req_create(&p, &st)) || (st = sched_submit(s, reqs[i]))) {
                fprintf(stderr, "bench_sample: submit: %s\n", lc_strerror(st));
                return 1;
            }
        }
        int done = 0;
        while (done < conc) {
            int n_tok, n_decode;
            const int n_seq = sched__plan(s, &n_tok, &n_decode);
            if (n_seq < 0) {
                fprintf(stderr, "bench_sample: step: %s\n", lc_strerror(n_seq));
                return 1;
            }
            /* The forward pass: every row's logits, then the device's time. */
            size_t row = 0;
            for (int i = 0; i < n_seq; i++)
                for (int j = 0; j < s->slot[i].rows; j++, row++)
                    memcpy(s->logits + row * (size_t)nv,
                           pool + (size_t)((row * 31 + (size_t)step * 17) % POOL_ROWS) * nv, (size_t)nv * sizeof *pool);
            sleep_ms(gap_ms);
            const double t0 = lc_now_s();
            if (n_seq > 0) sched__draw(s, n_seq);
            const double t1 = lc_now_s();
            const int in_team = s->draw_serial_run == 0; // output.c's choice this step
            if (n_seq > 0) sched__commit(s, n_seq, t0);
            const double t2 = lc_now_s();
            sched__sweep(s);
            const double t3 = lc_now_s();
            step++;
            if (n_seq == conc && n_decode == n_tok) {
                series_add(&draw, t1 - t0);
                series_add(&commit, t2 - t1);
                series_add(&total, t2 - t0);
                series_add(&sweep, t3 - t2);
                n_team += in_team;
            }
            /* The HTTP side's part, outside the timed window. */
            for (int i = 0; i < conc; i++) {
                sched_event_t ev[64];
                int k;
                while ((k = sched_req_poll(reqs[i], ev, 64)) > 0)
                    for (int j = 0; j < k; j++) {
                        h = hash_event(h, round * conc + i, &ev[j]);
                        tokens += ev[j].kind == SCHED_EV_TOKEN;
                        done += ev[j].kind == SCHED_EV_DONE;
                        sched_event_clear(&ev[j]);
                    }
            }
        }
        for (int i = 0; i < conc; i++) sched_req_release(reqs[i]);
    }
    printf("bench_sample: %d requests x %d tokens x %d rounds, vocab %d, temperature %g, logprobs %d, "
           "%d OpenMP threads, %.1f ms gap\n",
           conc, max_tokens, rounds, nv, temperature, logprobs, team, gap_ms);
    printf("  %d steps with %d decode rows (%ld tokens in all), %d drawn by the OpenMP team; per step:\n", total.n,
           conc, tokens, n_team);
    series_print("draw", &draw);
    series_print("commit", &commit);
    series_print("total", &total);
    series_print("sweep", &sweep);
    printf("  checksum %016llx\n", (unsigned long long)h);
    free(draw.v);
    free(commit.v);
    free(total.v);
    free(sweep.v);
    free(pool);
    free(reqs);
    sched_destroy(s);
    model_free(m);
    return 0;
}

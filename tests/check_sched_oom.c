/* Check suite: the scheduler under injected allocation failures.
 *
 * The program is linked with -Wl,--wrap for malloc, calloc, realloc and
 * posix_memalign, so every allocation made by our own code (the test and
 * liblacuna; not libc's, OpenMP's or OpenBLAS's internal ones) goes through
 * a counter that, once armed, makes the N-th allocation fail (or, in the
 * persistent mode, the N-th and every later one). A scenario on a tiny model
 * exercises the request paths: creation and submission, admission, chunked
 * prefill, prompt logprobs, n > 1 choices, a stop string, a prefix-cache hit,
 * preemption in a small KV pool, a cancellation, and clients too slow to poll
 * (their event queues grow). It is run once for every N from 1 to the number
 * of allocations the scenario makes (about 220), in both modes, synchronously
 * (sched_step) and on the engine thread (where the client waits for wake-ups,
 * as the server does); sched_create is swept too. After each run:
 *   - nothing crashed (Check runs each test in its own process);
 *   - every submitted request ended: exactly one FINISH per choice, then
 *     DONE, and nothing after it (a client waiting for a lost request hangs);
 *   - on the engine thread, every request's last events were followed by a
 *     wake-up (the client only polls when woken);
 *   - the engine holds nothing and every KV block is free again;
 *   - the engine still works: a probe that reuses the prompt blocks cached
 *     during the run gives the same tokens and log-probabilities, bit for
 *     bit, as on a fresh engine (a failed step must not leave a cached block
 *     with K/V that were never written).
 * A second mode fails only the allocations of a step's logits rows that hold
 * a chunk's prompt logits: then that request alone fails and the others end
 * bit for bit as on an engine where nothing failed (test_oom_prompt_logits_alone;
 * failing the whole batch, as before, fails it).
 * Checked against sabotage: admission dropping a request whose engine state
 * could not be allocated fails every sweep; event queues that keep no room
 * for the terminal events fail the persistent ones. */
#include <check.h>
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/log.h"
#include "common/status.h"
#include "kv/kv.h"
#include "ops/ops.h"
#include "scheduler/sched.h"
#include "scheduler/sched_internal.h"
#include "testutil.h"
#include "tinymodel.h"

/* ---- failure injection ----------------------------------------------------------- */
void *__real_malloc(size_t n);
void *__real_calloc(size_t n, size_t size);
void *__real_realloc(void *p, size_t n);
int __real_posix_memalign(void **p, size_t align, size_t n);
void *__wrap_malloc(size_t n);
void *__wrap_calloc(size_t n, size_t size);
void *__wrap_realloc(void *p, size_t n);
int __wrap_posix_memalign(void **p, size_t align, size_t n);

static atomic_int g_armed;
static atomic_long g_count;   // allocations since arming
static atomic_long g_fail_at; // the first allocation that fails (0: none)
static atomic_int g_persist;  // 1: every allocation from g_fail_at on fails
static atomic_long g_failed;  // failures injected

static int inject(void) {
    if (!atomic_load_explicit(&g_armed, memory_order_relaxed)) return 0;
    const long c = atomic_fetch_add(&g_count, 1) + 1, at = atomic_load(&g_fail_at);
    if (at <= 0 || c < at || (c > at && !atomic_load(&g_persist))) return 0;
    atomic_fetch_add(&g_failed, 1);
    return 1;
}

/* The other mode: every malloc of at least 12 rows of logits (a whole
 * multiple of g_row_bytes) fails, and nothing else: a step that holds a
 * chunk's prompt logits cannot get its logits rows. */
static atomic_long g_row_bytes;
static int inject_rows(size_t n) {
    const long rb = atomic_load(&g_row_bytes);
    if (rb <= 0 || n % (size_t)rb != 0 || n / (size_t)rb < 12) return 0;
    atomic_fetch_add(&g_failed, 1);
    return 1;
}

void *__wrap_malloc(size_t n) { return inject() || inject_rows(n) ? NULL : __real_malloc(n); }
void *__wrap_calloc(size_t n, size_t size) { return inject() ? NULL : __real_calloc(n, size); }
void *__wrap_realloc(void *p, size_t n) { return inject() ? NULL : __real_realloc(p, n); }
int __wrap_posix_memalign(void **p, size_t align, size_t n) {
    return inject() ? ENOMEM : __real_posix_memalign(p, align, n);
}

static void arm(long fail_at, int persist) {
    atomic_store(&g_count, 0);
    atomic_store(&g_failed, 0);
    atomic_store(&g_fail_at, fail_at);
    atomic_store(&g_persist, persist);
    atomic_store(&g_armed, 1);
}

/* Returns the allocations counted since arm(). */
static long disarm(void) {
    atomic_store(&g_armed, 0);
    return atomic_load(&g_count);
}

/* ---- the model and the requests --------------------------------------------------- */
static model_t *g_model;

static const model_t *tiny_model(void) {
    if (g_model) return g_model;
    const tiny_opts_t o = {.name = "check-sched-oom",
                           .n_layers = 2,
                           .n_embd = 32,
                           .n_heads = 4,
                           .n_kv_heads = 2,
                           .n_ff = 64,
                           .n_ctx = 512,
                           .seed = 11,
                           .qk_std = 2.0f};
    return g_model = tiny_model_load(&o);
}

/* 12 blocks of 16 tokens: the scenario's requests need more together, so
 * the newest get preempted. */
static sched_t *mk_sched(const model_t *m, int64_t blocks, int prefix) {
    sched_config_t c;
    sched_config_default(&c);
    c.kv_blocks = blocks;
    c.max_batch_tokens = 48;
    c.prefill_chunk = 16;
    c.enable_prefix_cache = prefix;
    c.max_running = 8;
    c.max_waiting = 16;
    c.target_step_ms = -1; // the same schedule on any machine: the same allocations
    c.kv_watermark = 0;
    c.threads = 1; // the engine thread's OpenMP team: no spinning workers
    char err[256];
    sched_t *s = sched_create(m, &c, err, sizeof err);
    ck_assert_msg(s != NULL, "%s", err);
    return s;
}

static void mk_prompt(int32_t *p, int n, unsigned seed, int n_vocab) {
    for (int i = 0; i < n; i++) p[i] = 3 + (int32_t)(rand_r(&seed) % (unsigned)(n_vocab - 3));
}

enum { NREQ = 5, MAXTOK = 32 };
static int32_t g_prompts[NREQ][64];
static int g_lens[NREQ];

static void prompts_init(int nv) {
    const int lens[NREQ] = {40, 50, 58, 20, 30};
    for (int i = 0; i < NREQ; i++) {
        g_lens[i] = lens[i];
        mk_prompt(g_prompts[i], lens[i], 100 + (unsigned)i, nv);
    }
    memcpy(g_prompts[2], g_prompts[1], 48 * sizeof(int32_t)); // three blocks of request 1's prompt
}

/* Request i of the scenario:
 *   0: two sampled choices with logprobs and a stop string;
 *   1: prompt logprobs (every prompt row's logits);
 *   2: shares request 1's first three blocks (submitted later: a cache hit);
 *   3: a long generation (grows into preemptions);
 *   4: cancelled mid-way. */
static void req_params(int i, sched_params_t *p) {
    memset(p, 0, sizeof *p);
    p->prompt = g_prompts[i];
    p->n_prompt = g_lens[i];
    p->n_choices = 1;
    p->max_tokens = (int[]){10, 6, 8, MAXTOK, 20}[i];
    p->ignore_eos = 1;
    p->logprobs = -1;
    p->prompt_logprobs = -1;
    sampler_params_default(&p->sampling);
    p->sampling.temperature = 0;
    sched_attn_spec_default(&p->attn);
    if (i == 0) {
        p->n_choices = 2;
        p->sampling.temperature = 0.9f;
        p->sampling.seed = 5;
        p->logprobs = 2;
        p->stop[0] = "zq";
        p->n_stop = 1;
    }
    if (i == 1) p->prompt_logprobs = 2;
    if (i == 2 || i == 3) p->logprobs = 0;
}

/* What a client saw of one request. Filled while the allocator may fail:
 * anomalies are counted, never asserted, until it is disarmed. */
typedef struct {
    sched_req_t *r;
    int n_choices, submitted;
    atomic_int wakes;
    int wakes_seen;
    int done, after_done, finishes[2], bad_choice;
    sched_finish_t finish[2];
    int n[2];
    int32_t toks[MAXTOK];
    float lp[MAXTOK];
} track_t;

static void wake(void *ud) { atomic_fetch_add(&((track_t *)ud)->wakes, 1); }

static void poll_track(track_t *t) {
    sched_event_t ev[16];
    int n;
    while ((n = sched_req_poll(t->r, ev, 16)) > 0)
        for (int i = 0; i < n; i++) {
            const int c = ev[i].choice;
            if (t->done) t->after_done++;
            if (c < 0 || c >= t->n_choices) {
                t->bad_choice++;
            } else if (ev[i].kind == SCHED_EV_TOKEN) {
                if (c == 0 && t->n[0] < MAXTOK) {
                    t->toks[t->n[0]] = ev[i].token;
                    t->lp[t->n[0]] = ev[i].has_lp ? ev[i].lp.logprob : 0;
                }
                t->n[c]++;
            } else if (ev[i].kind == SCHED_EV_FINISH) {
                t->finishes[c]++;
                t->finish[c] = ev[i].finish;
            } else if (ev[i].kind == SCHED_EV_DONE) {
                t->done++;
            }
            sched_event_clear(&ev[i]);
        }
}

static void submit_track(sched_t *s, track_t *t, int i, int threaded) {
    sched_params_t p;
    req_params(i, &p);
    if (threaded) {
        p.wake_cb = wake;
        p.wake_ud = t;
    }
    t->n_choices = p.n_choices;
    int st;
    if (!(t->r = sched_req_create(&p, &st))) return; // out of memory: never submitted
    if (sched_submit(s, t->r) == 0) {
        t->submitted = 1;
    } else {
        sched_req_release(t->r);
        t->r = NULL;
    }
}

static int engine_left(sched_t *s) {
    pthread_mutex_lock(&s->lock);
    int n = s->waiting.n;
    pthread_mutex_unlock(&s->lock);
    return n + s->running.n;
}

/* ---- the scenario ------------------------------------------------------------------ */
typedef struct {
    long allocs, failed;
    int preemptions, cached, completed; // in the run (the dry run asserts on them)
    int probe_cached;                   // prompt tokens the probe took from the cache
} result_t;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* The probe's reference: requests 2 and 3 greedy on a fresh engine. */
static track_t g_ref[2];

/* Returns the prompt tokens the probe reused from the prefix cache. */
static int run_probe(sched_t *s, track_t out[2]) {
    memset(out, 0, 2 * sizeof *out);
    submit_track(s, &out[0], 2, 0);
    submit_track(s, &out[1], 3, 0);
    ck_assert(out[0].submitted && out[1].submitted);
    ck_assert_int_eq(sched_run_until_idle(s), 0);
    int cached = 0;
    for (int k = 0; k < 2; k++) {
        poll_track(&out[k]);
        ck_assert(out[k].done);
        sched_usage_t u;
        sched_req_usage(out[k].r, &u);
        cached += u.cached_tokens;
        sched_req_release(out[k].r);
    }
    return cached;
}

static void scenario(long fail_at, int persist, int threaded, result_t *res) {
    const model_t *m = tiny_model();
    sched_t *s = mk_sched(m, 12, 1);
    static track_t t[NREQ];
    memset(t, 0, sizeof t);
    memset(res, 0, sizeof *res);
    int stuck = 0;

    arm(fail_at, persist);
    if (threaded && sched_start(s) != 0) stuck = -1; // the thread could not start
    for (int i = 0; i < NREQ; i++)
        if (i != 2) submit_track(s, &t[i], i, threaded);
    if (!threaded) {
        for (int step = 0; engine_left(s) > 0 || (step <= 4); step++) {
            if (step == 3 && t[4].r) sched_req_cancel(t[4].r);
            if (step == 4) submit_track(s, &t[2], 2, 0);
            if (step > 2000) {
                stuck = 1;
                break;
            }
            sched_step(s); // a failed step fails its requests; the engine goes on
            /* Requests 0 and 3 have slow clients: their event queues grow. */
            for (int i = 0; i < NREQ; i++)
                if (t[i].r && i != 0 && i != 3) poll_track(&t[i]);
        }
        for (int i = 0; i < NREQ; i++)
            if (t[i].r) poll_track(&t[i]);
    } else if (stuck == 0) {
        /* The client side: poll a request only when it was woken. */
        const double t0 = now_s();
        int cancelled = 0, late = 0;
        for (;;) {
            int all = 1;
            for (int i = 0; i < NREQ; i++) {
                if (!t[i].r) continue;
                const int w = atomic_load(&t[i].wakes);
                if (w != t[i].wakes_seen) {
                    t[i].wakes_seen = w;
                    poll_track(&t[i]);
                }
                all &= t[i].done > 0;
            }
            if (!cancelled && t[4].r && t[4].n[0] > 0) sched_req_cancel(t[4].r), cancelled = 1;
            if (all && late) break;
            if (!late && (t[1].n[0] > 0 || !t[1].r || t[1].done)) submit_track(s, &t[2], 2, 1), late = 1;
            if (now_s() - t0 > 10) {
                stuck = 1;
                break;
            }
            usleep(200);
        }
        sched_stop(s);
    }
    res->allocs = disarm();
    res->failed = atomic_load(&g_failed);

    /* Every submitted request ended, exactly once per choice, then DONE. */
    for (int i = 0; i < NREQ; i++) {
        track_t *r = &t[i];
        if (!r->r) continue;
        if (threaded) poll_track(r); // what the wake-ups missed (checked below)
        ck_assert_msg(r->done == 1, "fail_at %ld%s: request %d got %d DONE events%s", fail_at, persist ? "+" : "", i,
                      r->done, stuck ? " (stuck)" : "");
        ck_assert_int_eq(r->after_done, 0);
        ck_assert_int_eq(r->bad_choice, 0);
        for (int c = 0; c < r->n_choices; c++) {
            ck_assert_msg(r->finishes[c] == 1, "fail_at %ld: request %d choice %d finished %d times", fail_at, i, c,
                          r->finishes[c]);
            ck_assert_int_ne(r->finish[c], SCHED_FINISH_NONE);
        }
        sched_usage_t u;
        sched_req_usage(r->r, &u);
        res->preemptions += u.preemptions;
        res->cached += u.cached_tokens;
        if (i != 4) res->completed += r->finish[0] == SCHED_FINISH_LENGTH || r->finish[0] == SCHED_FINISH_STOP;
        sched_req_release(r->r);
    }
    ck_assert_msg(!stuck, "fail_at %ld%s: the engine did not become idle", fail_at, persist ? "+" : "");
    /* The engine holds nothing, and no KV block leaked. */
    ck_assert_int_eq(engine_left(s), 0);
    kv_pool_t *kv = sched_kv(s);
    ck_assert_msg(kv_pool_n_used(kv) == 0, "fail_at %ld%s: %lld KV blocks still in use", fail_at, persist ? "+" : "",
                  (long long)kv_pool_n_used(kv));
    ck_assert_int_eq(kv_pool_n_available(kv), kv_pool_n_blocks(kv));
    /* It still works, from what it cached during the run. */
    track_t probe[2];
    res->probe_cached = run_probe(s, probe);
    for (int k = 0; k < 2; k++) {
        ck_assert_msg(probe[k].n[0] == g_ref[k].n[0] &&
                          memcmp(probe[k].toks, g_ref[k].toks, (size_t)g_ref[k].n[0] * sizeof(int32_t)) == 0 &&
                          memcmp(probe[k].lp, g_ref[k].lp, (size_t)g_ref[k].n[0] * sizeof(float)) == 0,
                      "fail_at %ld%s: the probe's output changed after the run", fail_at, persist ? "+" : "");
    }
    ck_assert_int_eq(kv_pool_n_used(kv), 0);
    sched_destroy(s);
}

/* The dry run: nothing fails; the scenario covers what it claims. Returns
 * the allocations it made. */
static long dry_run(int threaded) {
    const model_t *m = tiny_model();
    prompts_init(model_hparams(m)->n_vocab);
    sched_t *s = mk_sched(m, 64, 0);
    run_probe(s, g_ref);
    sched_destroy(s);
    ck_assert_int_eq(g_ref[0].n[0], 8);
    ck_assert_int_eq(g_ref[1].n[0], MAXTOK);
    result_t res;
    scenario(0, 0, threaded, &res);
    ck_assert_int_eq(res.failed, 0);
    ck_assert_int_eq(res.completed, NREQ - 1); // all but the one cancelled
    ck_assert_int_gt(res.probe_cached, 0);     // the probe reads what the run cached
    /* Synchronously the scenario hits the prefix cache and preempts at fixed
     * steps. On the thread, request 2 goes in once the client sees request
     * 1's first token: when the client is slow to wake (a loaded machine),
     * the pool's pressure may have evicted request 1's blocks by then, and
     * the thread's timing may avoid preemptions; the synchronous sweeps
     * cover both paths every time. */
    if (!threaded) {
        ck_assert_int_gt(res.cached, 0);
        ck_assert_int_gt(res.preemptions, 0);
    }
    ck_assert_int_gt(res.allocs, 50);
    return res.allocs;
}

/* Sweeps fail_at over every allocation of the run (a little past the dry
 * run's count: the threaded schedule varies). */
static void sweep(int persist, int threaded) {
    const double t0 = now_s();
    const long total = dry_run(threaded);
    long failed_runs = 0;
    for (long n = 1; n <= total + total / 8; n++) {
        result_t res;
        scenario(n, persist, threaded, &res);
        failed_runs += res.failed > 0;
    }
    ck_assert_int_ge(failed_runs, total * 7 / 8); // the failures were injected
    fprintf(stderr, "sched_oom: %s%s: %ld allocations swept in %.1f s\n", threaded ? "thread" : "sync",
            persist ? ", persistent" : "", total, now_s() - t0);
}

START_TEST(test_oom_sync_once) { sweep(0, 0); }
END_TEST

START_TEST(test_oom_sync_persistent) { sweep(1, 0); }
END_TEST

START_TEST(test_oom_thread_once) { sweep(0, 1); }
END_TEST

START_TEST(test_oom_thread_persistent) { sweep(1, 1); }
END_TEST

/* Creation itself: each allocation of sched_create failing in turn gives
 * NULL with a message, or an engine that works. */
START_TEST(test_oom_create) {
    const model_t *m = tiny_model();
    prompts_init(model_hparams(m)->n_vocab);
    sched_config_t c;
    sched_config_default(&c);
    c.kv_blocks = 16;
    char err[256];
    arm(0, 0);
    sched_t *s = sched_create(m, &c, err, sizeof err);
    const long total = disarm();
    ck_assert_ptr_nonnull(s);
    sched_destroy(s);
    for (long n = 1; n <= total; n++) {
        err[0] = 0;
        arm(n, 0);
        s = sched_create(m, &c, err, sizeof err);
        disarm();
        if (!s) {
            ck_assert_msg(err[0] != 0, "sched_create failed at allocation %ld without a message", n);
            continue;
        }
        track_t t = {0};
        submit_track(s, &t, 3, 0);
        ck_assert(t.submitted);
        ck_assert_int_eq(sched_run_until_idle(s), 0);
        poll_track(&t);
        ck_assert(t.done == 1);
        sched_req_release(t.r);
        sched_destroy(s);
    }
}
END_TEST

/* When a step cannot get its logits rows because a request asked for its
 * prompt rows' logits, that request fails with the error and the others of
 * the batch go on: each ends as on an engine where nothing failed (the same
 * tokens and log-probabilities, bit for bit), and no KV block leaks. With
 * the old rule (the whole batch fails) requests 0 and 3 fail here. */
START_TEST(test_oom_prompt_logits_alone) {
    const model_t *m = tiny_model();
    const int nv = model_hparams(m)->n_vocab;
    prompts_init(nv);
    track_t ref[NREQ], t[NREQ];
    for (int pass = 0; pass < 2; pass++) {
        track_t *tt = pass ? t : ref;
        memset(tt, 0, NREQ * sizeof *tt);
        sched_t *s = mk_sched(m, 64, 0);
        atomic_store(&g_failed, 0);
        atomic_store(&g_row_bytes, pass ? (long)nv * (long)sizeof(float) : 0);
        for (int i = 0; i < NREQ; i++)
            if (i != 4) submit_track(s, &tt[i], i, 0);
        ck_assert_int_eq(sched_run_until_idle(s), 0);
        atomic_store(&g_row_bytes, 0);
        for (int i = 0; i < NREQ; i++) {
            if (!tt[i].r) continue;
            poll_track(&tt[i]);
            ck_assert_int_eq(tt[i].done, 1);
            sched_req_release(tt[i].r);
        }
        ck_assert_int_eq(engine_left(s), 0);
        ck_assert_int_eq(kv_pool_n_used(sched_kv(s)), 0);
        sched_destroy(s);
        if (pass) ck_assert_int_gt(atomic_load(&g_failed), 0);
    }
    ck_assert_int_eq(t[1].finish[0], SCHED_FINISH_ERROR);
    ck_assert_int_eq(t[1].n[0], 0);
    for (int i = 0; i < NREQ; i++) {
        if (i == 1 || i == 4) continue;
        for (int c = 0; c < t[i].n_choices; c++) {
            ck_assert_int_eq(ref[i].finish[c], SCHED_FINISH_LENGTH);
            ck_assert_msg(t[i].finish[c] == ref[i].finish[c], "request %d choice %d finished %d, alone %d", i, c,
                          (int)t[i].finish[c], (int)ref[i].finish[c]);
            ck_assert_int_eq(t[i].n[c], ref[i].n[c]);
        }
        const int n = t[i].n[0] < MAXTOK ? t[i].n[0] : MAXTOK;
        ck_assert_msg(memcmp(t[i].toks, ref[i].toks, (size_t)n * sizeof(int32_t)) == 0 &&
                          memcmp(t[i].lp, ref[i].lp, (size_t)n * sizeof(float)) == 0,
                      "request %d: its output changed when request 1 failed", i);
    }
}
END_TEST

int main(void) {
    ops_cpu_init(NULL, 1); // the tiny model gains nothing from threads
    if (!getenv("CHECK_SCHED_OOM_LOG")) lc_log_set_level((lc_log_level_t)-1); // thousands of expected errors
    Suite *s = suite_create("sched_oom");
    TCase *tc = tcase_create("oom");
    tcase_set_timeout(tc, 240);
    tcase_add_test(tc, test_oom_create);
    tcase_add_test(tc, test_oom_prompt_logits_alone);
    tcase_add_test(tc, test_oom_sync_once);
    tcase_add_test(tc, test_oom_sync_persistent);
    tcase_add_test(tc, test_oom_thread_once);
    tcase_add_test(tc, test_oom_thread_persistent);
    suite_add_tcase(s, tc);
    return tu_run(s);
}

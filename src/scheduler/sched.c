/* The engine object: creation (KV pool sized from the config, model
 * scratch), submission with its admission checks, the engine thread with
 * its idle wait, draining, and the metrics snapshot. The step itself is in
 * step.c. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/log.h"
#include "common/status.h"
#include "common/timeutil.h"
#include "ops/ops.h"
#include "scheduler/sched_internal.h"

sched_t *sched_create(const model_t *model, const sched_config_t *cfg, char *err, size_t errlen) {
    sched_t *s = calloc(1, sizeof *s);
    if (!s) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    s->model = model;
    s->hp = *model_hparams(model);
    s->tok = model_tok(model);
    s->cfg = *cfg;
    /* Step sizes default by device: a GPU wants large steps to fill it. */
    int gpu_index = -1;
    if (model_exec_resolve(model, s->cfg.device, &gpu_index, err, errlen)) goto fail_early;
    const int gpu = gpu_index >= 0;
    if (s->cfg.max_batch_tokens <= 0) s->cfg.max_batch_tokens = gpu ? 8192 : 2048;
    if (s->cfg.max_running <= 0) s->cfg.max_running = gpu ? 256 : 64;
    if (s->cfg.max_waiting <= 0) s->cfg.max_waiting = 256;
    if (s->cfg.prefill_chunk <= 0) s->cfg.prefill_chunk = gpu ? 4096 : 512;
    if (s->cfg.prefill_chunk > s->cfg.max_batch_tokens) s->cfg.prefill_chunk = s->cfg.max_batch_tokens;
    pthread_mutex_init(&s->lock, NULL);
    pthread_cond_init(&s->cond, NULL);
    pthread_mutex_init(&s->mlock, NULL);
    lc_hist_init(&s->h_ttft, LC_HIST_LATENCY_BOUNDS, LC_HIST_LATENCY_N);
    lc_hist_init(&s->h_e2e, LC_HIST_LATENCY_BOUNDS, LC_HIST_LATENCY_N);
    lc_hist_init(&s->h_queue, LC_HIST_LATENCY_BOUNDS, LC_HIST_LATENCY_N);
    lc_hist_init(&s->h_itl, LC_HIST_ITL_BOUNDS, LC_HIST_ITL_N);

    int mt = s->cfg.max_batch_tokens;
    char device[32] = "cpu"; // resolved once above (and logged there)
    if (gpu) snprintf(device, sizeof device, "cuda:%d", gpu_index);
    model_exec_opts_t eo = {.device = device,
                            .max_batch_tokens = mt,
                            .max_seqs = mt,
                            .block_size = s->cfg.block_size,
                            .kv_blocks = s->cfg.kv_blocks,
                            .kv_keep_sliding = s->cfg.kv_keep_sliding,
                            .kv_bytes = s->cfg.kv_bytes,
                            .kv_gpu_fraction = s->cfg.kv_gpu_fraction,
                            .gpu_fast_gemm = s->cfg.gpu_fast_gemm,
                            .gpu_no_graphs = s->cfg.gpu_no_graphs,
                            .context_ranks = s->cfg.context_ranks,
                            .context_min_tokens = s->cfg.context_min_tokens,
                            .context_devices = s->cfg.context_devices};
    if (!(s->exec = model_exec_create(model, &eo, err, errlen))) goto fail;
    kv_config_t kc = model_exec_kv_config(s->exec);
    s->cfg.block_size = kc.block_size;
    if (s->cfg.target_step_ms == 0) s->cfg.target_step_ms = model_exec_is_gpu(s->exec) ? 50 : 250;
    {
        model_exec_cp_stats_t cs;
        model_exec_cp_stats(s->exec, &cs);
        s->cp_decode_rows = cs.ranks > 1 ? cs.max_decode_rows : 0;
    }
    /* Every queue move of the engine fits in room reserved here: waiting
     * holds the admission limit plus every running request put back by a
     * preemption, running every admitted request plus the finished ones
     * swept at the end of a step, touched all of them. */
    const int wcap = s->cfg.max_waiting + s->cfg.max_running + 1, rcap = s->cfg.max_running + 1 + wcap;
    if (sched__reqv_reserve(&s->waiting, wcap) || sched__reqv_reserve(&s->running, rcap) ||
        sched__reqv_reserve(&s->touched, rcap + wcap)) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    int64_t nb = kc.n_blocks;
    if (!(s->kv = kv_pool_create(&kc)) || model_exec_bind(s->exec, s->kv)) {
        snprintf(err, errlen, "cannot allocate a KV pool of %lld blocks", (long long)nb);
        goto fail;
    }
    s->btok = malloc((size_t)mt * sizeof *s->btok);
    s->bseq = malloc((size_t)mt * sizeof *s->bseq);
    s->slot = malloc((size_t)mt * sizeof *s->slot);
    s->tmp = malloc((size_t)s->hp.n_vocab * sizeof *s->tmp);
    if (!s->btok || !s->bseq || !s->slot || !s->tmp) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    if (s->tok) {
        int32_t e = tok_eos(s->tok), t = tok_eot(s->tok);
        if (e >= 0) s->eos[s->n_eos++] = e;
        if (t >= 0 && t != e) s->eos[s->n_eos++] = t;
    }
    s->m.kv_blocks_total = nb;
    s->m.kv_block_bytes = (int64_t)model_exec_kv_block_bytes(s->exec);
    LC_DEBUG("sched: %s, KV pool %lld blocks of %d tokens (%.1f MiB)", model_exec_device(s->exec), (long long)nb,
             s->cfg.block_size, (double)nb * (double)model_exec_kv_block_bytes(s->exec) / (1024.0 * 1024.0));
    return s;
fail:
    sched_destroy(s);
    return NULL;
fail_early: // nothing initialised yet
    free(s);
    return NULL;
}

void sched_destroy(sched_t *s) {
    if (!s) return;
    sched_stop(s);
    /* Whatever is left is cancelled so that every client sees its end. */
    if (s->kv) {
        for (int i = 0; i < s->running.n; i++) sched__finish_all(s, s->running.v[i], SCHED_FINISH_CANCELLED, 0);
        for (int i = 0; i < s->waiting.n; i++) {
            sched__finish_all(s, s->waiting.v[i], SCHED_FINISH_CANCELLED, 0);
            sched__reqv_push(&s->running, s->waiting.v[i]);
        }
        s->waiting.n = 0;
        for (int i = 0; i < s->touched.n; i++) {
            sched_req_t *r = s->touched.v[i];
            r->wake_pending = 0;
            if (r->p.wake_cb) r->p.wake_cb(r->p.wake_ud);
        }
        for (int i = 0; i < s->running.n; i++) {
            sched__req_free_engine_state(s->running.v[i]);
            sched_req_release(s->running.v[i]);
        }
    }
    free(s->running.v);
    free(s->waiting.v);
    free(s->touched.v);
    kv_pool_destroy(s->kv);
    if (s->exec) model_exec_logits_free(s->exec, s->logits);
    model_exec_destroy(s->exec);
    free(s->btok);
    free(s->bseq);
    free(s->slot);
    free(s->tmp);
    lc_hist_fini(&s->h_ttft);
    lc_hist_fini(&s->h_e2e);
    lc_hist_fini(&s->h_queue);
    lc_hist_fini(&s->h_itl);
    pthread_mutex_destroy(&s->mlock);
    pthread_cond_destroy(&s->cond);
    pthread_mutex_destroy(&s->lock);
    free(s);
}

/* Blocks a request can hold at its peak: the prompt's full blocks once, and
 * each choice's own blocks from there to prompt + max_tokens (kv.h: with
 * sliding-window layers, their windows). */
static int64_t peak_blocks(const sched_t *s, const sched_req_t *r) {
    return kv_peak_blocks(s->kv, r->p.n_prompt, (int64_t)r->p.n_prompt + r->p.max_tokens, r->p.n_choices,
                          s->cfg.prefill_chunk);
}

int sched_submit(sched_t *s, sched_req_t *r) {
    if ((int64_t)r->p.n_prompt + r->p.max_tokens > s->hp.n_ctx_train) return LC_ETOOLONG;
    if (peak_blocks(s, r) > kv_pool_n_blocks(s->kv)) return LC_ETOOLONG;
    pthread_mutex_lock(&s->lock);
    int rc = 0;
    if (s->draining)
        rc = LC_ESHUTDOWN;
    else if (model_exec_failure(s->exec))
        rc = LC_EDEVICE;
    else if (r->state != REQ_NEW)
        rc = LC_EINVAL;
    else if (s->waiting.n >= s->cfg.max_waiting)
        rc = LC_EBUSY;
    if (rc == 0) {
        sched_req_retain(r);
        r->state = REQ_WAITING;
        r->t_submit = lc_now_s();
        if ((rc = sched__reqv_push(&s->waiting, r))) {
            r->state = REQ_NEW;
            atomic_fetch_sub(&r->refs, 1);
        } else {
            pthread_cond_signal(&s->cond);
        }
    }
    pthread_mutex_unlock(&s->lock);
    return rc;
}

/* ---- the engine thread ------------------------------------------------------------- */
static void *engine_main(void *arg) {
    sched_t *s = arg;
    ops_cpu_init(NULL, s->cfg.threads); // this thread's OpenMP team runs the steps
    pthread_mutex_lock(&s->lock);
    while (!s->stop) {
        void (*hb)(void *) = s->heartbeat_cb;
        void *hb_ud = s->heartbeat_ud;
        pthread_mutex_unlock(&s->lock);
        if (hb && !model_exec_failure(s->exec)) hb(hb_ud); // a lost device: let the watchdog restart us
        int n = sched__step(s);
        pthread_mutex_lock(&s->lock);
        if (n > 0 || s->stop) continue;
        /* Idle (or blocked): sleep until a submit, a stop, or the timeout
         * that keeps the heartbeat going. */
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        int busy = s->running.n > 0 || s->waiting.n > 0;
        ts.tv_nsec += busy ? 1000000L : 500000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&s->cond, &s->lock, &ts);
    }
    pthread_mutex_unlock(&s->lock);
    return NULL;
}

int sched_start(sched_t *s) {
    pthread_mutex_lock(&s->lock);
    if (s->thread_running) {
        pthread_mutex_unlock(&s->lock);
        return LC_EINVAL;
    }
    s->stop = 0;
    int e = pthread_create(&s->thread, NULL, engine_main, s);
    if (e == 0) s->thread_running = 1;
    pthread_mutex_unlock(&s->lock);
    return e ? LC_ENOMEM : 0;
}

void sched_drain(sched_t *s) {
    pthread_mutex_lock(&s->lock);
    s->draining = 1;
    pthread_mutex_unlock(&s->lock);
}

void sched_stop(sched_t *s) {
    pthread_mutex_lock(&s->lock);
    int running = s->thread_running;
    s->stop = 1;
    pthread_cond_broadcast(&s->cond);
    pthread_mutex_unlock(&s->lock);
    if (running) pthread_join(s->thread, NULL);
    pthread_mutex_lock(&s->lock);
    s->thread_running = 0;
    pthread_mutex_unlock(&s->lock);
}

int sched_step(sched_t *s) { return sched__step(s); }

int sched_run_until_idle(sched_t *s) {
    int idle_steps = 0;
    for (;;) {
        pthread_mutex_lock(&s->lock);
        int left = s->running.n + s->waiting.n;
        pthread_mutex_unlock(&s->lock);
        if (left == 0) return 0;
        int n = sched__step(s);
        if (n < 0) return n;
        /* A step with no tokens still makes progress (cancellations); many
         * in a row mean nothing can run. */
        idle_steps = n == 0 ? idle_steps + 1 : 0;
        if (idle_steps > 3) return LC_EBUSY;
    }
}

void sched_set_heartbeat_cb(sched_t *s, void (*cb)(void *ud), void *ud) {
    pthread_mutex_lock(&s->lock);
    s->heartbeat_cb = cb;
    s->heartbeat_ud = ud;
    pthread_mutex_unlock(&s->lock);
}

/* ---- metrics ---------------------------------------------------------------------- */
void sched_metrics(sched_t *s, sched_metrics_t *out) {
    pthread_mutex_lock(&s->mlock);
    *out = s->m;
    pthread_mutex_unlock(&s->mlock);
    pthread_mutex_lock(&s->lock);
    out->waiting = s->waiting.n;
    pthread_mutex_unlock(&s->lock);
    lc_hist_snapshot(&s->h_ttft, &out->ttft);
    lc_hist_snapshot(&s->h_itl, &out->itl);
    lc_hist_snapshot(&s->h_e2e, &out->e2e);
    lc_hist_snapshot(&s->h_queue, &out->queue);
    model_exec_cp_stats(s->exec, &out->cp);
}

kv_pool_t *sched_kv(sched_t *s) { return s->kv; }

int64_t sched_kv_capacity(const sched_t *s) { return kv_pool_token_capacity(s->kv, s->cfg.prefill_chunk); }
const model_t *sched_model(const sched_t *s) { return s->model; }
const char *sched_device(const sched_t *s) { return model_exec_device(s->exec); }
const char *sched_failure(const sched_t *s) { return model_exec_failure(s->exec); }

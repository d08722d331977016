/* The executor front: picks the device, sizes the KV store, and forwards each
 * call to the CPU executor (forward.c) or the CUDA executor (exec_cuda.cu).
 * The only place outside the CUDA sources that knows whether the build has
 * CUDA. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h" // HAVE_CUDA
#include "common/config.h"
#include "common/log.h"
#include "common/status.h"
#include "kv/store.h"
#include "model/model_internal.h"
#include "model/sampler.h"
#include "ops/device.h"
#ifdef HAVE_CUDA
#include "model/exec_cuda.h"
#endif

struct model_exec {
    const model_t *m;
    model_cpu_t *cpu;
#ifdef HAVE_CUDA
    model_cuda_t *cuda;
#endif
    kv_config_t kvc;
    size_t block_bytes;
    char device[160];
};

#define CPU_BLOCK 16

/* The CUDA executor runs the llama and gemma3 architectures (exec_cuda.cu). */
static int gpu_runs(const model_t *m) {
    return m->hp.arch_id == MODEL_ARCH_LLAMA || m->hp.arch_id == MODEL_ARCH_GEMMA3;
}

int model_exec_resolve(const model_t *m, const char *spec, int *index, char *err, size_t errlen) {
    if (!spec || !*spec) spec = "cpu";
    int want;
    if (lc_device_spec_parse(spec, &want)) {
        snprintf(err, errlen, "unknown device '%s' (auto, cpu, cuda or cuda:N)", spec);
        return LC_EINVAL;
    }
    *index = -1;
    if (want == -1) return 0;
    char why[160] = "";
    const int n = lc_device_count(why, sizeof why);
    if (want == LC_DEVICE_AUTO) {
        if (n > 0 && gpu_runs(m))
            *index = 0;
        else if (n > 0)
            LC_INFO("device auto: the GPU executor does not run %s models yet; running on the CPU", m->hp.arch);
        else
            LC_INFO("device auto: no usable GPU (%s); running on the CPU", why[0] ? why : "none found");
        return 0;
    }
    if (n <= 0) {
        snprintf(err, errlen, "device %s requested but no GPU is usable: %s", spec, why[0] ? why : "none found");
        return LC_EUNSUPPORTED;
    }
    if (want >= n) {
        snprintf(err, errlen, "device %s requested but this machine has %d GPU(s)", spec, n);
        return LC_EUNSUPPORTED;
    }
    *index = want;
    return 0;
}

static int create_cpu(model_exec_t *e, const model_exec_opts_t *o, char *err, size_t errlen) {
    int bs = o->block_size > 0 ? o->block_size : CPU_BLOCK;
    kv_config_t kc = o->kv_keep_sliding ? model_kv_config(e->m, bs, 1) : model_kv_config_grouped(e->m, bs, 1);
    e->block_bytes = kv_store_block_bytes(&kc) + kv_block_bytes(&kc);
    int64_t nb = o->kv_blocks > 0 ? o->kv_blocks * kv_config_groups(&kc) : (int64_t)(o->kv_bytes / e->block_bytes);
    if (nb <= 0) {
        snprintf(err, errlen, "KV memory of %zu bytes holds no block of %zu bytes", o->kv_bytes, e->block_bytes);
        return LC_EINVAL;
    }
    kc.n_blocks = nb;
    int max_seqs = o->max_seqs > 0 ? o->max_seqs : o->max_batch_tokens;
    if (o->context_ranks > MODEL_CP_MAX_RANKS) {
        snprintf(err, errlen, "parallel.context = %d: at most %d ranks", o->context_ranks, MODEL_CP_MAX_RANKS);
        return LC_EINVAL;
    }
    if (o->context_devices && *o->context_devices) {
        snprintf(err, errlen, "parallel.devices = %s lists GPUs, and this model runs on the CPU", o->context_devices);
        return LC_EUNSUPPORTED;
    }
    if (!(e->cpu =
              model_cpu_create(e->m, &kc, o->max_batch_tokens, max_seqs, o->context_ranks, o->context_min_tokens))) {
        snprintf(err, errlen, "out of memory for a KV store of %lld blocks (%.1f MiB) and scratch for %d tokens",
                 (long long)nb, (double)nb * (double)e->block_bytes / (1024.0 * 1024.0), o->max_batch_tokens);
        return LC_ENOMEM;
    }
    e->kvc = kc;
    if (o->context_ranks > 1)
        snprintf(e->device, sizeof e->device, "cpu (context parallel: %d ranks from %lld tokens)", o->context_ranks,
                 (long long)(o->context_min_tokens > 0 ? o->context_min_tokens : 1));
    else
        snprintf(e->device, sizeof e->device, "cpu");
    return 0;
}

model_exec_t *model_exec_create(const model_t *m, const model_exec_opts_t *o, char *err, size_t errlen) {
    if (!m || !o || o->max_batch_tokens <= 0) {
        snprintf(err, errlen, "bad executor options");
        return NULL;
    }
    int index = -1;
    if (model_exec_resolve(m, o->device, &index, err, errlen)) return NULL;
    model_exec_t *e = calloc(1, sizeof *e);
    if (!e) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    e->m = m;
    int rc;
    if (index < 0) {
        rc = create_cpu(e, o, err, errlen);
    } else {
#ifdef HAVE_CUDA
        e->cuda = model_cuda_create(m, index, o, &e->kvc, &e->block_bytes, e->device, sizeof e->device, err, errlen);
        rc = e->cuda ? 0 : LC_EDEVICE;
#else
        snprintf(err, errlen, "device %s requested but this build has no CUDA (configure --with-cuda)", o->device);
        rc = LC_EUNSUPPORTED;
#endif
    }
    if (rc) {
        model_exec_destroy(e);
        return NULL;
    }
    return e;
}

void model_exec_destroy(model_exec_t *e) {
    if (!e) return;
    model_cpu_destroy(e->cpu);
#ifdef HAVE_CUDA
    model_cuda_destroy(e->cuda);
#endif
    free(e);
}

const char *model_exec_device(const model_exec_t *e) { return e->device; }
int model_exec_is_gpu(const model_exec_t *e) { return e->cpu == NULL; }

const char *model_exec_failure(const model_exec_t *e) {
#ifdef HAVE_CUDA
    if (e->cuda) return model_cuda_failure(e->cuda);
#endif
    (void)e;
    return NULL;
}
kv_config_t model_exec_kv_config(const model_exec_t *e) { return e->kvc; }
size_t model_exec_kv_block_bytes(const model_exec_t *e) { return e->block_bytes; }

int model_exec_bind(model_exec_t *e, kv_pool_t *kv) {
    const kv_config_t *c = kv_pool_config(kv);
    if (c->n_layers != e->kvc.n_layers || c->n_kv_heads != e->kvc.n_kv_heads || c->head_dim != e->kvc.head_dim ||
        c->block_size != e->kvc.block_size || c->n_blocks > e->kvc.n_blocks ||
        kv_config_groups(c) != kv_config_groups(&e->kvc) || c->n_full_groups != e->kvc.n_full_groups ||
        c->swa_keep != e->kvc.swa_keep)
        return LC_EINVAL;
    if (e->cpu) kv_pool_bind(kv, model_cpu_copy_block, e->cpu);
#ifdef HAVE_CUDA
    if (e->cuda) kv_pool_bind(kv, model_cuda_copy_block, e->cuda);
#endif
    return 0;
}

/* A plain temperature draw over one row, the host sampler's arithmetic. */
static int32_t cpu_draw(const float *l, int V, float temperature, double u) {
    const float invt = 1.0f / temperature;
    float mx = -INFINITY;
    int32_t last = -1;
    for (int i = 0; i < V; i++)
        if (!isnan(l[i]) && l[i] != -INFINITY) {
            const float v = l[i] * invt;
            mx = v > mx ? v : mx;
            last = i;
        }
    if (last < 0) return -1;
    double tot = 0;
    for (int i = 0; i < V; i++)
        if (!isnan(l[i]) && l[i] != -INFINITY) tot += expf(l[i] * invt - mx);
    const double target = u * tot;
    double acc = 0;
    for (int i = 0; i < V; i++)
        if (!isnan(l[i]) && l[i] != -INFINITY) {
            acc += expf(l[i] * invt - mx);
            if (target < acc) return i;
        }
    return last;
}

/* The CPU writes every logits row; the argmax or draw asked for comes from it. */
static void cpu_argmax(const model_t *m, const model_batch_t *b) {
    const int V = m->hp.n_vocab;
    for (int s = 0; s < b->n_seqs; s++) {
        const model_seq_t *q = &b->seqs[s];
        if (!q->argmax || q->logits_mode != MODEL_LOGITS_LAST) continue;
        if (q->draw_temperature > 0) {
            *q->argmax = cpu_draw(q->logits, V, q->draw_temperature, q->draw_u);
            continue;
        }
        *q->argmax = sampler_argmax(q->logits, V);
    }
}

int model_exec_forward(model_exec_t *e, kv_pool_t *kv, const model_batch_t *b) {
    if (!e || !kv || !b) return LC_EINVAL;
    if (e->cpu) {
        int rc = model_cpu_forward(e->cpu, b);
        if (!rc) model_cpu_cp_account(e->cpu, kv);
        if (!rc) cpu_argmax(e->m, b);
        return rc;
    }
#ifdef HAVE_CUDA
    int rc = model_cuda_forward(e->cuda, b);
    if (!rc) model_cuda_cp_account(e->cuda, kv);
    return rc;
#else
    return LC_EINVAL;
#endif
}

float *model_exec_logits_alloc(model_exec_t *e, size_t floats) {
#ifdef HAVE_CUDA
    if (e->cuda) return model_cuda_host_alloc(e->cuda, floats * sizeof(float));
#endif
    (void)e;
    return malloc(floats * sizeof(float));
}

void model_exec_logits_free(model_exec_t *e, float *p) {
    if (!p) return;
#ifdef HAVE_CUDA
    if (e->cuda) {
        model_cuda_host_free(e->cuda, p);
        return;
    }
#endif
    (void)e;
    free(p);
}

void model_exec_cp_stats(model_exec_t *e, model_exec_cp_stats_t *out) {
    if (e->cpu) {
        model_cpu_cp_stats(e->cpu, out);
        return;
    }
#ifdef HAVE_CUDA
    if (e->cuda) {
        model_cuda_cp_stats(e->cuda, out);
        return;
    }
#endif
    memset(out, 0, sizeof *out);
    out->ranks = 1;
}

int model_exec_set_attn_hook(model_exec_t *e, model_attn_hook_cb cb, void *ud) {
    if (!e->cpu) return LC_EUNSUPPORTED;
    model_cpu_set_attn_hook(e->cpu, cb, ud);
    return 0;
}

/* `lacuna complete`: batch completions through the real engine (scheduler,
 * paged KV, attention policy), without HTTP. Reads JSONL requests, writes
 * JSONL results in input order. It is what the accuracy and prefill
 * benchmarks drive (bench/accuracy/retrieval.py, bench/prefill_8k.sh).
 *
 * Input, one object per line:
 *   {"id": any, "prompt": "raw text"} or {"id": any, "messages": [{"role","content"}...]}
 *   optional: "max_tokens" (default -n), "sparse_attention": {"prefill", "decode",
 *   "gamma", "tau", "theta", "min_budget", "decode_budget", and for
 *   experiments AnchorAttention's geometry "anchor_init", "anchor_local",
 *   "anchor_lookback", "anchor_probe", which the HTTP API does not take} (overrides the
 *   command line's policy field by field).
 * Output, one object per line: id, text, finish, prompt_tokens,
 * completion_tokens, cached_tokens, prefill_method, decode_method,
 * prefill_density, decode_density (null when the phase ran nothing),
 * ttft_s, e2e_s. Greedy decoding. */
#include <cjson/cJSON.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/status.h"
#include "common/timeutil.h"
#include "model/chat.h"
#include "model/model.h"
#include "model/tokenizer.h"
#include "scheduler/sched.h"
#include "tools/cmds.h"

static void complete_usage(FILE *f) {
    fprintf(f, "usage: lacuna complete -m MODEL.gguf [-i IN.jsonl] [-o OUT.jsonl] [options]\n"
               "  -n N               max_tokens when a line has none (default 16)\n"
               "  -c N               requests in flight at once (default 1)\n"
               "  --prefill M        auto|dense|flexprefill|anchor|streaming (default auto)\n"
               "  --decode M         auto|dense|quest|tidal|streaming (default auto)\n"
               "  --gamma G --tau T --theta X --min-budget N --decode-budget N\n"
               "  --threshold N      auto: sparse prefill from N prompt tokens (default 16384)\n"
               "  --chunk N          prefill chunk per step (default: 512 on the CPU, 4096 on a GPU)\n"
               "  --max-batch N      tokens per step (default: 2048 on the CPU, 8192 on a GPU)\n"
               "  --window N         StreamingLLM window (default 1024)\n"
               "  --no-prefix-cache\n"
               "  --device D         cpu (default), cuda[:N] or auto\n");
}

/* ---- policy fields --------------------------------------------------------------------- */
static int parse_prefill(const char *s, int *out) {
    if (strcmp(s, "auto") == 0) return *out = SCHED_METHOD_AUTO, 0;
    attn_prefill_method_t m;
    if (attn_prefill_method_parse(s, &m)) return LC_EINVAL;
    return *out = (int)m, 0;
}
static int parse_decode(const char *s, int *out) {
    if (strcmp(s, "auto") == 0) return *out = SCHED_METHOD_AUTO, 0;
    attn_decode_method_t m;
    if (attn_decode_method_parse(s, &m)) return LC_EINVAL;
    return *out = (int)m, 0;
}

/* Applies a request's "sparse_attention" object over the defaults. */
static int apply_spec(const cJSON *o, sched_attn_spec_t *sp) {
    const cJSON *v;
    if (!cJSON_IsObject(o)) return LC_EINVAL;
    if ((v = cJSON_GetObjectItem(o, "prefill")) && (!cJSON_IsString(v) || parse_prefill(v->valuestring, &sp->prefill)))
        return LC_EINVAL;
    if ((v = cJSON_GetObjectItem(o, "decode")) && (!cJSON_IsString(v) || parse_decode(v->valuestring, &sp->decode)))
        return LC_EINVAL;
    if ((v = cJSON_GetObjectItem(o, "gamma")) && cJSON_IsNumber(v)) sp->gamma = (float)v->valuedouble;
    if ((v = cJSON_GetObjectItem(o, "tau")) && cJSON_IsNumber(v)) sp->tau = (float)v->valuedouble;
    if ((v = cJSON_GetObjectItem(o, "theta")) && cJSON_IsNumber(v)) sp->theta = (float)v->valuedouble;
    if ((v = cJSON_GetObjectItem(o, "min_budget")) && cJSON_IsNumber(v)) sp->min_budget = v->valueint;
    if ((v = cJSON_GetObjectItem(o, "decode_budget")) && cJSON_IsNumber(v)) sp->decode_budget = v->valueint;
    if ((v = cJSON_GetObjectItem(o, "anchor_init")) && cJSON_IsNumber(v)) sp->anchor_init = v->valueint;
    if ((v = cJSON_GetObjectItem(o, "anchor_local")) && cJSON_IsNumber(v)) sp->anchor_local = v->valueint;
    if ((v = cJSON_GetObjectItem(o, "anchor_lookback")) && cJSON_IsNumber(v)) sp->anchor_lookback = v->valueint;
    if ((v = cJSON_GetObjectItem(o, "anchor_probe")) && cJSON_IsNumber(v)) sp->anchor_probe = (float)v->valuedouble;
    return 0;
}

/* ---- one request ------------------------------------------------------------------------ */
typedef struct {
    cJSON *in; // parsed input line (owned)
    sched_req_t *r;
    tok_ids_t ids;
    char *text; // generated text (malloc'd)
    size_t len, cap;
    int n_gen, done;
    sched_finish_t finish;
    const char *error; // why the engine refused it (the line says so; the batch goes on)
} job_t;

static int append(job_t *j, const char *s, size_t n) {
    if (j->len + n + 1 > j->cap) {
        size_t cap = (j->len + n + 1) * 2;
        char *t = realloc(j->text, cap);
        if (!t) return LC_ENOMEM;
        j->text = t, j->cap = cap;
    }
    memcpy(j->text + j->len, s, n);
    j->len += n;
    j->text[j->len] = 0;
    return 0;
}

static void drain(job_t *j) {
    sched_event_t ev[64];
    int k;
    while ((k = sched_req_poll(j->r, ev, 64)) > 0)
        for (int i = 0; i < k; i++) {
            if (ev[i].kind == SCHED_EV_TOKEN) {
                j->n_gen++;
                append(j, ev[i].text, ev[i].text_len);
            } else if (ev[i].kind == SCHED_EV_FINISH) {
                j->finish = ev[i].finish;
            } else if (ev[i].kind == SCHED_EV_DONE) {
                j->done = 1;
            }
            sched_event_clear(&ev[i]);
        }
}

static cJSON *num_or_null(double x) { return isnan(x) ? cJSON_CreateNull() : cJSON_CreateNumber(x); }

static void write_result(FILE *out, job_t *j) {
    cJSON *o = cJSON_CreateObject();
    cJSON *id = cJSON_GetObjectItem(j->in, "id");
    cJSON_AddItemToObject(o, "id", id ? cJSON_Duplicate(id, 1) : cJSON_CreateNull());
    if (j->error) {
        cJSON_AddStringToObject(o, "error", j->error);
        cJSON_AddNumberToObject(o, "prompt_tokens", (double)j->ids.n);
        goto print;
    }
    sched_usage_t u;
    sched_req_usage(j->r, &u);
    cJSON_AddStringToObject(o, "text", j->text ? j->text : "");
    cJSON_AddStringToObject(o, "finish", sched_finish_name(j->finish));
    cJSON_AddNumberToObject(o, "prompt_tokens", u.prompt_tokens);
    cJSON_AddNumberToObject(o, "completion_tokens", u.completion_tokens);
    cJSON_AddNumberToObject(o, "cached_tokens", u.cached_tokens);
    cJSON_AddStringToObject(o, "prefill_method", attn_prefill_method_name((attn_prefill_method_t)u.prefill_method));
    cJSON_AddStringToObject(o, "decode_method", attn_decode_method_name((attn_decode_method_t)u.decode_method));
    cJSON_AddItemToObject(o, "prefill_density", num_or_null(u.prefill_density));
    cJSON_AddItemToObject(o, "decode_density", num_or_null(u.decode_density));
    cJSON_AddNumberToObject(o, "ttft_s", u.ttft_s);
    cJSON_AddNumberToObject(o, "e2e_s", u.e2e_s);
print:;
    char *s = cJSON_PrintUnformatted(o);
    if (s) fprintf(out, "%s\n", s);
    fflush(out);
    free(s);
    cJSON_Delete(o);
}

/* Tokenizes a line's prompt: raw text, or chat messages with the model's template. */
static int encode(const tok_t *tok, const chat_template_t *ct, const cJSON *in, tok_ids_t *ids) {
    const cJSON *p = cJSON_GetObjectItem(in, "prompt"), *msgs = cJSON_GetObjectItem(in, "messages");
    if (cJSON_IsString(p)) return tok_encode(tok, p->valuestring, strlen(p->valuestring), tok_add_bos(tok), 1, ids);
    if (!cJSON_IsArray(msgs)) return LC_EINVAL;
    int n = cJSON_GetArraySize(msgs);
    chat_msg_t *m = calloc((size_t)(n ? n : 1), sizeof *m);
    if (!m) return LC_ENOMEM;
    for (int i = 0; i < n; i++) {
        const cJSON *e = cJSON_GetArrayItem(msgs, i);
        const cJSON *r = cJSON_GetObjectItem(e, "role"), *c = cJSON_GetObjectItem(e, "content");
        m[i].role = cJSON_IsString(r) ? r->valuestring : "user";
        m[i].content = cJSON_IsString(c) ? c->valuestring : "";
    }
    char *text = NULL, err[128];
    int rc = chat_render(ct, m, (size_t)n, 1, &text, err, sizeof err);
    free(m);
    if (rc) return rc;
    rc = tok_encode(tok, text, strlen(text), chat_renders_bos(ct) ? 0 : tok_add_bos(tok), 1, ids);
    free(text);
    return rc;
}

/* The model's chat template, or ChatML when it has none we know. */
static chat_template_t chat_template_of(const model_t *m) {
    chat_template_t ct;
    if (model_chat_template(m))
        ct = *model_chat_template(m);
    else
        chat_template_from_name("chatml", &ct);
    return ct;
}

/* ---- the input -------------------------------------------------------------------------- */
/* Reads and tokenizes every line first: jobs are few (benchmarks), prompts
 * long. *max_need: the most tokens one request can reach (prompt +
 * max_tokens). 0, or a status after a message naming the line. */
static int read_jobs(FILE *in, const tok_t *tok, const chat_template_t *ct, int max_tokens, job_t **jobs_out,
                     int *n_out, int64_t *max_need) {
    job_t *jobs = NULL;
    int n_jobs = 0, cap = 0, rc = 0;
    char *line = NULL;
    size_t lcap = 0;
    ssize_t ll;
    *max_need = 0;
    while ((ll = getline(&line, &lcap, in)) > 0) {
        if (ll <= 1) continue;
        if (n_jobs == cap) {
            cap = cap ? cap * 2 : 16;
            job_t *nj = realloc(jobs, (size_t)cap * sizeof *nj);
            if (!nj) {
                rc = LC_ENOMEM;
                break;
            }
            jobs = nj;
        }
        job_t *j = &jobs[n_jobs];
        memset(j, 0, sizeof *j);
        if (!(j->in = cJSON_Parse(line)) || encode(tok, ct, j->in, &j->ids) || j->ids.n == 0) {
            fprintf(stderr, "lacuna complete: line %d: bad request\n", n_jobs + 1);
            cJSON_Delete(j->in);
            tok_ids_free(&j->ids);
            rc = LC_EINVAL;
            break;
        }
        n_jobs++;
        const cJSON *mt = cJSON_GetObjectItem(j->in, "max_tokens");
        int64_t need = (int64_t)j->ids.n + (cJSON_IsNumber(mt) ? mt->valueint : max_tokens);
        if (need > *max_need) *max_need = need;
    }
    free(line);
    *jobs_out = jobs;
    *n_out = n_jobs;
    return rc;
}

static void free_jobs(job_t *jobs, int n_jobs) {
    for (int i = 0; i < n_jobs; i++) {
        if (jobs[i].r) sched_req_release(jobs[i].r);
        cJSON_Delete(jobs[i].in);
        tok_ids_free(&jobs[i].ids);
        free(jobs[i].text);
    }
    free(jobs);
}

/* ---- the engine ------------------------------------------------------------------------- */
/* Submits job j: greedy, the line's max_tokens (else the default) and its
 * sparse_attention over the command line's policy. A request the engine
 * refuses gets j->error and is done (its line reports it). */
static void submit(sched_t *s, job_t *j, const sched_attn_spec_t *spec, int max_tokens) {
    sched_params_t p;
    memset(&p, 0, sizeof p);
    p.prompt = j->ids.ids;
    p.n_prompt = (int)j->ids.n;
    p.n_choices = 1;
    const cJSON *mt = cJSON_GetObjectItem(j->in, "max_tokens");
    p.max_tokens = cJSON_IsNumber(mt) ? mt->valueint : max_tokens;
    p.logprobs = p.prompt_logprobs = -1;
    sampler_params_default(&p.sampling);
    p.sampling.temperature = 0;
    p.attn = *spec;
    const cJSON *sa = cJSON_GetObjectItem(j->in, "sparse_attention");
    int st = 0;
    if (sa && apply_spec(sa, &p.attn))
        j->error = "bad sparse_attention";
    else if (!(j->r = sched_req_create(&p, &st)) || (st = sched_submit(s, j->r)))
        j->error = lc_strerror(st);
    if (j->error) j->done = 1;
}

/* Steps the engine with up to conc requests in flight, writing each result
 * in input order as soon as it and those before it are done. Returns 0 or
 * the engine's status; *n_failed: requests the engine refused. */
static int run_jobs(sched_t *s, job_t *jobs, int n_jobs, int conc, const sched_attn_spec_t *spec, int max_tokens,
                    FILE *out, int *n_written, int *n_failed) {
    int next = 0, written = 0, rc = 0;
    *n_failed = 0;
    while (written < n_jobs) {
        int inflight = 0;
        for (int i = written; i < next; i++) inflight += !jobs[i].done;
        for (; next < n_jobs && inflight < conc; next++) {
            submit(s, &jobs[next], spec, max_tokens);
            if (jobs[next].error) {
                fprintf(stderr, "lacuna complete: request %d: %s\n", next + 1, jobs[next].error);
                ++*n_failed;
            } else {
                inflight++;
            }
        }
        int n = sched_step(s);
        if (n < 0) {
            rc = n;
            break;
        }
        for (int i = written; i < next; i++)
            if (!jobs[i].done) drain(&jobs[i]);
        while (written < next && jobs[written].done) write_result(out, &jobs[written++]);
    }
    *n_written = written;
    return rc;
}

/* ---- the command ------------------------------------------------------------------------- */
typedef struct {
    const char *model_path, *in_path, *out_path;
    int max_tokens, conc;
    sched_config_t cfg;
    sched_attn_spec_t spec;
} complete_args_t;

/* Returns -1 to go on, else the exit status (0 after --help, 2 on bad usage). */
static int parse_args(int argc, char **argv, complete_args_t *a) {
    memset(a, 0, sizeof *a);
    a->max_tokens = 16;
    a->conc = 1;
    int prefix = 1;
    sched_config_default(&a->cfg);
    sched_attn_spec_default(&a->spec);
    enum {
        O_PREFILL = 256,
        O_DECODE,
        O_GAMMA,
        O_TAU,
        O_THETA,
        O_MINB,
        O_DECB,
        O_THR,
        O_CHUNK,
        O_BATCH,
        O_WIN,
        O_NOPC,
        O_DEVICE
    };
    static const struct option opts[] = {{"model", required_argument, 0, 'm'},
                                         {"input", required_argument, 0, 'i'},
                                         {"output", required_argument, 0, 'o'},
                                         {"prefill", required_argument, 0, O_PREFILL},
                                         {"decode", required_argument, 0, O_DECODE},
                                         {"gamma", required_argument, 0, O_GAMMA},
                                         {"tau", required_argument, 0, O_TAU},
                                         {"theta", required_argument, 0, O_THETA},
                                         {"min-budget", required_argument, 0, O_MINB},
                                         {"decode-budget", required_argument, 0, O_DECB},
                                         {"threshold", required_argument, 0, O_THR},
                                         {"chunk", required_argument, 0, O_CHUNK},
                                         {"max-batch", required_argument, 0, O_BATCH},
                                         {"window", required_argument, 0, O_WIN},
                                         {"no-prefix-cache", no_argument, 0, O_NOPC},
                                         {"device", required_argument, 0, O_DEVICE},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    int o;
    optind = 1;
    while ((o = getopt_long(argc, argv, "m:i:o:n:c:h", opts, NULL)) != -1) {
        switch (o) {
        case 'm': a->model_path = optarg; break;
        case 'i': a->in_path = optarg; break;
        case 'o': a->out_path = optarg; break;
        case 'n': a->max_tokens = atoi(optarg); break;
        case 'c': a->conc = atoi(optarg); break;
        case O_PREFILL:
            if (parse_prefill(optarg, &a->spec.prefill)) goto bad;
            break;
        case O_DECODE:
            if (parse_decode(optarg, &a->spec.decode)) goto bad;
            break;
        case O_GAMMA: a->spec.gamma = (float)atof(optarg); break;
        case O_TAU: a->spec.tau = (float)atof(optarg); break;
        case O_THETA: a->spec.theta = (float)atof(optarg); break;
        case O_MINB: a->spec.min_budget = atoi(optarg); break;
        case O_DECB: a->spec.decode_budget = atoi(optarg); break;
        case O_THR: a->cfg.sparse_prefill_min_tokens = atoi(optarg); break;
        case O_CHUNK: a->cfg.prefill_chunk = atoi(optarg); break;
        case O_BATCH: a->cfg.max_batch_tokens = atoi(optarg); break;
        case O_WIN: a->cfg.attn_default.window_tokens = atoi(optarg); break;
        case O_NOPC: prefix = 0; break;
        case O_DEVICE:
            if (strlen(optarg) >= sizeof a->cfg.device) goto bad;
            snprintf(a->cfg.device, sizeof a->cfg.device, "%s", optarg);
            break;
        case 'h': complete_usage(stdout); return 0;
        default: goto bad;
        }
    }
    /* 0: the device's default (sched_create) */
    if (!a->model_path || optind != argc || a->max_tokens < 0 || a->conc < 1 || a->cfg.prefill_chunk < 0 ||
        a->cfg.max_batch_tokens < 0 ||
        (a->cfg.max_batch_tokens > 0 && a->cfg.prefill_chunk > 0 && a->cfg.max_batch_tokens < a->cfg.prefill_chunk))
        goto bad;
    a->cfg.enable_prefix_cache = prefix;
    a->cfg.max_running = a->conc;
    return -1;
bad:
    complete_usage(stderr);
    return 2;
}

int cmd_complete(int argc, char **argv) {
    complete_args_t a;
    int ret = parse_args(argc, argv, &a);
    if (ret >= 0) return ret;
    FILE *in = a.in_path ? fopen(a.in_path, "r") : stdin, *out = a.out_path ? fopen(a.out_path, "w") : stdout;
    model_t *m = NULL;
    job_t *jobs = NULL;
    int n_jobs = 0, rc = 0;
    char err[512];
    if (!in || !out) {
        fprintf(stderr, "lacuna complete: cannot open %s\n", !in ? a.in_path : a.out_path);
        rc = LC_EIO;
        goto out;
    }
    if (!(m = model_load(a.model_path, err, sizeof err))) {
        fprintf(stderr, "lacuna complete: %s\n", err);
        rc = LC_EINVAL;
        goto out;
    }
    const chat_template_t ct = chat_template_of(m);
    int64_t max_need;
    if ((rc = read_jobs(in, model_tok(m), &ct, a.max_tokens, &jobs, &n_jobs, &max_need))) goto out;
    /* A pool for the requests in flight plus a spare request's worth (prefix cache). */
    /* Pages of 16 on the CPU; 64 where a GPU may run it (its kernels take 64 or 128). */
    if (a.cfg.block_size <= 0) a.cfg.block_size = strcmp(a.cfg.device, "cpu") == 0 ? 16 : 64;
    a.cfg.kv_blocks = (int64_t)(a.conc + 1) * ((max_need + a.cfg.block_size - 1) / a.cfg.block_size + 2);
    sched_t *s = sched_create(m, &a.cfg, err, sizeof err);
    if (!s) {
        fprintf(stderr, "lacuna complete: %s\n", err);
        rc = LC_ENOMEM;
        goto out;
    }
    double t0 = lc_now_s();
    int written = 0, n_failed = 0;
    rc = run_jobs(s, jobs, n_jobs, a.conc, &a.spec, a.max_tokens, out, &written, &n_failed);
    fprintf(stderr, "lacuna complete: %d requests in %.2f s (%d refused)\n", written, lc_now_s() - t0, n_failed);
    sched_destroy(s);
out:
    free_jobs(jobs, n_jobs);
    model_free(m);
    if (in && in != stdin) fclose(in);
    if (out && out != stdout) fclose(out);
    return rc ? 1 : 0;
}

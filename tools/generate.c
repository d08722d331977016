/* `lacuna generate`: one prompt through the model on the CPU, streaming the
 * continuation to stdout and the prefill/decode speeds to stderr. It drives
 * the model executor, the KV pool and the sampler directly (a single-sequence
 * engine), which makes it the quickest end-to-end check of a model and the
 * CPU benchmark's workhorse. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/status.h"
#include "common/timeutil.h"
#include "model/chat.h"
#include "model/exec.h"
#include "model/model.h"
#include "model/sampler.h"
#include "model/tokenizer.h"
#include "tools/cmds.h"

#define GEN_CHUNK 512 // prefill tokens per forward call

static void gen_usage(FILE *f) {
    fprintf(f, "usage: lacuna generate -m MODEL.gguf (-p TEXT | -f FILE | --chat TEXT) [-n N] [--temp T]\n"
               "                       [--top-k K] [--top-p P] [--min-p P] [--seed S] [--system TEXT] [--ignore-eos]\n"
               "  -p TEXT        raw prompt (control tokens written in it are recognised)\n"
               "  -f FILE        raw prompt read from FILE\n"
               "  --chat TEXT    a user message, rendered with the model's chat template\n"
               "  --system TEXT  system message for --chat (default: the template's own)\n"
               "  -n N           tokens to generate (default 128)\n"
               "  --temp T       temperature, 0 = greedy (default 0.8); --top-k, --top-p, --min-p as OpenAI/vLLM\n"
               "  --ignore-eos   keep generating past the end-of-sequence token (benchmarks)\n"
               "  --device DEV   auto | cpu | cuda | cuda:N (default auto)\n");
}

static char *slurp(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    size_t cap = 1 << 16, n = 0;
    char *b = malloc(cap + 1);
    while (b) {
        n += fread(b + n, 1, cap - n, f);
        if (n < cap) break;
        char *nb = realloc(b, (cap *= 2) + 1);
        if (!nb) free(b);
        b = nb;
    }
    fclose(f);
    if (b) b[n] = 0;
    *len = n;
    return b;
}

/* ---- the command line -------------------------------------------------------------- */
typedef struct {
    const char *model_path, *prompt, *file, *chat, *system, *device;
    int n_gen, ignore_eos;
    sampler_params_t sp;
} gen_args_t;

/* Returns -1 to go on, else the exit status (0 after --help, 2 on bad usage). */
static int parse_args(int argc, char **argv, gen_args_t *a) {
    memset(a, 0, sizeof *a);
    a->n_gen = 128;
    a->device = "auto";
    sampler_params_default(&a->sp);
    a->sp.temperature = 0.8f;
    a->sp.seed = 42;
    static const struct option lo[] = {
        {"model", required_argument, 0, 'm'},  {"prompt", required_argument, 0, 'p'},
        {"file", required_argument, 0, 'f'},   {"chat", required_argument, 0, 'c'},
        {"system", required_argument, 0, 'S'}, {"temp", required_argument, 0, 't'},
        {"top-k", required_argument, 0, 'k'},  {"top-p", required_argument, 0, 'P'},
        {"min-p", required_argument, 0, 'M'},  {"seed", required_argument, 0, 's'},
        {"ignore-eos", no_argument, 0, 'i'},   {"device", required_argument, 0, 'D'},
        {"help", no_argument, 0, 'h'},         {0, 0, 0, 0},
    };
    optind = 1;
    int ch;
    while ((ch = getopt_long(argc, argv, "m:p:f:n:h", lo, NULL)) != -1) {
        switch (ch) {
        case 'm': a->model_path = optarg; break;
        case 'p': a->prompt = optarg; break;
        case 'f': a->file = optarg; break;
        case 'c': a->chat = optarg; break;
        case 'S': a->system = optarg; break;
        case 'n': a->n_gen = atoi(optarg); break;
        case 't': a->sp.temperature = strtof(optarg, NULL); break;
        case 'k': a->sp.top_k = atoi(optarg); break;
        case 'P': a->sp.top_p = strtof(optarg, NULL); break;
        case 'M': a->sp.min_p = strtof(optarg, NULL); break;
        case 's': a->sp.seed = strtoull(optarg, NULL, 0); break;
        case 'i': a->ignore_eos = 1; break;
        case 'D': a->device = optarg; break;
        case 'h': gen_usage(stdout); return 0;
        default: gen_usage(stderr); return 2;
        }
    }
    if (!a->model_path || (!!a->prompt + !!a->file + !!a->chat) != 1 || optind != argc || a->n_gen < 0) {
        gen_usage(stderr);
        return 2;
    }
    return -1;
}

/* ---- the prompt ------------------------------------------------------------------------ */
/* The --chat message rendered with the model's template (ChatML when the
 * model has none we know). *renders_bos: the text starts with BOS already. */
static char *render_chat(const model_t *m, const char *system, const char *user, int *renders_bos) {
    chat_template_t ct;
    if (model_chat_template(m)) {
        ct = *model_chat_template(m);
    } else {
        fprintf(stderr, "lacuna generate: the model has no chat template we know; using ChatML\n");
        chat_template_from_name("chatml", &ct);
    }
    chat_msg_t msgs[2];
    size_t n = 0;
    if (system) msgs[n++] = (chat_msg_t){"system", system};
    msgs[n++] = (chat_msg_t){"user", user};
    char *out = NULL, err[256];
    if (chat_render(&ct, msgs, n, 1, &out, err, sizeof err)) fprintf(stderr, "lacuna generate: %s\n", err);
    *renders_bos = chat_renders_bos(&ct);
    return out;
}

/* The prompt's tokens: -p's text, -f's file or the rendered --chat message.
 * 0, or 1 after a message on stderr. */
static int prompt_tokens(const gen_args_t *a, const model_t *m, tok_ids_t *ids) {
    const tok_t *tok = model_tok(m);
    size_t len = 0;
    int add_bos = tok_add_bos(tok);
    char *text = NULL;
    if (a->chat) {
        int renders_bos = 0;
        text = render_chat(m, a->system, a->chat, &renders_bos);
        if (renders_bos) add_bos = 0;
        len = text ? strlen(text) : 0;
    } else if (a->file) {
        text = slurp(a->file, &len);
        if (!text) fprintf(stderr, "lacuna generate: cannot read %s\n", a->file);
    } else {
        text = strdup(a->prompt);
        len = text ? strlen(text) : 0;
    }
    if (!text) return 1;
    int rc = tok_encode(tok, text, len, add_bos, 1, ids) || ids->n == 0;
    free(text);
    if (rc) fprintf(stderr, "lacuna generate: cannot tokenize the prompt\n");
    return rc;
}

/* ---- one sequence through the model ----------------------------------------------------- */
typedef struct {
    model_exec_t *ctx; // the executor, for GEN_CHUNK-token prefill chunks
    kv_pool_t *kv;
    kv_seq_t seq;
    float *logits;      // (n_vocab): the last position's
    int64_t prompt_end; // the prompt's length (model_seq_t's prompt_end)
} gen_seq_t;

/* Runs n tokens at positions pos .. pos+n-1 (generated: tokens the model
 * produced); logits of the last one when `last`. 0 or a status. */
static int forward(gen_seq_t *g, const int32_t *tokens, int n, int64_t pos, int generated, int last) {
    model_seq_t s = {.tok0 = 0,
                     .n_tok = n,
                     .pos0 = pos,
                     .kv = &g->seq,
                     .generated = generated,
                     .prompt_end = generated ? 0 : g->prompt_end,
                     .logits_mode = last ? MODEL_LOGITS_LAST : MODEL_LOGITS_NONE,
                     .logits = g->logits};
    model_batch_t b = {.n_tokens = n, .tokens = tokens, .n_seqs = 1, .seqs = &s};
    int rc = kv_seq_prepare_write(g->kv, &g->seq, pos, pos + n);
    if (!rc) rc = model_exec_forward(g->ctx, g->kv, &b);
    if (!rc) {
        g->seq.n_tokens = pos + n;
        kv_seq_trim(g->kv, &g->seq); // sliding-window blocks no later step reads
    }
    return rc;
}

/* The prompt in chunks of `chunk` tokens; leaves its last logits. */
static int prefill(gen_seq_t *g, const tok_ids_t *ids, int chunk) {
    const int n_prompt = (int)ids->n;
    g->prompt_end = n_prompt;
    for (int p = 0; p < n_prompt; p += chunk) {
        int n = n_prompt - p < chunk ? n_prompt - p : chunk;
        int rc = forward(g, ids->ids + p, n, p, 0, p + n == n_prompt);
        if (rc) return rc;
    }
    return 0;
}

/* Samples up to n_gen tokens, streaming their text to stdout, each fed back
 * as a decode step. Returns the number of decode steps run, or a status. */
static int decode(gen_seq_t *g, const gen_args_t *a, const tok_t *tok, sampler_t *smp, tok_stream_t *ts, int n_prompt) {
    const int32_t eos = tok_eos(tok), eot = tok_eot(tok);
    int n_done = 0, n_decode = 0;
    for (;;) {
        sampler_result_t r;
        if (sampler_sample(smp, g->logits, NULL, 0, &r)) break;
        sampler_accept(smp, r.token);
        n_done++;
        if (!a->ignore_eos && (r.token == eos || r.token == eot)) break;
        const char *piece;
        size_t plen;
        if (!tok_stream_push(ts, r.token, &piece, &plen) && plen) {
            fwrite(piece, 1, plen, stdout);
            fflush(stdout);
        }
        if (n_done >= a->n_gen) break;
        int rc = forward(g, &r.token, 1, n_prompt + n_done - 1, 1, 1);
        if (rc) return rc;
        n_decode++;
    }
    return n_decode;
}

/* ---- the command ------------------------------------------------------------------------ */
int cmd_generate(int argc, char **argv) {
    gen_args_t a;
    int ret = parse_args(argc, argv, &a);
    if (ret >= 0) return ret;
    ret = 1;
    char err[512];
    sampler_t *smp = NULL;
    tok_stream_t *ts = NULL;
    tok_ids_t ids = {0};
    gen_seq_t g = {0};
    kv_seq_init(&g.seq);

    double t0 = lc_now_s();
    model_t *m = model_load(a.model_path, err, sizeof err);
    if (!m) {
        fprintf(stderr, "lacuna generate: %s\n", err);
        return 1;
    }
    const model_hparams_t *hp = model_hparams(m);
    const tok_t *tok = model_tok(m);
    fprintf(stderr, "lacuna generate: %s: %d layers, embd %d, vocab %d, loaded in %.2f s\n", hp->name, hp->n_layers,
            hp->n_embd, hp->n_vocab, lc_now_s() - t0);
    if (prompt_tokens(&a, m, &ids)) goto out;
    const int n_prompt = (int)ids.n;
    const int64_t n_total = n_prompt + a.n_gen;
    if (n_total > hp->n_ctx_train)
        fprintf(stderr, "lacuna generate: warning: %lld tokens exceed the trained context of %d\n", (long long)n_total,
                hp->n_ctx_train);

    const int chunk = n_prompt < GEN_CHUNK ? n_prompt : GEN_CHUNK;
    model_exec_opts_t eo = {
        .device = a.device, .max_batch_tokens = chunk, .max_seqs = 1, .kv_blocks = (n_total + 15) / 16 + 1};
    if (!(g.ctx = model_exec_create(m, &eo, err, sizeof err))) {
        fprintf(stderr, "lacuna generate: %s\n", err);
        goto out;
    }
    kv_config_t cfg = model_exec_kv_config(g.ctx);
    cfg.n_blocks = ((n_total + cfg.block_size - 1) / cfg.block_size + 1) * kv_config_groups(&cfg);
    if ((g.kv = kv_pool_create(&cfg))) model_exec_bind(g.ctx, g.kv);
    g.logits = malloc((size_t)hp->n_vocab * sizeof *g.logits);
    smp = sampler_create(&a.sp, hp->n_vocab, ids.ids, n_prompt);
    ts = tok_stream_create(tok, 1);
    if (!g.ctx || !g.kv || !g.logits || !smp || !ts || kv_seq_reserve(g.kv, &g.seq, n_total)) {
        fprintf(stderr, "lacuna generate: out of memory\n");
        goto out;
    }

    double tp0 = lc_now_s();
    int rc = prefill(&g, &ids, chunk);
    if (rc) {
        fprintf(stderr, "lacuna generate: forward: %s\n", lc_strerror(rc));
        goto out;
    }
    double tp1 = lc_now_s();
    int n_decode = decode(&g, &a, tok, smp, ts, n_prompt);
    if (n_decode < 0) {
        fprintf(stderr, "\nlacuna generate: forward: %s\n", lc_strerror(n_decode));
        goto out;
    }
    double tp2 = lc_now_s();
    const char *piece;
    size_t plen;
    if (!tok_stream_flush(ts, &piece, &plen) && plen) fwrite(piece, 1, plen, stdout);
    printf("\n");
    fflush(stdout);
    fprintf(stderr, "prefill: %d tokens in %.3f s (%.1f tok/s); decode: %d tokens in %.3f s (%.1f tok/s)\n", n_prompt,
            tp1 - tp0, n_prompt / (tp1 - tp0), n_decode, tp2 - tp1, n_decode ? n_decode / (tp2 - tp1) : 0.0);
    ret = 0;
out:
    if (g.kv) kv_seq_release(g.kv, &g.seq);
    tok_stream_destroy(ts);
    sampler_destroy(smp);
    kv_pool_destroy(g.kv);
    model_exec_destroy(g.ctx);
    free(g.logits);
    tok_ids_free(&ids);
    model_free(m);
    return ret;
}

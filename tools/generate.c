/* `lacuna generate`: one prompt through the model on the CPU, streaming the
 * continuation to stdout and the prefill/decode speeds to stderr. It drives
 * model_forward, the KV pool and the sampler directly (a single-sequence
 * engine), which makes it the quickest end-to-end check of a model and the
 * CPU benchmark's workhorse. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/status.h"
#include "common/timeutil.h"
#include "model/chat.h"
#include "model/gguf.h"
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
               "  --ignore-eos   keep generating past the end-of-sequence token (benchmarks)\n");
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

/* Renders the chat prompt with the template the GGUF declares. */
static char *render_chat(const char *path, const char *system, const char *user, int *renders_bos) {
    char err[256];
    gguf_ctx_t *g = gguf_open(path, err, sizeof err);
    if (!g) return NULL;
    gguf_str_t ts = {0};
    chat_template_t ct;
    int have = gguf_get_str(g, "tokenizer.chat_template", &ts) == 0;
    char *out = NULL;
    if (chat_template_detect(have ? ts.ptr : NULL, have ? (size_t)ts.len : 0, &ct, err, sizeof err) != 0) {
        fprintf(stderr, "lacuna generate: %s; using ChatML\n", err);
        chat_template_from_name("chatml", &ct);
    }
    chat_msg_t msgs[2];
    size_t n = 0;
    if (system) msgs[n++] = (chat_msg_t){"system", system};
    msgs[n++] = (chat_msg_t){"user", user};
    if (chat_render(&ct, msgs, n, 1, &out, err, sizeof err)) fprintf(stderr, "lacuna generate: %s\n", err);
    *renders_bos = chat_renders_bos(&ct);
    gguf_close(g);
    return out;
}

int cmd_generate(int argc, char **argv) {
    const char *model_path = NULL, *prompt = NULL, *file = NULL, *chat = NULL, *system = NULL;
    int n_gen = 128, ignore_eos = 0;
    sampler_params_t sp;
    sampler_params_default(&sp);
    sp.temperature = 0.8f;
    sp.seed = 42;
    static const struct option lo[] = {
        {"model", required_argument, 0, 'm'},
        {"prompt", required_argument, 0, 'p'},
        {"file", required_argument, 0, 'f'},
        {"chat", required_argument, 0, 'c'},
        {"system", required_argument, 0, 'S'},
        {"temp", required_argument, 0, 't'},
        {"top-k", required_argument, 0, 'k'},
        {"top-p", required_argument, 0, 'P'},
        {"min-p", required_argument, 0, 'M'},
        {"seed", required_argument, 0, 's'},
        {"ignore-eos", no_argument, 0, 'i'},
        {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    optind = 1;
    int ch;
    while ((ch = getopt_long(argc, argv, "m:p:f:n:h", lo, NULL)) != -1) {
        switch (ch) {
        case 'm': model_path = optarg; break;
        case 'p': prompt = optarg; break;
        case 'f': file = optarg; break;
        case 'c': chat = optarg; break;
        case 'S': system = optarg; break;
        case 'n': n_gen = atoi(optarg); break;
        case 't': sp.temperature = strtof(optarg, NULL); break;
        case 'k': sp.top_k = atoi(optarg); break;
        case 'P': sp.top_p = strtof(optarg, NULL); break;
        case 'M': sp.min_p = strtof(optarg, NULL); break;
        case 's': sp.seed = strtoull(optarg, NULL, 0); break;
        case 'i': ignore_eos = 1; break;
        case 'h': gen_usage(stdout); return 0;
        default: gen_usage(stderr); return 2;
        }
    }
    if (!model_path || (!!prompt + !!file + !!chat) != 1 || optind != argc || n_gen < 0) {
        gen_usage(stderr);
        return 2;
    }

    int ret = 1;
    char err[512];
    char *text = NULL;
    float *logits = NULL;
    model_exec_t *ctx = NULL;
    kv_pool_t *kv = NULL;
    sampler_t *smp = NULL;
    tok_stream_t *ts = NULL;
    tok_ids_t ids = {0};
    kv_seq_t seq;
    kv_seq_init(&seq);

    double t0 = lc_now_s();
    model_t *m = model_load(model_path, err, sizeof err);
    if (!m) {
        fprintf(stderr, "lacuna generate: %s\n", err);
        return 1;
    }
    const model_hparams_t *hp = model_hparams(m);
    const tok_t *tok = model_tok(m);
    fprintf(stderr, "lacuna generate: %s: %d layers, embd %d, vocab %d, loaded in %.2f s\n", hp->name, hp->n_layers,
            hp->n_embd, hp->n_vocab, lc_now_s() - t0);

    /* ---- prompt ---- */
    size_t len = 0;
    int add_bos = tok_add_bos(tok);
    if (chat) {
        int renders_bos = 0;
        text = render_chat(model_path, system, chat, &renders_bos);
        if (renders_bos) add_bos = 0;
        len = text ? strlen(text) : 0;
    } else if (file) {
        text = slurp(file, &len);
        if (!text) fprintf(stderr, "lacuna generate: cannot read %s\n", file);
    } else {
        text = strdup(prompt);
        len = text ? strlen(text) : 0;
    }
    if (!text) goto out;
    if (tok_encode(tok, text, len, add_bos, 1, &ids) || ids.n == 0) {
        fprintf(stderr, "lacuna generate: cannot tokenize the prompt\n");
        goto out;
    }
    int n_prompt = (int)ids.n;
    int64_t n_total = n_prompt + n_gen;
    if (n_total > hp->n_ctx_train)
        fprintf(stderr, "lacuna generate: warning: %lld tokens exceed the trained context of %d\n", (long long)n_total,
                hp->n_ctx_train);

    /* ---- engine: one sequence ---- */
    int chunk = n_prompt < GEN_CHUNK ? n_prompt : GEN_CHUNK;
    model_exec_opts_t eo = {
        .device = "cpu", .max_batch_tokens = chunk, .max_seqs = 1, .kv_blocks = (n_total + 15) / 16 + 1};
    if (!(ctx = model_exec_create(m, &eo, err, sizeof err))) {
        fprintf(stderr, "lacuna generate: %s\n", err);
        goto out;
    }
    kv_config_t cfg = model_exec_kv_config(ctx);
    kv = kv_pool_create(&cfg);
    if (kv) model_exec_bind(ctx, kv);
    logits = malloc((size_t)hp->n_vocab * sizeof *logits);
    smp = sampler_create(&sp, hp->n_vocab, ids.ids, n_prompt);
    ts = tok_stream_create(tok, 1);
    if (!ctx || !kv || !logits || !smp || !ts || kv_seq_reserve(kv, &seq, n_total)) {
        fprintf(stderr, "lacuna generate: out of memory\n");
        goto out;
    }

    double tp0 = lc_now_s();
    for (int p = 0; p < n_prompt; p += chunk) {
        int n = n_prompt - p < chunk ? n_prompt - p : chunk;
        model_seq_t s = {.tok0 = 0,
                         .n_tok = n,
                         .pos0 = p,
                         .kv = &seq,
                         .logits_mode = p + n == n_prompt ? MODEL_LOGITS_LAST : MODEL_LOGITS_NONE,
                         .logits = logits};
        model_batch_t b = {.n_tokens = n, .tokens = ids.ids + p, .n_seqs = 1, .seqs = &s};
        int rc = kv_seq_prepare_write(kv, &seq, p, p + n);
        if (!rc) rc = model_exec_forward(ctx, kv, &b);
        if (rc) {
            fprintf(stderr, "lacuna generate: forward: %s\n", lc_strerror(rc));
            goto out;
        }
        seq.n_tokens = p + n;
    }
    double tp1 = lc_now_s();

    int32_t eos = tok_eos(tok), eot = tok_eot(tok);
    int n_done = 0, n_decode = 0;
    for (;;) {
        sampler_result_t r;
        if (sampler_sample(smp, logits, NULL, 0, &r)) break;
        sampler_accept(smp, r.token);
        n_done++;
        if (!ignore_eos && (r.token == eos || r.token == eot)) break;
        const char *piece;
        size_t plen;
        if (!tok_stream_push(ts, r.token, &piece, &plen) && plen) {
            fwrite(piece, 1, plen, stdout);
            fflush(stdout);
        }
        if (n_done >= n_gen) break;
        int64_t pos = n_prompt + n_done - 1;
        model_seq_t s = {.tok0 = 0,
                         .n_tok = 1,
                         .pos0 = pos,
                         .kv = &seq,
                         .generated = 1,
                         .logits_mode = MODEL_LOGITS_LAST,
                         .logits = logits};
        model_batch_t b = {.n_tokens = 1, .tokens = &r.token, .n_seqs = 1, .seqs = &s};
        int rc = kv_seq_prepare_write(kv, &seq, pos, pos + 1);
        if (!rc) rc = model_exec_forward(ctx, kv, &b);
        if (rc) {
            fprintf(stderr, "\nlacuna generate: forward: %s\n", lc_strerror(rc));
            goto out;
        }
        seq.n_tokens = pos + 1;
        n_decode++;
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
    if (kv) kv_seq_release(kv, &seq);
    tok_stream_destroy(ts);
    sampler_destroy(smp);
    kv_pool_destroy(kv);
    model_exec_destroy(ctx);
    free(logits);
    free(text);
    tok_ids_free(&ids);
    model_free(m);
    return ret;
}

/* tok_create_from_gguf: gathers the tokenizer.ggml.* metadata of a GGUF into
 * a tok_spec_t. Strings point into the mapping; tok_create copies them. Kept
 * apart from tokenizer.c so the tokenizer core can be used without a file. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/status.h"
#include "model/gguf.h"
#include "model/tokenizer.h"

/* Reads a string array into ptr/len arrays (malloc'd, caller frees both). */
static int read_str_arr(const gguf_ctx_t *g, const char *key, uint64_t *n, const char ***ptrs, uint32_t **lens) {
    gguf_vtype_t et;
    int rc = gguf_get_arr(g, key, &et, n);
    if (rc) return rc;
    if (et != GGUF_T_STRING || *n >= INT32_MAX) return LC_EFORMAT;
    *ptrs = malloc((*n ? *n : 1) * sizeof(char *));
    *lens = malloc((*n ? *n : 1) * sizeof(uint32_t));
    if (!*ptrs || !*lens) return LC_ENOMEM;
    for (uint64_t i = 0; i < *n; i++) {
        gguf_str_t s;
        if ((rc = gguf_arr_str(g, key, i, &s))) return rc;
        if (s.len >= UINT32_MAX) return LC_EFORMAT;
        (*ptrs)[i] = s.ptr;
        (*lens)[i] = (uint32_t)s.len;
    }
    return 0;
}

/* Gemma's SentencePiece vocabulary, as transformers rebuilds it from a GGUF
 * (our reference for ids): the runs of 2..31 spaces, which the converter
 * stored as user-defined tokens spelled with real spaces, are ordinary
 * pieces spelled with U+2581 again, merged like any other ("a  b" -> a, ▁▁,
 * b; a run of 50 -> 16+16+18, not greedily 31+19), and every piece's merge
 * priority is its position in the file (lower first) rather than its score:
 * the scores of normal pieces already fall with the position, those of
 * control and user-defined ones are a flat -1000. Spellings live in *respelled
 * (malloc'd, freed by the caller); tokens[i] point into it for the runs. */
static int gemma_vocab(uint64_t n, const char **tokens, uint32_t *lens, int32_t *types, float *scores,
                       char **respelled) {
    size_t need = 0;
    for (uint64_t i = 0; i < n; i++) {
        int spaces = types && types[i] == TOK_TYPE_USER_DEFINED && lens[i] >= 2;
        for (uint32_t k = 0; spaces && k < lens[i]; k++) spaces = tokens[i][k] == ' ';
        if (spaces) need += 3 * (size_t)lens[i];
    }
    char *buf = *respelled = malloc(need ? need : 1);
    if (!buf) return LC_ENOMEM;
    for (uint64_t i = 0; i < n; i++) {
        scores[i] = -(float)i;
        int spaces = types && types[i] == TOK_TYPE_USER_DEFINED && lens[i] >= 2;
        for (uint32_t k = 0; spaces && k < lens[i]; k++) spaces = tokens[i][k] == ' ';
        if (!spaces) continue;
        for (uint32_t k = 0; k < lens[i]; k++) memcpy(buf + 3 * k, "\xe2\x96\x81", 3);
        tokens[i] = buf;
        lens[i] *= 3;
        types[i] = TOK_TYPE_NORMAL;
        buf += lens[i];
    }
    return 0;
}

static int32_t get_id(const gguf_ctx_t *g, const char *key) {
    int64_t v;
    return gguf_get_i64(g, key, &v) == 0 && v >= 0 && v < INT32_MAX ? (int32_t)v : -1;
}

/* gguf strings are not NUL-terminated; model and pre names are short. */
static int get_name(const gguf_ctx_t *g, const char *key, char *buf, size_t cap) {
    gguf_str_t s;
    int rc = gguf_get_str(g, key, &s);
    if (rc) return rc;
    snprintf(buf, cap, "%.*s", (int)(s.len < cap ? s.len : cap - 1), s.ptr);
    return 0;
}

tok_t *tok_create_from_gguf(const gguf_ctx_t *g, char *err, size_t errlen) {
    tok_t *t = NULL;
    tok_spec_t sp = {0};
    const char **tokens = NULL, **merges = NULL;
    uint32_t *token_lens = NULL, *merge_lens = NULL;
    float *scores = NULL;
    int32_t *types = NULL;
    char model[32], pre[64], arch[32] = "";
    char *respelled = NULL;
    uint64_t n = 0, nm = 0, cnt;
    gguf_vtype_t et;
    int rc, b;

    if (get_name(g, "tokenizer.ggml.model", model, sizeof(model))) {
        snprintf(err, errlen, "GGUF has no tokenizer.ggml.model");
        goto fail;
    }
    sp.model = model;
    if (get_name(g, "tokenizer.ggml.pre", pre, sizeof(pre)) == 0) sp.pre = pre;
    if ((rc = read_str_arr(g, "tokenizer.ggml.tokens", &n, &tokens, &token_lens))) {
        snprintf(err, errlen, "GGUF tokenizer.ggml.tokens: %s", lc_strerror(rc));
        goto fail;
    }
    sp.n_tokens = (uint32_t)n;
    sp.tokens = tokens;
    sp.token_lens = token_lens;

    if (gguf_get_arr(g, "tokenizer.ggml.scores", &et, &cnt) == 0) {
        if (cnt != n || !(scores = malloc(n * sizeof(float)))) {
            snprintf(err, errlen, "GGUF tokenizer.ggml.scores: %s",
                     cnt != n ? "count differs from tokens" : "out of memory");
            goto fail;
        }
        for (uint64_t i = 0; i < n; i++)
            if (gguf_arr_f32(g, "tokenizer.ggml.scores", i, &scores[i])) {
                snprintf(err, errlen, "GGUF tokenizer.ggml.scores: not numbers");
                goto fail;
            }
        sp.scores = scores;
    }
    if (gguf_get_arr(g, "tokenizer.ggml.token_type", &et, &cnt) == 0) {
        if (cnt != n || !(types = malloc(n * sizeof(int32_t)))) {
            snprintf(err, errlen, "GGUF tokenizer.ggml.token_type: %s",
                     cnt != n ? "count differs from tokens" : "out of memory");
            goto fail;
        }
        for (uint64_t i = 0; i < n; i++) {
            int64_t v;
            if (gguf_arr_i64(g, "tokenizer.ggml.token_type", i, &v)) {
                snprintf(err, errlen, "GGUF tokenizer.ggml.token_type: not integers");
                goto fail;
            }
            types[i] = v >= 1 && v <= 6 ? (int32_t)v : TOK_TYPE_NORMAL;
        }
        sp.types = types;
    }
    rc = read_str_arr(g, "tokenizer.ggml.merges", &nm, &merges, &merge_lens);
    if (rc && rc != LC_ENOTFOUND) {
        snprintf(err, errlen, "GGUF tokenizer.ggml.merges: %s", lc_strerror(rc));
        goto fail;
    }
    if (rc == LC_ENOTFOUND && strcmp(model, "gpt2") == 0) {
        snprintf(err, errlen, "GGUF gpt2 tokenizer has no tokenizer.ggml.merges");
        goto fail;
    }
    sp.n_merges = (uint32_t)nm;
    sp.merges = merges;
    sp.merge_lens = merge_lens;

    sp.bos = get_id(g, "tokenizer.ggml.bos_token_id");
    sp.eos = get_id(g, "tokenizer.ggml.eos_token_id");
    sp.eot = get_id(g, "tokenizer.ggml.eot_token_id");
    sp.pad = get_id(g, "tokenizer.ggml.padding_token_id");
    sp.unk = get_id(g, "tokenizer.ggml.unknown_token_id");
    /* Without the key, SentencePiece models add BOS and byte-level ones do
     * not (llama.cpp's defaults). */
    sp.add_bos = gguf_get_bool(g, "tokenizer.ggml.add_bos_token", &b) == 0 ? b : strcmp(model, "llama") == 0;
    sp.add_space_prefix = gguf_get_bool(g, "tokenizer.ggml.add_space_prefix", &b) == 0 ? b : -1;
    get_name(g, "general.architecture", arch, sizeof(arch));
    if (strncmp(arch, "gemma", 5) == 0 && strcmp(model, "llama") == 0 && scores) {
        if ((rc = gemma_vocab(n, tokens, token_lens, types, scores, &respelled))) {
            snprintf(err, errlen, "out of memory");
            goto fail;
        }
    }

    t = tok_create(&sp, err, errlen);
fail:
    free(tokens);
    free(token_lens);
    free(merges);
    free(merge_lens);
    free(scores);
    free(types);
    free(respelled);
    return t;
}

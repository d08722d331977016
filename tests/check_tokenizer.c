/* Check suite for the tokenizer and chat templates.
 *
 * Without a model: SentencePiece and byte-level BPE on hand-built vocabularies,
 * special-token splitting, the incremental detokenizer on split and broken
 * UTF-8, and chat rendering for both families. With the real SmolLM2 GGUF
 * (testutil.h's tu_model_path; absent, the program SKIPs): every string of
 * tests/fixtures/tokenizer_smollm2.json must give Hugging Face's ids exactly
 * and decode back to itself. The same for Gemma 3 270M ($LACUNA_GEMMA_MODEL
 * or models/gemma-3-270m-q4_k_m.gguf) and tests/fixtures/tokenizer_gemma3.json,
 * with its chat template's renderings and a 32K-token prompt. Either
 * real-model case passes with a SKIP line when its model is absent, and fails
 * then under LACUNA_REQUIRE_MODEL=1. */
#include <check.h>
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/status.h"
#include "model/chat.h"
#include "model/gguf.h"
#include "model/tokenizer.h"
#include "testutil.h"

/* ============================================================================
 * Helpers
 * ========================================================================== */

static tok_ids_t enc(const tok_t *t, const char *s, int add_bos, int special) {
    tok_ids_t v = {0};
    ck_assert_int_eq(tok_encode(t, s, strlen(s), add_bos, special, &v), 0);
    return v;
}

static char *dec(const tok_t *t, const tok_ids_t *v, int skip) {
    char *s;
    ck_assert_int_eq(tok_decode(t, v->ids, v->n, skip, &s, NULL), 0);
    return s;
}

static void assert_ids(const tok_ids_t *v, const int32_t *want, size_t n) {
    ck_assert_uint_eq(v->n, n);
    for (size_t i = 0; i < n; i++) ck_assert_int_eq(v->ids[i], want[i]);
}

/* Byte-level vocabulary: the 256 byte tokens in byte order, then extra
 * tokens, merges and specials given by the test. */
static tok_t *mk_bpe(const char *pre, const char *const *extra, size_t n_extra, const char *const *merges,
                     size_t n_merges, const int32_t *extra_types) {
    static char store[256][4];
    const char *toks[512];
    int32_t types[512];
    for (int b = 0; b < 256; b++) {
        /* The GPT-2 stand-in for byte b (same table as tok_bpe.c). */
        uint32_t cp = ((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174) ? (uint32_t)b
                      : b <= 32                                                     ? 256u + (uint32_t)b
                      : b <= 160                                                    ? 256u + 33 + (uint32_t)(b - 127)
                                                                                    : 256u + 67;
        memset(store[b], 0, 4);
        if (cp < 0x80) {
            store[b][0] = (char)cp;
        } else {
            store[b][0] = (char)(0xC0 | (cp >> 6));
            store[b][1] = (char)(0x80 | (cp & 0x3F));
        }
        toks[b] = store[b];
        types[b] = TOK_TYPE_NORMAL;
    }
    for (size_t i = 0; i < n_extra; i++) {
        toks[256 + i] = extra[i];
        types[256 + i] = extra_types ? extra_types[i] : TOK_TYPE_NORMAL;
    }
    tok_spec_t sp = {.model = "gpt2",
                     .pre = pre,
                     .n_tokens = (uint32_t)(256 + n_extra),
                     .tokens = toks,
                     .types = types,
                     .n_merges = (uint32_t)n_merges,
                     .merges = merges,
                     .bos = -1,
                     .eos = -1,
                     .eot = -1,
                     .pad = -1,
                     .unk = -1,
                     .add_space_prefix = -1};
    char err[256] = "";
    tok_t *t = tok_create(&sp, err, sizeof(err));
    ck_assert_msg(t != NULL, "tok_create: %s", err);
    return t;
}

/* ============================================================================
 * Byte-level BPE on a small vocabulary
 * ========================================================================== */

START_TEST(test_bpe_small) {
    /* ids 256.. */
    const char *extra[] = {"he", "ll", "hell", "hello", "Ġw", "Ġwo", "<|end|>", "<x>"};
    const int32_t types[] = {1, 1, 1, 1, 1, 1, TOK_TYPE_CONTROL, TOK_TYPE_USER_DEFINED};
    const char *merges[] = {"h e", "l l", "he ll", "hell o", "Ġ w", "Ġw o"};
    tok_t *t = mk_bpe("gpt2", extra, 8, merges, 6, types);
    tok_ids_t v = enc(t, "hello world", 0, 1);
    const int32_t want[] = {259, 261, 'r', 'l', 'd'};
    assert_ids(&v, want, 5);
    char *s = dec(t, &v, 0);
    ck_assert_str_eq(s, "hello world");
    free(s);
    tok_ids_free(&v);

    /* Control tokens only with parse_special; user-defined ones always. */
    v = enc(t, "a<|end|>b<x>", 0, 1);
    const int32_t w1[] = {'a', 262, 'b', 263};
    assert_ids(&v, w1, 4);
    s = dec(t, &v, 1);
    ck_assert_str_eq(s, "ab<x>");
    free(s);
    tok_ids_free(&v);
    v = enc(t, "<|end|><x>", 0, 0);
    ck_assert_uint_eq(v.n, 8);
    ck_assert_int_eq(v.ids[7], 263);
    tok_ids_free(&v);

    ck_assert_int_eq(tok_find(t, "Ġwo", strlen("Ġwo")), 261);
    ck_assert_int_eq(tok_find(t, "nope", 4), -1);
    size_t n;
    const char *p = tok_piece(t, 261, &n);
    ck_assert_uint_eq(n, 3);
    ck_assert_int_eq(memcmp(p, " wo", 3), 0);
    ck_assert(tok_is_control(t, 262) && tok_is_special(t, 263) && !tok_is_control(t, 263));
    ck_assert_ptr_null(tok_piece(t, 9999, &n));
    tok_destroy(t);
}
END_TEST

START_TEST(test_bpe_errors) {
    char err[256] = "";
    const char *toks[] = {"a"};
    tok_spec_t sp = {
        .model = "wordpiece", .n_tokens = 1, .tokens = toks, .bos = -1, .eos = -1, .eot = -1, .pad = -1, .unk = -1};
    ck_assert_ptr_null(tok_create(&sp, err, sizeof(err)));
    ck_assert_ptr_nonnull(strstr(err, "wordpiece"));
    sp.model = "gpt2";
    sp.pre = "mystery";
    ck_assert_ptr_null(tok_create(&sp, err, sizeof(err)));
    ck_assert_ptr_nonnull(strstr(err, "mystery"));
}
END_TEST

/* ============================================================================
 * SentencePiece on a small vocabulary
 * ========================================================================== */

START_TEST(test_spm_small) {
    const char *toks[300];
    float scores[300] = {0};
    int32_t types[300];
    char bytes[256][8];
    int n = 0;
    toks[n] = "<unk>", types[n++] = TOK_TYPE_UNKNOWN;
    toks[n] = "<s>", types[n++] = TOK_TYPE_CONTROL;
    toks[n] = "</s>", types[n++] = TOK_TYPE_CONTROL;
    for (int b = 0; b < 256; b++) {
        snprintf(bytes[b], sizeof(bytes[b]), "<0x%02X>", b);
        toks[n] = bytes[b], types[n++] = TOK_TYPE_BYTE;
    }
    /* Pieces with scores: higher merges first. ids 259.. */
    const char *pieces[] = {"▁",  "h",    "e",     "l",      "o",  "w",  "r",    "d",      "he",
                            "ll", "hell", "hello", "▁hello", "▁w", "or", "▁wor", "▁world", "ld"};
    const float sc[] = {-1, -2, -2, -2, -2, -2, -2, -2, -3, -3, -4, -5, -6, -4, -3, -7, -8, -20};
    for (size_t i = 0; i < sizeof(pieces) / sizeof(pieces[0]); i++) {
        toks[n] = pieces[i];
        scores[n] = sc[i];
        types[n++] = TOK_TYPE_NORMAL;
    }
    tok_spec_t sp = {.model = "llama",
                     .n_tokens = (uint32_t)n,
                     .tokens = toks,
                     .scores = scores,
                     .types = types,
                     .bos = 1,
                     .eos = 2,
                     .eot = -1,
                     .pad = -1,
                     .unk = 0,
                     .add_bos = 1,
                     .add_space_prefix = -1};
    char err[256] = "";
    tok_t *t = tok_create(&sp, err, sizeof(err));
    ck_assert_msg(t != NULL, "%s", err);
    ck_assert_int_eq(tok_add_bos(t), 1);

    tok_ids_t v = enc(t, "hello world", 1, 1);
    const int32_t want[] = {1, 259 + 12, 259 + 16};
    assert_ids(&v, want, 3);
    char *s = dec(t, &v, 1);
    ck_assert_str_eq(s, "hello world");
    free(s);
    s = dec(t, &v, 0);
    ck_assert_str_eq(s, "<s>hello world");
    free(s);
    tok_ids_free(&v);

    /* "ß" is not a piece: byte fallback <0xC3><0x9F>. */
    v = enc(t, "hello ß", 0, 1);
    const int32_t w2[] = {259 + 12, 259, 3 + 0xC3, 3 + 0x9F};
    assert_ids(&v, w2, 4);
    s = dec(t, &v, 0);
    ck_assert_str_eq(s, "hello ß");
    free(s);
    tok_ids_free(&v);

    /* Special tokens split the text; the dummy prefix follows each one. */
    v = enc(t, "</s>hello", 0, 1);
    const int32_t w3[] = {2, 259 + 12};
    assert_ids(&v, w3, 2);
    tok_ids_free(&v);
    v = enc(t, "", 0, 1);
    ck_assert_uint_eq(v.n, 0);
    tok_ids_free(&v);
    tok_destroy(t);
}
END_TEST

/* ============================================================================
 * Incremental detokenizer
 * ========================================================================== */

/* Streams ids one by one and returns everything emitted (malloc'd). Each
 * delta must be valid UTF-8 on its own. */
static char *stream_all(const tok_t *t, const int32_t *ids, size_t n, int skip) {
    tok_stream_t *st = tok_stream_create(t, skip);
    ck_assert_ptr_nonnull(st);
    size_t cap = 64, len = 0;
    char *all = malloc(cap);
    for (size_t i = 0; i <= n; i++) {
        const char *d;
        size_t dl;
        if (i < n)
            ck_assert_int_eq(tok_stream_push(st, ids[i], &d, &dl), 0);
        else
            ck_assert_int_eq(tok_stream_flush(st, &d, &dl), 0);
        /* A delta must start on a character boundary and end complete. */
        for (size_t k = 0; k < dl;) {
            unsigned char c = (unsigned char)d[k];
            size_t need = c < 0x80 ? 1 : c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : 2;
            ck_assert_msg(c < 0x80 || c >= 0xC2, "delta starts inside a character");
            ck_assert_msg(k + need <= dl, "delta ends inside a character");
            k += need;
        }
        while (len + dl + 1 > cap) all = realloc(all, cap *= 2);
        memcpy(all + len, d, dl);
        len += dl;
    }
    all[len] = '\0';
    tok_stream_destroy(st);
    return all;
}

START_TEST(test_stream_split_chars) {
    tok_t *t = mk_bpe("gpt2", NULL, 0, NULL, 0, NULL);
    /* Byte b is token b in this vocabulary. */
    const char *chars[] = {"é", "€", "中", "😀", "a€b😀c"};
    for (size_t c = 0; c < sizeof(chars) / sizeof(chars[0]); c++) {
        size_t n = strlen(chars[c]);
        int32_t ids[16];
        for (size_t i = 0; i < n; i++) ids[i] = (uint8_t)chars[c][i];
        char *s = stream_all(t, ids, n, 0);
        ck_assert_str_eq(s, chars[c]);
        free(s);
    }
    /* Deltas: "€" (E2 82 AC) yields nothing until its last byte. */
    tok_stream_t *st = tok_stream_create(t, 0);
    const char *d;
    size_t dl;
    ck_assert_int_eq(tok_stream_push(st, 0xE2, &d, &dl), 0);
    ck_assert_uint_eq(dl, 0);
    ck_assert_int_eq(tok_stream_push(st, 0x82, &d, &dl), 0);
    ck_assert_uint_eq(dl, 0);
    ck_assert_int_eq(tok_stream_push(st, 0xAC, &d, &dl), 0);
    ck_assert_uint_eq(dl, 3);
    ck_assert_int_eq(memcmp(d, "€", 3), 0);
    ck_assert_int_eq(tok_stream_push(st, 99999, &d, &dl), LC_EINVAL);
    tok_stream_destroy(st);
    tok_destroy(t);
}
END_TEST

START_TEST(test_stream_invalid) {
    tok_t *t = mk_bpe("gpt2", NULL, 0, NULL, 0, NULL);
    static const struct {
        const char *in, *out;
    } cases[] = {
        {"\xff", "\xef\xbf\xbd"},
        {"a\xe2\x82"
         "b",
         "a\xef\xbf\xbd"
         "b"},                                                    // truncated 3-byte char: one U+FFFD
        {"\xf0\x9f", "\xef\xbf\xbd"},                             // dangling at the end, flushed
        {"\x80\x80", "\xef\xbf\xbd\xef\xbf\xbd"},                 // lone continuations: one each
        {"\xed\xa0\x80", "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"}, // surrogate
        {"\xc0\xaf", "\xef\xbf\xbd\xef\xbf\xbd"},                 // overlong
        {"\xf4\x90\x80\x80", "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"},
        {"x\xf0\x9f\x98", "x\xef\xbf\xbd"},
    };
    for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
        size_t n = strlen(cases[c].in);
        int32_t ids[16];
        for (size_t i = 0; i < n; i++) ids[i] = (uint8_t)cases[c].in[i];
        char *s = stream_all(t, ids, n, 0);
        ck_assert_str_eq(s, cases[c].out);
        free(s);
        tok_ids_t v = {ids, n, n};
        s = dec(t, &v, 0);
        ck_assert_str_eq(s, cases[c].out);
        free(s);
    }
    /* Random byte soup: the stream's deltas always add up to tok_decode. */
    srand(7);
    for (int iter = 0; iter < 2000; iter++) {
        int32_t ids[24];
        size_t n = (size_t)(rand() % 24);
        static const uint8_t pool[] = {'a', 0x80, 0x9F, 0xBF, 0xC2, 0xC3, 0xE0, 0xE2, 0xED, 0xF0, 0xF4, 0xFF, 0xA0};
        for (size_t i = 0; i < n; i++) ids[i] = pool[rand() % (int)sizeof(pool)];
        char *a = stream_all(t, ids, n, 0);
        tok_ids_t v = {ids, n, n};
        char *b = dec(t, &v, 0);
        ck_assert_str_eq(a, b);
        free(a);
        free(b);
    }
    tok_destroy(t);
}
END_TEST

/* ============================================================================
 * Chat templates
 * ========================================================================== */

START_TEST(test_chat_render) {
    chat_template_t ct;
    char err[256] = "", *out;
    const char *smol = "{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\nYou are "
                       "a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}"
                       "{% endif %}{{'<|im_start|>' + message['role']}}";
    ck_assert_int_eq(chat_template_detect(smol, strlen(smol), &ct, err, sizeof(err)), 0);
    ck_assert_int_eq(ct.family, CHAT_CHATML);
    chat_msg_t m1[] = {{"user", "Hi"}};
    ck_assert_int_eq(chat_render(&ct, m1, 1, 1, &out, err, sizeof(err)), 0);
    ck_assert_str_eq(out, "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
                          "Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
    free(out);
    chat_msg_t m2[] = {{"developer", "Be brief."}, {"user", NULL}, {"assistant", "ok"}};
    ck_assert_int_eq(chat_render(&ct, m2, 3, 0, &out, err, sizeof(err)), 0);
    ck_assert_str_eq(out, "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n<|im_end|>\n"
                          "<|im_start|>assistant\nok<|im_end|>\n");
    free(out);
    chat_msg_t bad[] = {{"tool", "x"}};
    ck_assert_int_eq(chat_render(&ct, bad, 1, 1, &out, err, sizeof(err)), LC_EINVAL);
    ck_assert_ptr_nonnull(strstr(err, "tool"));

    const char *l3 = "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
                     "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | "
                     "trim + '<|eot_id|>' %}";
    ck_assert_int_eq(chat_template_detect(l3, strlen(l3), &ct, err, sizeof(err)), 0);
    ck_assert_int_eq(ct.family, CHAT_LLAMA3);
    ck_assert(chat_renders_bos(&ct));
    chat_msg_t m3[] = {{"system", "  S \n"}, {"user", "Hi"}};
    ck_assert_int_eq(chat_render(&ct, m3, 2, 1, &out, err, sizeof(err)), 0);
    ck_assert_str_eq(out, "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nS<|eot_id|>"
                          "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
                          "<|start_header_id|>assistant<|end_header_id|>\n\n");
    free(out);

    ck_assert_int_eq(chat_template_detect(NULL, 0, &ct, err, sizeof(err)), LC_ENOTFOUND);
    const char *odd = "{{ messages | tojson }}";
    ck_assert_int_eq(chat_template_detect(odd, strlen(odd), &ct, err, sizeof(err)), LC_EUNSUPPORTED);
    ck_assert_int_eq(chat_template_from_name("chatml", &ct), 0);
    ck_assert_ptr_null(ct.default_system);
    ck_assert_int_eq(chat_template_from_name("jinja", &ct), LC_EINVAL);
}
END_TEST

/* ============================================================================
 * The real model against Hugging Face fixtures
 * ========================================================================== */

static char *slurp(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = malloc((size_t)n + 1);
    if (fread(s, 1, (size_t)n, f) != (size_t)n) n = 0;
    s[n] = '\0';
    fclose(f);
    return s;
}

static tok_ids_t json_ids(const cJSON *arr) {
    tok_ids_t v = {0};
    v.n = v.cap = (size_t)cJSON_GetArraySize(arr);
    v.ids = malloc((v.n ? v.n : 1) * sizeof(int32_t));
    size_t i = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, arr) v.ids[i++] = (int32_t)e->valuedouble;
    return v;
}

static int ids_eq(const tok_ids_t *a, const tok_ids_t *b) {
    return a->n == b->n && (a->n == 0 || memcmp(a->ids, b->ids, a->n * sizeof(int32_t)) == 0);
}

static const char *g_model_path; // tu_model_path(), set in main()

/* Tokenizes the fixture's strings repeated to at least min_bytes and checks
 * that they give at least min_tokens. The time is printed, and bounded only
 * against a super-linear tokenizer (a linear one takes well under a second
 * on two cores; quadratic merging would take minutes): its speed belongs to
 * benchmarks, not to a timed test. */
static void tokenize_many(tok_t *t, const cJSON *root, size_t min_bytes, int add_bos, size_t min_tokens,
                          const char *label) {
    size_t big_len = 0, big_cap = 1 << 20;
    char *big = malloc(big_cap);
    ck_assert_ptr_nonnull(big);
    const cJSON *c;
    while (big_len < min_bytes) {
        cJSON_ArrayForEach(c, cJSON_GetObjectItem(root, "encode")) {
            const char *s = cJSON_GetObjectItem(c, "text")->valuestring;
            size_t l = strlen(s);
            while (big_len + l + 2 > big_cap) {
                big = realloc(big, big_cap *= 2);
                ck_assert_ptr_nonnull(big);
            }
            memcpy(big + big_len, s, l);
            big_len += l;
            big[big_len++] = ' ';
        }
    }
    struct timespec t0, t1;
    tok_ids_t v = {0};
    clock_gettime(CLOCK_MONOTONIC, &t0);
    ck_assert_int_eq(tok_encode(t, big, big_len, add_bos, 1, &v), 0);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double secs = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
    fprintf(stderr, "check_tokenizer: %s: %zu bytes -> %zu tokens in %.3f s\n", label, big_len, v.n, secs);
    ck_assert_uint_ge(v.n, min_tokens);
    ck_assert_msg(secs < 20.0, "tokenizing %zu tokens took %.2f s: super-linear?", v.n, secs);
    tok_ids_free(&v);
    free(big);
}

START_TEST(test_smollm2_fixtures) {
    char err[512] = "";
    gguf_ctx_t *g = gguf_open(g_model_path, err, sizeof(err));
    ck_assert_msg(g != NULL, "%s: %s", g_model_path, err);
    tok_t *t = tok_create_from_gguf(g, err, sizeof(err));
    ck_assert_msg(t != NULL, "tok_create_from_gguf: %s", err);
    ck_assert_int_eq(tok_n_vocab(t), 49152);
    ck_assert_int_eq(tok_bos(t), 1);
    ck_assert_int_eq(tok_eos(t), 2);
    ck_assert_int_eq(tok_add_bos(t), 0);
    ck_assert_int_eq(tok_find(t, "<|im_end|>", 10), 2);

    gguf_str_t tmpl;
    ck_assert_int_eq(gguf_get_str(g, "tokenizer.chat_template", &tmpl), 0);
    chat_template_t ct;
    ck_assert_int_eq(chat_template_detect(tmpl.ptr, tmpl.len, &ct, err, sizeof(err)), 0);

    char fixture[1024];
    snprintf(fixture, sizeof fixture, "%s/tests/fixtures/tokenizer_smollm2.json", tu_srcdir());
    char *js = slurp(fixture);
    ck_assert_msg(js != NULL, "missing tests/fixtures/tokenizer_smollm2.json");
    cJSON *root = cJSON_Parse(js);
    ck_assert_ptr_nonnull(root);

    int n_cases = 0, n_ok = 0;
    const cJSON *c;
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(root, "encode")) {
        const char *text = cJSON_GetObjectItem(c, "text")->valuestring;
        tok_ids_t want = json_ids(cJSON_GetObjectItem(c, "ids"));
        tok_ids_t got = enc(t, text, 0, 1);
        int ok = ids_eq(&got, &want);
        const cJSON *nos = cJSON_GetObjectItem(c, "ids_nospecial");
        tok_ids_t want2 = nos ? json_ids(nos) : want;
        tok_ids_t got2 = enc(t, text, 0, 0);
        ok = ok && ids_eq(&got2, &want2);
        char *back = dec(t, &got, 0);
        ok = ok && strcmp(back, text) == 0;
        char *streamed = stream_all(t, got.ids, got.n, 0);
        ok = ok && strcmp(streamed, back) == 0;
        if (!ok) {
            fprintf(stderr, "MISMATCH %s\n  want:", text);
            for (size_t i = 0; i < want.n; i++) fprintf(stderr, " %d", want.ids[i]);
            fprintf(stderr, "\n  got: ");
            for (size_t i = 0; i < got.n; i++) fprintf(stderr, " %d", got.ids[i]);
            fprintf(stderr, "\n");
        }
        n_cases++;
        n_ok += ok;
        free(back);
        free(streamed);
        if (nos) tok_ids_free(&want2);
        tok_ids_free(&want);
        tok_ids_free(&got);
        tok_ids_free(&got2);
    }
    fprintf(stderr, "check_tokenizer: %d/%d fixture strings match Hugging Face\n", n_ok, n_cases);
    ck_assert_int_ge(n_cases, 200);
    ck_assert_int_eq(n_ok, n_cases);

    cJSON_ArrayForEach(c, cJSON_GetObjectItem(root, "decode")) {
        tok_ids_t ids = json_ids(cJSON_GetObjectItem(c, "ids"));
        int skip = cJSON_IsTrue(cJSON_GetObjectItem(c, "skip_special"));
        char *s = dec(t, &ids, skip);
        ck_assert_str_eq(s, cJSON_GetObjectItem(c, "text")->valuestring);
        free(s);
        s = stream_all(t, ids.ids, ids.n, skip);
        ck_assert_str_eq(s, cJSON_GetObjectItem(c, "text")->valuestring);
        free(s);
        tok_ids_free(&ids);
    }

    cJSON_ArrayForEach(c, cJSON_GetObjectItem(root, "chat")) {
        chat_msg_t msgs[16];
        size_t n = 0;
        const cJSON *m;
        cJSON_ArrayForEach(m, cJSON_GetObjectItem(c, "messages")) {
            msgs[n].role = cJSON_GetObjectItem(m, "role")->valuestring;
            msgs[n++].content = cJSON_GetObjectItem(m, "content")->valuestring;
        }
        char *out;
        int gen = cJSON_IsTrue(cJSON_GetObjectItem(c, "add_generation_prompt"));
        ck_assert_int_eq(chat_render(&ct, msgs, n, gen, &out, err, sizeof(err)), 0);
        ck_assert_str_eq(out, cJSON_GetObjectItem(c, "text")->valuestring);
        tok_ids_t want = json_ids(cJSON_GetObjectItem(c, "ids"));
        tok_ids_t got = enc(t, out, 0, 1);
        ck_assert(ids_eq(&got, &want));
        tok_ids_free(&want);
        tok_ids_free(&got);
        free(out);
    }

    /* A prompt of over 100K tokens. */
    tokenize_many(t, root, 600000, 0, 100000, "SmolLM2");

    cJSON_Delete(root);
    free(js);
    tok_destroy(t);
    gguf_close(g);
}
END_TEST

/* Gemma 3 270M: SentencePiece with 262K tokens, no dummy prefix, BOS added,
 * 6,249 control and 165 user-defined tokens (runs of spaces and newlines,
 * HTML tags) matched whole in the text. */
static const char *g_gemma_path;
START_TEST(test_gemma3_fixtures) {
    char err[512] = "";
    gguf_ctx_t *g = gguf_open(g_gemma_path, err, sizeof(err));
    ck_assert_msg(g != NULL, "%s: %s", g_gemma_path, err);
    tok_t *t = tok_create_from_gguf(g, err, sizeof(err));
    ck_assert_msg(t != NULL, "tok_create_from_gguf: %s", err);
    char *js = slurp(LC_SRCDIR "/tests/fixtures/tokenizer_gemma3.json");
    ck_assert_msg(js != NULL, "missing tests/fixtures/tokenizer_gemma3.json");
    cJSON *root = cJSON_Parse(js);
    ck_assert_ptr_nonnull(root);
    ck_assert_int_eq(tok_n_vocab(t), cJSON_GetObjectItem(root, "n_vocab")->valueint);
    ck_assert_int_eq(tok_bos(t), cJSON_GetObjectItem(root, "bos")->valueint);
    ck_assert_int_eq(tok_eos(t), cJSON_GetObjectItem(root, "eos")->valueint);
    ck_assert_int_eq(tok_add_bos(t), cJSON_IsTrue(cJSON_GetObjectItem(root, "add_bos")));

    int n_cases = 0, n_ok = 0;
    const cJSON *c;
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(root, "encode")) {
        const char *text = cJSON_GetObjectItem(c, "text")->valuestring;
        tok_ids_t want = json_ids(cJSON_GetObjectItem(c, "ids"));
        const cJSON *nos = cJSON_GetObjectItem(c, "ids_nospecial");
        tok_ids_t want2 = json_ids(nos ? nos : cJSON_GetObjectItem(c, "ids"));
        tok_ids_t got = enc(t, text, 0, 1), got2 = enc(t, text, 0, 0);
        char *back = dec(t, &got, 0);
        char *streamed = stream_all(t, got.ids, got.n, 0);
        const cJSON *decoded = cJSON_GetObjectItem(c, "decoded"); // when HF's decode differs from the text
        int ok = ids_eq(&got, &want) && ids_eq(&got2, &want2) &&
                 strcmp(back, decoded ? decoded->valuestring : text) == 0 && !strcmp(streamed, back);
        if (!ok) {
            fprintf(stderr, "MISMATCH [%s]\n  want:", text);
            for (size_t i = 0; i < want.n; i++) fprintf(stderr, " %d", want.ids[i]);
            fprintf(stderr, "\n  got: ");
            for (size_t i = 0; i < got.n; i++) fprintf(stderr, " %d", got.ids[i]);
            fprintf(stderr, "\n  nospecial want/got %zu/%zu tokens, decoded [%s]\n", want2.n, got2.n, back);
        }
        n_cases++;
        n_ok += ok;
        free(back);
        free(streamed);
        tok_ids_free(&want);
        tok_ids_free(&want2);
        tok_ids_free(&got);
        tok_ids_free(&got2);
    }
    fprintf(stderr, "check_tokenizer: %d/%d Gemma fixture strings match Hugging Face\n", n_ok, n_cases);
    ck_assert_int_ge(n_cases, 300);
    ck_assert_int_eq(n_ok, n_cases);

    cJSON_ArrayForEach(c, cJSON_GetObjectItem(root, "decode")) {
        tok_ids_t ids = json_ids(cJSON_GetObjectItem(c, "ids"));
        int skip = cJSON_IsTrue(cJSON_GetObjectItem(c, "skip_special"));
        char *s = dec(t, &ids, skip);
        ck_assert_str_eq(s, cJSON_GetObjectItem(c, "text")->valuestring);
        free(s);
        s = stream_all(t, ids.ids, ids.n, skip);
        ck_assert_str_eq(s, cJSON_GetObjectItem(c, "text")->valuestring);
        free(s);
        tok_ids_free(&ids);
    }

    /* The base model's GGUF has no chat template: the family comes from the
     * Gemma 3 template text the fixture was rendered with. */
    gguf_str_t ts;
    ck_assert_int_ne(gguf_get_str(g, "tokenizer.chat_template", &ts), 0);
    const char *tmpl = cJSON_GetObjectItem(root, "chat_template")->valuestring;
    chat_template_t ct;
    ck_assert_int_eq(chat_template_detect(tmpl, strlen(tmpl), &ct, err, sizeof(err)), 0);
    ck_assert_int_eq(ct.family, CHAT_GEMMA);
    ck_assert(chat_renders_bos(&ct));
    int n_err = 0;
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(root, "chat")) {
        chat_msg_t msgs[16];
        size_t n = 0;
        const cJSON *m;
        cJSON_ArrayForEach(m, cJSON_GetObjectItem(c, "messages")) {
            msgs[n].role = cJSON_GetObjectItem(m, "role")->valuestring;
            msgs[n++].content = cJSON_GetObjectItem(m, "content")->valuestring;
        }
        char *out = NULL;
        int gen = cJSON_IsTrue(cJSON_GetObjectItem(c, "add_generation_prompt"));
        int rc = chat_render(&ct, msgs, n, gen, &out, err, sizeof(err));
        const cJSON *want_err = cJSON_GetObjectItem(c, "error");
        if (want_err) {
            ck_assert_int_eq(rc, LC_EINVAL);
            ck_assert_str_eq(err, want_err->valuestring);
            n_err++;
            continue;
        }
        ck_assert_int_eq(rc, 0);
        ck_assert_str_eq(out, cJSON_GetObjectItem(c, "text")->valuestring);
        tok_ids_t want = json_ids(cJSON_GetObjectItem(c, "ids"));
        tok_ids_t got = enc(t, out, 0, 1);
        ck_assert(ids_eq(&got, &want));
        tok_ids_free(&want);
        tok_ids_free(&got);
        free(out);
    }
    ck_assert_int_ge(n_err, 2);

    /* A 32K-token prompt (the model's context) with the 262K vocabulary. */
    tokenize_many(t, root, 160000, 1, 32768, "Gemma");

    cJSON_Delete(root);
    free(js);
    tok_destroy(t);
    gguf_close(g);
}
END_TEST

int main(void) {
    Suite *s = suite_create("tokenizer");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_bpe_small);
    tcase_add_test(tc, test_bpe_errors);
    tcase_add_test(tc, test_spm_small);
    tcase_add_test(tc, test_stream_split_chars);
    tcase_add_test(tc, test_stream_invalid);
    tcase_add_test(tc, test_chat_render);
    if ((g_model_path = tu_model_path())) tcase_add_test(tc, test_smollm2_fixtures);
    if ((g_gemma_path = tu_gemma_path())) tcase_add_test(tc, test_gemma3_fixtures);
    suite_add_tcase(s, tc);
    return tu_run(s);
}

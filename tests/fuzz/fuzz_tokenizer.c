/* libFuzzer target: the tokenizer on arbitrary bytes. Encodes with and
 * without special-token parsing, checks that decoding valid UTF-8 input
 * round-trips exactly (bytes the vocabulary has no token for — SmolLM2 lacks
 * some C0 controls and some UTF-8 lead bytes such as 0xF2 — are dropped, as
 * Hugging Face does, so inputs holding one are excluded), and streams the ids
 * through the incremental
 * detokenizer, whose deltas must concatenate to tok_decode's output.
 * The vocabulary is the default model's (tests/testutil.h's tu_model_path:
 * without it the target exits 77, SKIP, or 1 under LACUNA_REQUIRE_MODEL=1). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/gguf.h"
#include "model/tokenizer.h"
#include "../testutil.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static tok_t *g_tok;
static unsigned char g_has_byte[256]; // the byte, encoded alone, gives a token

static int roundtrips(const uint8_t *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        uint8_t c = s[i];
        size_t k = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
        if (!k || i + k > n) return 0;
        uint32_t cp = k == 1 ? c : k == 2 ? c & 31 : k == 3 ? c & 15 : c & 7;
        if (!g_has_byte[c]) return 0;
        for (size_t j = 1; j < k; j++) {
            if ((s[i + j] & 0xC0) != 0x80 || !g_has_byte[s[i + j]]) return 0;
            cp = (cp << 6) | (s[i + j] & 63);
        }
        if ((k == 2 && cp < 0x80) || (k == 3 && cp < 0x800) || (k == 4 && (cp < 0x10000 || cp > 0x10FFFF)) ||
            (cp >= 0xD800 && cp <= 0xDFFF))
            return 0;
        i += k;
    }
    return 1;
}

static void load_once(void) {
    if (g_tok) return;
    const char *path = tu_model_path();
    if (!path) exit(tu_exit_status(0));
    char err[256];
    gguf_ctx_t *g = gguf_open(path, err, sizeof err);
    if (!g) {
        fprintf(stderr, "fuzz_tokenizer: %s: %s\n", path, err);
        abort();
    }
    g_tok = tok_create_from_gguf(g, err, sizeof err);
    gguf_close(g);
    if (!g_tok) {
        fprintf(stderr, "fuzz_tokenizer: %s\n", err);
        abort();
    }
    for (int b = 0; b < 256; b++) {
        const char c = (char)b;
        tok_ids_t ids = {0};
        g_has_byte[b] = tok_encode(g_tok, &c, 1, 0, 0, &ids) == 0 && ids.n > 0;
        tok_ids_free(&ids);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    load_once();
    for (int special = 0; special < 2; special++) {
        tok_ids_t ids = {0};
        if (tok_encode(g_tok, (const char *)data, size, 0, special, &ids) != 0) __builtin_trap();
        char *text = NULL;
        size_t len = 0;
        if (tok_decode(g_tok, ids.ids, ids.n, 0, &text, &len) != 0) __builtin_trap();
        if (roundtrips(data, size) && (len != size || memcmp(text, data, size) != 0)) __builtin_trap();
        /* Streaming deltas concatenate to the full decode. */
        tok_stream_t *st = tok_stream_create(g_tok, 0);
        char *acc = malloc(len + 8);
        size_t n_acc = 0;
        int ok = st && acc;
        for (size_t i = 0; ok && i <= ids.n; i++) {
            const char *d;
            size_t dl;
            int rc = i < ids.n ? tok_stream_push(st, ids.ids[i], &d, &dl) : tok_stream_flush(st, &d, &dl);
            if (rc != 0 || n_acc + dl > len) {
                ok = 0;
                break;
            }
            memcpy(acc + n_acc, d, dl);
            n_acc += dl;
        }
        if (!ok || n_acc != len || memcmp(acc, text, len) != 0) __builtin_trap();
        free(acc);
        tok_stream_destroy(st);
        free(text);
        tok_ids_free(&ids);
    }
    return 0;
}

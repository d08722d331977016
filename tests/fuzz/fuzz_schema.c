/* libFuzzer target: the JSON schema compiler and the matcher. The input is
 * a schema (JSON text). A schema either compiles or is refused with a
 * message; a compiled one then drives a matcher over a small vocabulary
 * for a few hundred steps, choosing among the allowed tokens with bytes of
 * the input: every allowed token must be accepted, some token (or the end)
 * must always be allowed, and the state must stay bounded. Hostile shapes
 * (deep nesting, huge enums, recursive $ref) must end in a clean refusal. */
#include <cjson/cJSON.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "model/grammar.h"
#include "model/json_schema.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static gram_vocab_t *vocab(int *n) {
    static gram_vocab_t *v;
    static const char *const multi[] = {"{\"", "\":", "\", ",  "\"}", "true", "null", "12", " \"", "],",
                                        "ab",  "é",   "\\u00", "0.5", "e+",   "[{",   "}]", "\n  "};
    static int nv;
    if (!v) {
        const char *p[256 + 17];
        size_t l[256 + 17];
        static char bytes[256];
        for (int b = 0; b < 256; b++) {
            bytes[b] = (char)b;
            p[b] = &bytes[b];
            l[b] = 1;
        }
        for (int i = 0; i < 17; i++) {
            p[256 + i] = multi[i];
            l[256 + i] = strlen(multi[i]);
        }
        nv = 256 + 17;
        v = gram_vocab_create_from(nv, p, l);
    }
    *n = nv;
    return v;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    cJSON *s = cJSON_ParseWithLength((const char *)data, size);
    if (!s) return 0;
    char err[512] = "";
    int st = 0;
    gram_t *g = js_compile_schema(s, "", &st, err, sizeof err);
    cJSON_Delete(s);
    if (!g) {
        if (st >= 0 || !err[0]) __builtin_trap(); // a refusal always says why
        return 0;
    }
    int nv;
    gram_vocab_t *v = vocab(&nv);
    gram_matcher_t *m = gram_matcher_create(g, v);
    uint64_t bits[(256 + 17 + 63) / 64];
    int32_t allowed[256 + 17];
    for (int step = 0; m && step < 300 && !gram_matcher_done(m); step++) {
        if (gram_matcher_mask(m, bits, nv)) break; // out of memory
        int n = 0;
        for (int t = 0; t < nv; t++)
            if (bits[t >> 6] >> (t & 63) & 1) allowed[n++] = t;
        if (n == 0) {
            if (!gram_matcher_can_end(m)) __builtin_trap(); // a dead end
            break;
        }
        int32_t t = allowed[(size ? data[step % size] * 31u + (unsigned)step : 0u) % (unsigned)n];
        if (gram_matcher_accept_token(m, t)) __builtin_trap(); // allowed but refused
    }
    gram_matcher_destroy(m);
    gram_release(g);
    return 0;
}

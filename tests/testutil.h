/* Helpers shared by the Check suites (header-only).
 *
 * The real model: tests call tu_model_path(), which returns $LACUNA_MODEL
 * (make check sets it to models/SmolLM2-135M-Instruct.Q4_1.gguf under the
 * source tree) when the file exists. When it is absent the test is skipped
 * with a line on stderr — unless LACUNA_REQUIRE_MODEL=1 (test.sh and CI set
 * it), where a missing model is a failure, so CI can never pass by skipping. */
#ifndef LC_TESTUTIL_H
#define LC_TESTUTIL_H

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static inline const char *tu_model_path(void) {
    const char *p = getenv("LACUNA_MODEL");
    if (p && *p && access(p, R_OK) == 0) return p;
    const char *req = getenv("LACUNA_REQUIRE_MODEL");
    if (req && strcmp(req, "1") == 0)
        ck_abort_msg("LACUNA_REQUIRE_MODEL=1 but the model is missing: %s", p ? p : "(LACUNA_MODEL unset)");
    fprintf(stderr, "SKIP: real model not found at %s (run scripts/fetch_model.sh)\n", p ? p : "(unset)");
    return NULL;
}

/* A whole file, NUL-terminated, malloc'd; NULL when it cannot be read. */
static inline char *tu_read_file(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = n >= 0 ? malloc((size_t)n + 1) : NULL;
    if (b && fread(b, 1, (size_t)n, f) != (size_t)n) {
        free(b);
        b = NULL;
    }
    if (b) b[n] = 0;
    fclose(f);
    return b;
}

/* Base64 (the fixtures' packed float vectors) into out; returns the decoded
 * length, which may exceed cap (only cap bytes are written). */
static inline size_t tu_b64_decode(const char *in, unsigned char *out, size_t cap) {
    static const char *tab = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    signed char map[256];
    memset(map, -1, sizeof map);
    for (int i = 0; i < 64; i++) map[(unsigned char)tab[i]] = (signed char)i;
    size_t n = 0;
    unsigned acc = 0;
    int bits = 0;
    for (const char *p = in; *p && *p != '='; p++) {
        if (map[(unsigned char)*p] < 0) continue;
        acc = (acc << 6) | (unsigned)map[(unsigned char)*p];
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            if (n < cap) out[n] = (unsigned char)(acc >> bits);
            n++;
        }
    }
    return n;
}

/* Source and build directories (for fixtures and built tools). */
static inline const char *tu_srcdir(void) {
    const char *p = getenv("LACUNA_SRCDIR");
    return p && *p ? p : ".";
}
static inline const char *tu_builddir(void) {
    const char *p = getenv("LACUNA_BUILDDIR");
    return p && *p ? p : ".";
}

#endif

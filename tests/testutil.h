/* Helpers shared by the Check suites (header-only).
 *
 * Skips. A test that cannot run here (no model, no GPU) must not pass:
 * tu_skip() says why on stderr and counts it, and tu_run() then makes the
 * program exit 77 (Automake's SKIP) unless a test failed. Check forks every
 * test, so a skip must be decided in main(), before the suite runs, and the
 * skipped tests left out of it.
 *
 * The real models. tu_model_path(), called from main(), returns the default
 * model's path ($LACUNA_MODEL, which make check sets, else
 * models/SmolLM2-135M-Instruct.Q4_1.gguf under the source tree) when the
 * file is readable; tu_gemma_path() Gemma 3 270M's. When it is not, it returns NULL and counts a skip; with
 * LACUNA_REQUIRE_MODEL=1 (test.sh and CI set it) the program fails instead,
 * so CI can never pass by skipping. */
#ifndef LC_TESTUTIL_H
#define LC_TESTUTIL_H

#include <check.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define TU_DEFAULT_MODEL "models/SmolLM2-135M-Instruct.Q4_1.gguf"

/* Skips noted so far, and whether a required model was missing. */
static inline int *tu__skips(void) {
    static int n;
    return &n;
}
static inline int *tu__required_missing(void) {
    static int missing;
    return &missing;
}

static inline void tu_skip(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static inline void tu_skip(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "SKIP: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    ++*tu__skips();
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

/* Source and build directories (for fixtures, models and built tools). */
static inline const char *tu_srcdir(void) {
    const char *p = getenv("LACUNA_SRCDIR");
#ifdef LC_SRCDIR
    return p && *p ? p : LC_SRCDIR;
#else
    return p && *p ? p : ".";
#endif
}
static inline const char *tu_builddir(void) {
    const char *p = getenv("LACUNA_BUILDDIR");
    return p && *p ? p : ".";
}

/* A model file: $env when set, else rel under the source tree; NULL (a skip,
 * or a failure under LACUNA_REQUIRE_MODEL=1) when it is not readable. */
static inline const char *tu__find_model(const char *env_name, const char *rel, const char *fetch, char *path,
                                         size_t cap) {
    const char *env = getenv(env_name);
    if (env && *env)
        snprintf(path, cap, "%s", env);
    else
        snprintf(path, cap, "%s/%s", tu_srcdir(), rel);
    if (access(path, R_OK) == 0) return path;
    const char *req = getenv("LACUNA_REQUIRE_MODEL");
    if (req && strcmp(req, "1") == 0) {
        fprintf(stderr, "FAIL: LACUNA_REQUIRE_MODEL=1 but the model is missing: %s\n", path);
        *tu__required_missing() = 1;
        return NULL;
    }
    tu_skip("model not found at %s (run %s); its tests do not run", path, fetch);
    return NULL;
}

static inline const char *tu_model_path(void) {
    static char path[1024];
    return tu__find_model("LACUNA_MODEL", TU_DEFAULT_MODEL, "scripts/fetch_model.sh", path, sizeof path);
}

/* Gemma 3 270M ($LACUNA_GEMMA_MODEL, else models/gemma-3-270m-q4_k_m.gguf). */
static inline const char *tu_gemma_path(void) {
    static char path[1024];
    return tu__find_model("LACUNA_GEMMA_MODEL", "models/gemma-3-270m-q4_k_m.gguf", "scripts/fetch_model.sh gemma3-270m",
                          path, sizeof path);
}

/* What main() returns after the tests ran with nf failures: 1 on a failure
 * or a missing required model, 77 when something was skipped, else 0. */
static inline int tu_exit_status(int nf) {
    if (nf || *tu__required_missing()) return 1;
    return *tu__skips() ? 77 : 0;
}

/* Runs the suite (CK_NORMAL output) and returns tu_exit_status(). */
static inline int tu_run(Suite *s) {
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int nf = srunner_ntests_failed(sr);
    srunner_free(sr);
    return tu_exit_status(nf);
}

#endif

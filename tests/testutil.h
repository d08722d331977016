/* Helpers shared by the Check suites (header-only).
 *
 * Skips. A test that cannot run here (no model, no GPU) must not pass:
 * tu_skip() says why on stderr and counts it, and tu_run() then makes the
 * program exit 77 (Automake's SKIP) unless a test failed. Check forks every
 * test, so a skip must be decided in main(), before the suite runs, and the
 * skipped tests left out of it.
 *
 * The real model. tu_model_path(), called from main(), returns the default
 * model's path ($LACUNA_MODEL, which make check sets, else
 * models/SmolLM2-135M-Instruct.Q4_1.gguf under the source tree) when the
 * file is readable. When it is not, it returns NULL and counts a skip; with
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

static inline const char *tu_model_path(void) {
    static char path[1024];
    const char *env = getenv("LACUNA_MODEL");
    if (env && *env)
        snprintf(path, sizeof path, "%s", env);
    else
        snprintf(path, sizeof path, "%s/" TU_DEFAULT_MODEL, tu_srcdir());
    if (access(path, R_OK) == 0) return path;
    const char *req = getenv("LACUNA_REQUIRE_MODEL");
    if (req && strcmp(req, "1") == 0) {
        fprintf(stderr, "FAIL: LACUNA_REQUIRE_MODEL=1 but the model is missing: %s\n", path);
        *tu__required_missing() = 1;
        return NULL;
    }
    tu_skip("real model not found at %s (run scripts/fetch_model.sh); its tests do not run", path);
    return NULL;
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

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

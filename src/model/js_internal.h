/* Internals of the JSON schema compiler shared by json_schema.c (schemas)
 * and json_rules.c (the rules every schema shares: whitespace, strings,
 * numbers, any value, maps and arrays). */
#ifndef LC_JS_INTERNAL_H
#define LC_JS_INTERNAL_H

#include <stddef.h>

#include "model/json_schema.h"

#define JS_MAX_DEPTH 64
#define JS_MAX_ENUM 4096
#define JS_MAX_PROPS 1024
#define JS_MAX_ANYOF 256
#define JS_MAX_ITEMS_SPAN 256
#define JS_WS_INDENT 20
#define JS_INT_DIGITS 16
#define JS_FRAC_DIGITS 16
#define JS_EXP_DIGITS 3

typedef struct {
    const struct cJSON *node;
    int rule;
} js_memo_t;

struct js_ctx {
    gram_builder_t *b;
    const struct cJSON *root;
    js_memo_t *memo;
    int n_memo, cap_memo;
    int depth;
    int n_enum;
    char path[256];
    char *err;
    size_t errlen;
    /* shared rules, -1 until made */
    int ws, string, number, integer, boolean, null, any, any_obj, digits[JS_FRAC_DIGITS + 1];
};

/* Records the first error (with the schema location) and returns status. */
int js__fail(js_ctx_t *c, int status, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* Maps a builder status (>= 0 passes through) into a message. */
int js__chk(js_ctx_t *c, int rc);
#define TRY(x)                                                                                                         \
    do {                                                                                                               \
        int rc_ = js__chk(c, (x));                                                                                     \
        if (rc_ < 0) return rc_;                                                                                       \
    } while (0)
int js__new_rule(js_ctx_t *c);

/* json_rules.c: rule ids of the shared pieces, made once per compiler, or a
 * negative status. */
int js__ws(js_ctx_t *c);
int js__string(js_ctx_t *c);
int js__num(js_ctx_t *c, int integer);
int js__bool(js_ctx_t *c);
int js__null(js_ctx_t *c);
int js__any(js_ctx_t *c);
/* An object of any keys whose values follow value; an array of items with
 * min..max items (max < 0: unbounded). */
int js__map(js_ctx_t *c, int value);
int js__array(js_ctx_t *c, int item, int min, int max);

#endif

/* The JSON schema compiler: one recursive pass over the schema tree that
 * writes grammar rules. Shared pieces (whitespace, strings, numbers, any
 * value) are made once per compiler. $ref targets are memoized by their
 * node, which is what makes recursive schemas finite; everything else is
 * compiled where it stands. */
#include "model/json_schema.h"

#include <cjson/cJSON.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/status.h"

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
    const cJSON *node;
    int rule;
} js_memo_t;

struct js_ctx {
    gram_builder_t *b;
    const cJSON *root;
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

/* ---- errors ------------------------------------------------------------------------ */
static int fail(js_ctx_t *c, int status, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(js_ctx_t *c, int status, const char *fmt, ...) {
    if (c->err && c->errlen && !c->err[0]) {
        char msg[384];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof msg, fmt, ap);
        va_end(ap);
        snprintf(c->err, c->errlen, "%s (at %s)", msg, c->path[0] ? c->path : "the schema's root");
    }
    return status;
}

/* Maps a builder status into a message. */
static int chk(js_ctx_t *c, int rc) {
    if (rc >= 0) return rc;
    if (rc == LC_ETOOLONG) return fail(c, rc, "the schema is too large to compile");
    if (rc == LC_ENOMEM) return fail(c, rc, "out of memory");
    return fail(c, rc, "internal grammar error");
}

#define TRY(x)                                                                                                         \
    do {                                                                                                               \
        int rc_ = chk(c, (x));                                                                                         \
        if (rc_ < 0) return rc_;                                                                                       \
    } while (0)

static size_t path_push(js_ctx_t *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static size_t path_push(js_ctx_t *c, const char *fmt, ...) {
    size_t n = strlen(c->path);
    va_list ap;
    va_start(ap, fmt);
    if (n < sizeof c->path - 1) vsnprintf(c->path + n, sizeof c->path - n, fmt, ap);
    va_end(ap);
    return n;
}
static void path_pop(js_ctx_t *c, size_t n) { c->path[n] = 0; }

/* ---- shared rules ---------------------------------------------------------------------- */
static int new_rule(js_ctx_t *c) { return chk(c, gram_rule(c->b)); }

/* ws ::= "" | " " | "\n" indent; indent_k ::= [ \t] indent_(k+1) | "" */
static int rule_ws(js_ctx_t *c) {
    if (c->ws >= 0) return c->ws;
    gram_set_t st = {{0}};
    gram_set_add_range(&st, ' ', ' ');
    gram_set_add_range(&st, '\t', '\t');
    int next = -1;
    for (int k = JS_WS_INDENT; k >= 0; k--) {
        int r = new_rule(c);
        if (r < 0) return r;
        TRY(gram_alt(c->b, r));
        if (k < JS_WS_INDENT) {
            TRY(gram_add_set(c->b, r, &st));
            TRY(gram_add_ref(c->b, r, next));
            TRY(gram_alt(c->b, r));
        }
        next = r;
    }
    int ws = new_rule(c);
    if (ws < 0) return ws;
    TRY(gram_alt(c->b, ws));
    TRY(gram_alt(c->b, ws));
    TRY(gram_add_byte(c->b, ws, ' '));
    TRY(gram_alt(c->b, ws));
    TRY(gram_add_byte(c->b, ws, '\n'));
    TRY(gram_add_ref(c->b, ws, next));
    return c->ws = ws;
}

/* string ::= '"' chars '"'; chars ::= char chars | ""; char: any character
 * but '"', '\' and controls, as well-formed UTF-8, or an escape. */
static int rule_string(js_ctx_t *c) {
    if (c->string >= 0) return c->string;
    gram_builder_t *b = c->b;
    int ch = new_rule(c), chars = new_rule(c), str = new_rule(c), esc = new_rule(c), hex4 = new_rule(c);
    if (ch < 0 || chars < 0 || str < 0 || esc < 0 || hex4 < 0) return LC_ETOOLONG;
    gram_set_t s = {{0}};
    gram_set_add_range(&s, 0x20, 0x7F);
    s.w['"' >> 6] &= ~(1ull << ('"' & 63));
    s.w['\\' >> 6] &= ~(1ull << ('\\' & 63));
    gram_set_t cont = {{0}}, hex = {{0}};
    gram_set_add_range(&cont, 0x80, 0xBF);
    gram_set_add_range(&hex, '0', '9');
    gram_set_add_range(&hex, 'a', 'f');
    gram_set_add_range(&hex, 'A', 'F');
    TRY(gram_alt(b, ch));
    TRY(gram_add_set(b, ch, &s));
    TRY(gram_alt(b, ch));
    TRY(gram_add_byte(b, ch, '\\'));
    TRY(gram_add_ref(b, ch, esc));
    /* UTF-8 (RFC 3629 table): lead byte ranges with their second-byte ranges */
    static const struct {
        int lo, hi, s_lo, s_hi, n_cont;
    } u8[] = {
        {0xC2, 0xDF, 0x80, 0xBF, 0}, {0xE0, 0xE0, 0xA0, 0xBF, 1}, {0xE1, 0xEC, 0x80, 0xBF, 1},
        {0xED, 0xED, 0x80, 0x9F, 1}, {0xEE, 0xEF, 0x80, 0xBF, 1}, {0xF0, 0xF0, 0x90, 0xBF, 2},
        {0xF1, 0xF3, 0x80, 0xBF, 2}, {0xF4, 0xF4, 0x80, 0x8F, 2},
    };
    for (size_t i = 0; i < sizeof u8 / sizeof u8[0]; i++) {
        gram_set_t lead = {{0}}, second = {{0}};
        gram_set_add_range(&lead, u8[i].lo, u8[i].hi);
        gram_set_add_range(&second, u8[i].s_lo, u8[i].s_hi);
        TRY(gram_alt(b, ch));
        TRY(gram_add_set(b, ch, &lead));
        TRY(gram_add_set(b, ch, &second));
        for (int k = 0; k < u8[i].n_cont; k++) TRY(gram_add_set(b, ch, &cont));
    }
    const char *simple = "\"\\/bfnrt";
    for (const char *p = simple; *p; p++) {
        TRY(gram_alt(b, esc));
        TRY(gram_add_byte(b, esc, (unsigned char)*p));
    }
    TRY(gram_alt(b, esc));
    TRY(gram_add_byte(b, esc, 'u'));
    TRY(gram_add_ref(b, esc, hex4));
    TRY(gram_alt(b, hex4));
    for (int k = 0; k < 4; k++) TRY(gram_add_set(b, hex4, &hex));
    TRY(gram_alt(b, chars));
    TRY(gram_add_ref(b, chars, ch));
    TRY(gram_add_ref(b, chars, chars));
    TRY(gram_alt(b, chars));
    TRY(gram_alt(b, str));
    TRY(gram_add_byte(b, str, '"'));
    TRY(gram_add_ref(b, str, chars));
    TRY(gram_add_byte(b, str, '"'));
    return c->string = str;
}

/* digits(k): up to k more decimal digits. */
static int rule_digits(js_ctx_t *c, int k) {
    if (c->digits[k] >= 0) return c->digits[k];
    int r = new_rule(c);
    if (r < 0) return r;
    TRY(gram_alt(c->b, r));
    if (k > 0) {
        int next = rule_digits(c, k - 1);
        if (next < 0) return next;
        gram_set_t d = {{0}};
        gram_set_add_range(&d, '0', '9');
        TRY(gram_alt(c->b, r));
        TRY(gram_add_set(c->b, r, &d));
        TRY(gram_add_ref(c->b, r, next));
    }
    return c->digits[k] = r;
}

/* integer ::= "-"? ("0" | [1-9] digits(15)); number adds "." [0-9]
 * digits(15) and [eE] [+-]? [0-9] digits(2), both optional. */
static int rule_num(js_ctx_t *c, int integer) {
    int *slot = integer ? &c->integer : &c->number;
    if (*slot >= 0) return *slot;
    gram_builder_t *b = c->b;
    gram_set_t d = {{0}}, d19 = {{0}}, ee = {{0}}, sign = {{0}};
    gram_set_add_range(&d, '0', '9');
    gram_set_add_range(&d19, '1', '9');
    gram_set_add_range(&ee, 'e', 'e');
    gram_set_add_range(&ee, 'E', 'E');
    gram_set_add_range(&sign, '+', '+');
    gram_set_add_range(&sign, '-', '-');
    int ip = new_rule(c), minus = new_rule(c), r = new_rule(c);
    if (ip < 0 || minus < 0 || r < 0) return LC_ETOOLONG;
    int di = rule_digits(c, JS_INT_DIGITS - 1), df = rule_digits(c, JS_FRAC_DIGITS - 1),
        de = rule_digits(c, JS_EXP_DIGITS - 1);
    if (di < 0 || df < 0 || de < 0) return LC_ETOOLONG;
    TRY(gram_alt(b, ip));
    TRY(gram_add_byte(b, ip, '0'));
    TRY(gram_alt(b, ip));
    TRY(gram_add_set(b, ip, &d19));
    TRY(gram_add_ref(b, ip, di));
    TRY(gram_alt(b, minus));
    TRY(gram_alt(b, minus));
    TRY(gram_add_byte(b, minus, '-'));
    TRY(gram_alt(b, r));
    TRY(gram_add_ref(b, r, minus));
    TRY(gram_add_ref(b, r, ip));
    if (!integer) {
        int frac = new_rule(c), exp = new_rule(c), sg = new_rule(c);
        if (frac < 0 || exp < 0 || sg < 0) return LC_ETOOLONG;
        TRY(gram_alt(b, frac));
        TRY(gram_alt(b, frac));
        TRY(gram_add_byte(b, frac, '.'));
        TRY(gram_add_set(b, frac, &d));
        TRY(gram_add_ref(b, frac, df));
        TRY(gram_alt(b, sg));
        TRY(gram_alt(b, sg));
        TRY(gram_add_set(b, sg, &sign));
        TRY(gram_alt(b, exp));
        TRY(gram_alt(b, exp));
        TRY(gram_add_set(b, exp, &ee));
        TRY(gram_add_ref(b, exp, sg));
        TRY(gram_add_set(b, exp, &d));
        TRY(gram_add_ref(b, exp, de));
        TRY(gram_add_ref(b, r, frac));
        TRY(gram_add_ref(b, r, exp));
    }
    return *slot = r;
}

static int rule_literals(js_ctx_t *c, int *slot, const char *const *lits, int n) {
    if (*slot >= 0) return *slot;
    int r = new_rule(c);
    if (r < 0) return r;
    for (int i = 0; i < n; i++) {
        TRY(gram_alt(c->b, r));
        TRY(gram_add_bytes(c->b, r, lits[i], strlen(lits[i])));
    }
    return *slot = r;
}

static int rule_bool(js_ctx_t *c) {
    static const char *const l[] = {"true", "false"};
    return rule_literals(c, &c->boolean, l, 2);
}

static int rule_null(js_ctx_t *c) {
    static const char *const l[] = {"null"};
    return rule_literals(c, &c->null, l, 1);
}

/* "{" ws "}" | "{" ws kv more ws "}", kv ::= string ws ":" ws value,
 * more ::= ws "," ws kv more | "" */
static int map_rule(js_ctx_t *c, int value) {
    gram_builder_t *b = c->b;
    int ws = rule_ws(c), str = rule_string(c);
    if (ws < 0 || str < 0) return ws < 0 ? ws : str;
    int kv = new_rule(c), more = new_rule(c), obj = new_rule(c);
    if (kv < 0 || more < 0 || obj < 0) return LC_ETOOLONG;
    TRY(gram_alt(b, kv));
    TRY(gram_add_ref(b, kv, str));
    TRY(gram_add_ref(b, kv, ws));
    TRY(gram_add_byte(b, kv, ':'));
    TRY(gram_add_ref(b, kv, ws));
    TRY(gram_add_ref(b, kv, value));
    TRY(gram_alt(b, more));
    TRY(gram_add_ref(b, more, ws));
    TRY(gram_add_byte(b, more, ','));
    TRY(gram_add_ref(b, more, ws));
    TRY(gram_add_ref(b, more, kv));
    TRY(gram_add_ref(b, more, more));
    TRY(gram_alt(b, more));
    TRY(gram_alt(b, obj));
    TRY(gram_add_byte(b, obj, '{'));
    TRY(gram_add_ref(b, obj, ws));
    TRY(gram_add_byte(b, obj, '}'));
    TRY(gram_alt(b, obj));
    TRY(gram_add_byte(b, obj, '{'));
    TRY(gram_add_ref(b, obj, ws));
    TRY(gram_add_ref(b, obj, kv));
    TRY(gram_add_ref(b, obj, more));
    TRY(gram_add_ref(b, obj, ws));
    TRY(gram_add_byte(b, obj, '}'));
    return obj;
}

/* Array of items, with min..max items (max < 0: unbounded). */
static int array_rule(js_ctx_t *c, int item, int min, int max) {
    gram_builder_t *b = c->b;
    int ws = rule_ws(c);
    if (ws < 0) return ws;
    int arr = new_rule(c);
    if (arr < 0) return arr;
    if (min == 0) {
        TRY(gram_alt(b, arr));
        TRY(gram_add_byte(b, arr, '['));
        TRY(gram_add_ref(b, arr, ws));
        TRY(gram_add_byte(b, arr, ']'));
        if (max == 0) return arr;
    }
    /* opt: what may follow the first max(min, 1) items */
    int opt = new_rule(c);
    if (opt < 0) return opt;
    if (max < 0) { // opt ::= ws "," ws item opt | ""
        TRY(gram_alt(b, opt));
        TRY(gram_add_ref(b, opt, ws));
        TRY(gram_add_byte(b, opt, ','));
        TRY(gram_add_ref(b, opt, ws));
        TRY(gram_add_ref(b, opt, item));
        TRY(gram_add_ref(b, opt, opt));
        TRY(gram_alt(b, opt));
    } else { // a chain of (max - first) optional items
        int first = min > 1 ? min : 1, next = opt;
        TRY(gram_alt(b, opt));
        for (int k = 0; k < max - first; k++) {
            int r = new_rule(c);
            if (r < 0) return r;
            TRY(gram_alt(b, r));
            TRY(gram_add_ref(b, r, ws));
            TRY(gram_add_byte(b, r, ','));
            TRY(gram_add_ref(b, r, ws));
            TRY(gram_add_ref(b, r, item));
            TRY(gram_add_ref(b, r, next));
            TRY(gram_alt(b, r));
            next = r;
        }
        opt = next;
    }
    TRY(gram_alt(b, arr));
    TRY(gram_add_byte(b, arr, '['));
    TRY(gram_add_ref(b, arr, ws));
    TRY(gram_add_ref(b, arr, item));
    for (int k = 1; k < min; k++) {
        TRY(gram_add_ref(b, arr, ws));
        TRY(gram_add_byte(b, arr, ','));
        TRY(gram_add_ref(b, arr, ws));
        TRY(gram_add_ref(b, arr, item));
    }
    TRY(gram_add_ref(b, arr, opt));
    TRY(gram_add_ref(b, arr, ws));
    TRY(gram_add_byte(b, arr, ']'));
    return arr;
}

/* value ::= object | array | string | number | true | false | null */
static int rule_any(js_ctx_t *c) {
    if (c->any >= 0) return c->any;
    int any = new_rule(c);
    if (any < 0) return any;
    c->any = any;
    int obj = map_rule(c, any), arr = array_rule(c, any, 0, -1), str = rule_string(c), num = rule_num(c, 0),
        bo = rule_bool(c), nu = rule_null(c);
    int parts[] = {obj, arr, str, num, bo, nu};
    for (int i = 0; i < 6; i++) {
        if (parts[i] < 0) return parts[i];
        TRY(gram_alt(c->b, any));
        TRY(gram_add_ref(c->b, any, parts[i]));
    }
    c->any_obj = obj;
    return any;
}

int js_any_object_rule(js_ctx_t *c) {
    int rc = rule_any(c);
    return rc < 0 ? rc : c->any_obj;
}

/* ---- literals (enum, const) ---------------------------------------------------------------- */
typedef struct {
    char *s;
    size_t n;
} lit_t;

static int cmp_lit(const void *a, const void *b) {
    const lit_t *x = a, *y = b;
    int c = memcmp(x->s, y->s, x->n < y->n ? x->n : y->n);
    return c ? c : (x->n < y->n ? -1 : x->n > y->n);
}

/* A prefix tree of lits[lo..hi) (sorted, distinct) past depth bytes: one
 * rule per branching point, so matching stays deterministic however many
 * values share a prefix. */
static int lit_trie(js_ctx_t *c, const lit_t *l, int lo, int hi, size_t depth) {
    int r = new_rule(c);
    if (r < 0) return r;
    int i = lo;
    if (l[i].n == depth) { // a value ends here
        TRY(gram_alt(c->b, r));
        i++;
    }
    while (i < hi) {
        int j = i + 1;
        while (j < hi && l[j].s[depth] == l[i].s[depth]) j++;
        TRY(gram_alt(c->b, r));
        if (j == i + 1) {
            TRY(gram_add_bytes(c->b, r, l[i].s + depth, l[i].n - depth));
        } else {
            size_t lcp = 1; // shared by the whole group past depth
            for (;;) {
                size_t d = depth + lcp;
                int same = l[i].n > d;
                for (int k = i + 1; k < j && same; k++) same = l[k].n > d && l[k].s[d] == l[i].s[d];
                if (!same) break;
                lcp++;
            }
            TRY(gram_add_bytes(c->b, r, l[i].s + depth, lcp));
            int sub = lit_trie(c, l, i, j, depth + lcp);
            if (sub < 0) return sub;
            TRY(gram_add_ref(c->b, r, sub));
        }
        i = j;
    }
    return r;
}

static int type_ok(const cJSON *v, unsigned types) {
    if (!types) return 1;
    if (cJSON_IsString(v)) return types >> 2 & 1;
    if (cJSON_IsNumber(v)) {
        int integral = v->valuedouble == (double)(long long)v->valuedouble;
        return (types >> 3 & 1) || (integral && (types >> 4 & 1));
    }
    if (cJSON_IsBool(v)) return types >> 5 & 1;
    if (cJSON_IsNull(v)) return types >> 6 & 1;
    if (cJSON_IsObject(v)) return types & 1;
    if (cJSON_IsArray(v)) return types >> 1 & 1;
    return 0;
}

static int enum_rule(js_ctx_t *c, const cJSON *values, int single, unsigned types) {
    int n = single ? 1 : cJSON_GetArraySize(values);
    if (c->n_enum + n > JS_MAX_ENUM) return fail(c, LC_ETOOLONG, "too many enum values (at most %d)", JS_MAX_ENUM);
    c->n_enum += n;
    lit_t *l = calloc((size_t)n + 1, sizeof *l);
    if (!l) return fail(c, LC_ENOMEM, "out of memory");
    int k = 0, rc = 0;
    const cJSON *v = single ? values : (values ? values->child : NULL);
    for (; v && k < n; v = single ? NULL : v->next) {
        if (!type_ok(v, types)) continue;
        char *s = cJSON_PrintUnformatted(v);
        if (!s) {
            rc = fail(c, LC_ENOMEM, "out of memory");
            goto out;
        }
        l[k].s = s;
        l[k++].n = strlen(s);
    }
    if (k == 0) {
        rc = fail(c, LC_EINVAL, "no value of 'enum'/'const' matches 'type'");
        goto out;
    }
    qsort(l, (size_t)k, sizeof *l, cmp_lit);
    int u = 1;
    for (int i = 1; i < k; i++)
        if (cmp_lit(&l[i], &l[u - 1]))
            l[u++] = l[i];
        else
            free(l[i].s), l[i].s = NULL;
    rc = lit_trie(c, l, 0, u, 0);
    k = u;
out:
    for (int i = 0; i < k; i++) free(l[i].s);
    free(l);
    return rc;
}

/* ---- schemas -------------------------------------------------------------------------------- */
static const char *const annotations[] = {"title",    "description", "$schema",  "$id",
                                          "$comment", "default",     "examples", "deprecated",
                                          "readOnly", "writeOnly",   "$defs",    "definitions"};
static const char *const constraints[] = {"type",  "enum",       "const",    "anyOf",
                                          "$ref",  "properties", "required", "additionalProperties",
                                          "items", "minItems",   "maxItems"};

static int in_list(const char *s, const char *const *l, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!strcmp(s, l[i])) return 1;
    return 0;
}
#define IN(s, l) in_list(s, l, sizeof l / sizeof l[0])

static int schema_rule(js_ctx_t *c, const cJSON *s);

/* "#", "#/a/b~1c/0": a node of the root document, or NULL. */
static const cJSON *resolve(const cJSON *root, const char *ref) {
    if (ref[0] != '#') return NULL;
    const char *p = ref + 1;
    const cJSON *n = root;
    while (*p) {
        if (*p != '/') return NULL;
        p++;
        char tok[256];
        size_t k = 0;
        while (*p && *p != '/') {
            char ch = *p++;
            if (ch == '~') {
                if (*p == '0')
                    ch = '~';
                else if (*p == '1')
                    ch = '/';
                else
                    return NULL;
                p++;
            } else if (ch == '%') {
                return NULL; // percent-encoding is not supported
            }
            if (k + 1 >= sizeof tok) return NULL;
            tok[k++] = ch;
        }
        tok[k] = 0;
        if (cJSON_IsArray(n)) {
            char *end;
            long i = strtol(tok, &end, 10);
            if (!tok[0] || *end || i < 0) return NULL;
            n = cJSON_GetArrayItem(n, (int)i);
        } else if (cJSON_IsObject(n)) {
            n = cJSON_GetObjectItemCaseSensitive(n, tok);
        } else {
            return NULL;
        }
        if (!n) return NULL;
    }
    return n;
}

/* The rule of a $ref target (or the root): memoized, so recursion ends. */
static int target_rule(js_ctx_t *c, const cJSON *t) {
    for (int i = 0; i < c->n_memo; i++)
        if (c->memo[i].node == t) return c->memo[i].rule;
    int r = new_rule(c);
    if (r < 0) return r;
    if (c->n_memo == c->cap_memo) {
        int cap = c->cap_memo ? c->cap_memo * 2 : 16;
        js_memo_t *m = realloc(c->memo, sizeof *m * (size_t)cap);
        if (!m) return fail(c, LC_ENOMEM, "out of memory");
        c->memo = m;
        c->cap_memo = cap;
    }
    c->memo[c->n_memo++] = (js_memo_t){t, r};
    int sub = schema_rule(c, t);
    if (sub < 0) return sub;
    TRY(gram_alt(c->b, r));
    TRY(gram_add_ref(c->b, r, sub));
    return r;
}

static int json_key(js_ctx_t *c, int rule, const char *name) {
    cJSON *k = cJSON_CreateString(name);
    char *s = k ? cJSON_PrintUnformatted(k) : NULL;
    cJSON_Delete(k);
    if (!s) return fail(c, LC_ENOMEM, "out of memory");
    int rc = gram_add_bytes(c->b, rule, s, strlen(s));
    free(s);
    return chk(c, rc);
}

static int object_rule(js_ctx_t *c, const cJSON *s) {
    gram_builder_t *b = c->b;
    const cJSON *props = cJSON_GetObjectItemCaseSensitive(s, "properties");
    const cJSON *req = cJSON_GetObjectItemCaseSensitive(s, "required");
    const cJSON *addl = cJSON_GetObjectItemCaseSensitive(s, "additionalProperties");
    if (props && !cJSON_IsObject(props)) return fail(c, LC_EINVAL, "'properties' must be an object");
    if (req && !cJSON_IsArray(req)) return fail(c, LC_EINVAL, "'required' must be an array of strings");
    if (addl && !cJSON_IsBool(addl) && !cJSON_IsObject(addl))
        return fail(c, LC_EINVAL, "'additionalProperties' must be a boolean or a schema");
    int n_props = props ? cJSON_GetArraySize(props) : 0, n_req = req ? cJSON_GetArraySize(req) : 0;
    if (n_props + n_req > JS_MAX_PROPS)
        return fail(c, LC_ETOOLONG, "too many properties (at most %d per object)", JS_MAX_PROPS);
    const cJSON *e;
    cJSON_ArrayForEach(e, req) {
        if (!cJSON_IsString(e)) return fail(c, LC_EINVAL, "'required' must be an array of strings");
        for (const cJSON *f = req->child; f != e; f = f->next)
            if (!strcmp(f->valuestring, e->valuestring))
                return fail(c, LC_EINVAL, "'required' lists '%.64s' twice", e->valuestring);
    }
    /* value schema of properties not listed: addl, or anything */
    int addl_rule = -1;
    if (!cJSON_IsFalse(addl)) {
        size_t pl = path_push(c, "/additionalProperties");
        addl_rule = cJSON_IsObject(addl) ? schema_rule(c, addl) : rule_any(c);
        path_pop(c, pl);
        if (addl_rule < 0) return addl_rule;
    }
    if (n_props == 0 && n_req == 0) {
        if (addl_rule < 0) { // only {}
            int ws = rule_ws(c), r = new_rule(c);
            if (ws < 0 || r < 0) return ws < 0 ? ws : r;
            TRY(gram_alt(b, r));
            TRY(gram_add_byte(b, r, '{'));
            TRY(gram_add_ref(b, r, ws));
            TRY(gram_add_byte(b, r, '}'));
            return r;
        }
        return map_rule(c, addl_rule);
    }
    /* The ordered list: properties, then required names not among them. */
    int n = 0;
    const char **names = calloc((size_t)(n_props + n_req) + 1, sizeof *names);
    int *vals = calloc((size_t)(n_props + n_req) + 1, sizeof *vals);
    char *reqd = calloc((size_t)(n_props + n_req) + 1, 1);
    int rc = 0;
    if (!names || !vals || !reqd) {
        rc = fail(c, LC_ENOMEM, "out of memory");
        goto out;
    }
    cJSON_ArrayForEach(e, props) {
        for (int i = 0; i < n; i++)
            if (!strcmp(names[i], e->string)) {
                rc = fail(c, LC_EINVAL, "property '%.64s' is defined twice", e->string);
                goto out;
            }
        size_t pl = path_push(c, "/properties/%.64s", e->string);
        vals[n] = schema_rule(c, e);
        path_pop(c, pl);
        if (vals[n] < 0) {
            rc = vals[n];
            goto out;
        }
        names[n++] = e->string;
    }
    cJSON_ArrayForEach(e, req) {
        int i = 0;
        while (i < n && strcmp(names[i], e->valuestring)) i++;
        if (i == n) {
            if (addl_rule < 0) {
                rc = fail(c, LC_EINVAL,
                          "required property '%.64s' is not in 'properties' and additionalProperties is false",
                          e->valuestring);
                goto out;
            }
            names[n] = e->valuestring;
            vals[n++] = addl_rule;
        }
        reqd[i] = 1;
    }
    int ws = rule_ws(c);
    if (ws < 0) {
        rc = ws;
        goto out;
    }
    /* kv_i ::= "name" ws ":" ws value_i
     * tail_i ::= ws "," ws kv_i tail_(i+1) | tail_(i+1) (when i is optional); tail_n ::= ""
     * head_i ::= kv_i tail_(i+1) | head_(i+1) (when i is optional); head_n ::= ""
     * object ::= "{" ws head_0 ws "}" */
    int tail = new_rule(c), head = new_rule(c);
    if ((rc = tail < 0 ? tail : head < 0 ? head : 0)) goto out;
    if ((rc = chk(c, gram_alt(b, tail))) < 0 || (rc = chk(c, gram_alt(b, head))) < 0) goto out;
    for (int i = n - 1; i >= 0; i--) {
        int kv = new_rule(c), t = new_rule(c), h = new_rule(c);
        if ((rc = kv < 0 ? kv : t < 0 ? t : h < 0 ? h : 0)) goto out;
        if ((rc = chk(c, gram_alt(b, kv))) < 0 || (rc = json_key(c, kv, names[i])) < 0 ||
            (rc = chk(c, gram_add_ref(b, kv, ws))) < 0 || (rc = chk(c, gram_add_byte(b, kv, ':'))) < 0 ||
            (rc = chk(c, gram_add_ref(b, kv, ws))) < 0 || (rc = chk(c, gram_add_ref(b, kv, vals[i]))) < 0)
            goto out;
        if ((rc = chk(c, gram_alt(b, t))) < 0 || (rc = chk(c, gram_add_ref(b, t, ws))) < 0 ||
            (rc = chk(c, gram_add_byte(b, t, ','))) < 0 || (rc = chk(c, gram_add_ref(b, t, ws))) < 0 ||
            (rc = chk(c, gram_add_ref(b, t, kv))) < 0 || (rc = chk(c, gram_add_ref(b, t, tail))) < 0)
            goto out;
        if (!reqd[i] && ((rc = chk(c, gram_alt(b, t))) < 0 || (rc = chk(c, gram_add_ref(b, t, tail))) < 0)) goto out;
        if ((rc = chk(c, gram_alt(b, h))) < 0 || (rc = chk(c, gram_add_ref(b, h, kv))) < 0 ||
            (rc = chk(c, gram_add_ref(b, h, tail))) < 0)
            goto out;
        if (!reqd[i] && ((rc = chk(c, gram_alt(b, h))) < 0 || (rc = chk(c, gram_add_ref(b, h, head))) < 0)) goto out;
        tail = t;
        head = h;
    }
    int obj = new_rule(c);
    if ((rc = obj) < 0) goto out;
    if ((rc = chk(c, gram_alt(b, obj))) < 0 || (rc = chk(c, gram_add_byte(b, obj, '{'))) < 0 ||
        (rc = chk(c, gram_add_ref(b, obj, ws))) < 0 || (rc = chk(c, gram_add_ref(b, obj, head))) < 0 ||
        (rc = chk(c, gram_add_ref(b, obj, ws))) < 0 || (rc = chk(c, gram_add_byte(b, obj, '}'))) < 0)
        goto out;
    rc = obj;
out:
    free(names);
    free(vals);
    free(reqd);
    return rc;
}

static int items_rule(js_ctx_t *c, const cJSON *s) {
    const cJSON *items = cJSON_GetObjectItemCaseSensitive(s, "items");
    const cJSON *mn = cJSON_GetObjectItemCaseSensitive(s, "minItems");
    const cJSON *mx = cJSON_GetObjectItemCaseSensitive(s, "maxItems");
    double dmin = 0, dmax = -1;
    if (mn) {
        if (!cJSON_IsNumber(mn) || mn->valuedouble < 0 || mn->valuedouble != (double)(long)mn->valuedouble)
            return fail(c, LC_EINVAL, "'minItems' must be a non-negative integer");
        dmin = mn->valuedouble;
    }
    if (mx) {
        if (!cJSON_IsNumber(mx) || mx->valuedouble < 0 || mx->valuedouble != (double)(long)mx->valuedouble)
            return fail(c, LC_EINVAL, "'maxItems' must be a non-negative integer");
        dmax = mx->valuedouble;
    }
    if (dmax >= 0 && dmax < dmin) return fail(c, LC_EINVAL, "'maxItems' is less than 'minItems'");
    if (dmin > JS_MAX_ITEMS_SPAN || (dmax >= 0 && dmax - (dmin > 1 ? dmin : 1) > JS_MAX_ITEMS_SPAN))
        return fail(c, LC_ETOOLONG, "'minItems' and 'maxItems' - 'minItems' must be at most %d", JS_MAX_ITEMS_SPAN);
    int item;
    size_t pl = path_push(c, "/items");
    if (!items || cJSON_IsTrue(items))
        item = rule_any(c);
    else if (cJSON_IsObject(items))
        item = schema_rule(c, items);
    else
        item = fail(c, LC_EINVAL, "'items' must be a schema (tuple forms are not supported)");
    path_pop(c, pl);
    if (item < 0) return item;
    return array_rule(c, item, (int)dmin, (int)dmax);
}

enum { T_OBJECT = 1, T_ARRAY = 2, T_STRING = 4, T_NUMBER = 8, T_INTEGER = 16, T_BOOLEAN = 32, T_NULL = 64 };

static int type_bit(const char *t) {
    static const char *const names[] = {"object", "array", "string", "number", "integer", "boolean", "null"};
    for (int i = 0; i < 7; i++)
        if (!strcmp(t, names[i])) return 1 << i;
    return 0;
}

static int schema_rule(js_ctx_t *c, const cJSON *s) {
    if (cJSON_IsTrue(s)) return rule_any(c);
    if (cJSON_IsFalse(s)) return fail(c, LC_EINVAL, "the schema 'false' admits no value");
    if (!cJSON_IsObject(s)) return fail(c, LC_EINVAL, "a schema must be an object or a boolean");
    if (++c->depth > JS_MAX_DEPTH) return fail(c, LC_ETOOLONG, "the schema nests deeper than %d levels", JS_MAX_DEPTH);
    int rc = 0, n_constraints = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, s) {
        if (IN(e->string, constraints)) {
            n_constraints++;
            continue;
        }
        if (IN(e->string, annotations)) continue;
        rc = fail(c, LC_EINVAL, "'%.64s' is not supported in response schemas", e->string);
        goto out;
    }
    const cJSON *ref = cJSON_GetObjectItemCaseSensitive(s, "$ref");
    const cJSON *any = cJSON_GetObjectItemCaseSensitive(s, "anyOf");
    const cJSON *en = cJSON_GetObjectItemCaseSensitive(s, "enum");
    const cJSON *cst = cJSON_GetObjectItemCaseSensitive(s, "const");
    const cJSON *ty = cJSON_GetObjectItemCaseSensitive(s, "type");
    unsigned types = 0;
    if (ty) {
        if (cJSON_IsString(ty)) {
            types = (unsigned)type_bit(ty->valuestring);
            if (!types) {
                rc = fail(c, LC_EINVAL, "unknown type '%.64s'", ty->valuestring);
                goto out;
            }
        } else if (cJSON_IsArray(ty) && cJSON_GetArraySize(ty) > 0) {
            cJSON_ArrayForEach(e, ty) {
                int t = cJSON_IsString(e) ? type_bit(e->valuestring) : 0;
                if (!t) {
                    rc = fail(c, LC_EINVAL, "'type' must be a type name or an array of type names");
                    goto out;
                }
                types |= (unsigned)t;
            }
        } else {
            rc = fail(c, LC_EINVAL, "'type' must be a type name or an array of type names");
            goto out;
        }
    }
    if (ref) {
        if (n_constraints != 1) {
            rc = fail(c, LC_EINVAL, "'$ref' cannot be combined with other constraints");
            goto out;
        }
        const cJSON *t = cJSON_IsString(ref) ? resolve(c->root, ref->valuestring) : NULL;
        if (!t) {
            rc = fail(c, LC_EINVAL, "cannot resolve '$ref' %.80s (only local references such as #/$defs/name)",
                      cJSON_IsString(ref) ? ref->valuestring : "(not a string)");
            goto out;
        }
        char saved[sizeof c->path];
        memcpy(saved, c->path, sizeof saved);
        snprintf(c->path, sizeof c->path, "%s", ref->valuestring);
        rc = target_rule(c, t);
        if (rc >= 0) memcpy(c->path, saved, sizeof saved);
        goto out;
    }
    if (en || cst) {
        if (en && !cJSON_IsArray(en)) {
            rc = fail(c, LC_EINVAL, "'enum' must be an array");
            goto out;
        }
        if (en && cst) {
            rc = fail(c, LC_EINVAL, "'enum' and 'const' cannot be combined");
            goto out;
        }
        if (any) {
            rc = fail(c, LC_EINVAL, "'anyOf' cannot be combined with 'enum' or 'const'");
            goto out;
        }
        size_t pl = path_push(c, en ? "/enum" : "/const");
        rc = enum_rule(c, en ? en : cst, !en, types);
        path_pop(c, pl);
        goto out;
    }
    if (any) {
        int n = cJSON_IsArray(any) ? cJSON_GetArraySize(any) : 0;
        if (n == 0) {
            rc = fail(c, LC_EINVAL, "'anyOf' must be a non-empty array of schemas");
            goto out;
        }
        if (n > JS_MAX_ANYOF) {
            rc = fail(c, LC_ETOOLONG, "'anyOf' has more than %d branches", JS_MAX_ANYOF);
            goto out;
        }
        if (n_constraints != 1) {
            rc = fail(c, LC_EINVAL, "'anyOf' cannot be combined with other constraints; move them into each branch");
            goto out;
        }
        int r = new_rule(c), i = 0;
        if ((rc = r) < 0) goto out;
        cJSON_ArrayForEach(e, any) {
            size_t pl = path_push(c, "/anyOf/%d", i++);
            int sub = schema_rule(c, e);
            if (sub < 0) {
                rc = sub;
                goto out;
            }
            path_pop(c, pl);
            if ((rc = chk(c, gram_alt(c->b, r))) < 0 || (rc = chk(c, gram_add_ref(c->b, r, sub))) < 0) goto out;
        }
        rc = r;
        goto out;
    }
    if (!types) {
        int obj = cJSON_GetObjectItemCaseSensitive(s, "properties") ||
                  cJSON_GetObjectItemCaseSensitive(s, "required") ||
                  cJSON_GetObjectItemCaseSensitive(s, "additionalProperties");
        int arr = cJSON_GetObjectItemCaseSensitive(s, "items") || cJSON_GetObjectItemCaseSensitive(s, "minItems") ||
                  cJSON_GetObjectItemCaseSensitive(s, "maxItems");
        if (!obj && !arr) {
            rc = rule_any(c);
            goto out;
        }
        types = (obj ? T_OBJECT : 0) | (arr ? T_ARRAY : 0);
    }
    int alts[7], n_alts = 0;
    for (int t = 1; t <= T_NULL; t <<= 1) {
        if (!(types & (unsigned)t)) continue;
        if (t == T_INTEGER && (types & T_NUMBER)) continue; // number covers integers
        int r = t == T_OBJECT    ? object_rule(c, s)
                : t == T_ARRAY   ? items_rule(c, s)
                : t == T_STRING  ? rule_string(c)
                : t == T_NUMBER  ? rule_num(c, 0)
                : t == T_INTEGER ? rule_num(c, 1)
                : t == T_BOOLEAN ? rule_bool(c)
                                 : rule_null(c);
        if (r < 0) {
            rc = r;
            goto out;
        }
        alts[n_alts++] = r;
    }
    if (n_alts == 1) {
        rc = alts[0];
        goto out;
    }
    int r = new_rule(c);
    if ((rc = r) < 0) goto out;
    for (int i = 0; i < n_alts; i++)
        if ((rc = chk(c, gram_alt(c->b, r))) < 0 || (rc = chk(c, gram_add_ref(c->b, r, alts[i]))) < 0) goto out;
    rc = r;
out:
    c->depth--;
    return rc;
}

/* ---- entry points -------------------------------------------------------------------------- */
js_ctx_t *js_ctx_create(gram_builder_t *b) {
    js_ctx_t *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->b = b;
    c->ws = c->string = c->number = c->integer = c->boolean = c->null = c->any = c->any_obj = -1;
    for (int i = 0; i <= JS_FRAC_DIGITS; i++) c->digits[i] = -1;
    return c;
}

void js_ctx_destroy(js_ctx_t *c) {
    if (!c) return;
    free(c->memo);
    free(c);
}

int js_schema_rule(js_ctx_t *c, const cJSON *schema, const char *where, char *err, size_t errlen) {
    c->root = schema;
    c->err = err;
    c->errlen = errlen;
    if (err && errlen) err[0] = 0;
    snprintf(c->path, sizeof c->path, "%s#", where ? where : "");
    c->depth = 0;
    return target_rule(c, schema);
}

static gram_t *finish(gram_builder_t *b, int root, int *status, char *err, size_t errlen) {
    if (root < 0) {
        *status = root;
        return NULL;
    }
    gram_t *g = gram_builder_finish(b, root, status, err, errlen);
    return g;
}

gram_t *js_compile_schema(const cJSON *schema, const char *where, int *status, char *err, size_t errlen) {
    gram_builder_t *b = gram_builder_create(NULL);
    js_ctx_t *c = b ? js_ctx_create(b) : NULL;
    gram_t *g = NULL;
    int st = LC_ENOMEM;
    if (!c) {
        snprintf(err, errlen, "out of memory");
    } else {
        g = finish(b, js_schema_rule(c, schema, where, err, errlen), &st, err, errlen);
    }
    js_ctx_destroy(c);
    gram_builder_destroy(b);
    if (status) *status = g ? 0 : st;
    return g;
}

gram_t *js_compile_any_object(int *status, char *err, size_t errlen) {
    gram_builder_t *b = gram_builder_create(NULL);
    js_ctx_t *c = b ? js_ctx_create(b) : NULL;
    gram_t *g = NULL;
    int st = LC_ENOMEM;
    if (!c) {
        snprintf(err, errlen, "out of memory");
    } else {
        c->err = err;
        c->errlen = errlen;
        if (errlen) err[0] = 0;
        g = finish(b, js_any_object_rule(c), &st, err, errlen);
    }
    js_ctx_destroy(c);
    gram_builder_destroy(b);
    if (status) *status = g ? 0 : st;
    return g;
}

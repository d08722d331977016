/* The rules every schema shares, made once per compiler: whitespace,
 * strings (well-formed UTF-8 and escapes), numbers, the literals, any JSON
 * value, and the map and array shapes. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "common/status.h"
#include "model/js_internal.h"

/* ---- errors ------------------------------------------------------------------------ */
int js__fail(js_ctx_t *c, int status, const char *fmt, ...) {
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
int js__chk(js_ctx_t *c, int rc) {
    if (rc >= 0) return rc;
    if (rc == LC_ETOOLONG) return js__fail(c, rc, "the schema is too large to compile");
    if (rc == LC_ENOMEM) return js__fail(c, rc, "out of memory");
    return js__fail(c, rc, "internal grammar error");
}


/* ---- shared rules ---------------------------------------------------------------------- */
int js__new_rule(js_ctx_t *c) { return js__chk(c, gram_rule(c->b)); }

/* ws ::= "" | " " | "\n" indent; indent_k ::= [ \t] indent_(k+1) | "" */
int js__ws(js_ctx_t *c) {
    if (c->ws >= 0) return c->ws;
    gram_set_t st = {{0}};
    gram_set_add_range(&st, ' ', ' ');
    gram_set_add_range(&st, '\t', '\t');
    int next = -1;
    for (int k = JS_WS_INDENT; k >= 0; k--) {
        int r = js__new_rule(c);
        if (r < 0) return r;
        TRY(gram_alt(c->b, r));
        if (k < JS_WS_INDENT) {
            TRY(gram_add_set(c->b, r, &st));
            TRY(gram_add_ref(c->b, r, next));
            TRY(gram_alt(c->b, r));
        }
        next = r;
    }
    int ws = js__new_rule(c);
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
int js__string(js_ctx_t *c) {
    if (c->string >= 0) return c->string;
    gram_builder_t *b = c->b;
    int ch = js__new_rule(c), chars = js__new_rule(c), str = js__new_rule(c), esc = js__new_rule(c),
        hex4 = js__new_rule(c);
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
    int r = js__new_rule(c);
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
int js__num(js_ctx_t *c, int integer) {
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
    int ip = js__new_rule(c), minus = js__new_rule(c), r = js__new_rule(c);
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
        int frac = js__new_rule(c), exp = js__new_rule(c), sg = js__new_rule(c);
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
    int r = js__new_rule(c);
    if (r < 0) return r;
    for (int i = 0; i < n; i++) {
        TRY(gram_alt(c->b, r));
        TRY(gram_add_bytes(c->b, r, lits[i], strlen(lits[i])));
    }
    return *slot = r;
}

int js__bool(js_ctx_t *c) {
    static const char *const l[] = {"true", "false"};
    return rule_literals(c, &c->boolean, l, 2);
}

int js__null(js_ctx_t *c) {
    static const char *const l[] = {"null"};
    return rule_literals(c, &c->null, l, 1);
}

/* "{" ws "}" | "{" ws kv more ws "}", kv ::= string ws ":" ws value,
 * more ::= ws "," ws kv more | "" */
int js__map(js_ctx_t *c, int value) {
    gram_builder_t *b = c->b;
    int ws = js__ws(c), str = js__string(c);
    if (ws < 0 || str < 0) return ws < 0 ? ws : str;
    int kv = js__new_rule(c), more = js__new_rule(c), obj = js__new_rule(c);
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
int js__array(js_ctx_t *c, int item, int min, int max) {
    gram_builder_t *b = c->b;
    int ws = js__ws(c);
    if (ws < 0) return ws;
    int arr = js__new_rule(c);
    if (arr < 0) return arr;
    if (min == 0) {
        TRY(gram_alt(b, arr));
        TRY(gram_add_byte(b, arr, '['));
        TRY(gram_add_ref(b, arr, ws));
        TRY(gram_add_byte(b, arr, ']'));
        if (max == 0) return arr;
    }
    /* opt: what may follow the first max(min, 1) items */
    int opt = js__new_rule(c);
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
            int r = js__new_rule(c);
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
int js__any(js_ctx_t *c) {
    if (c->any >= 0) return c->any;
    int any = js__new_rule(c);
    if (any < 0) return any;
    c->any = any;
    int obj = js__map(c, any), arr = js__array(c, any, 0, -1), str = js__string(c), num = js__num(c, 0),
        bo = js__bool(c), nu = js__null(c);
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
    int rc = js__any(c);
    return rc < 0 ? rc : c->any_obj;
}

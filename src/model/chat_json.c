/* A small recursive-descent JSON reader that prints as it reads, in
 * Python's json.dumps style (chat_json.h). Strings are decoded (escapes,
 * surrogate pairs) and re-escaped the way Python does with
 * ensure_ascii=False: only '"', '\\' and control characters. */
#include "model/chat_json.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/buf.h"
#include "common/status.h"

#define PJ_MAX_DEPTH 512

/* Appends to b, or does nothing when b is NULL (a scan that keeps nothing). */
static void put(lc_buf_t *b, const char *s, size_t n) {
    if (b) lc_buf_put(b, s, n);
}

typedef struct {
    const char *p, *end;
    lc_buf_t *out; // NULL: scan only
    int depth;
} pj_t;

static void emit(pj_t *j, const char *s, size_t n) {
    if (j->out) put(j->out, s, n);
}

static void skip_ws(pj_t *j) {
    while (j->p < j->end && (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r')) j->p++;
}

static int hexv(char c) {
    return c >= '0' && c <= '9'   ? c - '0'
           : c >= 'a' && c <= 'f' ? c - 'a' + 10
           : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                  : -1;
}

static int hex4(const char *p, const char *end, unsigned *v) {
    if (end - p < 4) return -1;
    *v = 0;
    for (int i = 0; i < 4; i++) {
        int h = hexv(p[i]);
        if (h < 0) return -1;
        *v = *v << 4 | (unsigned)h;
    }
    return 0;
}

static size_t utf8_enc(unsigned cp, char *o) {
    if (cp < 0x80) {
        o[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (char)(0xC0 | cp >> 6);
        o[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (char)(0xE0 | cp >> 12);
        o[1] = (char)(0x80 | (cp >> 6 & 0x3F));
        o[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (char)(0xF0 | cp >> 18);
    o[1] = (char)(0x80 | (cp >> 12 & 0x3F));
    o[2] = (char)(0x80 | (cp >> 6 & 0x3F));
    o[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* Length of a well-formed UTF-8 sequence at p, or 0. */
static size_t utf8_len(const unsigned char *p, const unsigned char *end) {
    unsigned c = p[0];
    size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (!n || (size_t)(end - p) < n) return 0;
    for (size_t i = 1; i < n; i++)
        if ((p[i] & 0xC0) != 0x80) return 0;
    if (n == 2 && c < 0xC2) return 0;
    if (n == 3) {
        unsigned cp = (c & 0xF) << 12 | (p[1] & 0x3Fu) << 6 | (p[2] & 0x3F);
        if (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
    }
    if (n == 4) {
        unsigned cp = (c & 7) << 18 | (p[1] & 0x3Fu) << 12 | (p[2] & 0x3Fu) << 6 | (p[3] & 0x3F);
        if (cp < 0x10000 || cp > 0x10FFFF) return 0;
    }
    return n;
}

/* Reads a string; its decoded bytes go to dec (may be NULL), its Python
 * rendering to the output. */
static int string(pj_t *j, lc_buf_t *dec) {
    if (j->p >= j->end || *j->p != '"') return -1;
    j->p++;
    emit(j, "\"", 1);
    while (j->p < j->end && *j->p != '"') {
        char u[8];
        size_t un;
        unsigned char c = (unsigned char)*j->p;
        if (c == '\\') {
            if (j->end - j->p < 2) return -1;
            char e = j->p[1];
            j->p += 2;
            unsigned cp;
            switch (e) {
            case '"': cp = '"'; break;
            case '\\': cp = '\\'; break;
            case '/': cp = '/'; break;
            case 'b': cp = '\b'; break;
            case 'f': cp = '\f'; break;
            case 'n': cp = '\n'; break;
            case 'r': cp = '\r'; break;
            case 't': cp = '\t'; break;
            case 'u':
                if (hex4(j->p, j->end, &cp)) return -1;
                j->p += 4;
                if (cp >= 0xD800 && cp <= 0xDBFF) {
                    unsigned lo;
                    if (j->end - j->p < 6 || j->p[0] != '\\' || j->p[1] != 'u' || hex4(j->p + 2, j->end, &lo) ||
                        lo < 0xDC00 || lo > 0xDFFF)
                        return -1; // a lone surrogate
                    j->p += 6;
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
                    return -1;
                }
                break;
            default: return -1;
            }
            un = utf8_enc(cp, u);
        } else {
            if (c < 0x20) return -1;
            un = utf8_len((const unsigned char *)j->p, (const unsigned char *)j->end);
            if (!un) return -1;
            memcpy(u, j->p, un);
            j->p += un;
        }
        if (dec) put(dec, u, un);
        if (un == 1 && (unsigned char)u[0] < 0x20) {
            static const char *const named[0x20] = {[8] = "\\b", [9] = "\\t", [10] = "\\n", [12] = "\\f", [13] = "\\r"};
            char esc[8];
            if (named[(unsigned char)u[0]])
                emit(j, named[(unsigned char)u[0]], 2);
            else
                emit(j, esc, (size_t)snprintf(esc, sizeof esc, "\\u%04x", (unsigned char)u[0]));
        } else if (un == 1 && (u[0] == '"' || u[0] == '\\')) {
            char esc[2] = {'\\', u[0]};
            emit(j, esc, 2);
        } else {
            emit(j, u, un);
        }
    }
    if (j->p >= j->end) return -1;
    j->p++;
    emit(j, "\"", 1);
    return 0;
}

void chat_json_float(double d, char *buf, size_t n) {
    if (isnan(d)) {
        snprintf(buf, n, "NaN");
        return;
    }
    if (isinf(d)) {
        snprintf(buf, n, d < 0 ? "-Infinity" : "Infinity");
        return;
    }
    if (d == 0) {
        snprintf(buf, n, signbit(d) ? "-0.0" : "0.0");
        return;
    }
    /* shortest round-trip digits, as repr() */
    char tmp[48];
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(tmp, sizeof tmp, "%.*e", prec - 1, d);
        if (strtod(tmp, NULL) == d) break;
    }
    const char *p = tmp;
    int neg = *p == '-';
    if (neg) p++;
    char digits[24];
    int nd = 0;
    for (; *p && *p != 'e'; p++)
        if (*p != '.') digits[nd++] = *p;
    while (nd > 1 && digits[nd - 1] == '0') nd--;
    digits[nd] = 0;
    int exp = atoi(p + 1), decpt = exp + 1;
    char out[64];
    size_t o = 0;
    if (neg) out[o++] = '-';
    if (decpt <= -4 || decpt > 16) {
        out[o++] = digits[0];
        if (nd > 1) {
            out[o++] = '.';
            memcpy(out + o, digits + 1, (size_t)nd - 1);
            o += (size_t)nd - 1;
        }
        o += (size_t)snprintf(out + o, sizeof out - o, "e%c%02d", exp < 0 ? '-' : '+', exp < 0 ? -exp : exp);
    } else if (decpt <= 0) {
        out[o++] = '0';
        out[o++] = '.';
        for (int i = 0; i < -decpt; i++) out[o++] = '0';
        memcpy(out + o, digits, (size_t)nd);
        o += (size_t)nd;
    } else if (decpt >= nd) {
        memcpy(out + o, digits, (size_t)nd);
        o += (size_t)nd;
        for (int i = nd; i < decpt; i++) out[o++] = '0';
        out[o++] = '.';
        out[o++] = '0';
    } else {
        memcpy(out + o, digits, (size_t)decpt);
        o += (size_t)decpt;
        out[o++] = '.';
        memcpy(out + o, digits + decpt, (size_t)(nd - decpt));
        o += (size_t)(nd - decpt);
    }
    out[o] = 0;
    snprintf(buf, n, "%s", out);
}

static int number(pj_t *j) {
    const char *s = j->p;
    int is_float = 0;
    if (j->p < j->end && *j->p == '-') j->p++;
    if (j->p >= j->end || !(*j->p >= '0' && *j->p <= '9')) return -1;
    if (*j->p == '0')
        j->p++;
    else
        while (j->p < j->end && *j->p >= '0' && *j->p <= '9') j->p++;
    if (j->p < j->end && *j->p == '.') {
        is_float = 1;
        j->p++;
        if (j->p >= j->end || !(*j->p >= '0' && *j->p <= '9')) return -1;
        while (j->p < j->end && *j->p >= '0' && *j->p <= '9') j->p++;
    }
    if (j->p < j->end && (*j->p == 'e' || *j->p == 'E')) {
        is_float = 1;
        j->p++;
        if (j->p < j->end && (*j->p == '+' || *j->p == '-')) j->p++;
        if (j->p >= j->end || !(*j->p >= '0' && *j->p <= '9')) return -1;
        while (j->p < j->end && *j->p >= '0' && *j->p <= '9') j->p++;
    }
    size_t n = (size_t)(j->p - s);
    if (!is_float) { // a Python int: printed back exactly, but -0 is 0
        if (n == 2 && s[0] == '-' && s[1] == '0')
            emit(j, "0", 1);
        else
            emit(j, s, n);
        return 0;
    }
    char tmp[512], buf[64];
    if (n >= sizeof tmp) return -1;
    memcpy(tmp, s, n);
    tmp[n] = 0;
    chat_json_float(strtod(tmp, NULL), buf, sizeof buf);
    emit(j, buf, strlen(buf));
    return 0;
}

static int lit(pj_t *j, const char *w) {
    size_t n = strlen(w);
    if ((size_t)(j->end - j->p) < n || memcmp(j->p, w, n)) return -1;
    j->p += n;
    emit(j, w, n);
    return 0;
}

typedef struct {
    char *s;
    size_t n;
} key_t_;

static int cmp_key(const void *a, const void *b) {
    const key_t_ *x = a, *y = b;
    int c = memcmp(x->s, y->s, x->n < y->n ? x->n : y->n);
    return c ? c : (x->n < y->n ? -1 : x->n > y->n);
}

static int value(pj_t *j);

static int object(pj_t *j) {
    j->p++;
    emit(j, "{", 1);
    skip_ws(j);
    key_t_ *keys = NULL;
    int n = 0, cap = 0, rc = -1;
    if (j->p < j->end && *j->p == '}') {
        j->p++;
        emit(j, "}", 1);
        return 0;
    }
    for (;;) {
        skip_ws(j);
        lc_buf_t k = {0};
        if (string(j, &k) || k.oom) {
            free(k.p);
            goto out;
        }
        if (n == cap) {
            cap = cap ? cap * 2 : 8;
            key_t_ *nk = realloc(keys, sizeof *nk * (size_t)cap);
            if (!nk) {
                free(k.p);
                goto out;
            }
            keys = nk;
        }
        keys[n].s = k.p ? k.p : calloc(1, 1);
        keys[n++].n = k.n;
        skip_ws(j);
        if (j->p >= j->end || *j->p != ':') goto out;
        j->p++;
        emit(j, ": ", 2);
        skip_ws(j);
        if (value(j)) goto out;
        skip_ws(j);
        if (j->p < j->end && *j->p == ',') {
            j->p++;
            emit(j, ", ", 2);
            continue;
        }
        if (j->p < j->end && *j->p == '}') {
            j->p++;
            emit(j, "}", 1);
            break;
        }
        goto out;
    }
    qsort(keys, (size_t)n, sizeof *keys, cmp_key);
    rc = 0;
    for (int i = 1; i < n; i++)
        if (!cmp_key(&keys[i - 1], &keys[i])) rc = -1;
out:
    for (int i = 0; i < n; i++) free(keys[i].s);
    free(keys);
    return rc;
}

static int array(pj_t *j) {
    j->p++;
    emit(j, "[", 1);
    skip_ws(j);
    if (j->p < j->end && *j->p == ']') {
        j->p++;
        emit(j, "]", 1);
        return 0;
    }
    for (;;) {
        skip_ws(j);
        if (value(j)) return -1;
        skip_ws(j);
        if (j->p < j->end && *j->p == ',') {
            j->p++;
            emit(j, ", ", 2);
            continue;
        }
        if (j->p < j->end && *j->p == ']') {
            j->p++;
            emit(j, "]", 1);
            return 0;
        }
        return -1;
    }
}

static int value(pj_t *j) {
    if (j->p >= j->end || ++j->depth > PJ_MAX_DEPTH) return -1;
    int rc;
    switch (*j->p) {
    case '{': rc = object(j); break;
    case '[': rc = array(j); break;
    case '"': rc = string(j, NULL); break;
    case 't': rc = lit(j, "true"); break;
    case 'f': rc = lit(j, "false"); break;
    case 'n': rc = lit(j, "null"); break;
    default: rc = number(j);
    }
    j->depth--;
    return rc;
}

int chat_json_render(const char *json, size_t len, char **out) {
    lc_buf_t b = {0};
    pj_t j = {.p = json, .end = json + len, .out = &b};
    *out = NULL;
    skip_ws(&j);
    int rc = value(&j);
    skip_ws(&j);
    if (!rc && j.p != j.end) rc = -1;
    if (b.oom) {
        free(b.p);
        return LC_ENOMEM;
    }
    if (rc) {
        free(b.p);
        return LC_EINVAL;
    }
    *out = b.p ? b.p : calloc(1, 1);
    return *out ? 0 : LC_ENOMEM;
}

int chat_json_member(const char *json, size_t len, const char *key, const char **val, size_t *vlen) {
    pj_t j = {.p = json, .end = json + len};
    skip_ws(&j);
    if (j.p >= j.end || *j.p != '{') return LC_EINVAL;
    j.p++;
    skip_ws(&j);
    if (j.p < j.end && *j.p == '}') return LC_ENOTFOUND;
    for (;;) {
        skip_ws(&j);
        lc_buf_t k = {0};
        if (string(&j, &k)) {
            free(k.p);
            return LC_EINVAL;
        }
        int match = k.p && k.n == strlen(key) && !memcmp(k.p, key, k.n);
        if (!k.p && !key[0]) match = 1;
        free(k.p);
        skip_ws(&j);
        if (j.p >= j.end || *j.p != ':') return LC_EINVAL;
        j.p++;
        skip_ws(&j);
        const char *v0 = j.p;
        if (value(&j)) return LC_EINVAL;
        if (match) {
            *val = v0;
            *vlen = (size_t)(j.p - v0);
            return 0;
        }
        skip_ws(&j);
        if (j.p < j.end && *j.p == ',') {
            j.p++;
            continue;
        }
        return j.p < j.end && *j.p == '}' ? LC_ENOTFOUND : LC_EINVAL;
    }
}

int chat_json_element(const char *json, size_t len, int i, const char **val, size_t *vlen) {
    pj_t j = {.p = json, .end = json + len};
    skip_ws(&j);
    if (j.p >= j.end || *j.p != '[') return LC_EINVAL;
    j.p++;
    skip_ws(&j);
    if (j.p < j.end && *j.p == ']') return LC_ENOTFOUND;
    for (int k = 0;; k++) {
        skip_ws(&j);
        const char *v0 = j.p;
        if (value(&j)) return LC_EINVAL;
        if (k == i) {
            *val = v0;
            *vlen = (size_t)(j.p - v0);
            return 0;
        }
        skip_ws(&j);
        if (j.p < j.end && *j.p == ',') {
            j.p++;
            continue;
        }
        return j.p < j.end && *j.p == ']' ? LC_ENOTFOUND : LC_EINVAL;
    }
}

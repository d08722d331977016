/* The JSON schema compiler: one recursive pass over the schema tree that
 * writes grammar rules. The pieces every schema shares (whitespace,
 * strings, numbers, any value) live in json_rules.c. $ref targets are memoized by their
 * node, which is what makes recursive schemas finite; everything else is
 * compiled where it stands. */
#include "model/json_schema.h"

#include <cjson/cJSON.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/status.h"
#include "model/js_internal.h"

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
    int r = js__new_rule(c);
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
    if (c->n_enum + n > JS_MAX_ENUM) return js__fail(c, LC_ETOOLONG, "too many enum values (at most %d)", JS_MAX_ENUM);
    c->n_enum += n;
    lit_t *l = calloc((size_t)n + 1, sizeof *l);
    if (!l) return js__fail(c, LC_ENOMEM, "out of memory");
    int k = 0, rc = 0;
    const cJSON *v = single ? values : (values ? values->child : NULL);
    for (; v && k < n; v = single ? NULL : v->next) {
        if (!type_ok(v, types)) continue;
        char *s = cJSON_PrintUnformatted(v);
        if (!s) {
            rc = js__fail(c, LC_ENOMEM, "out of memory");
            goto out;
        }
        l[k].s = s;
        l[k++].n = strlen(s);
    }
    if (k == 0) {
        rc = js__fail(c, LC_EINVAL, "no value of 'enum'/'const' matches 'type'");
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
    int r = js__new_rule(c);
    if (r < 0) return r;
    if (c->n_memo == c->cap_memo) {
        int cap = c->cap_memo ? c->cap_memo * 2 : 16;
        js_memo_t *m = realloc(c->memo, sizeof *m * (size_t)cap);
        if (!m) return js__fail(c, LC_ENOMEM, "out of memory");
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
    if (!s) return js__fail(c, LC_ENOMEM, "out of memory");
    int rc = gram_add_bytes(c->b, rule, s, strlen(s));
    free(s);
    return js__chk(c, rc);
}

/* The checks of an object schema's keywords; n: properties plus required. */
static int check_object_keywords(js_ctx_t *c, const cJSON *props, const cJSON *req, const cJSON *addl, int n) {
    if (props && !cJSON_IsObject(props)) return js__fail(c, LC_EINVAL, "'properties' must be an object");
    if (req && !cJSON_IsArray(req)) return js__fail(c, LC_EINVAL, "'required' must be an array of strings");
    if (addl && !cJSON_IsBool(addl) && !cJSON_IsObject(addl))
        return js__fail(c, LC_EINVAL, "'additionalProperties' must be a boolean or a schema");
    if (n > JS_MAX_PROPS) return js__fail(c, LC_ETOOLONG, "too many properties (at most %d per object)", JS_MAX_PROPS);
    const cJSON *e;
    cJSON_ArrayForEach(e, req) {
        if (!cJSON_IsString(e)) return js__fail(c, LC_EINVAL, "'required' must be an array of strings");
        for (const cJSON *f = req->child; f != e; f = f->next)
            if (!strcmp(f->valuestring, e->valuestring))
                return js__fail(c, LC_EINVAL, "'required' lists '%.64s' twice", e->valuestring);
    }
    return 0;
}

/* The value rule of properties not listed in *rule: additionalProperties'
 * schema, or any value; -1 when they are refused (false). */
static int additional_rule(js_ctx_t *c, const cJSON *addl, int *rule) {
    *rule = -1;
    if (cJSON_IsFalse(addl)) return 0;
    size_t pl = path_push(c, "/additionalProperties");
    int r = cJSON_IsObject(addl) ? schema_rule(c, addl) : js__any(c);
    path_pop(c, pl);
    if (r < 0) return r;
    *rule = r;
    return 0;
}

/* "{" ws "}": the only object when nothing may be in it. */
static int empty_object_rule(js_ctx_t *c) {
    int ws = js__ws(c), r = js__new_rule(c);
    if (ws < 0 || r < 0) return ws < 0 ? ws : r;
    TRY(gram_alt(c->b, r));
    TRY(gram_add_byte(c->b, r, '{'));
    TRY(gram_add_ref(c->b, r, ws));
    TRY(gram_add_byte(c->b, r, '}'));
    return r;
}

/* An object's members in the order they are written: the properties, then
 * the required names not among them (valued by additionalProperties). */
typedef struct {
    const char **names; // (n)
    int *vals;          // (n) the rule of each value
    char *reqd;         // (n) 1 when required
    int n;
} members_t;

static int list_members(js_ctx_t *c, const cJSON *props, const cJSON *req, int addl_rule, members_t *m) {
    const cJSON *e;
    cJSON_ArrayForEach(e, props) {
        for (int i = 0; i < m->n; i++)
            if (!strcmp(m->names[i], e->string))
                return js__fail(c, LC_EINVAL, "property '%.64s' is defined twice", e->string);
        size_t pl = path_push(c, "/properties/%.64s", e->string);
        m->vals[m->n] = schema_rule(c, e);
        path_pop(c, pl);
        if (m->vals[m->n] < 0) return m->vals[m->n];
        m->names[m->n++] = e->string;
    }
    cJSON_ArrayForEach(e, req) {
        int i = 0;
        while (i < m->n && strcmp(m->names[i], e->valuestring)) i++;
        if (i == m->n) {
            if (addl_rule < 0)
                return js__fail(c, LC_EINVAL,
                                "required property '%.64s' is not in 'properties' and additionalProperties is false",
                                e->valuestring);
            m->names[m->n] = e->valuestring;
            m->vals[m->n++] = addl_rule;
        }
        m->reqd[i] = 1;
    }
    return 0;
}

/* kv ::= "name" ws ":" ws value */
static int fill_member(js_ctx_t *c, int kv, const char *name, int ws, int value) {
    TRY(gram_alt(c->b, kv));
    int rc = json_key(c, kv, name);
    if (rc < 0) return rc;
    TRY(gram_add_ref(c->b, kv, ws));
    TRY(gram_add_byte(c->b, kv, ':'));
    TRY(gram_add_ref(c->b, kv, ws));
    TRY(gram_add_ref(c->b, kv, value));
    return 0;
}

/* object ::= "{" ws head_0 ws "}", where
 * kv_i ::= "name" ws ":" ws value_i
 * tail_i ::= ws "," ws kv_i tail_(i+1) | tail_(i+1) (when i is optional); tail_n ::= ""
 * head_i ::= kv_i tail_(i+1) | head_(i+1) (when i is optional); head_n ::= "" */
static int members_object_rule(js_ctx_t *c, const members_t *m) {
    gram_builder_t *b = c->b;
    int ws = js__ws(c);
    if (ws < 0) return ws;
    int tail = js__new_rule(c), head = js__new_rule(c);
    if (tail < 0 || head < 0) return tail < 0 ? tail : head;
    TRY(gram_alt(b, tail));
    TRY(gram_alt(b, head));
    for (int i = m->n - 1; i >= 0; i--) {
        int kv = js__new_rule(c), t = js__new_rule(c), h = js__new_rule(c);
        if (kv < 0 || t < 0 || h < 0) return kv < 0 ? kv : t < 0 ? t : h;
        int rc = fill_member(c, kv, m->names[i], ws, m->vals[i]);
        if (rc < 0) return rc;
        TRY(gram_alt(b, t));
        TRY(gram_add_ref(b, t, ws));
        TRY(gram_add_byte(b, t, ','));
        TRY(gram_add_ref(b, t, ws));
        TRY(gram_add_ref(b, t, kv));
        TRY(gram_add_ref(b, t, tail));
        if (!m->reqd[i]) {
            TRY(gram_alt(b, t));
            TRY(gram_add_ref(b, t, tail));
        }
        TRY(gram_alt(b, h));
        TRY(gram_add_ref(b, h, kv));
        TRY(gram_add_ref(b, h, tail));
        if (!m->reqd[i]) {
            TRY(gram_alt(b, h));
            TRY(gram_add_ref(b, h, head));
        }
        tail = t;
        head = h;
    }
    int obj = js__new_rule(c);
    if (obj < 0) return obj;
    TRY(gram_alt(b, obj));
    TRY(gram_add_byte(b, obj, '{'));
    TRY(gram_add_ref(b, obj, ws));
    TRY(gram_add_ref(b, obj, head));
    TRY(gram_add_ref(b, obj, ws));
    TRY(gram_add_byte(b, obj, '}'));
    return obj;
}

static int object_rule(js_ctx_t *c, const cJSON *s) {
    const cJSON *props = cJSON_GetObjectItemCaseSensitive(s, "properties");
    const cJSON *req = cJSON_GetObjectItemCaseSensitive(s, "required");
    const cJSON *addl = cJSON_GetObjectItemCaseSensitive(s, "additionalProperties");
    int n_props = props ? cJSON_GetArraySize(props) : 0, n_req = req ? cJSON_GetArraySize(req) : 0;
    int addl_rule, rc = check_object_keywords(c, props, req, addl, n_props + n_req);
    if (rc < 0 || (rc = additional_rule(c, addl, &addl_rule)) < 0) return rc;
    if (n_props == 0 && n_req == 0) return addl_rule < 0 ? empty_object_rule(c) : js__map(c, addl_rule);
    members_t m = {
        .names = calloc((size_t)(n_props + n_req) + 1, sizeof *m.names),
        .vals = calloc((size_t)(n_props + n_req) + 1, sizeof *m.vals),
        .reqd = calloc((size_t)(n_props + n_req) + 1, 1),
    };
    if (!m.names || !m.vals || !m.reqd)
        rc = js__fail(c, LC_ENOMEM, "out of memory");
    else if ((rc = list_members(c, props, req, addl_rule, &m)) >= 0)
        rc = members_object_rule(c, &m);
    free(m.names);
    free(m.vals);
    free(m.reqd);
    return rc;
}

/* A non-negative integer keyword (minItems, maxItems) into *out, which is
 * left alone when the keyword is absent. */
static int count_keyword(js_ctx_t *c, const cJSON *s, const char *key, double *out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(s, key);
    if (!v) return 0;
    if (!cJSON_IsNumber(v) || v->valuedouble < 0 || v->valuedouble != (double)(long)v->valuedouble)
        return js__fail(c, LC_EINVAL, "'%s' must be a non-negative integer", key);
    *out = v->valuedouble;
    return 0;
}

static int items_rule(js_ctx_t *c, const cJSON *s) {
    const cJSON *items = cJSON_GetObjectItemCaseSensitive(s, "items");
    double dmin = 0, dmax = -1;
    int rc;
    if ((rc = count_keyword(c, s, "minItems", &dmin)) < 0 || (rc = count_keyword(c, s, "maxItems", &dmax)) < 0)
        return rc;
    if (dmax >= 0 && dmax < dmin) return js__fail(c, LC_EINVAL, "'maxItems' is less than 'minItems'");
    if (dmin > JS_MAX_ITEMS_SPAN || (dmax >= 0 && dmax - (dmin > 1 ? dmin : 1) > JS_MAX_ITEMS_SPAN))
        return js__fail(c, LC_ETOOLONG, "'minItems' and 'maxItems' - 'minItems' must be at most %d", JS_MAX_ITEMS_SPAN);
    int item;
    size_t pl = path_push(c, "/items");
    if (!items || cJSON_IsTrue(items))
        item = js__any(c);
    else if (cJSON_IsObject(items))
        item = schema_rule(c, items);
    else
        item = js__fail(c, LC_EINVAL, "'items' must be a schema (tuple forms are not supported)");
    path_pop(c, pl);
    if (item < 0) return item;
    return js__array(c, item, (int)dmin, (int)dmax);
}

enum { T_OBJECT = 1, T_ARRAY = 2, T_STRING = 4, T_NUMBER = 8, T_INTEGER = 16, T_BOOLEAN = 32, T_NULL = 64 };

static int type_bit(const char *t) {
    static const char *const names[] = {"object", "array", "string", "number", "integer", "boolean", "null"};
    for (int i = 0; i < 7; i++)
        if (!strcmp(t, names[i])) return 1 << i;
    return 0;
}

/* The number of constraint keywords of schema s, or LC_EINVAL for a
 * keyword that is neither a constraint nor an annotation. */
static int count_constraints(js_ctx_t *c, const cJSON *s) {
    int n = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, s) {
        if (IN(e->string, constraints)) {
            n++;
            continue;
        }
        if (IN(e->string, annotations)) continue;
        return js__fail(c, LC_EINVAL, "'%.64s' is not supported in response schemas", e->string);
    }
    return n;
}

/* 'type' (a name or an array of names) as T_* bits into *types. */
static int parse_types(js_ctx_t *c, const cJSON *ty, unsigned *types) {
    if (cJSON_IsString(ty)) {
        *types = (unsigned)type_bit(ty->valuestring);
        if (!*types) return js__fail(c, LC_EINVAL, "unknown type '%.64s'", ty->valuestring);
        return 0;
    }
    if (!cJSON_IsArray(ty) || cJSON_GetArraySize(ty) == 0)
        return js__fail(c, LC_EINVAL, "'type' must be a type name or an array of type names");
    const cJSON *e;
    cJSON_ArrayForEach(e, ty) {
        int t = cJSON_IsString(e) ? type_bit(e->valuestring) : 0;
        if (!t) return js__fail(c, LC_EINVAL, "'type' must be a type name or an array of type names");
        *types |= (unsigned)t;
    }
    return 0;
}

/* {"$ref": ...}: the target's rule, compiled with the reference as the path. */
static int ref_rule(js_ctx_t *c, const cJSON *ref, int n_constraints) {
    if (n_constraints != 1) return js__fail(c, LC_EINVAL, "'$ref' cannot be combined with other constraints");
    const cJSON *t = cJSON_IsString(ref) ? resolve(c->root, ref->valuestring) : NULL;
    if (!t)
        return js__fail(c, LC_EINVAL, "cannot resolve '$ref' %.80s (only local references such as #/$defs/name)",
                        cJSON_IsString(ref) ? ref->valuestring : "(not a string)");
    char saved[sizeof c->path];
    memcpy(saved, c->path, sizeof saved);
    snprintf(c->path, sizeof c->path, "%s", ref->valuestring);
    int rc = target_rule(c, t);
    if (rc >= 0) memcpy(c->path, saved, sizeof saved);
    return rc;
}

/* 'enum' or 'const' (en or cst), values of the wrong type left out. */
static int literal_rule(js_ctx_t *c, const cJSON *en, const cJSON *cst, const cJSON *any, unsigned types) {
    if (en && !cJSON_IsArray(en)) return js__fail(c, LC_EINVAL, "'enum' must be an array");
    if (en && cst) return js__fail(c, LC_EINVAL, "'enum' and 'const' cannot be combined");
    if (any) return js__fail(c, LC_EINVAL, "'anyOf' cannot be combined with 'enum' or 'const'");
    size_t pl = path_push(c, en ? "/enum" : "/const");
    int rc = enum_rule(c, en ? en : cst, !en, types);
    path_pop(c, pl);
    return rc;
}

static int any_of_rule(js_ctx_t *c, const cJSON *any, int n_constraints) {
    int n = cJSON_IsArray(any) ? cJSON_GetArraySize(any) : 0;
    if (n == 0) return js__fail(c, LC_EINVAL, "'anyOf' must be a non-empty array of schemas");
    if (n > JS_MAX_ANYOF) return js__fail(c, LC_ETOOLONG, "'anyOf' has more than %d branches", JS_MAX_ANYOF);
    if (n_constraints != 1)
        return js__fail(c, LC_EINVAL, "'anyOf' cannot be combined with other constraints; move them into each branch");
    int r = js__new_rule(c), i = 0;
    if (r < 0) return r;
    const cJSON *e;
    cJSON_ArrayForEach(e, any) {
        size_t pl = path_push(c, "/anyOf/%d", i++);
        int sub = schema_rule(c, e);
        if (sub < 0) return sub;
        path_pop(c, pl);
        TRY(gram_alt(c->b, r));
        TRY(gram_add_ref(c->b, r, sub));
    }
    return r;
}

/* The types an untyped schema's keywords imply (object, array), or 0. */
static unsigned implied_types(const cJSON *s) {
    int obj = cJSON_GetObjectItemCaseSensitive(s, "properties") || cJSON_GetObjectItemCaseSensitive(s, "required") ||
              cJSON_GetObjectItemCaseSensitive(s, "additionalProperties");
    int arr = cJSON_GetObjectItemCaseSensitive(s, "items") || cJSON_GetObjectItemCaseSensitive(s, "minItems") ||
              cJSON_GetObjectItemCaseSensitive(s, "maxItems");
    return (obj ? T_OBJECT : 0) | (arr ? T_ARRAY : 0);
}

/* A value of any of the types (T_* bits), each with s's keywords. */
static int typed_rule(js_ctx_t *c, const cJSON *s, unsigned types) {
    int alts[7], n_alts = 0;
    for (int t = 1; t <= T_NULL; t <<= 1) {
        if (!(types & (unsigned)t)) continue;
        if (t == T_INTEGER && (types & T_NUMBER)) continue; // number covers integers
        int r = t == T_OBJECT    ? object_rule(c, s)
                : t == T_ARRAY   ? items_rule(c, s)
                : t == T_STRING  ? js__string(c)
                : t == T_NUMBER  ? js__num(c, 0)
                : t == T_INTEGER ? js__num(c, 1)
                : t == T_BOOLEAN ? js__bool(c)
                                 : js__null(c);
        if (r < 0) return r;
        alts[n_alts++] = r;
    }
    if (n_alts == 1) return alts[0];
    int r = js__new_rule(c);
    if (r < 0) return r;
    for (int i = 0; i < n_alts; i++) {
        TRY(gram_alt(c->b, r));
        TRY(gram_add_ref(c->b, r, alts[i]));
    }
    return r;
}

/* The rule of a schema object, its nesting already counted: $ref, enum or
 * const, anyOf, or else the types it states or implies. */
static int constraints_rule(js_ctx_t *c, const cJSON *s) {
    int n_constraints = count_constraints(c, s);
    if (n_constraints < 0) return n_constraints;
    const cJSON *ref = cJSON_GetObjectItemCaseSensitive(s, "$ref");
    const cJSON *any = cJSON_GetObjectItemCaseSensitive(s, "anyOf");
    const cJSON *en = cJSON_GetObjectItemCaseSensitive(s, "enum");
    const cJSON *cst = cJSON_GetObjectItemCaseSensitive(s, "const");
    const cJSON *ty = cJSON_GetObjectItemCaseSensitive(s, "type");
    unsigned types = 0;
    int rc = ty ? parse_types(c, ty, &types) : 0;
    if (rc < 0) return rc;
    if (ref) return ref_rule(c, ref, n_constraints);
    if (en || cst) return literal_rule(c, en, cst, any, types);
    if (any) return any_of_rule(c, any, n_constraints);
    if (!types) types = implied_types(s);
    if (!types) return js__any(c);
    return typed_rule(c, s, types);
}

static int schema_rule(js_ctx_t *c, const cJSON *s) {
    if (cJSON_IsTrue(s)) return js__any(c);
    if (cJSON_IsFalse(s)) return js__fail(c, LC_EINVAL, "the schema 'false' admits no value");
    if (!cJSON_IsObject(s)) return js__fail(c, LC_EINVAL, "a schema must be an object or a boolean");
    if (++c->depth > JS_MAX_DEPTH)
        return js__fail(c, LC_ETOOLONG, "the schema nests deeper than %d levels", JS_MAX_DEPTH);
    int rc = constraints_rule(c, s);
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

/* Both entry points: a fresh builder and compiler, the root rule of the
 * schema (or of any object, for JSON mode), the grammar checked and frozen. */
static gram_t *compile(const cJSON *schema, const char *where, int any_object, int *status, char *err, size_t errlen) {
    gram_builder_t *b = gram_builder_create(NULL);
    js_ctx_t *c = b ? js_ctx_create(b) : NULL;
    gram_t *g = NULL;
    int st = LC_ENOMEM;
    if (!c) {
        snprintf(err, errlen, "out of memory");
    } else {
        int root;
        if (any_object) {
            c->err = err;
            c->errlen = errlen;
            if (errlen) err[0] = 0;
            root = js_any_object_rule(c);
        } else {
            root = js_schema_rule(c, schema, where, err, errlen);
        }
        if (root < 0)
            st = root;
        else
            g = gram_builder_finish(b, root, &st, err, errlen);
    }
    js_ctx_destroy(c);
    gram_builder_destroy(b);
    if (status) *status = g ? 0 : st;
    return g;
}

gram_t *js_compile_schema(const cJSON *schema, const char *where, int *status, char *err, size_t errlen) {
    return compile(schema, where, 0, status, err, errlen);
}

gram_t *js_compile_any_object(int *status, char *err, size_t errlen) {
    return compile(NULL, NULL, 1, status, err, errlen);
}

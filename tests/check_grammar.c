/* Check suite for the grammar engine (model/grammar.h) and the JSON schema
 * compiler (model/json_schema.h): schemas compiled and matched against byte
 * strings they must accept or refuse, token masks against a brute force
 * that feeds every token through a fresh matcher, random generations that
 * must parse and end, and hostile schemas that must fail cleanly. */
#include <check.h>
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/status.h"
#include "model/grammar.h"
#include "model/json_schema.h"

/* ---- helpers ---------------------------------------------------------------------- */
static gram_t *compile(const char *schema_json, int *st, char *err, size_t errlen) {
    if (!schema_json) return js_compile_any_object(st, err, errlen);
    cJSON *s = cJSON_Parse(schema_json);
    ck_assert_msg(s != NULL, "bad test JSON: %s", schema_json);
    gram_t *g = js_compile_schema(s, "", st, err, errlen);
    cJSON_Delete(s);
    return g;
}

static gram_t *must_compile(const char *schema_json) {
    char err[512] = "";
    int st = 0;
    gram_t *g = compile(schema_json, &st, err, sizeof err);
    ck_assert_msg(g != NULL, "compile failed (%d): %s", st, err);
    return g;
}

/* A vocabulary of the 256 bytes plus multi-byte tokens that cross JSON's
 * structure (quotes with text, keys with colons, literals, digits). */
static const char *const multi[] = {
    "{\"",   "\":",    "\": ", "\",", "\"}",   "\"]",   "true",   "false", "null", "12",   "0.",    "1e",
    "-1",    " \"",    ", ",   ",\"", "abc",   "name",  "\"name", "ame\"", "  ",   "\n  ", "\n",    "}}",
    "]}",    "[{",     "[]",   "{}",  "\\n",   "\\u00", "é",      "\xc3",  "\xa9", "日本", "ok\"}", "00",
    "\"a\"", "\"b\":", "yes",  "no",  " true", "},{",   "\": [",  "3.14",  "e+",   "E-",   ".5",    "\"x"};

typedef struct {
    int n;
    const char **p;
    size_t *l;
    char byte[256][2];
} tvocab_t;

static gram_vocab_t *test_vocab(tvocab_t *tv) {
    int nm = (int)(sizeof multi / sizeof multi[0]);
    tv->n = 256 + nm + 1; // the last id is left out (no bytes)
    tv->p = calloc((size_t)tv->n, sizeof *tv->p);
    tv->l = calloc((size_t)tv->n, sizeof *tv->l);
    for (int b = 0; b < 256; b++) {
        tv->byte[b][0] = (char)b;
        tv->p[b] = tv->byte[b];
        tv->l[b] = 1;
    }
    for (int i = 0; i < nm; i++) {
        tv->p[256 + i] = multi[i];
        tv->l[256 + i] = strlen(multi[i]);
    }
    gram_vocab_t *v = gram_vocab_create_from(tv->n, tv->p, tv->l);
    ck_assert_ptr_nonnull(v);
    return v;
}

static void free_tvocab(tvocab_t *tv) {
    free(tv->p);
    free(tv->l);
}

/* 1 when the whole of text is a complete sentence of g. */
static int accepts(gram_t *g, const gram_vocab_t *v, const char *text) {
    gram_matcher_t *m = gram_matcher_create(g, v);
    ck_assert_ptr_nonnull(m);
    int ok = gram_matcher_accept_bytes(m, text, strlen(text)) == 0 && gram_matcher_can_end(m);
    gram_matcher_destroy(m);
    return ok;
}

/* 1 when text is a prefix of some sentence. */
static int prefix_ok(gram_t *g, const gram_vocab_t *v, const char *text, size_t n) {
    gram_matcher_t *m = gram_matcher_create(g, v);
    ck_assert_ptr_nonnull(m);
    int ok = gram_matcher_accept_bytes(m, text, n) == 0;
    gram_matcher_destroy(m);
    return ok;
}

static gram_vocab_t *g_vocab;
static tvocab_t g_tv;

static void setup(void) { g_vocab = test_vocab(&g_tv); }
static void teardown(void) {
    gram_vocab_destroy(g_vocab);
    free_tvocab(&g_tv);
}

/* ---- accept / reject ---------------------------------------------------------------- */
typedef struct {
    const char *schema;
    const char *const *yes;
    const char *const *no;
} case_t;

#define L(...)                                                                                                         \
    (const char *const[]) { __VA_ARGS__, NULL }

static const case_t cases[] = {
    {"{\"type\":\"string\"}", L("\"\"", "\"abc\"", "\"a\\\"b\"", "\"\\u00e9\"", "\"é日本\"", "\"\\n\""),
     L("abc", "\"a", "\"\\x\"", "\"a\nb\"", "\"\xc3\"", "\"\xff\"", "\"\\u12\"", "1")},
    {"{\"type\":\"integer\"}", L("0", "-7", "123", "1234567890123456"),
     L("01", "1.5", "-", "+1", "1e5", "12345678901234567", "\"1\"")},
    {"{\"type\":\"number\"}", L("0", "-0.5", "3.14", "1e10", "2E-3", "6.02e+23", "-1.0e0"),
     L(".5", "1.", "1e", "--1", "1.2.3", "NaN", "Infinity")},
    {"{\"type\":\"boolean\"}", L("true", "false"), L("True", "1", "tru", "truefalse")},
    {"{\"type\":\"null\"}", L("null"), L("nil", "\"null\"")},
    {"{\"type\":[\"string\",\"null\"]}", L("null", "\"x\""), L("1", "true")},
    {"{\"enum\":[\"red\",\"green\",\"greenish\",1,null,{\"a\":[1]}]}",
     L("\"red\"", "\"green\"", "\"greenish\"", "1", "null", "{\"a\":[1]}"), L("\"gre\"", "\"blue\"", "2", "\"Red\"")},
    {"{\"const\":\"fixed\"}", L("\"fixed\""), L("\"fixe\"", "\"fixedd\"")},
    {"{\"type\":\"string\",\"enum\":[\"a\",1]}", L("\"a\""), L("1")},
    {"{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"integer\"},\"b\":{\"type\":\"string\"}},"
     "\"required\":[\"a\",\"b\"],\"additionalProperties\":false}",
     L("{\"a\":1,\"b\":\"x\"}", "{ \"a\": 1, \"b\": \"x\" }", "{\n  \"a\": 1,\n  \"b\": \"x\"\n}"),
     L("{\"b\":\"x\",\"a\":1}", "{\"a\":1}", "{}", "{\"a\":1,\"b\":\"x\",\"c\":2}", "{\"a\":\"1\",\"b\":\"x\"}",
       "{\"a\":1,\"b\":\"x\"} ", "{  \"a\":1,\"b\":\"x\"}")},
    {"{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"integer\"},\"b\":{\"type\":\"boolean\"},"
     "\"c\":{\"type\":\"null\"}},\"required\":[\"b\"]}",
     L("{\"b\":true}", "{\"a\":1,\"b\":false}", "{\"b\":true,\"c\":null}", "{\"a\":2,\"b\":true,\"c\":null}"),
     L("{}", "{\"a\":1}", "{\"a\":1,\"c\":null}", "{,\"b\":true}", "{\"b\":true,}")},
    {"{\"type\":\"object\"}", L("{}", "{\"k\":[1,{\"x\":null}],\"z\":\"s\"}"), L("[]", "{\"k\"}", "{1:2}")},
    {"{\"type\":\"object\",\"additionalProperties\":{\"type\":\"integer\"}}", L("{}", "{\"x\":1,\"y\":2}"),
     L("{\"x\":\"1\"}")},
    {"{\"type\":\"object\",\"additionalProperties\":false}", L("{}", "{ }"), L("{\"a\":1}")},
    {"{\"type\":\"array\",\"items\":{\"type\":\"integer\"}}", L("[]", "[1]", "[1, 2,3]", "[ 1 ]"),
     L("[1,]", "[,1]", "[\"1\"]", "[1 2]")},
    {"{\"type\":\"array\",\"minItems\":2,\"maxItems\":3}", L("[1,2]", "[1,\"a\",null]"), L("[]", "[1]", "[1,2,3,4]")},
    {"{\"type\":\"array\",\"maxItems\":0}", L("[]"), L("[1]")},
    {"{\"anyOf\":[{\"type\":\"integer\"},{\"type\":\"object\",\"properties\":{\"k\":{\"const\":1}},"
     "\"required\":[\"k\"]}]}",
     L("5", "{\"k\":1}"), L("{\"k\":2}", "\"5\"")},
    {"{\"$defs\":{\"node\":{\"type\":\"object\",\"properties\":{\"v\":{\"type\":\"integer\"},\"kids\":{\"type\":"
     "\"array\",\"items\":{\"$ref\":\"#/$defs/node\"}}},\"required\":[\"v\",\"kids\"]}},\"$ref\":\"#/$defs/node\"}",
     L("{\"v\":1,\"kids\":[]}", "{\"v\":1,\"kids\":[{\"v\":2,\"kids\":[{\"v\":3,\"kids\":[]}]}]}"),
     L("{\"v\":1}", "{\"v\":1,\"kids\":[{\"v\":2}]}")},
    {"{\"type\":\"object\",\"properties\":{\"next\":{\"anyOf\":[{\"$ref\":\"#\"},{\"type\":\"null\"}]}},"
     "\"required\":[\"next\"]}",
     L("{\"next\":null}", "{\"next\":{\"next\":null}}"), L("{\"next\":{}}")},
    {"true", L("1", "\"s\"", "[]", "{\"a\":{}}"), L("", "x")},
};

START_TEST(test_accept_reject) {
    const case_t *k = &cases[_i];
    gram_t *g = must_compile(k->schema);
    for (int i = 0; k->yes[i]; i++)
        ck_assert_msg(accepts(g, g_vocab, k->yes[i]), "schema %s should accept %s", k->schema, k->yes[i]);
    for (int i = 0; k->no[i]; i++)
        ck_assert_msg(!accepts(g, g_vocab, k->no[i]), "schema %s should refuse %s", k->schema, k->no[i]);
    gram_release(g);
}
END_TEST

START_TEST(test_json_mode) {
    gram_t *g = must_compile(NULL);
    ck_assert(accepts(g, g_vocab, "{}"));
    ck_assert(accepts(g, g_vocab, "{\"a\": [1, 2.5e3, \"x\", true, null, {\"b\": {}}]}"));
    ck_assert(!accepts(g, g_vocab, "[1]"));
    ck_assert(!accepts(g, g_vocab, "\"s\""));
    ck_assert(!accepts(g, g_vocab, "{\"a\":1}}"));
    /* whitespace is bounded: 20 of indentation after a newline, no more */
    char buf[128];
    snprintf(buf, sizeof buf, "{\n%*s\"a\":1}", 20, "");
    ck_assert(accepts(g, g_vocab, buf));
    snprintf(buf, sizeof buf, "{\n%*s\"a\":1}", 21, "");
    ck_assert(!accepts(g, g_vocab, buf));
    ck_assert(!accepts(g, g_vocab, "{\n\n\"a\":1}"));
    ck_assert(!prefix_ok(g, g_vocab, "  ", 2)); // no leading whitespace
    gram_release(g);
}
END_TEST

/* ---- masks against brute force -------------------------------------------------------- */
/* For a prefix, the mask must equal {t : prefix + bytes(t) is a valid prefix
 * or complete}, computed with fresh matchers (no walk, no cache). */
static void check_mask_at(gram_t *g, const char *prefix, size_t n) {
    gram_matcher_t *m = gram_matcher_create(g, g_vocab);
    ck_assert_int_eq(gram_matcher_accept_bytes(m, prefix, n), 0);
    int words = (g_tv.n + 63) / 64;
    uint64_t *bits = calloc((size_t)words, sizeof *bits);
    ck_assert_int_eq(gram_matcher_mask(m, bits, g_tv.n), 0);
    char *buf = malloc(n + 64);
    memcpy(buf, prefix, n);
    for (int t = 0; t < g_tv.n; t++) {
        int want = 0;
        if (g_tv.p[t] && g_tv.l[t]) {
            memcpy(buf + n, g_tv.p[t], g_tv.l[t]);
            want = prefix_ok(g, g_vocab, buf, n + g_tv.l[t]);
        }
        int got = (int)(bits[t >> 6] >> (t & 63) & 1);
        ck_assert_msg(got == want, "prefix '%.*s' token %d ('%.*s'): mask %d, brute force %d", (int)n, prefix, t,
                      (int)g_tv.l[t], g_tv.p[t] ? g_tv.p[t] : "", got, want);
    }
    /* accepting a token the mask allows always succeeds, and one it forbids fails */
    free(buf);
    free(bits);
    gram_matcher_destroy(m);
}

START_TEST(test_mask_brute_force) {
    static const struct {
        const char *schema, *doc;
    } docs[] = {
        {"{\"type\":\"object\",\"properties\":{\"name\":{\"type\":\"string\"},\"n\":{\"type\":\"number\"},"
         "\"ok\":{\"type\":\"boolean\"},\"tags\":{\"type\":\"array\",\"items\":{\"enum\":[\"yes\",\"no\"]}}},"
         "\"required\":[\"name\",\"n\"]}",
         "{\"name\": \"abc\\n\\u00e9é\", \"n\": -3.14e+2, \"ok\": true, \"tags\": [\"yes\", \"no\"]}"},
        {NULL, "{\n  \"a\": [1, {\"b\": null}],\n  \"c\": \"x\"\n}"},
        {"{\"anyOf\":[{\"type\":\"string\"},{\"type\":\"array\",\"items\":{\"type\":\"integer\"}}]}", "[12, 0, -1]"},
        {"{\"type\":\"integer\"}", "1234"},
    };
    for (size_t d = 0; d < sizeof docs / sizeof docs[0]; d++) {
        gram_t *g = must_compile(docs[d].schema);
        size_t len = strlen(docs[d].doc);
        ck_assert_msg(accepts(g, g_vocab, docs[d].doc), "doc %zu not accepted", d);
        for (size_t i = 0; i <= len; i++) check_mask_at(g, docs[d].doc, i);
        gram_release(g);
    }
}
END_TEST

/* The mask through the cache and the same-state shortcut equals the mask of
 * a fresh matcher: a second matcher of the same grammar replays a document
 * and compares every step. */
START_TEST(test_mask_cache_consistent) {
    gram_t *g = must_compile("{\"type\":\"object\",\"properties\":{\"s\":{\"type\":\"string\"},\"t\":{\"type\":"
                             "\"string\"}},\"required\":[\"s\",\"t\"]}");
    const char *doc = "{\"s\": \"aaaaaaaaaaaa bbb\", \"t\": \"cccc\"}";
    int words = (g_tv.n + 63) / 64;
    uint64_t *a = calloc((size_t)words, 8), *b = calloc((size_t)words, 8);
    gram_matcher_t *m1 = gram_matcher_create(g, g_vocab);
    for (int pass = 0; pass < 2; pass++) {
        gram_matcher_t *m2 = gram_matcher_create(g, g_vocab);
        for (size_t i = 0; doc[i]; i++) {
            gram_matcher_t *fresh = gram_matcher_create(g, g_vocab);
            ck_assert_int_eq(gram_matcher_accept_bytes(fresh, doc, i), 0);
            ck_assert_int_eq(gram_matcher_mask(m2, a, g_tv.n), 0);
            ck_assert_int_eq(gram_matcher_mask(fresh, b, g_tv.n), 0);
            ck_assert_msg(!memcmp(a, b, (size_t)words * 8), "mask differs at %zu (pass %d)", i, pass);
            gram_matcher_destroy(fresh);
            ck_assert_int_eq(gram_matcher_accept_bytes(m2, doc + i, 1), 0);
        }
        gram_stats_t st;
        gram_matcher_stats(m2, &st);
        if (pass == 1) ck_assert_uint_gt(st.cache_hits + st.same_state, 0);
        gram_matcher_destroy(m2);
    }
    gram_matcher_destroy(m1);
    free(a);
    free(b);
    gram_release(g);
}
END_TEST

/* ---- random generation ------------------------------------------------------------------ */
static uint64_t rng_next(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Samples tokens uniformly from each mask with gram_matcher_apply (as the
 * scheduler does), preferring to end once possible. The text must reach
 * "done" or "can end", and parse as JSON. */
START_TEST(test_random_generation_completes) {
    static const char *const schemas[] = {
        NULL,
        "{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"array\",\"items\":{\"type\":\"number\"}},\"b\":{"
        "\"anyOf\":[{\"type\":\"string\"},{\"type\":\"null\"}]}},\"required\":[\"a\",\"b\"]}",
        "{\"type\":\"array\",\"items\":{\"enum\":[\"x\",\"xy\",\"xyz\",true]},\"minItems\":1,\"maxItems\":4}",
    };
    int32_t eos = g_tv.n; // one past the vocabulary: the "model" has an EOS there
    int V = g_tv.n + 1;
    float *logits = malloc(sizeof *logits * (size_t)V);
    for (size_t si = 0; si < sizeof schemas / sizeof schemas[0]; si++) {
        gram_t *g = must_compile(schemas[si]);
        for (uint64_t seed = 1; seed <= 20; seed++) {
            gram_matcher_t *m = gram_matcher_create(g, g_vocab);
            uint64_t x = seed;
            char text[8192];
            size_t n = 0;
            int ended = 0;
            for (int step = 0; step < 4000 && !ended; step++) {
                for (int t = 0; t < V; t++) logits[t] = 0;
                ck_assert_int_eq(gram_matcher_apply(m, logits, V, &eos, 1), 0);
                int cand[1024], nc = 0;
                for (int t = 0; t < V && nc < 1024; t++)
                    if (logits[t] == 0) cand[nc++] = t;
                ck_assert_int_gt(nc, 0);
                /* after a while, pick among the tokens that close something */
                int t = cand[rng_next(&x) % (uint64_t)nc];
                if (step > 50) {
                    int cl[8], ncl = 0;
                    for (int i = 0; i < nc && ncl < 8; i++)
                        if (cand[i] == eos || cand[i] == '"' || cand[i] == ']' || cand[i] == '}') cl[ncl++] = cand[i];
                    if (ncl) t = cl[rng_next(&x) % (uint64_t)ncl];
                }
                if (t == eos) {
                    ck_assert(gram_matcher_can_end(m));
                    ended = 1;
                    break;
                }
                ck_assert_int_eq(gram_matcher_accept_token(m, t), 0);
                ck_assert(n + g_tv.l[t] < sizeof text);
                memcpy(text + n, g_tv.p[t], g_tv.l[t]);
                n += g_tv.l[t];
                if (gram_matcher_done(m)) ended = 1;
            }
            text[n < sizeof text ? n : sizeof text - 1] = 0;
            ck_assert_msg(ended, "schema %zu seed %llu did not end: %.300s", si, (unsigned long long)seed, text);
            text[n] = 0;
            cJSON *j = cJSON_ParseWithLength(text, n);
            ck_assert_msg(j != NULL, "not JSON: %s", text);
            cJSON_Delete(j);
            gram_matcher_destroy(m);
        }
        gram_release(g);
    }
    free(logits);
}
END_TEST

/* ---- hostile schemas ---------------------------------------------------------------------- */
static void expect_refused(const char *schema_json, const char *needle) {
    char err[512] = "";
    int st = 0;
    gram_t *g = compile(schema_json, &st, err, sizeof err);
    ck_assert_msg(g == NULL, "schema should be refused: %.200s", schema_json);
    ck_assert_int_lt(st, 0);
    ck_assert_msg(strstr(err, needle) != NULL, "message '%s' lacks '%s'", err, needle);
}

START_TEST(test_refused) {
    expect_refused("{\"type\":\"string\",\"pattern\":\"^a$\"}", "'pattern' is not supported");
    expect_refused("{\"type\":\"string\",\"format\":\"date-time\"}", "'format'");
    expect_refused("{\"oneOf\":[{\"type\":\"string\"}]}", "'oneOf'");
    expect_refused("{\"type\":\"object\",\"properties\":{\"x\":{\"type\":\"integer\",\"minimum\":0}}}",
                   "at #/properties/x");
    expect_refused("{\"type\":\"strin\"}", "unknown type");
    expect_refused("{\"enum\":[]}", "no value");
    expect_refused("{\"type\":\"integer\",\"enum\":[\"a\"]}", "no value");
    expect_refused("{\"$ref\":\"#/$defs/missing\"}", "cannot resolve");
    expect_refused("{\"$ref\":\"http://example.com/s.json\"}", "cannot resolve");
    expect_refused("{\"$ref\":\"#\"}", "only recurse");
    expect_refused("{\"$defs\":{\"a\":{\"$ref\":\"#/$defs/b\"},\"b\":{\"anyOf\":[{\"$ref\":\"#/$defs/a\"}]}},"
                   "\"$ref\":\"#/$defs/a\"}",
                   "only recurse");
    expect_refused("{\"$defs\":{\"a\":{\"anyOf\":[{\"$ref\":\"#/$defs/a\"},{\"type\":\"string\"}]}},"
                   "\"$ref\":\"#/$defs/a\"}",
                   "left recursion");
    /* a recursion every branch of which must recurse: no finite value */
    expect_refused("{\"type\":\"object\",\"properties\":{\"x\":{\"$ref\":\"#\"}},\"required\":[\"x\"]}",
                   "no finite value");
    expect_refused("{\"type\":\"object\",\"required\":[\"z\"],\"additionalProperties\":false}", "'z'");
    expect_refused("{\"type\":\"array\",\"minItems\":3,\"maxItems\":2}", "maxItems");
    expect_refused("{\"type\":\"array\",\"minItems\":100000}", "at most");
    expect_refused("false", "admits no value");
    expect_refused("[1]", "must be an object");
}
END_TEST

START_TEST(test_hostile_bounded) {
    /* deep nesting */
    size_t cap = 200 * 40 + 64;
    char *s = malloc(cap);
    size_t n = 0;
    for (int i = 0; i < 200; i++) n += (size_t)snprintf(s + n, cap - n, "{\"type\":\"array\",\"items\":");
    n += (size_t)snprintf(s + n, cap - n, "true");
    for (int i = 0; i < 200; i++) s[n++] = '}';
    s[n] = 0;
    expect_refused(s, "deeper than");
    free(s);
    /* huge enum */
    cap = 6000 * 12 + 64;
    s = malloc(cap);
    n = (size_t)snprintf(s, cap, "{\"enum\":[");
    for (int i = 0; i < 6000; i++) n += (size_t)snprintf(s + n, cap - n, "%s\"v%d\"", i ? "," : "", i);
    snprintf(s + n, cap - n, "]}");
    expect_refused(s, "too many enum values");
    free(s);
    /* a large but legal enum stays deterministic: a prefix tree, one stack */
    cap = 4000 * 12 + 64;
    s = malloc(cap);
    n = (size_t)snprintf(s, cap, "{\"enum\":[");
    for (int i = 0; i < 4000; i++) n += (size_t)snprintf(s + n, cap - n, "%s\"v%d\"", i ? "," : "", i);
    snprintf(s + n, cap - n, "]}");
    gram_t *g = must_compile(s);
    ck_assert(accepts(g, g_vocab, "\"v3999\""));
    ck_assert(!accepts(g, g_vocab, "\"v4000\""));
    gram_release(g);
    free(s);
    /* overlapping anyOf branches nest: the stack count is capped, output stays valid */
    cap = 64 * 80 + 64;
    s = malloc(cap);
    n = 0;
    for (int i = 0; i < 12; i++) n += (size_t)snprintf(s + n, cap - n, "{\"anyOf\":[{\"type\":\"array\",\"items\":");
    n += (size_t)snprintf(s + n, cap - n, "{\"type\":\"integer\"}");
    for (int i = 0; i < 12; i++) n += (size_t)snprintf(s + n, cap - n, "},{\"type\":\"array\"}]}");
    g = must_compile(s);
    ck_assert(accepts(g, g_vocab, "[[[[[[[[[[[[1]]]]]]]]]]]]"));
    gram_matcher_t *m = gram_matcher_create(g, g_vocab);
    ck_assert_int_eq(gram_matcher_accept_bytes(m, "[[[[[[[[[[[[", 12), 0);
    uint64_t bits[8];
    ck_assert_int_eq(gram_matcher_mask(m, bits, 64 * 8 > g_tv.n ? g_tv.n : 512), 0);
    gram_matcher_destroy(m);
    gram_release(g);
    free(s);
    /* too many anyOf branches */
    cap = 300 * 20 + 64;
    s = malloc(cap);
    n = (size_t)snprintf(s, cap, "{\"anyOf\":[");
    for (int i = 0; i < 300; i++) n += (size_t)snprintf(s + n, cap - n, "%s{\"const\":%d}", i ? "," : "", i);
    snprintf(s + n, cap - n, "]}");
    expect_refused(s, "more than");
    free(s);
}
END_TEST

/* Builder-level checks: left recursion, dead alternatives dropped. */
START_TEST(test_builder) {
    char err[256];
    int st;
    gram_builder_t *b = gram_builder_create(NULL);
    int r = gram_rule(b), dead = gram_rule(b);
    /* r ::= "a" | dead "b"; dead ::= "x" dead (no finite string) */
    gram_alt(b, r);
    gram_add_byte(b, r, 'a');
    gram_alt(b, r);
    gram_add_ref(b, r, dead);
    gram_add_byte(b, r, 'b');
    gram_alt(b, dead);
    gram_add_byte(b, dead, 'x');
    gram_add_ref(b, dead, dead);
    gram_t *g = gram_builder_finish(b, r, &st, err, sizeof err);
    ck_assert_ptr_nonnull(g);
    ck_assert(accepts(g, g_vocab, "a"));
    ck_assert(!prefix_ok(g, g_vocab, "x", 1)); // the dead branch was dropped
    gram_release(g);
    gram_builder_destroy(b);

    gram_limits_t lim = {.max_rules = 4, .max_elems = 100};
    b = gram_builder_create(&lim);
    for (int i = 0; i < 4; i++) ck_assert_int_ge(gram_rule(b), 0);
    ck_assert_int_eq(gram_rule(b), LC_ETOOLONG);
    gram_builder_destroy(b);
}
END_TEST

/* The trie over a tokenizer-like vocabulary: tokens with the same bytes,
 * prefixes of each other, and left-out ones. */
START_TEST(test_vocab_trie) {
    const char *p[] = {"ab", "a", "abc", "ab", NULL, "", "b"};
    size_t l[] = {2, 1, 3, 2, 0, 0, 1};
    gram_vocab_t *v = gram_vocab_create_from(7, p, l);
    ck_assert_int_eq(gram_vocab_n_tokens(v), 7);
    gram_builder_t *b = gram_builder_create(NULL);
    int r = gram_rule(b);
    gram_alt(b, r);
    gram_add_bytes(b, r, "abc", 3);
    gram_t *g = gram_builder_finish(b, r, NULL, (char[64]){0}, 64);
    gram_matcher_t *m = gram_matcher_create(g, v);
    uint64_t bits = 0;
    ck_assert_int_eq(gram_matcher_mask(m, &bits, 7), 0);
    ck_assert_uint_eq(bits, (1u << 0) | (1u << 1) | (1u << 2) | (1u << 3));
    ck_assert_int_eq(gram_matcher_accept_token(m, 3), 0);
    ck_assert_int_eq(gram_matcher_mask(m, &bits, 7), 0);
    ck_assert_uint_eq(bits, 0); // "c" is no token
    ck_assert_int_eq(gram_matcher_accept_token(m, 6), LC_EINVAL);
    ck_assert_int_eq(gram_matcher_accept_token(m, 4), LC_EINVAL);
    gram_matcher_destroy(m);
    gram_release(g);
    gram_builder_destroy(b);
    gram_vocab_destroy(v);
}
END_TEST

static Suite *suite(void) {
    Suite *s = suite_create("grammar");
    TCase *tc = tcase_create("grammar");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_loop_test(tc, test_accept_reject, 0, (int)(sizeof cases / sizeof cases[0]));
    tcase_add_test(tc, test_json_mode);
    tcase_add_test(tc, test_mask_brute_force);
    tcase_add_test(tc, test_mask_cache_consistent);
    tcase_add_test(tc, test_random_generation_completes);
    tcase_add_test(tc, test_refused);
    tcase_add_test(tc, test_hostile_bounded);
    tcase_add_test(tc, test_builder);
    tcase_add_test(tc, test_vocab_trie);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    SRunner *sr = srunner_create(suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}

/* `lacuna bench-grammar`: the cost of constrained decoding's token mask.
 * It builds the token trie of a model's vocabulary (or of a synthetic one
 * of any size), then replays JSON documents token by token through B
 * matchers at once, as the engine would for B sequences in one step: each
 * step applies every matcher's mask to a logits row (gram_matcher_apply,
 * what sample_choice calls) and advances it by the document's next token.
 * Every sequence compiles its own grammar (as separate requests do), so
 * nothing is shared between them but the trie. */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "common/status.h"
#include "common/timeutil.h"
#include "model/gguf.h"
#include "model/grammar.h"
#include "model/json_schema.h"
#include "model/tokenizer.h"
#include "tools/cmds.h"

static const struct {
    const char *schema, *doc;
} work[] = {
    {"{\"type\":\"object\",\"properties\":{\"name\":{\"type\":\"string\"},\"age\":{\"type\":\"integer\"},\"email\":{"
     "\"type\":\"string\"},\"tags\":{\"type\":\"array\",\"items\":{\"type\":\"string\"}},\"address\":{\"type\":"
     "\"object\",\"properties\":{\"street\":{\"type\":\"string\"},\"city\":{\"type\":\"string\"},\"zip\":{\"type\":"
     "\"string\"}},\"required\":[\"street\",\"city\",\"zip\"]}},\"required\":[\"name\",\"age\",\"email\",\"tags\","
     "\"address\"]}",
     "{\n  \"name\": \"Margaret Hamilton\",\n  \"age\": 38,\n  \"email\": \"margaret.hamilton@example.org\",\n  "
     "\"tags\": [\"software engineering\", \"apollo guidance computer\", \"error detection\"],\n  \"address\": {\n    "
     "\"street\": \"1 Memorial Drive, Building 7\",\n    \"city\": \"Cambridge, Massachusetts\",\n    \"zip\": "
     "\"02139\"\n  }\n}"},
    {NULL, "{\"summary\": \"The quick brown fox jumps over the lazy dog near the river bank, while the farmer watches "
           "from the porch and drinks his coffee.\", \"score\": 0.87, \"labels\": [\"animals\", \"rural\", "
           "\"morning\"], \"ok\": true, \"details\": {\"words\": 27, \"language\": \"en\", \"notes\": null}}"},
    {"{\"type\":\"array\",\"items\":{\"type\":\"object\",\"properties\":{\"id\":{\"type\":\"integer\"},\"title\":{"
     "\"type\":\"string\"},\"done\":{\"type\":\"boolean\"},\"priority\":{\"enum\":[\"low\",\"medium\",\"high\"]}},"
     "\"required\":[\"id\",\"title\",\"done\",\"priority\"]}}",
     "[{\"id\": 1, \"title\": \"Write the report on quarterly results\", \"done\": false, \"priority\": \"high\"}, "
     "{\"id\": 2, \"title\": \"Call the plumber about the kitchen sink\", \"done\": true, \"priority\": \"low\"}, "
     "{\"id\": 3, \"title\": \"Book flights to Lisbon for the conference\", \"done\": false, \"priority\": "
     "\"medium\"}]"},
};
#define N_WORK (int)(sizeof work / sizeof work[0])

static void usage(FILE *f) {
    fprintf(f, "usage: lacuna bench-grammar (-m MODEL.gguf | --synthetic N) [-b LIST] [-r REPEATS] [--markdown]\n"
               "  -m MODEL       the vocabulary of this model\n"
               "  --synthetic N  a synthetic byte-level vocabulary of N tokens instead (random words)\n"
               "  -b LIST        sequences masked per step, comma-separated (default 1,64)\n"
               "  -r REPEATS     passes over the documents (default 2)\n");
}

/* FNV-1a of a piece, never 0 (0 marks a free slot). */
static uint64_t piece_hash(const char *s, size_t n) {
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return h | 1;
}

/* A synthetic vocabulary: the 256 bytes, then tokens drawn like a BPE
 * vocabulary's (mostly a leading space and letters, some punctuation,
 * digits and UTF-8), deduplicated. Pieces are raw bytes. */
static char **synth_vocab(int n, size_t **lens) {
    char **p = calloc((size_t)n, sizeof *p);
    *lens = calloc((size_t)n, sizeof **lens);
    uint64_t x = 42;
    int k = 0;
    for (; k < 256 && k < n; k++) {
        p[k] = malloc(1);
        p[k][0] = (char)k;
        (*lens)[k] = 1;
    }
    static const char *const punct[] = {"\"", "\",", "\":", ", ", "{\"", "}", "]", "[", ".", ",", "\n", "  ", "'s"};
    static const char *const utf8[] = {"é", "ü", "日本", "中", "ñ", "ö", "—", "’"};
    size_t cap = (size_t)n * 2 + 1;
    uint64_t *seen = calloc(cap, sizeof *seen);
    while (k < n) {
        char buf[32];
        size_t m = 0;
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        uint64_t r = x >> 33;
        if (r % 10 < 6) buf[m++] = ' ';
        if (r % 17 == 0) {
            const char *u = utf8[(r >> 5) % 8];
            memcpy(buf + m, u, strlen(u));
            m += strlen(u);
        } else if (r % 13 == 0) {
            const char *s = punct[(r >> 5) % 13];
            memcpy(buf + m, s, strlen(s));
            m += strlen(s);
        } else if (r % 11 == 0) {
            buf[m++] = (char)('0' + (r >> 7) % 10);
        }
        int len = 1 + (int)((r >> 9) % 9);
        for (int i = 0; i < len && m < sizeof buf; i++) {
            x = x * 6364136223846793005ull + 1442695040888963407ull;
            buf[m++] = (char)((x >> 40) % 26 == 0 && i == 0 ? 'A' + (x >> 45) % 26 : 'a' + (x >> 45) % 26);
        }
        uint64_t h = piece_hash(buf, m);
        size_t s = h % cap;
        int dup = 0;
        while (seen[s]) {
            if (seen[s] == h) dup = 1;
            s = (s + 1) % cap;
        }
        if (dup) continue;
        seen[s] = h;
        p[k] = malloc(m);
        memcpy(p[k], buf, m);
        (*lens)[k++] = m;
    }
    free(seen);
    return p;
}

/* Tokenizes doc greedily by the longest piece (synthetic vocabularies), with
 * a hash table of the pieces. */
static int greedy_tokens(char **p, const size_t *l, int n, const char *doc, int32_t *out, int max) {
    size_t cap = (size_t)n * 2 + 1;
    int32_t *tab = malloc(sizeof *tab * cap);
    for (size_t i = 0; i < cap; i++) tab[i] = -1;
    for (int t = 0; t < n; t++) {
        size_t s = piece_hash(p[t], l[t]) % cap;
        while (tab[s] >= 0) s = (s + 1) % cap;
        tab[s] = t;
    }
    int k = 0;
    size_t at = 0, len = strlen(doc);
    while (at < len && k < max) {
        int best = (unsigned char)doc[at];
        size_t bl = 1;
        for (size_t m = len - at < 40 ? len - at : 40; m > 1 && bl == 1; m--)
            for (size_t s = piece_hash(doc + at, m) % cap; tab[s] >= 0; s = (s + 1) % cap)
                if (l[tab[s]] == m && !memcmp(p[tab[s]], doc + at, m)) {
                    best = tab[s];
                    bl = m;
                    break;
                }
        out[k++] = best;
        at += bl;
    }
    free(tab);
    return k;
}

static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

typedef struct {
    const char *model; // -m, or NULL for --synthetic
    int synth;         // --synthetic N
    int repeats, markdown;
    char blist[64]; // -b
} bench_opts_t;

/* -1 to run, or the exit status (0 after --help, 2 on a usage error). */
static int parse_args(int argc, char **argv, bench_opts_t *o) {
    static const struct option lo[] = {{"synthetic", required_argument, 0, 'S'},
                                       {"markdown", no_argument, 0, 'M'},
                                       {"help", no_argument, 0, 'h'},
                                       {0, 0, 0, 0}};
    *o = (bench_opts_t){.repeats = 2, .blist = "1,64"};
    optind = 1;
    int ch;
    while ((ch = getopt_long(argc, argv, "m:b:r:h", lo, NULL)) != -1) {
        switch (ch) {
        case 'm': o->model = optarg; break;
        case 'S': o->synth = atoi(optarg); break;
        case 'b': snprintf(o->blist, sizeof o->blist, "%s", optarg); break;
        case 'r': o->repeats = atoi(optarg); break;
        case 'M': o->markdown = 1; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if ((!o->model) == (o->synth <= 0) || o->repeats < 1) {
        usage(stderr);
        return 2;
    }
    return -1;
}

/* The vocabulary under test and the documents as its tokens. */
typedef struct {
    tok_t *tok; // with -m
    char **sp;  // (synth) synthetic pieces, without -m
    size_t *sl; // (synth)
    int synth;
    gram_vocab_t *v; // the trie
    int n_vocab;
    double t_trie;         // seconds to build the trie
    int32_t *toks[N_WORK]; // (4096) work[w].doc's tokens
    int n_toks[N_WORK];
} bench_vocab_t;

/* 0, or 1 with a message (the exit status). */
static int load_vocab(const bench_opts_t *o, bench_vocab_t *bv) {
    double t0 = lc_now_s();
    if (o->model) {
        char err[256];
        gguf_ctx_t *g = gguf_open(o->model, err, sizeof err);
        if (!g || !(bv->tok = tok_create_from_gguf(g, err, sizeof err))) {
            fprintf(stderr, "lacuna bench-grammar: %s\n", err);
            if (g) gguf_close(g);
            return 1;
        }
        gguf_close(g);
        t0 = lc_now_s();
        bv->v = gram_vocab_create(bv->tok);
        bv->n_vocab = tok_n_vocab(bv->tok);
    } else {
        bv->synth = o->synth;
        bv->sp = synth_vocab(o->synth, &bv->sl);
        t0 = lc_now_s();
        bv->v = gram_vocab_create_from(o->synth, (const char *const *)bv->sp, bv->sl);
        bv->n_vocab = o->synth;
    }
    bv->t_trie = lc_now_s() - t0;
    if (!bv->v) {
        fprintf(stderr, "lacuna bench-grammar: out of memory\n");
        return 1;
    }
    return 0;
}

/* Each document as the vocabulary's tokens: the model's own tokenizer with
 * -m, the longest-piece greedy split for a synthetic vocabulary. */
static void tokenize_docs(bench_vocab_t *bv) {
    for (int w = 0; w < N_WORK; w++) {
        bv->toks[w] = malloc(sizeof(int32_t) * 4096);
        if (bv->tok) {
            tok_ids_t ids = {0};
            tok_encode(bv->tok, work[w].doc, strlen(work[w].doc), 0, 0, &ids);
            bv->n_toks[w] = (int)ids.n;
            memcpy(bv->toks[w], ids.ids, sizeof(int32_t) * ids.n);
            tok_ids_free(&ids);
        } else {
            bv->n_toks[w] = greedy_tokens(bv->sp, bv->sl, bv->synth, work[w].doc, bv->toks[w], 4096);
        }
    }
}

/* Frees what load_vocab and tokenize_docs made, also after a failed load. */
static void free_vocab(bench_vocab_t *bv) {
    for (int w = 0; w < N_WORK; w++) free(bv->toks[w]);
    gram_vocab_destroy(bv->v);
    if (bv->tok) tok_destroy(bv->tok);
    for (int i = 0; bv->sp && i < bv->synth; i++) free(bv->sp[i]);
    free(bv->sp);
    free(bv->sl);
}

/* B sequences stepped together, each replaying the documents from its own
 * (b % N_WORK) with its own grammar and matcher. */
typedef struct {
    int B;
    gram_t **gs;          // (B)
    gram_matcher_t **ms;  // (B) NULL between documents
    int *doc, *pos, *rep; // (B) document, token in it, passes done
    double *per;          // (cap) seconds of every mask
    size_t n, cap;
    double step_sum; // seconds of every step, all sequences
    long steps;
} bench_batch_t;

/* Masks sequence b's logits and advances it by its document's next token;
 * 1 with a message when the document is refused. */
static int step_sequence(const bench_vocab_t *bv, bench_batch_t *bt, int b, int repeats, float *logits, int *live) {
    char err[256];
    int st;
    int32_t eos = -1;
    if (!bt->ms[b]) {
        cJSON *j = work[bt->doc[b]].schema ? cJSON_Parse(work[bt->doc[b]].schema) : NULL;
        gram_release(bt->gs[b]);
        bt->gs[b] = j ? js_compile_schema(j, "", &st, err, sizeof err) : js_compile_any_object(&st, err, sizeof err);
        cJSON_Delete(j);
        bt->ms[b] = gram_matcher_create(bt->gs[b], bv->v);
        bt->pos[b] = 0;
    }
    for (int t = 0; t < bv->n_vocab; t++) logits[t] = 0;
    double t1 = lc_now_s();
    int rc = gram_matcher_apply(bt->ms[b], logits, bv->n_vocab, &eos, 0);
    double dt = lc_now_s() - t1;
    if (bt->n == bt->cap) bt->per = realloc(bt->per, sizeof(double) * (bt->cap *= 2));
    bt->per[bt->n++] = dt;
    int32_t t = bv->toks[bt->doc[b]][bt->pos[b]];
    if (rc || logits[t] != 0 || gram_matcher_accept_token(bt->ms[b], t)) {
        fprintf(stderr, "lacuna bench-grammar: document %d refused at token %d\n", bt->doc[b], bt->pos[b]);
        return 1;
    }
    if (++bt->pos[b] == bv->n_toks[bt->doc[b]]) {
        gram_matcher_destroy(bt->ms[b]);
        bt->ms[b] = NULL;
        bt->doc[b] = (bt->doc[b] + 1) % N_WORK;
        if (bt->doc[b] == b % N_WORK && ++bt->rep[b] >= repeats) (*live)--;
    }
    return 0;
}

/* One line (or markdown row) for batch size bt->B: the mask time per token
 * (mean, p50, p99; sorts bt->per) and the time per step. */
static void report_batch(bench_batch_t *bt, int markdown) {
    double *per = bt->per;
    size_t n = bt->n;
    qsort(per, n, sizeof *per, cmp_d);
    double mean = 0;
    for (size_t i = 0; i < n; i++) mean += per[i];
    mean /= (double)n;
    if (markdown)
        printf("| %d | %.3f | %.3f | %.3f | %.2f |\n", bt->B, mean * 1e3, per[n / 2] * 1e3,
               per[(size_t)(n * 0.99)] * 1e3, bt->step_sum / (double)bt->steps * 1e3);
    else
        printf("batch %3d: mask %.3f ms/token mean, p50 %.3f, p99 %.3f; %.2f ms per step over %ld steps\n", bt->B,
               mean * 1e3, per[n / 2] * 1e3, per[(size_t)(n * 0.99)] * 1e3, bt->step_sum / (double)bt->steps * 1e3,
               bt->steps);
}

/* Steps B sequences until each has made its passes, then reports; 0, or 1
 * when a document is refused. */
static int run_batch(const bench_vocab_t *bv, int B, const bench_opts_t *o, float *logits) {
    bench_batch_t bt = {
        .B = B,
        .gs = calloc((size_t)B, sizeof *bt.gs),
        .ms = calloc((size_t)B, sizeof *bt.ms),
        .doc = calloc((size_t)B, sizeof *bt.doc),
        .pos = calloc((size_t)B, sizeof *bt.pos),
        .rep = calloc((size_t)B, sizeof *bt.rep),
        .cap = 1 << 16,
    };
    bt.per = malloc(sizeof(double) * bt.cap);
    /* stagger the sequences so that they are not in lockstep */
    for (int b = 0; b < B; b++) bt.doc[b] = b % N_WORK, bt.pos[b] = 0;
    int live = B, rc = 0;
    while (live > 0 && !rc) {
        double ts = lc_now_s();
        for (int b = 0; b < B && !rc; b++)
            if (bt.rep[b] < o->repeats) rc = step_sequence(bv, &bt, b, o->repeats, logits, &live);
        bt.step_sum += lc_now_s() - ts;
        bt.steps++;
    }
    if (!rc) report_batch(&bt, o->markdown);
    for (int b = 0; b < B; b++) {
        gram_matcher_destroy(bt.ms[b]);
        gram_release(bt.gs[b]);
    }
    free(bt.gs);
    free(bt.ms);
    free(bt.doc);
    free(bt.pos);
    free(bt.rep);
    free(bt.per);
    return rc;
}

int cmd_bench_grammar(int argc, char **argv) {
    bench_opts_t o;
    int rc = parse_args(argc, argv, &o);
    if (rc >= 0) return rc;
    bench_vocab_t bv = {0};
    if (load_vocab(&o, &bv)) {
        free_vocab(&bv);
        return 1;
    }
    tokenize_docs(&bv);
    printf("# vocabulary %d tokens (%s), trie built in %.1f ms, %.1f MiB\n", bv.n_vocab,
           o.model ? o.model : "synthetic", bv.t_trie * 1e3, (double)gram_vocab_bytes(bv.v) / (1 << 20));
    if (o.markdown)
        printf("| sequences per step | mask ms / token (mean) | p50 | p99 | ms per step (all sequences) "
               "|\n|---|---|---|---|---|\n");
    float *logits = malloc(sizeof(float) * (size_t)bv.n_vocab);
    char *list = strdup(o.blist);
    rc = 0;
    for (char *s = strtok(list, ","); s && !rc; s = strtok(NULL, ",")) {
        int B = atoi(s);
        if (B >= 1) rc = run_batch(&bv, B, &o, logits);
    }
    free(list);
    free(logits);
    free_vocab(&bv);
    return rc;
}

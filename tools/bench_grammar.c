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
        uint64_t h = 1469598103934665603ull;
        for (size_t i = 0; i < m; i++) h = (h ^ (unsigned char)buf[i]) * 1099511628211ull;
        h |= 1;
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

static uint64_t piece_hash(const char *s, size_t n) {
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return h | 1;
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

int cmd_bench_grammar(int argc, char **argv) {
    const char *model = NULL;
    int synth = 0, repeats = 2, markdown = 0;
    char blist[64] = "1,64";
    static const struct option lo[] = {{"synthetic", required_argument, 0, 'S'},
                                       {"markdown", no_argument, 0, 'M'},
                                       {"help", no_argument, 0, 'h'},
                                       {0, 0, 0, 0}};
    optind = 1;
    int ch;
    while ((ch = getopt_long(argc, argv, "m:b:r:h", lo, NULL)) != -1) {
        switch (ch) {
        case 'm': model = optarg; break;
        case 'S': synth = atoi(optarg); break;
        case 'b': snprintf(blist, sizeof blist, "%s", optarg); break;
        case 'r': repeats = atoi(optarg); break;
        case 'M': markdown = 1; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if ((!model) == (synth <= 0) || repeats < 1) {
        usage(stderr);
        return 2;
    }
    tok_t *tok = NULL;
    char **sp = NULL;
    size_t *sl = NULL;
    gram_vocab_t *v;
    int n_vocab;
    double t0 = lc_now_s();
    if (model) {
        char err[256];
        gguf_ctx_t *g = gguf_open(model, err, sizeof err);
        if (!g || !(tok = tok_create_from_gguf(g, err, sizeof err))) {
            fprintf(stderr, "lacuna bench-grammar: %s\n", err);
            if (g) gguf_close(g);
            return 1;
        }
        gguf_close(g);
        t0 = lc_now_s();
        v = gram_vocab_create(tok);
        n_vocab = tok_n_vocab(tok);
    } else {
        sp = synth_vocab(synth, &sl);
        t0 = lc_now_s();
        v = gram_vocab_create_from(synth, (const char *const *)sp, sl);
        n_vocab = synth;
    }
    double t_trie = lc_now_s() - t0;
    if (!v) {
        fprintf(stderr, "lacuna bench-grammar: out of memory\n");
        return 1;
    }
    /* the documents as token sequences */
    int32_t *toks[N_WORK];
    int n_toks[N_WORK];
    for (int w = 0; w < N_WORK; w++) {
        toks[w] = malloc(sizeof(int32_t) * 4096);
        if (tok) {
            tok_ids_t ids = {0};
            tok_encode(tok, work[w].doc, strlen(work[w].doc), 0, 0, &ids);
            n_toks[w] = (int)ids.n;
            memcpy(toks[w], ids.ids, sizeof(int32_t) * ids.n);
            tok_ids_free(&ids);
        } else {
            n_toks[w] = greedy_tokens(sp, sl, synth, work[w].doc, toks[w], 4096);
        }
    }
    printf("# vocabulary %d tokens (%s), trie built in %.1f ms, %.1f MiB\n", n_vocab, model ? model : "synthetic",
           t_trie * 1e3, (double)gram_vocab_bytes(v) / (1 << 20));
    if (markdown)
        printf("| sequences per step | mask ms / token (mean) | p50 | p99 | ms per step (all sequences) "
               "|\n|---|---|---|---|---|\n");
    float *logits = malloc(sizeof(float) * (size_t)n_vocab);
    int32_t eos = -1;
    char *list = strdup(blist);
    for (char *s = strtok(list, ","); s; s = strtok(NULL, ",")) {
        int B = atoi(s);
        if (B < 1) continue;
        gram_t **gs = calloc((size_t)B, sizeof *gs);
        gram_matcher_t **ms = calloc((size_t)B, sizeof *ms);
        int *doc = calloc((size_t)B, sizeof *doc), *pos = calloc((size_t)B, sizeof *pos),
            *rep = calloc((size_t)B, sizeof *rep);
        size_t cap = 1 << 16, n = 0;
        double *per = malloc(sizeof(double) * cap), step_sum = 0;
        long steps = 0;
        char err[256];
        int st;
        for (int b = 0; b < B; b++) doc[b] = b % N_WORK, pos[b] = 0;
        int live = B;
        while (live > 0) {
            double ts = lc_now_s();
            for (int b = 0; b < B; b++) {
                if (rep[b] >= repeats) continue;
                if (!ms[b]) {
                    cJSON *j = work[doc[b]].schema ? cJSON_Parse(work[doc[b]].schema) : NULL;
                    gram_release(gs[b]);
                    gs[b] = j ? js_compile_schema(j, "", &st, err, sizeof err)
                              : js_compile_any_object(&st, err, sizeof err);
                    cJSON_Delete(j);
                    ms[b] = gram_matcher_create(gs[b], v);
                    /* stagger the sequences so that they are not in lockstep */
                    pos[b] = 0;
                }
                for (int t = 0; t < n_vocab; t++) logits[t] = 0;
                double t1 = lc_now_s();
                int rc = gram_matcher_apply(ms[b], logits, n_vocab, &eos, 0);
                double dt = lc_now_s() - t1;
                if (n == cap) per = realloc(per, sizeof(double) * (cap *= 2));
                per[n++] = dt;
                int32_t t = toks[doc[b]][pos[b]];
                if (rc || logits[t] != 0 || gram_matcher_accept_token(ms[b], t)) {
                    fprintf(stderr, "lacuna bench-grammar: document %d refused at token %d\n", doc[b], pos[b]);
                    return 1;
                }
                if (++pos[b] == n_toks[doc[b]]) {
                    gram_matcher_destroy(ms[b]);
                    ms[b] = NULL;
                    doc[b] = (doc[b] + 1) % N_WORK;
                    if (doc[b] == b % N_WORK && ++rep[b] >= repeats) live--;
                }
            }
            step_sum += lc_now_s() - ts;
            steps++;
        }
        qsort(per, n, sizeof *per, cmp_d);
        double mean = 0;
        for (size_t i = 0; i < n; i++) mean += per[i];
        mean /= (double)n;
        if (markdown)
            printf("| %d | %.3f | %.3f | %.3f | %.2f |\n", B, mean * 1e3, per[n / 2] * 1e3,
                   per[(size_t)(n * 0.99)] * 1e3, step_sum / (double)steps * 1e3);
        else
            printf("batch %3d: mask %.3f ms/token mean, p50 %.3f, p99 %.3f; %.2f ms per step over %ld steps\n", B,
                   mean * 1e3, per[n / 2] * 1e3, per[(size_t)(n * 0.99)] * 1e3, step_sum / (double)steps * 1e3, steps);
        for (int b = 0; b < B; b++) {
            gram_matcher_destroy(ms[b]);
            gram_release(gs[b]);
        }
        free(gs);
        free(ms);
        free(doc);
        free(pos);
        free(rep);
        free(per);
    }
    free(list);
    free(logits);
    for (int w = 0; w < N_WORK; w++) free(toks[w]);
    gram_vocab_destroy(v);
    if (tok) tok_destroy(tok);
    for (int i = 0; sp && i < synth; i++) free(sp[i]);
    free(sp);
    free(sl);
    return 0;
}

/* `lacuna bench-engine`: aggregate decode throughput of the scheduler. It
 * submits N concurrent requests (fixed, distinct prompts; greedy;
 * ignore_eos; max_tokens M each), steps the engine on this thread, and
 * reports decode tokens/s over the window in which every request is
 * decoding (from the moment the last one got its first token to the end),
 * plus the end-to-end rate including prefill. Several concurrency levels
 * share one model load. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/status.h"
#include "common/timeutil.h"
#include "model/model.h"
#include "model/tokenizer.h"
#include "scheduler/sched.h"
#include "tools/cmds.h"

static const char *const bench_prompts[] = {
    "The history of the printing press begins",
    "Write a short story about a lighthouse keeper who",
    "In mathematics, a prime number is",
    "The quick brown fox jumps over the lazy dog. Then",
    "Explain how a refrigerator works:",
    "Once upon a time in a distant galaxy,",
    "The most important skills for a software engineer are",
    "Photosynthesis is the process by which",
};
#define N_BENCH_PROMPTS (int)(sizeof bench_prompts / sizeof bench_prompts[0])

static void bench_usage(FILE *f) {
    fprintf(f, "usage: lacuna bench-engine -m MODEL.gguf [-c LIST] [-n M] [--markdown]\n"
               "  -c LIST       concurrency levels, comma-separated (default 1,4,16,64)\n"
               "  -n M          tokens generated per request (default 64)\n"
               "  --max-batch T tokens per engine step (default 2048)\n"
               "  --markdown    print a markdown table\n");
}

typedef struct {
    double decode_tps, total_tps, ttft_s, wall_s;
    long tokens;
} bench_res_t;

static int bench_one(const model_t *m, int conc, int max_tokens, int max_batch, bench_res_t *res) {
    const tok_t *tk = model_tok(m);
    tok_ids_t ids[N_BENCH_PROMPTS];
    memset(ids, 0, sizeof ids);
    int max_prompt = 0, rc = 0;
    for (int i = 0; i < N_BENCH_PROMPTS; i++) {
        if ((rc = tok_encode(tk, bench_prompts[i], strlen(bench_prompts[i]), tok_add_bos(tk), 0, &ids[i])))
            goto out_ids;
        if ((int)ids[i].n > max_prompt) max_prompt = (int)ids[i].n;
    }
    sched_config_t c;
    sched_config_default(&c);
    c.max_running = conc;
    c.max_waiting = conc;
    c.max_batch_tokens = max_batch;
    c.enable_prefix_cache = 0; // measure the work, not the cache
    c.block_size = 16;
    c.kv_blocks = (int64_t)conc * ((max_prompt + max_tokens + c.block_size - 1) / c.block_size + 1) + 8;
    char err[256];
    sched_t *s = sched_create(m, &c, err, sizeof err);
    if (!s) {
        fprintf(stderr, "lacuna bench-engine: %s\n", err);
        rc = LC_ENOMEM;
        goto out_ids;
    }
    sched_req_t **reqs = calloc((size_t)conc, sizeof *reqs);
    int *first = calloc((size_t)conc, sizeof *first);
    if (!reqs || !first) {
        rc = LC_ENOMEM;
        goto out;
    }
    double t0 = lc_now_s();
    for (int i = 0; i < conc; i++) {
        sched_params_t p;
        memset(&p, 0, sizeof p);
        p.prompt = ids[i % N_BENCH_PROMPTS].ids;
        p.n_prompt = (int)ids[i % N_BENCH_PROMPTS].n;
        p.n_choices = 1;
        p.max_tokens = max_tokens;
        p.ignore_eos = 1;
        p.logprobs = p.prompt_logprobs = -1;
        sampler_params_default(&p.sampling);
        p.sampling.temperature = 0;
        sched_attn_spec_default(&p.attn);
        int st;
        if (!(reqs[i] = sched_req_create(&p, &st))) {
            rc = st;
            goto out;
        }
        if ((rc = sched_submit(s, reqs[i]))) goto out;
    }
    long tokens = 0, after = 0;
    int n_first = 0, done = 0;
    double t_all_first = 0;
    while (done < conc) {
        int n = sched_step(s);
        if (n < 0) {
            rc = n;
            goto out;
        }
        for (int i = 0; i < conc; i++) {
            sched_event_t ev[64];
            int k;
            while ((k = sched_req_poll(reqs[i], ev, 64)) > 0)
                for (int j = 0; j < k; j++) {
                    if (ev[j].kind == SCHED_EV_TOKEN) {
                        tokens++;
                        if (t_all_first > 0) after++;
                        if (!first[i]) {
                            first[i] = 1;
                            n_first++;
                        }
                    } else if (ev[j].kind == SCHED_EV_DONE) {
                        done++;
                    }
                    sched_event_clear(&ev[j]);
                }
        }
        if (n_first == conc && t_all_first == 0) t_all_first = lc_now_s();
    }
    double t1 = lc_now_s();
    sched_metrics_t mt;
    sched_metrics(s, &mt);
    res->tokens = tokens;
    res->wall_s = t1 - t0;
    res->total_tps = (double)tokens / (t1 - t0);
    res->decode_tps = t1 > t_all_first && after > 0 ? (double)after / (t1 - t_all_first) : res->total_tps;
    res->ttft_s = mt.ttft.count ? mt.ttft.sum / (double)mt.ttft.count : 0;
out:
    if (reqs)
        for (int i = 0; i < conc; i++) sched_req_release(reqs[i]);
    free(reqs);
    free(first);
    sched_destroy(s);
out_ids:
    for (int i = 0; i < N_BENCH_PROMPTS; i++) tok_ids_free(&ids[i]);
    return rc;
}

int cmd_bench_engine(int argc, char **argv) {
    const char *model_path = NULL, *list = "1,4,16,64";
    int max_tokens = 64, markdown = 0, max_batch = 2048;
    static const struct option opts[] = {{"model", required_argument, 0, 'm'},
                                         {"concurrency", required_argument, 0, 'c'},
                                         {"max-batch", required_argument, 0, 'b'},
                                         {"markdown", no_argument, 0, 'k'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    int o;
    optind = 1;
    while ((o = getopt_long(argc, argv, "m:c:n:h", opts, NULL)) != -1) {
        switch (o) {
        case 'm': model_path = optarg; break;
        case 'c': list = optarg; break;
        case 'n': max_tokens = atoi(optarg); break;
        case 'b': max_batch = atoi(optarg); break;
        case 'k': markdown = 1; break;
        case 'h': bench_usage(stdout); return 0;
        default: bench_usage(stderr); return 2;
        }
    }
    if (!model_path || max_tokens < 1 || max_batch < 1) {
        bench_usage(stderr);
        return 2;
    }
    char err[512];
    double tl = lc_now_s();
    model_t *m = model_load(model_path, err, sizeof err);
    if (!m) {
        fprintf(stderr, "lacuna bench-engine: %s\n", err);
        return 1;
    }
    fprintf(stderr, "loaded %s in %.1f s\n", model_hparams(m)->name, lc_now_s() - tl);
    if (markdown) {
        printf("| concurrent requests | decode tokens/s | end-to-end tokens/s | mean TTFT (s) | tokens | wall (s) |\n");
        printf("|---:|---:|---:|---:|---:|---:|\n");
    }
    char *dup = strdup(list), *save = NULL;
    int rc = 0;
    for (char *t = strtok_r(dup, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        int conc = atoi(t);
        if (conc < 1) continue;
        bench_res_t r;
        if ((rc = bench_one(m, conc, max_tokens, max_batch, &r))) {
            fprintf(stderr, "lacuna bench-engine: concurrency %d: %s\n", conc, lc_strerror(rc));
            break;
        }
        if (markdown)
            printf("| %d | %.1f | %.1f | %.3f | %ld | %.2f |\n", conc, r.decode_tps, r.total_tps, r.ttft_s, r.tokens,
                   r.wall_s);
        else
            printf(
                "concurrency %3d: decode %8.1f tok/s, end-to-end %8.1f tok/s, mean TTFT %.3f s (%ld tokens, %.2f s)\n",
                conc, r.decode_tps, r.total_tps, r.ttft_s, r.tokens, r.wall_s);
        fflush(stdout);
    }
    free(dup);
    model_free(m);
    return rc ? 1 : 0;
}

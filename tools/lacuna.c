/* The `lacuna` command-line tool: after the CPU start-up (ops_cpu_init), a
 * thin dispatcher over the subcommands in the table below, which share the
 * daemon's library. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ops/ops.h"
#include "tools/cmds.h"

typedef int (*cmd_cb)(int argc, char **argv);

static const struct {
    const char *name;
    cmd_cb fn;
    const char *help;
} cmds[] = {
    {"inspect", cmd_inspect, "MODEL.gguf   print GGUF metadata and the tensor table"},
    {"generate", cmd_generate, "-m MODEL (-p TEXT | --chat TEXT) [-n N] [--temp T]   generate text"},
    {"mkmodel", cmd_mkmodel, "-o OUT.gguf  write a tiny random-weight Llama model"},
    {"bench-engine", cmd_bench_engine, "-m MODEL [-c 1,4,16,64] [-n M] [--markdown]   engine decode throughput"},
    {"complete", cmd_complete, "-m MODEL [-i IN.jsonl] [-o OUT.jsonl] [--prefill M] [--decode M]   batch completions"},
    {"attn-eval", cmd_attn_eval,
     "-m MODEL -f TEXT [-n 2048,4096,8192]   sparse attention accuracy on real activations"},
    {"bench-grammar", cmd_bench_grammar,
     "(-m MODEL | --synthetic N) [-b 1,64]   token-mask cost of constrained decoding"},
    {"tokenize", cmd_tokenize, "-m MODEL (-p TEXT | -f FILE) [--no-special] [--ids-only]   show token ids and pieces"},
};

static void usage(FILE *f) {
    fprintf(f, "usage: lacuna COMMAND [ARGS]\n\ncommands:\n");
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++) fprintf(f, "  %-12s %s\n", cmds[i].name, cmds[i].help);
}

int main(int argc, char **argv) {
    ops_cpu_init(argv, 0);
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "help") == 0) {
        usage(stdout);
        return 0;
    }
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++)
        if (strcmp(argv[1], cmds[i].name) == 0) return cmds[i].fn(argc - 1, argv + 1);
    fprintf(stderr, "lacuna: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}

/* Subcommands of the `lacuna` CLI. Each takes the arguments after its name
 * (argv[0] is the subcommand) and returns the process exit status; tools/lacuna.c
 * lists them in its dispatch table. */
#ifndef LC_TOOLS_CMDS_H
#define LC_TOOLS_CMDS_H

/* lacuna inspect MODEL.gguf: version, metadata, tensor table, parameter count.
 * Exits 1 with the loader's message on a bad file. */
int cmd_inspect(int argc, char **argv);
/* lacuna mkmodel -o OUT.gguf [...]: a tiny random-weight Llama model (tests). */
int cmd_mkmodel(int argc, char **argv);
/* lacuna generate -m MODEL (-p TEXT | -f FILE | --chat TEXT) [...]: streams a
 * continuation; prefill and decode tokens/s to stderr. */
int cmd_generate(int argc, char **argv);

/* lacuna tokenize -m MODEL [-p TEXT | -f FILE] [--no-special] [--ids-only]:
 * prints each token's id and piece, then the count. Exits 1 on a bad model or
 * unreadable input, 2 on bad usage. */
int cmd_tokenize(int argc, char **argv);

/* lacuna bench-engine -m MODEL [-c LIST] [-n M] [--markdown]: aggregate
 * decode tokens/s of the scheduler at each concurrency level. */
int cmd_bench_engine(int argc, char **argv);

/* lacuna complete -m MODEL [-i IN.jsonl] [-o OUT.jsonl] [policy options]:
 * batch completions through the engine (greedy), JSONL in and out, with
 * each request's attention density and timings. */
int cmd_complete(int argc, char **argv);

/* lacuna attn-eval -m MODEL -f TEXT [-n LENGTHS] [...]: relative error,
 * attention-mass recall and density of each sparse method against dense on
 * the model's own activations. */
int cmd_attn_eval(int argc, char **argv);

/* lacuna bench-grammar (-m MODEL | --synthetic N) [-b LIST]: the cost of
 * constrained decoding's token mask per token and per step. */
int cmd_bench_grammar(int argc, char **argv);

#endif

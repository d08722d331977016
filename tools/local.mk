# tools: the lacuna CLI.
bin_PROGRAMS += lacuna
lacuna_SOURCES = tools/lacuna.c tools/cmds.h tools/inspect.c tools/tokenize.c \
	tools/mkmodel.c tools/mkmodel_vocab.c tools/mkmodel.h tools/generate.c \
	tools/bench_engine.c tools/complete.c tools/attn_eval.c tools/bench_grammar.c
lacuna_LDADD = liblacuna.a $(LC_LIBS)

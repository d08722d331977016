# attn: file list for the non-recursive build (see Makefile.am).
liblacuna_a_SOURCES += \
	src/attn/attn.h src/attn/attn_int.h src/attn/policy.c \
	src/attn/cpu/kern.h src/attn/cpu/kern.c src/attn/cpu/kern_x86.h src/attn/cpu/kern_x86.c \
	src/attn/cpu/dense.c \
	src/attn/cpu/streaming.c \
	src/attn/cpu/sliding.c \
	src/attn/cpu/quest.c \
	src/attn/cpu/tidal.c \
	src/attn/cpu/flex.c \
	src/attn/cpu/anchor.c

noinst_PROGRAMS += tests/bench_attn
tests_bench_attn_SOURCES = tests/bench_attn.c
tests_bench_attn_LDADD = liblacuna.a $(LC_LIBS)

# ops: non-attention compute (CPU through CBLAS, and the quantized matmul
# whose AVX2 and AVX-512 kernels are compiled by function attribute, chosen
# at run time).
liblacuna_a_SOURCES += \
	src/ops/ops.h \
	src/ops/cpu/matmul.c src/ops/cpu/gemm.c src/ops/cpu/gemm.h \
	src/ops/cpu/qformat.c src/ops/cpu/qformat.h src/ops/cpu/qpack.c src/ops/cpu/qdot_avx2.c \
	src/ops/cpu/qdot_avx512.c \
	src/ops/cpu/norm.c src/ops/cpu/par.h \
	src/ops/cpu/act.c \
	src/ops/cpu/rope.c \
	src/ops/cpu/threads.c src/ops/cpu/threads.h

# Microbenchmark of the quantized matmul against the f32 paths (not run by
# make check): tests/bench_qmatmul [ggml type id] [reps]
noinst_PROGRAMS += tests/bench_qmatmul
tests_bench_qmatmul_SOURCES = tests/bench_qmatmul.c
tests_bench_qmatmul_LDADD = liblacuna.a $(LC_LIBS)

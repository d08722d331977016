# attn: file list for the non-recursive build (see Makefile.am).
liblacuna_a_SOURCES += \
	src/attn/attn.h src/attn/attn_int.h src/attn/policy.c \
	src/attn/cpu/kern.h src/attn/cpu/kern.c src/attn/cpu/kern_x86.h src/attn/cpu/kern_x86.c \
	src/attn/cpu/plan.c \
	src/attn/cpu/decode.c \
	src/attn/cpu/quest.c \
	src/attn/cpu/tidal.c \
	src/attn/cpu/flex.c \
	src/attn/cpu/anchor.c

noinst_PROGRAMS += tests/bench_attn
tests_bench_attn_SOURCES = tests/bench_attn.c
tests_bench_attn_LDADD = liblacuna.a $(LC_LIBS)

# attn/cuda: dense paged prefill (sm_90a wgmma; mma.sync for head_dim 256 and sliding windows) and decode
# (split-K) kernels,
# Quest sparse decode (quest.cu; its GPU checks: tests/gpu/check_quest_cuda),
# FlexPrefill's selection (flex.cu host, flex_kern.cu and flex_sel.cu kernels; tests/gpu/check_flex_cuda).
ATTN_CUDA_SRC = src/attn/cuda/plan.cu src/attn/cuda/prefill.cu src/attn/cuda/prefill_mma.cu src/attn/cuda/decode.cu \
	src/attn/cuda/quest.cu src/attn/cuda/flex.cu src/attn/cuda/flex_kern.cu src/attn/cuda/flex_sel.cu
ATTN_CUDA_HDRS = src/attn/cuda/attn_cuda.h src/attn/cuda/plan.cuh src/attn/cuda/sm90.cuh src/attn/cuda/quest_cuda.h \
	src/attn/cuda/flex_cuda.h src/attn/cuda/flex.cuh
# TidalDecode sparse decode (tidal.cu host, tidal_kern.cu kernels; its GPU checks: tests/gpu/check_tidal_cuda).
ATTN_CUDA_SRC += src/attn/cuda/tidal.cu src/attn/cuda/tidal_kern.cu
ATTN_CUDA_HDRS += src/attn/cuda/tidal_cuda.h src/attn/cuda/tidal.cuh src/attn/cuda/radix.cuh
# AnchorAttention's prefill (anchor.cu host, anchor_kern.cu selection kernels, anchor_merge.cu merges) and the token-gather
# attention it runs on (gather.cu); their GPU checks: tests/gpu/check_anchor_cuda.
ATTN_CUDA_SRC += src/attn/cuda/anchor.cu src/attn/cuda/anchor_kern.cu src/attn/cuda/anchor_merge.cu src/attn/cuda/gather.cu
ATTN_CUDA_HDRS += src/attn/cuda/anchor_cuda.h src/attn/cuda/anchor.cuh src/attn/cuda/gather_cuda.h
EXTRA_DIST += tests/gpu/check_anchor_cuda.c tests/gpu/check_anchor_kern.c tests/gpu/check_anchor_kern.h
EXTRA_DIST += tests/gpu/check_tidal_cuda.c
EXTRA_DIST += $(ATTN_CUDA_SRC) $(ATTN_CUDA_HDRS) tests/gpu/check_attn_cuda.c tests/gpu/run_attn.sh \
	tests/gpu/gpu_delay.cu tests/gpu/gpu_delay.h \
	tests/gpu/check_quest_cuda.c tests/gpu/check_flex_cuda.c tests/gpu/gpu_testutil.h \
	tests/gpu/gpu_fixture.h tests/gpu/gpu_fixture.c \
	tests/gpu/bench_attn_cuda.py tests/gpu/bench_flex_ref.py tests/gpu/bench_sparse_common.py \
	tests/gpu/capture_hf.py
if HAVE_CUDA
liblacuna_a_SOURCES += $(ATTN_CUDA_HDRS) $(ATTN_CUDA_SRC)
CUDA_SRCS += $(ATTN_CUDA_SRC)
ATTN_CUDA_OBJS = src/attn/cuda/plan.o src/attn/cuda/prefill.o src/attn/cuda/prefill_mma.o src/attn/cuda/decode.o \
	src/attn/cuda/flex.o src/attn/cuda/flex_kern.o src/attn/cuda/flex_sel.o
# AnchorAttention for tests/gpu/bench_flex_ref.py (its anchor pass runs on the prefill kernel above).
ATTN_CUDA_OBJS += src/attn/cuda/anchor.o src/attn/cuda/anchor_kern.o src/attn/cuda/anchor_merge.o src/attn/cuda/gather.o

# The GPU checks run on the GPU machine (tests/gpu/run_attn.sh), not in make
# check: built here, with Check linked statically so that the binary travels.
if HAVE_CHECK
# What the suites share (the page table, benchmark timing, main's skip and run).
GPU_FIXTURE = tests/gpu/gpu_testutil.h tests/gpu/gpu_fixture.h tests/gpu/gpu_fixture.c
noinst_PROGRAMS += tests/gpu/check_attn_cuda
tests_gpu_check_attn_cuda_SOURCES = tests/gpu/check_attn_cuda.c tests/gpu/gpu_delay.cu tests/gpu/gpu_delay.h \
	$(GPU_FIXTURE)
CUDA_SRCS += tests/gpu/gpu_delay.cu
tests_gpu_check_attn_cuda_CFLAGS = $(CHECK_CFLAGS_ALL)
tests_gpu_check_attn_cuda_LDADD = liblacuna.a -l:libcheck_pic.a -l:libsubunit.a $(CUDA_LIBS) -lrt -lm
noinst_PROGRAMS += tests/gpu/check_quest_cuda
tests_gpu_check_quest_cuda_SOURCES = tests/gpu/check_quest_cuda.c $(GPU_FIXTURE)
tests_gpu_check_quest_cuda_CFLAGS = $(CHECK_CFLAGS_ALL)
tests_gpu_check_quest_cuda_LDADD = liblacuna.a -l:libcheck_pic.a -l:libsubunit.a $(CUDA_LIBS) -lrt -lm
noinst_PROGRAMS += tests/gpu/check_flex_cuda
tests_gpu_check_flex_cuda_SOURCES = tests/gpu/check_flex_cuda.c $(GPU_FIXTURE)
tests_gpu_check_flex_cuda_CFLAGS = $(CHECK_CFLAGS_ALL)
tests_gpu_check_flex_cuda_LDADD = liblacuna.a -l:libcheck_pic.a -l:libsubunit.a $(CUDA_LIBS) -lrt -lm
noinst_PROGRAMS += tests/gpu/check_anchor_cuda
tests_gpu_check_anchor_cuda_SOURCES = tests/gpu/check_anchor_cuda.c tests/gpu/check_anchor_kern.c \
	tests/gpu/check_anchor_kern.h tests/gpu/gpu_testutil.h
tests_gpu_check_anchor_cuda_CFLAGS = $(CHECK_CFLAGS_ALL)
tests_gpu_check_anchor_cuda_LDADD = liblacuna.a -l:libcheck_pic.a -l:libsubunit.a $(CUDA_LIBS) -lrt -lm
noinst_PROGRAMS += tests/gpu/check_tidal_cuda
tests_gpu_check_tidal_cuda_SOURCES = tests/gpu/check_tidal_cuda.c $(GPU_FIXTURE)
tests_gpu_check_tidal_cuda_CFLAGS = $(CHECK_CFLAGS_ALL)
tests_gpu_check_tidal_cuda_LDADD = liblacuna.a -l:libcheck_pic.a -l:libsubunit.a $(CUDA_LIBS) -lrt -lm
endif

# The kernels with a C entry point for the benchmark's ctypes (tests/gpu/bench_attn_cuda.py).
noinst_DATA = tests/gpu/libattn_cuda.so
CLEANFILES += tests/gpu/libattn_cuda.so tests/gpu/log.pic.o tests/gpu/status.pic.o
tests/gpu/libattn_cuda.so: $(ATTN_CUDA_OBJS) $(top_srcdir)/src/common/log.c $(top_srcdir)/src/common/status.c
	@mkdir -p tests/gpu
	$(AM_V_GEN)$(CC) -std=c11 -D_GNU_SOURCE -O2 -fPIC -I$(top_srcdir)/src -I$(top_builddir) \
		-c -o tests/gpu/log.pic.o $(top_srcdir)/src/common/log.c && \
	$(CC) -std=c11 -D_GNU_SOURCE -O2 -fPIC -I$(top_srcdir)/src -I$(top_builddir) \
		-c -o tests/gpu/status.pic.o $(top_srcdir)/src/common/status.c && \
	$(NVCC) -shared -o $@ $(ATTN_CUDA_OBJS) tests/gpu/log.pic.o tests/gpu/status.pic.o

# The same library with the decode kernel's phase timer (tests/gpu/trace_decode.py):
# built on demand only (scripts/gpu_bundle.sh), never linked into the executor.
CLEANFILES += tests/gpu/libattn_cuda_trace.so tests/gpu/decode_trace.o
tests/gpu/libattn_cuda_trace.so: tests/gpu/libattn_cuda.so $(top_srcdir)/src/attn/cuda/decode.cu
	$(AM_V_GEN)$(NVCC) $(NVCC_FLAGS) -DATTN_DEC_TRACE -c -o tests/gpu/decode_trace.o \
		$(top_srcdir)/src/attn/cuda/decode.cu && \
	$(NVCC) -shared -o $@ $(filter-out src/attn/cuda/decode.o,$(ATTN_CUDA_OBJS)) tests/gpu/decode_trace.o \
		tests/gpu/log.pic.o tests/gpu/status.pic.o
endif

# attn/cp: context parallelism (communicators, ring attention over a sharded KV cache).
liblacuna_a_SOURCES += \
	src/attn/cp/cp_comm.h src/attn/cp/cp_comm_int.h src/attn/cp/comm.c src/attn/cp/comm_threads.c \
	src/attn/cp/cp_attn.h src/attn/cp/cp_int.h src/attn/cp/layout.c src/attn/cp/ring.c \
	src/attn/cp/cp_decode.c src/attn/cp/cp_sparse.c src/attn/cp/cp_flex.c src/attn/cp/cp_window.c \
	src/attn/cp/cp_ring_map.h src/attn/cp/ring_map.c src/attn/cp/cp_team.h src/attn/cp/team.c
# The hosts of a ring spanning machines agree at start-up (plain C, sockets).
liblacuna_a_SOURCES += \
	src/attn/cp/cp_join.h src/attn/cp/cp_join_int.h src/attn/cp/cp_join.c src/attn/cp/cp_join_wire.c

# attn/cp on the GPU: the device-local and NCCL communicators (NCCL's entry
# points say LC_EUNSUPPORTED in a build without it), and their GPU Check
# suites (tests/gpu/run.sh step cp), Check linked statically as above.
# The ring attention on the GPU kernels (ring_cuda.cu, ring_cuda_decode.cu, ring_cuda_anchor.cu, ring_cuda.cuh;
# cp_cuda.h).
CP_CUDA_SRC = src/attn/cp/comm_dev.cu src/attn/cp/comm_nccl.cu src/attn/cp/ring_cuda.cu src/attn/cp/ring_cuda_decode.cu \
	src/attn/cp/ring_cuda_anchor.cu
EXTRA_DIST += $(CP_CUDA_SRC) src/attn/cp/ring_cuda.cuh src/attn/cp/cp_comm_cuda.h src/attn/cp/cp_cuda.h tests/gpu/check_cp_cuda.c
if HAVE_CUDA
liblacuna_a_SOURCES += src/attn/cp/cp_comm_cuda.h src/attn/cp/cp_cuda.h $(CP_CUDA_SRC)
CUDA_SRCS += $(CP_CUDA_SRC)
if HAVE_CHECK
noinst_PROGRAMS += tests/gpu/check_cp_cuda
tests_gpu_check_cp_cuda_SOURCES = tests/gpu/check_cp_cuda.c $(GPU_FIXTURE)
tests_gpu_check_cp_cuda_CFLAGS = $(CHECK_CFLAGS_ALL)
tests_gpu_check_cp_cuda_LDADD = liblacuna.a -l:libcheck_pic.a -l:libsubunit.a $(CUDA_LIBS) -lrt -lm
if HAVE_NCCL
noinst_PROGRAMS += tests/gpu/check_cp_nccl
tests_gpu_check_cp_nccl_SOURCES = tests/gpu/check_cp_cuda.c $(GPU_FIXTURE)
tests_gpu_check_cp_nccl_CFLAGS = $(CHECK_CFLAGS_ALL) -DCP_WITH_NCCL
tests_gpu_check_cp_nccl_LDADD = liblacuna.a -l:libcheck_pic.a -l:libsubunit.a $(CUDA_LIBS) $(NCCL_LIBS) -lrt -lm
endif
endif
endif

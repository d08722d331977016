# ops/cuda: device discovery (always) and CUDA kernels (when configured with CUDA).
liblacuna_a_SOURCES += src/ops/device.c src/ops/device.h
OPS_CUDA_SRCS = src/ops/cuda/device.cu src/ops/cuda/rmsnorm.cu src/ops/cuda/elementwise.cu src/ops/cuda/gemm.cu
if HAVE_CUDA
liblacuna_a_SOURCES += src/ops/cuda/cuda_ops.h src/ops/cuda/cuda_check.cuh $(OPS_CUDA_SRCS)
CUDA_SRCS += $(OPS_CUDA_SRCS)
endif
EXTRA_DIST += $(OPS_CUDA_SRCS) src/ops/cuda/cuda_ops.h src/ops/cuda/cuda_check.cuh
if HAVE_CHECK
check_PROGRAMS += tests/check_device
tests_check_device_SOURCES = tests/check_device.c
tests_check_device_CFLAGS = $(CHECK_CFLAGS_ALL)
tests_check_device_LDADD = $(CHECK_LDADD)
endif

# What batch-invariant matmuls cost on the GPU (tests/gpu/run.sh step gemm).
EXTRA_DIST += tests/gpu/bench_gemm.c
if HAVE_CUDA
noinst_PROGRAMS += tests/gpu/bench_gemm
tests_gpu_bench_gemm_SOURCES = tests/gpu/bench_gemm.c
tests_gpu_bench_gemm_LDADD = liblacuna.a $(LC_LIBS)
endif

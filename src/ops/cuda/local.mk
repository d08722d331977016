# ops/cuda: device discovery (always) and CUDA kernels (when configured with CUDA).
liblacuna_a_SOURCES += src/ops/device.c src/ops/device.h
if HAVE_CUDA
liblacuna_a_SOURCES += src/ops/cuda/cuda_ops.h src/ops/cuda/cuda_check.cuh \
	src/ops/cuda/device.cu src/ops/cuda/rmsnorm.cu
endif
EXTRA_DIST += src/ops/cuda/device.cu src/ops/cuda/rmsnorm.cu src/ops/cuda/cuda_ops.h src/ops/cuda/cuda_check.cuh
if HAVE_CHECK
check_PROGRAMS += tests/check_device
tests_check_device_SOURCES = tests/check_device.c
tests_check_device_CFLAGS = $(CHECK_CFLAGS_ALL)
tests_check_device_LDADD = $(CHECK_LDADD)
endif
# nvcc objects get no automatic header dependencies: list them.
CUDA_HDRS = src/ops/cuda/cuda_ops.h src/ops/cuda/cuda_check.cuh src/common/log.h src/common/status.h
src/ops/cuda/device.o src/ops/cuda/rmsnorm.o: $(CUDA_HDRS)

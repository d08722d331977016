/* GPU discovery: asks the CUDA runtime (when compiled in) what exists. */
#include "ops/device.h"

#include <stdio.h>

#include "common/status.h"
#include "config.h"
#ifdef HAVE_CUDA
#include "ops/cuda/cuda_ops.h"
#endif

int lc_device_cuda_compiled(void) {
#ifdef HAVE_CUDA
    return 1;
#else
    return 0;
#endif
}

int lc_device_count(char *why, size_t len) {
#ifdef HAVE_CUDA
    return ops_cuda_device_count(why, len);
#else
    if (why && len) snprintf(why, len, "this build has no CUDA support (configure --with-cuda)");
    return 0;
#endif
}

void lc_device_name(int index, char *buf, size_t len) {
    if (!len) return;
    buf[0] = 0;
#ifdef HAVE_CUDA
    ops_cuda_device_name(index, buf, len);
#else
    (void)index;
#endif
}

/* Device selection shared by the daemon and the CLI: parses the spec and asks
 * the CUDA runtime (when compiled in) whether a device exists. */
#include "ops/device.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/config.h"
#include "common/log.h"
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

int lc_device_select(const char *spec, lc_device_t *out) {
    memset(out, 0, sizeof *out);
    snprintf(out->name, sizeof out->name, "cpu");
    int index;
    if (!spec || !*spec) return 0;
    if (lc_device_spec_parse(spec, &index)) return LC_EINVAL;
    if (index < 0) return 0;
    char why[256] = "";
    int n = lc_device_count(why, sizeof why);
    if (n <= index) {
        if (n > 0) snprintf(why, sizeof why, "only %d CUDA device(s) present", n);
        LC_WARN("device %s unavailable (%s); falling back to CPU", spec, why);
        return 0;
    }
#ifdef HAVE_CUDA
    out->is_gpu = 1;
    out->index = index;
    ops_cuda_device_name(index, out->name, sizeof out->name);
    LC_INFO("using CUDA device %d: %s", index, out->name);
#endif
    return 0;
}

// One check macro family for the CUDA path. In the request path a failure is
// returned as LC_EDEVICE (after logging call, file and line), never aborted.
#pragma once
#include <cuda_runtime.h>

#include "common/log.h"
#include "common/status.h"

#define CUDA_CHECK_RET(call)                                                                                           \
    do {                                                                                                               \
        cudaError_t err_ = (call);                                                                                     \
        if (err_ != cudaSuccess) {                                                                                     \
            lc_log(LC_LOG_ERROR, "%s failed at %s:%d: %s", #call, __FILE__, __LINE__, cudaGetErrorString(err_));       \
            return LC_EDEVICE;                                                                                         \
        }                                                                                                              \
    } while (0)

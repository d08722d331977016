/* Compute device selection. A build with CUDA can still run on a machine
 * without a GPU: asking for "cuda:N" there falls back to the CPU with a log
 * line instead of failing. */
#ifndef LC_DEVICE_H
#define LC_DEVICE_H

#include <stddef.h>

typedef struct {
    int is_gpu;     // 1 when a CUDA device was selected
    int index;      // CUDA device index when is_gpu
    char name[128]; // "cpu" or the GPU's name
} lc_device_t;

/* Number of usable CUDA devices (0 without CUDA, driver or GPU). When none,
 * writes the reason into why (if non-NULL). */
int lc_device_count(char *why, size_t len);
/* Parses "cpu", "cuda" or "cuda:N" (lc_device_spec_parse, common/config.h;
 * NULL or "" is "cpu") and selects it. Returns 0, or LC_EINVAL for a
 * malformed spec. A missing GPU is not an error: out->is_gpu = 0 and a
 * warning is logged. */
int lc_device_select(const char *spec, lc_device_t *out);
/* 1 when this build has the CUDA path compiled in. */
int lc_device_cuda_compiled(void);

#endif

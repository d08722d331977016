/* GPU discovery. A build with CUDA can still run on a machine without a GPU:
 * the executor (model/exec.h) asks here what is usable and picks the device
 * ("auto" falls back to the CPU, an explicit "cuda" is an error). */
#ifndef LC_DEVICE_H
#define LC_DEVICE_H

#include <stddef.h>

/* Number of usable CUDA devices (0 without CUDA, driver or GPU). When none,
 * writes the reason into why (if non-NULL). */
int lc_device_count(char *why, size_t len);
/* The name of CUDA device index ("" when there is none). */
void lc_device_name(int index, char *buf, size_t len);
/* 1 when this build has the CUDA path compiled in. */
int lc_device_cuda_compiled(void);

#endif

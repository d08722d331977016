/* See threads.h: one re-exec so that OpenMP starts with a passive wait policy. */
#include "common/threads.h"

#include <stdlib.h>
#include <unistd.h>

void lc_threads_passive_reexec(char **argv) {
    if (getenv("OMP_WAIT_POLICY")) return;
    setenv("OMP_WAIT_POLICY", "passive", 1);
    execv("/proc/self/exe", argv);
    /* exec failed: carry on with the default policy */
}

/* lacunad's entry point. The daemon itself (configuration, signals, the
 * model load, the HTTP front end) lives in the library, src/server/daemon.c,
 * where the tests reach it. */
#include "ops/ops.h"
#include "server/server.h"

int main(int argc, char **argv) {
    ops_cpu_init(argv, 0); // may re-execute lacunad once (OpenBLAS's kernel set, OpenMP's wait)
    static srv_t s;
    int rc = srv_configure(&s, argc, argv);
    return rc == SRV_SERVE ? srv_serve(&s) : rc;
}

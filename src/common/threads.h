/* Thread-pool policy shared by every binary. */
#ifndef LC_THREADS_H
#define LC_THREADS_H

/* OpenMP's idle threads spin by default, taking the cores the next BLAS call,
 * the HTTP loop or another process needs: on a small or shared machine that
 * makes the forward pass several times slower. libgomp reads OMP_WAIT_POLICY
 * only at start-up, so when it is unset this sets it to "passive" and
 * re-executes the program once (argv unchanged). Call first thing in main().
 * Returns only when nothing had to change or exec failed. */
void lc_threads_passive_reexec(char **argv);

#endif

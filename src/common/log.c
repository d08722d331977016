/* stderr logger: the whole line is formatted first and written with one
 * write(2) so that lines from the loop and engine threads never interleave. */
#include "common/log.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "common/status.h"

static _Atomic int g_level = LC_LOG_INFO;
static const char *const level_names[] = {"error", "warn", "info", "debug"};

void lc_log_set_level(lc_log_level_t level) { atomic_store(&g_level, (int)level); }
lc_log_level_t lc_log_get_level(void) { return (lc_log_level_t)atomic_load(&g_level); }

int lc_log_parse_level(const char *s, lc_log_level_t *out) {
    for (int i = 0; i < 4; i++) {
        if (strcasecmp(s, level_names[i]) == 0) {
            *out = (lc_log_level_t)i;
            return 0;
        }
    }
    if (strcasecmp(s, "warning") == 0) {
        *out = LC_LOG_WARN;
        return 0;
    }
    return LC_EINVAL;
}

void lc_log(lc_log_level_t level, const char *fmt, ...) {
    if ((int)level > atomic_load(&g_level)) return;
    char line[2048];
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    int n = snprintf(line, sizeof line, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %-5s ", tm.tm_year + 1900, tm.tm_mon + 1,
                     tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000, level_names[level]);
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
    va_end(ap);
    if (m < 0) m = 0;
    size_t len = (size_t)n + ((size_t)m < sizeof line - (size_t)n - 1 ? (size_t)m : sizeof line - (size_t)n - 2);
    line[len++] = '\n';
    ssize_t w = write(STDERR_FILENO, line, len);
    (void)w;
}

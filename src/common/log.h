/* Leveled logging to stderr, one line per call, safe from any thread.
 *
 * Lines look like "2026-11-29T03:00:00.123Z info  message". The level can be
 * changed at run time (SIGHUP reload). */
#ifndef LC_LOG_H
#define LC_LOG_H

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { LC_LOG_ERROR = 0, LC_LOG_WARN, LC_LOG_INFO, LC_LOG_DEBUG } lc_log_level_t;

void lc_log_set_level(lc_log_level_t level);
lc_log_level_t lc_log_get_level(void);
/* Parses "error", "warn", "info", "debug"; returns 0 or LC_EINVAL. */
int lc_log_parse_level(const char *s, lc_log_level_t *out);
void lc_log(lc_log_level_t level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define LC_ERROR(...) lc_log(LC_LOG_ERROR, __VA_ARGS__)
#define LC_WARN(...) lc_log(LC_LOG_WARN, __VA_ARGS__)
#define LC_INFO(...) lc_log(LC_LOG_INFO, __VA_ARGS__)
#define LC_DEBUG(...)                                                                                                  \
    do {                                                                                                               \
        if (lc_log_get_level() >= LC_LOG_DEBUG) lc_log(LC_LOG_DEBUG, __VA_ARGS__);                                     \
    } while (0)

#ifdef __cplusplus
}
#endif

#endif

/* Monotonic and wall clocks in the units the metrics and logs use. */
#ifndef LC_TIMEUTIL_H
#define LC_TIMEUTIL_H
#include <stdint.h>

/* Monotonic nanoseconds; never goes back. */
uint64_t lc_now_ns(void);
/* Monotonic seconds as a double. */
double lc_now_s(void);
/* Unix time in seconds (for the OpenAI `created` field). */
int64_t lc_unix_time(void);

#endif

/* Messages and names for lc_status_t, generated from the single table. */
#include "common/status.h"

const char *lc_strerror(int status) {
    switch (status) {
#define LC_STATUS_MSG(name, val, msg)                                                                                  \
    case (val): return msg;
        LC_STATUS_MAP(LC_STATUS_MSG)
#undef LC_STATUS_MSG
    }
    return "unknown status";
}

const char *lc_status_name(int status) {
    switch (status) {
#define LC_STATUS_NAME(name, val, msg)                                                                                 \
    case (val): return #name;
        LC_STATUS_MAP(LC_STATUS_NAME)
#undef LC_STATUS_NAME
    }
    return "EUNKNOWN";
}

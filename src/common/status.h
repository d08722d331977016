/* Status codes shared by every module.
 *
 * Request-path functions return 0 or a negative lc_status_t; the table is
 * defined once here with an X-macro so that names and messages never drift
 * (libuv's UV_ERRNO_MAP). */
#ifndef LC_STATUS_H
#define LC_STATUS_H

#ifdef __cplusplus
extern "C" {
#endif

#define LC_STATUS_MAP(X)                                                                                               \
    X(OK, 0, "success")                                                                                                \
    X(ENOMEM, -1, "out of memory")                                                                                     \
    X(EINVAL, -2, "invalid argument")                                                                                  \
    X(EIO, -3, "input/output error")                                                                                   \
    X(EFORMAT, -4, "malformed file or data")                                                                           \
    X(ERANGE, -5, "value out of range")                                                                                \
    X(ENOSPC, -6, "no free KV blocks")                                                                                 \
    X(ECANCELED, -7, "operation canceled")                                                                             \
    X(EUNSUPPORTED, -8, "not supported")                                                                               \
    X(ENOTFOUND, -9, "not found")                                                                                      \
    X(EBUSY, -10, "resource busy")                                                                                     \
    X(ETOOLONG, -11, "input too long")                                                                                 \
    X(EDEVICE, -12, "device error")                                                                                    \
    X(ESHUTDOWN, -13, "shutting down")

typedef enum {
#define LC_STATUS_ENUM(name, val, msg) LC_##name = (val),
    LC_STATUS_MAP(LC_STATUS_ENUM)
#undef LC_STATUS_ENUM
} lc_status_t;

/* Returns a static message for a status code ("unknown status" otherwise). */
const char *lc_strerror(int status);
/* Returns the symbolic name ("ENOMEM") of a status code. */
const char *lc_status_name(int status);

#ifdef __cplusplus
}
#endif

#endif

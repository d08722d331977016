/* Inside the start-up exchange (cp_join.h): the wire format and the socket
 * helpers of cp_join_wire.c, shared with the protocol in cp_join.c.
 *
 * A message is a 12-byte header, then its payload; integers big-endian:
 *   magic "LCJN" | u16 version | u16 type | u32 payload bytes
 * Payloads:
 *   HELLO   (a host to host 0) u16 n_hosts, u16 index, u64 list digest,
 *           u16 fp_len, u16 desc_len, fp, desc
 *   WAIT    (host 0, after each join) u16 n_missing, u16 missing[n_missing]
 *   WELCOME (host 0, all joined) u16 n_hosts, id[CP_JOIN_ID_BYTES], then per
 *           host: u16 fp_len, u16 desc_len, fp, desc
 *   REJECT  (host 0) i16 status, text (no NUL)
 * A receiver refuses a payload longer than its type's bound before reading
 * it, so a stray sender cannot make anyone allocate or wait for much. */
#ifndef LC_ATTN_CP_JOIN_INT_H
#define LC_ATTN_CP_JOIN_INT_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include "attn/cp/cp_join.h"

#define CPJ_MAGIC "LCJN"
#define CPJ_HDR 12
enum { CPJ_HELLO = 1, CPJ_WAIT = 2, CPJ_WELCOME = 3, CPJ_REJECT = 4 };

#define CPJ_TEXT_MAX 1024
#define CPJ_HELLO_MAX (16 + CP_JOIN_FP_MAX + CP_JOIN_DESC_MAX)
#define CPJ_WAIT_MAX (2 + 2 * CP_JOIN_MAX_HOSTS)
#define CPJ_WELCOME_MAX (2 + CP_JOIN_ID_BYTES + CP_JOIN_MAX_HOSTS * (4 + CP_JOIN_FP_MAX + CP_JOIN_DESC_MAX))
#define CPJ_REJECT_MAX (2 + CPJ_TEXT_MAX)
/* The largest payload of any type. */
#define CPJ_MSG_MAX CPJ_WELCOME_MAX
/* After its deadline, host 0 still delivers its answers for this long. */
#define CPJ_GRACE_MS 1000
/* Sockets host 0 listens on: a name may resolve to several addresses. */
#define CPJ_MAX_LISTEN 8

/* ---- buffers --------------------------------------------------------------------------- */
/* A payload being written; `bad` once it would overflow. */
typedef struct {
    unsigned char *p;
    size_t n, cap;
    int bad;
} cpj_wr_t;
void cpj_put16(cpj_wr_t *w, unsigned v);
void cpj_put64(cpj_wr_t *w, uint64_t v);
void cpj_put(cpj_wr_t *w, const void *b, size_t n);

/* A payload being read; `bad` once a read runs past its end. */
typedef struct {
    const unsigned char *p;
    size_t n, off;
    int bad;
} cpj_rd_t;
unsigned cpj_get16(cpj_rd_t *r);
uint64_t cpj_get64(cpj_rd_t *r);
/* Points at the next n bytes (NULL and bad when there are fewer). */
const unsigned char *cpj_get(cpj_rd_t *r, size_t n);

/* Writes a message header for a payload of len bytes into h[CPJ_HDR]. */
void cpj_header(unsigned char *h, int type, size_t len);
/* Checks a header: 0 with *type and *len; LC_EFORMAT (no magic or a length
 * over CPJ_MSG_MAX or its type's bound), LC_EUNSUPPORTED (another version,
 * in *version). */
int cpj_parse_header(const unsigned char *h, int *type, uint32_t *len, unsigned *version);
/* The largest payload of a type (0 for an unknown type). */
size_t cpj_type_max(int type);

/* The digest of a host list (hosts compared case-insensitively). */
uint64_t cpj_list_digest(const cp_host_t *hosts, int n);

/* ---- messages for the caller ---------------------------------------------------------- */
/* snprintf into err (nothing when errlen is 0). */
void cpj_errf(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* "host:port", with brackets around an IPv6 address. */
void cpj_host_text(const cp_host_t *h, char *buf, size_t len);
/* The keys whose key=value words differ between two descriptions, as
 * "gpus: 4 on host 2, 8 on host 0; ..." (names a and b); falls back to
 * quoting both descriptions when they are not key=value words. */
void cpj_desc_diff(const char *a, const char *name_a, const char *b, const char *name_b, char *buf, size_t len);

/* ---- sockets (non-blocking; every wait bounded by a deadline in lc_now_ns time) -------- */
uint64_t cpj_deadline_after(uint64_t now_ns, int ms);
/* Milliseconds left until deadline (0 when past; capped at cap_ms). */
int cpj_left_ms(uint64_t deadline, int cap_ms);
/* Sends all of b: 0, LC_EIO (closed, or an error; why says which) or
 * LC_ENOTFOUND (the deadline passed). */
int cpj_send_all(int fd, const void *b, size_t n, uint64_t deadline, char *why, size_t whylen);
/* Sends one message. */
int cpj_send_msg(int fd, int type, const void *payload, size_t len, uint64_t deadline, char *why, size_t whylen);
/* Receives one message into buf (cap >= its type's bound): 0 with *type and
 * *len; LC_EIO (closed or a socket error), LC_ENOTFOUND (deadline),
 * LC_EFORMAT or LC_EUNSUPPORTED (as cpj_parse_header; *version set). */
int cpj_recv_msg(int fd, uint64_t deadline, int *type, unsigned char *buf, size_t cap, size_t *len, unsigned *version,
                 char *why, size_t whylen);
/* Connects to h, trying each of its addresses, each for at most attempt_ms:
 * a connected non-blocking fd, or -1 with the reason in why. */
int cpj_connect(const cp_host_t *h, uint64_t deadline, int attempt_ms, char *why, size_t whylen);
/* Listens on every address of h (non-blocking fds[0 .. *n)): 0, LC_EBUSY
 * when the port is in use, LC_EIO otherwise; the message in err. */
int cpj_listen(const cp_host_t *h, int *fds, int *n, char *err, size_t errlen);
/* The peer address of a connected socket as text. */
void cpj_peer_text(int fd, char *buf, size_t len);

#endif

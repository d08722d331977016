/* The start-up exchange's plumbing (cp_join_int.h): the host list, the
 * message format, and sockets whose every wait is bounded by a deadline.
 * Kept apart from the protocol (cp_join.c) so that each reads on its own. */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "attn/cp/cp_comm_cuda.h"
#include "attn/cp/cp_join_int.h"
#include "common/status.h"
#include "common/timeutil.h"

_Static_assert(CP_JOIN_ID_BYTES == CP_NCCL_ID_BYTES, "the join hands out NCCL's unique id");

/* ---- buffers --------------------------------------------------------------------------- */
void cpj_put(cpj_wr_t *w, const void *b, size_t n) {
    if (w->bad || n > w->cap - w->n) {
        w->bad = 1;
        return;
    }
    if (n) memcpy(w->p + w->n, b, n);
    w->n += n;
}
void cpj_put16(cpj_wr_t *w, unsigned v) {
    unsigned char b[2] = {(unsigned char)(v >> 8), (unsigned char)v};
    cpj_put(w, b, 2);
}
void cpj_put64(cpj_wr_t *w, uint64_t v) {
    unsigned char b[8];
    for (int i = 0; i < 8; i++) b[i] = (unsigned char)(v >> (56 - 8 * i));
    cpj_put(w, b, 8);
}

const unsigned char *cpj_get(cpj_rd_t *r, size_t n) {
    if (r->bad || n > r->n - r->off) {
        r->bad = 1;
        return NULL;
    }
    const unsigned char *p = r->p + r->off;
    r->off += n;
    return p;
}
unsigned cpj_get16(cpj_rd_t *r) {
    const unsigned char *b = cpj_get(r, 2);
    return b ? (unsigned)b[0] << 8 | b[1] : 0;
}
uint64_t cpj_get64(cpj_rd_t *r) {
    const unsigned char *b = cpj_get(r, 8);
    uint64_t v = 0;
    for (int i = 0; b && i < 8; i++) v = v << 8 | b[i];
    return v;
}

/* ---- message headers ------------------------------------------------------------------ */
size_t cpj_type_max(int type) {
    switch (type) {
    case CPJ_HELLO: return CPJ_HELLO_MAX;
    case CPJ_WAIT: return CPJ_WAIT_MAX;
    case CPJ_WELCOME: return CPJ_WELCOME_MAX;
    case CPJ_REJECT: return CPJ_REJECT_MAX;
    default: return 0;
    }
}

void cpj_header(unsigned char *h, int type, size_t len) {
    memcpy(h, CPJ_MAGIC, 4);
    h[4] = 0, h[5] = CP_JOIN_VERSION;
    h[6] = (unsigned char)(type >> 8), h[7] = (unsigned char)type;
    for (int i = 0; i < 4; i++) h[8 + i] = (unsigned char)(len >> (24 - 8 * i));
}

int cpj_parse_header(const unsigned char *h, int *type, uint32_t *len, unsigned *version) {
    if (memcmp(h, CPJ_MAGIC, 4)) return LC_EFORMAT;
    *version = (unsigned)h[4] << 8 | h[5];
    *type = h[6] << 8 | h[7];
    *len = (uint32_t)h[8] << 24 | (uint32_t)h[9] << 16 | (uint32_t)h[10] << 8 | h[11];
    /* A REJECT's layout is the same in every version, so that a host of
     * another version can still be told why. */
    if (*version != CP_JOIN_VERSION && *type != CPJ_REJECT) return LC_EUNSUPPORTED;
    size_t max = cpj_type_max(*type);
    if (!max || *len > max) return LC_EFORMAT;
    return 0;
}

uint64_t cpj_list_digest(const cp_host_t *hosts, int n) {
    uint64_t h = 1469598103934665603ULL; // FNV-1a
    for (int i = 0; i < n; i++) {
        for (const char *s = hosts[i].host; *s; s++)
            h = (h ^ (unsigned char)tolower((unsigned char)*s)) * 1099511628211ULL;
        h = (h ^ '\n') * 1099511628211ULL;
        for (const char *s = hosts[i].port; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ULL;
        h = (h ^ ',') * 1099511628211ULL;
    }
    return h;
}

/* ---- messages for the caller ---------------------------------------------------------- */
void cpj_errf(char *err, size_t errlen, const char *fmt, ...) {
    if (!err || !errlen) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

void cpj_host_text(const cp_host_t *h, char *buf, size_t len) {
    snprintf(buf, len, strchr(h->host, ':') ? "[%s]:%s" : "%s:%s", h->host, h->port);
}

/* The next whitespace-separated word of *s: its start and length (0 at the end). */
static size_t next_word(const char **s, const char **w) {
    while (**s && isspace((unsigned char)**s)) ++*s;
    *w = *s;
    while (**s && !isspace((unsigned char)**s)) ++*s;
    return (size_t)(*s - *w);
}

/* The value of `key` (klen) among d's key=value words: its start and length,
 * or -1 when absent. */
static long find_value(const char *d, const char *key, size_t klen, const char **v) {
    const char *w;
    size_t n;
    while ((n = next_word(&d, &w))) {
        const char *eq = memchr(w, '=', n);
        if (eq && (size_t)(eq - w) == klen && !memcmp(w, key, klen)) {
            *v = eq + 1;
            return (long)(n - klen - 1);
        }
    }
    return -1;
}

/* 1 when every word of d is key=value with a non-empty key. */
static int all_pairs(const char *d) {
    const char *w;
    size_t n;
    while ((n = next_word(&d, &w))) {
        const char *eq = memchr(w, '=', n);
        if (!eq || eq == w) return 0;
    }
    return 1;
}

/* Appends "; " (unless first) and a formatted piece to buf, if it fits. */
static void append(char *buf, size_t len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void append(char *buf, size_t len, const char *fmt, ...) {
    size_t used = strlen(buf);
    if (used + 3 >= len) return;
    if (used) memcpy(buf + used, "; ", 3), used += 2;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf + used, len - used, fmt, ap);
    va_end(ap);
}

void cpj_desc_diff(const char *a, const char *name_a, const char *b, const char *name_b, char *buf, size_t len) {
    if (!len) return;
    buf[0] = 0;
    if (all_pairs(a) && all_pairs(b)) {
        const char *d = a, *w, *v;
        size_t n;
        while ((n = next_word(&d, &w))) { // a's keys: changed or absent on b
            const char *eq = memchr(w, '=', n);
            int klen = (int)(eq - w), alen = (int)(n - (size_t)klen - 1);
            long blen = find_value(b, w, (size_t)klen, &v);
            if (blen < 0)
                append(buf, len, "%.*s: %.*s on %s, absent on %s", klen, w, alen, eq + 1, name_a, name_b);
            else if (blen != alen || memcmp(v, eq + 1, (size_t)alen))
                append(buf, len, "%.*s: %.*s on %s, %.*s on %s", klen, w, alen, eq + 1, name_a, (int)blen, v, name_b);
        }
        for (d = b; (n = next_word(&d, &w));) { // b's keys absent on a
            const char *eq = memchr(w, '=', n);
            int klen = (int)(eq - w);
            if (find_value(a, w, (size_t)klen, &v) < 0)
                append(buf, len, "%.*s: absent on %s, %.*s on %s", klen, w, name_a, (int)(n - (size_t)klen - 1), eq + 1,
                       name_b);
        }
    }
    if (!buf[0])
        snprintf(buf, len, "%s says '%s', %s says '%s'%s", name_a, a, name_b, b,
                 strcmp(a, b) ? "" : " (the same description over different bytes)");
}

/* ---- the host list --------------------------------------------------------------------- */
/* A host name's characters (RFC 1123 plus '_'), or an IPv4 address's. */
static int name_ok(const char *s, size_t n) {
    if (!n || n > CP_JOIN_HOST_MAX) return 0;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)s[i]) && !strchr(".-_", s[i])) return 0;
    return 1;
}
/* An IPv6 address's characters, with an optional %zone. */
static int v6_ok(const char *s, size_t n) {
    if (!n || n > CP_JOIN_HOST_MAX || !memchr(s, ':', n)) return 0;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)s[i]) && !strchr(":.%-_", s[i])) return 0;
    return 1;
}

/* Parses one trimmed entry e (n chars) into h; a message in why otherwise. */
static int parse_entry(const char *e, size_t n, cp_host_t *h, char *why, size_t whylen) {
    const char *host = e, *colon;
    size_t hlen;
    if (n && e[0] == '[') {
        const char *close = memchr(e, ']', n);
        if (!close) return cpj_errf(why, whylen, "no ']' closing the IPv6 address"), LC_EINVAL;
        host = e + 1, hlen = (size_t)(close - e - 1);
        if (!v6_ok(host, hlen))
            return cpj_errf(why, whylen, "'%.*s' is not an IPv6 address", (int)hlen, host), LC_EINVAL;
        colon = close + 1 < e + n && close[1] == ':' ? close + 1 : NULL;
        if (!colon) return cpj_errf(why, whylen, "no ':port' after the address"), LC_EINVAL;
    } else {
        colon = memchr(e, ':', n);
        if (!colon) return cpj_errf(why, whylen, "no ':port'"), LC_EINVAL;
        if (memchr(colon + 1, ':', (size_t)(e + n - colon - 1)))
            return cpj_errf(why, whylen, "an IPv6 address needs brackets, as in [::1]:29500"), LC_EINVAL;
        hlen = (size_t)(colon - e);
        if (!hlen) return cpj_errf(why, whylen, "no host before ':'"), LC_EINVAL;
        if (!name_ok(host, hlen))
            return cpj_errf(why, whylen, "'%.*s' is not a host name or address", (int)hlen, host), LC_EINVAL;
    }
    const char *port = colon + 1;
    size_t plen = (size_t)(e + n - port);
    unsigned long v = 0;
    for (size_t i = 0; i < plen && v <= 65535; i++) {
        if (!isdigit((unsigned char)port[i])) {
            v = 0;
            break;
        }
        v = v * 10 + (unsigned long)(port[i] - '0');
    }
    if (!plen || !v || v > 65535)
        return cpj_errf(why, whylen, "port '%.*s' is not a number in 1..65535", (int)plen, port), LC_EINVAL;
    memcpy(h->host, host, hlen);
    h->host[hlen] = 0;
    snprintf(h->port, sizeof h->port, "%lu", v);
    return 0;
}

int cp_hosts_parse(const char *list, cp_host_t *hosts, int max, int *n, char *err, size_t errlen) {
    *n = 0;
    if (!list) list = "";
    const char *s = list;
    for (int i = 0;; i++) {
        const char *end = strchr(s, ',');
        if (!end) end = s + strlen(s);
        const char *a = s, *b = end;
        while (a < b && isspace((unsigned char)*a)) a++;
        while (b > a && isspace((unsigned char)b[-1])) b--;
        char why[160];
        if (a == b) {
            if (!*list) return cpj_errf(err, errlen, "context_hosts: the list is empty"), LC_EINVAL;
            return cpj_errf(err, errlen, "context_hosts: entry %d is empty (a stray comma?)", i), LC_EINVAL;
        }
        if (i >= max) return cpj_errf(err, errlen, "context_hosts: more than %d entries", max), LC_EINVAL;
        if (parse_entry(a, (size_t)(b - a), &hosts[i], why, sizeof why))
            return cpj_errf(err, errlen, "context_hosts: entry %d '%.*s': %s", i, (int)(b - a), a, why), LC_EINVAL;
        for (int j = 0; j < i; j++)
            if (!strcasecmp(hosts[j].host, hosts[i].host) && !strcmp(hosts[j].port, hosts[i].port))
                return cpj_errf(err, errlen, "context_hosts: entry %d '%.*s' repeats entry %d", i, (int)(b - a), a, j),
                       LC_EINVAL;
        *n = i + 1;
        if (!*end) return 0;
        s = end + 1;
    }
}

/* ---- sockets --------------------------------------------------------------------------- */
uint64_t cpj_deadline_after(uint64_t now_ns, int ms) { return now_ns + (uint64_t)(ms > 0 ? ms : 0) * 1000000ULL; }

int cpj_left_ms(uint64_t deadline, int cap_ms) {
    uint64_t now = lc_now_ns();
    if (now >= deadline) return 0;
    uint64_t ms = (deadline - now + 999999) / 1000000;
    return ms > (uint64_t)cap_ms ? cap_ms : (int)ms;
}

/* Waits for ev on fd: 1 ready, 0 deadline, LC_EIO on a poll error. */
static int wait_fd(int fd, short ev, uint64_t deadline) {
    for (;;) {
        int ms = cpj_left_ms(deadline, 1 << 30);
        struct pollfd p = {.fd = fd, .events = ev};
        int r = poll(&p, 1, ms);
        if (r > 0) return 1;
        if (r == 0) return 0;
        if (errno != EINTR) return LC_EIO;
    }
}

int cpj_send_all(int fd, const void *b, size_t n, uint64_t deadline, char *why, size_t whylen) {
    const unsigned char *p = b;
    while (n) {
        ssize_t k = send(fd, p, n, MSG_NOSIGNAL);
        if (k > 0) {
            p += k, n -= (size_t)k;
            continue;
        }
        if (k < 0 && errno == EINTR) continue;
        if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            int r = wait_fd(fd, POLLOUT, deadline);
            if (r == 1) continue;
            if (r == 0) return cpj_errf(why, whylen, "timed out sending"), LC_ENOTFOUND;
        }
        return cpj_errf(why, whylen, "send: %s", k < 0 ? strerror(errno) : "connection closed"), LC_EIO;
    }
    return 0;
}

int cpj_send_msg(int fd, int type, const void *payload, size_t len, uint64_t deadline, char *why, size_t whylen) {
    unsigned char h[CPJ_HDR];
    cpj_header(h, type, len);
    int rc = cpj_send_all(fd, h, CPJ_HDR, deadline, why, whylen);
    return rc ? rc : cpj_send_all(fd, payload, len, deadline, why, whylen);
}

/* Receives exactly n bytes. */
static int recv_all(int fd, unsigned char *b, size_t n, uint64_t deadline, char *why, size_t whylen) {
    while (n) {
        ssize_t k = recv(fd, b, n, 0);
        if (k > 0) {
            b += k, n -= (size_t)k;
            continue;
        }
        if (k == 0) return cpj_errf(why, whylen, "the connection closed"), LC_EIO;
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            int r = wait_fd(fd, POLLIN, deadline);
            if (r == 1) continue;
            if (r == 0) return cpj_errf(why, whylen, "timed out waiting for an answer"), LC_ENOTFOUND;
        }
        return cpj_errf(why, whylen, "recv: %s", strerror(errno)), LC_EIO;
    }
    return 0;
}

int cpj_recv_msg(int fd, uint64_t deadline, int *type, unsigned char *buf, size_t cap, size_t *len, unsigned *version,
                 char *why, size_t whylen) {
    unsigned char h[CPJ_HDR];
    uint32_t n = 0;
    int rc = recv_all(fd, h, CPJ_HDR, deadline, why, whylen);
    if (rc) return rc;
    rc = cpj_parse_header(h, type, &n, version);
    if (rc == LC_EFORMAT) return cpj_errf(why, whylen, "not a Lacuna join message"), rc;
    if (rc) return cpj_errf(why, whylen, "join protocol version %u", *version), rc;
    if (n > cap) return cpj_errf(why, whylen, "a message of %u bytes", (unsigned)n), LC_EFORMAT;
    *len = n;
    return recv_all(fd, buf, n, deadline, why, whylen);
}

static int set_nonblock(int fd) {
    int fl = fcntl(fd, F_GETFL);
    return fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0 ? -1 : 0;
}

static int resolve(const cp_host_t *h, int passive, struct addrinfo **res, char *why, size_t whylen) {
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_protocol = IPPROTO_TCP};
    hints.ai_flags = AI_NUMERICSERV | (passive ? AI_PASSIVE : 0);
    int r = getaddrinfo(h->host, h->port, &hints, res);
    if (r) return cpj_errf(why, whylen, "cannot resolve '%s': %s", h->host, gai_strerror(r)), -1;
    return 0;
}

int cpj_connect(const cp_host_t *h, uint64_t deadline, int attempt_ms, char *why, size_t whylen) {
    struct addrinfo *res = NULL;
    if (resolve(h, 0, &res, why, whylen)) return -1;
    int fd = -1;
    for (struct addrinfo *ai = res; ai && fd < 0; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0 || set_nonblock(fd)) {
            cpj_errf(why, whylen, "socket: %s", strerror(errno));
            goto next;
        }
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0) break;
        if (errno != EINPROGRESS) {
            cpj_errf(why, whylen, "%s", strerror(errno));
            goto next;
        }
        uint64_t now = lc_now_ns(), until = cpj_deadline_after(now, attempt_ms);
        int r = wait_fd(fd, POLLOUT, until < deadline ? until : deadline), soerr = 0;
        socklen_t sl = sizeof soerr;
        if (r == 1 && getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) == 0 && soerr == 0) break;
        cpj_errf(why, whylen, "%s", r == 1 ? strerror(soerr) : "connect timed out");
    next:
        if (fd >= 0) close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd >= 0) {
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    return fd;
}

int cpj_listen(const cp_host_t *h, int *fds, int *n, char *err, size_t errlen) {
    char where[CP_JOIN_HOST_MAX + 16], why[160] = "no address";
    cpj_host_text(h, where, sizeof where);
    struct addrinfo *res = NULL;
    *n = 0;
    if (resolve(h, 1, &res, why, sizeof why)) return cpj_errf(err, errlen, "host 0 (%s): %s", where, why), LC_EIO;
    int rc = 0, any_busy = 0;
    for (struct addrinfo *ai = res; ai && *n < CPJ_MAX_LISTEN; ai = ai->ai_next) {
        int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol), one = 1;
        if (fd < 0) {
            cpj_errf(why, sizeof why, "socket: %s", strerror(errno));
            continue;
        }
        /* Reuse lets a restarted host 0 bind past old TIME_WAIT connections;
         * a live listener on the port still makes bind fail. v6-only lets
         * the IPv4 and IPv6 addresses of one name be bound side by side. */
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (ai->ai_family == AF_INET6) setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
        if (bind(fd, ai->ai_addr, ai->ai_addrlen) || listen(fd, 2 * CP_JOIN_MAX_HOSTS) || set_nonblock(fd)) {
            if (errno == EADDRINUSE) any_busy = 1;
            char a[INET6_ADDRSTRLEN] = "?";
            void *ip = ai->ai_family == AF_INET6 ? (void *)&((struct sockaddr_in6 *)ai->ai_addr)->sin6_addr
                                                 : (void *)&((struct sockaddr_in *)ai->ai_addr)->sin_addr;
            inet_ntop(ai->ai_family, ip, a, sizeof a);
            cpj_errf(why, sizeof why, "%s on %s",
                     errno == EADDRNOTAVAIL ? "not an address of this machine" : strerror(errno), a);
            close(fd);
            continue;
        }
        fds[(*n)++] = fd;
    }
    freeaddrinfo(res);
    /* A port in use on any address is an error even when another address
     * bound: peers may resolve the name to the busy one. An address the
     * machine lacks (::1 without IPv6) is not, when another bound. */
    if (any_busy) {
        cpj_errf(err, errlen, "host 0 (%s): port %s is in use (%s)", where, h->port, why);
        rc = LC_EBUSY;
    } else if (!*n) {
        cpj_errf(err, errlen, "host 0 (%s): cannot listen: %s", where, why);
        rc = LC_EIO;
    }
    if (rc)
        for (int i = 0; i < *n; i++) close(fds[i]);
    if (rc) *n = 0;
    return rc;
}

void cpj_peer_text(int fd, char *buf, size_t len) {
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    char a[INET6_ADDRSTRLEN] = "?";
    unsigned port = 0;
    if (getpeername(fd, (struct sockaddr *)&ss, &sl) == 0) {
        if (ss.ss_family == AF_INET6) {
            struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
            inet_ntop(AF_INET6, &s6->sin6_addr, a, sizeof a);
            port = ntohs(s6->sin6_port);
            snprintf(buf, len, "[%s]:%u", a, port);
            return;
        }
        struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
        inet_ntop(AF_INET, &s4->sin_addr, a, sizeof a);
        port = ntohs(s4->sin_port);
    }
    snprintf(buf, len, "%s:%u", a, port);
}

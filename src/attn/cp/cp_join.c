/* The start-up exchange of a ring spanning hosts (cp_join.h): host 0 serves
 * its id to the others once all have joined and agree; the others find host
 * 0, however late it starts, and take the id or the reason there is none.
 *
 * Host 0 runs one poll loop over its listening sockets and every accepted
 * connection, so a stray client (garbage, silence, an early close) costs a
 * slot and nothing else: it is dropped at the first byte that is not the
 * protocol, or evicted when the slots run out, while the right peers keep
 * joining. A joined peer's connection stays open until the answer; if it
 * closes, its index is free to join again. The first disagreement (another
 * host list or version, an index claimed twice, another fingerprint) ends
 * the group: host 0 rejects every joined host at once with that text, and
 * every host that says hello later, until all are answered or the deadline,
 * so that every host returns the same reason instead of a timeout. */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "attn/cp/cp_join_int.h"
#include "common/log.h"
#include "common/status.h"
#include "common/timeutil.h"

/* Connections host 0 holds at once: every peer plus as many strays. */
#define MAX_CONNS (2 * CP_JOIN_MAX_HOSTS)
/* A peer's connect attempt, and its pause between attempts (doubling). */
#define ATTEMPT_MS 2000
#define BACKOFF_MIN_MS 20
#define BACKOFF_MAX_MS 500

/* ---- host 0 -------------------------------------------------------------------------- */
typedef struct {
    int fd;
    char addr[64];                              // the peer's address, for messages
    unsigned char buf[CPJ_HDR + CPJ_HELLO_MAX]; // the hello as it arrives
    size_t got;
    int index; // -1 until its hello is accepted
    uint64_t since;
} conn_t;

typedef struct {
    const cp_join_params_t *p;
    cp_join_result_t *out;
    uint64_t digest, deadline;
    int lfd[CPJ_MAX_LISTEN], nl;
    conn_t c[MAX_CONNS];
    int nc;
    int joined[CP_JOIN_MAX_HOSTS]; // conn slot of the host that joined with this index, -1
    int rejected;                  // hellos answered with the group's failure
    int strays;                    // connections dropped without a valid hello
    int fatal;                     // the group's failure status, 0 while none
    char text[CPJ_TEXT_MAX];       // its reason
} host0_t;

static void drop(host0_t *h, int i) {
    conn_t *c = &h->c[i];
    if (c->index > 0) h->joined[c->index] = -1;
    close(c->fd);
    h->c[i] = h->c[--h->nc];
    if (h->c[i].index > 0 && i < h->nc) h->joined[h->c[i].index] = i;
}

static void stray(host0_t *h, int i, const char *why) {
    LC_DEBUG("cp_join: dropped a connection from %s: %s", h->c[i].addr, why);
    h->strays++;
    drop(h, i);
}

static void reject(host0_t *h, int fd, int status, const char *text) {
    unsigned char b[CPJ_REJECT_MAX];
    cpj_wr_t w = {.p = b, .cap = sizeof b};
    size_t n = strlen(text);
    cpj_put16(&w, (unsigned)(uint16_t)(int16_t)status);
    cpj_put(&w, text, n < CPJ_TEXT_MAX ? n : CPJ_TEXT_MAX);
    uint64_t now = lc_now_ns(), until = cpj_deadline_after(now > h->deadline ? now : h->deadline, CPJ_GRACE_MS);
    cpj_send_msg(fd, CPJ_REJECT, b, w.n, until, NULL, 0);
}

/* The group has failed: every joined host is told why, at once. */
static void fail_group(host0_t *h, int status) {
    if (!h->fatal) h->fatal = status;
    for (int i = h->nc - 1; i >= 0; i--) {
        if (h->c[i].index < 0) continue;
        h->rejected++;
        reject(h, h->c[i].fd, h->fatal, h->text);
        drop(h, i);
    }
}

/* "hosts 2 (hostC:29500), 4 (hostE:29500)": the hosts flagged in miss
 * (n_hosts flags); returns how many. */
static int missing_text(const cp_host_t *hosts, int n_hosts, const unsigned char *miss, char *buf, size_t len) {
    int n = 0;
    for (int k = 1; k < n_hosts; k++) n += miss[k];
    snprintf(buf, len, "host%s ", n > 1 ? "s" : "");
    for (int k = 1, i = 0; k < n_hosts; k++) {
        if (!miss[k]) continue;
        char at[CP_JOIN_HOST_MAX + 16];
        cpj_host_text(&hosts[k], at, sizeof at);
        size_t used = strlen(buf);
        if (used + 1 < len) snprintf(buf + used, len - used, "%s%d (%s)", i++ ? ", " : "", k, at);
    }
    return n;
}

/* Tells every joined host which indices are still missing (their error
 * text should the deadline pass before host 0's answer reaches them). */
static void send_wait(host0_t *h) {
    unsigned char b[CPJ_WAIT_MAX];
    cpj_wr_t w = {.p = b, .cap = sizeof b};
    int n = 0;
    for (int k = 1; k < h->p->n_hosts; k++) n += h->joined[k] < 0;
    if (!n) return; // the welcome follows at once
    cpj_put16(&w, (unsigned)n);
    for (int k = 1; k < h->p->n_hosts; k++)
        if (h->joined[k] < 0) cpj_put16(&w, (unsigned)k);
    uint64_t until = cpj_deadline_after(lc_now_ns(), 200);
    for (int i = h->nc - 1; i >= 0; i--)
        if (h->c[i].index > 0 && cpj_send_msg(h->c[i].fd, CPJ_WAIT, b, w.n, until, NULL, 0)) drop(h, i);
}

/* A complete hello from connection i: joins it, or fails the group. */
static void on_hello(host0_t *h, int i, const unsigned char *pl, size_t len) {
    const cp_join_params_t *p = h->p;
    conn_t *c = &h->c[i];
    cpj_rd_t r = {.p = pl, .n = len};
    unsigned n_hosts = cpj_get16(&r), index = cpj_get16(&r);
    uint64_t digest = cpj_get64(&r);
    unsigned fp_len = cpj_get16(&r), desc_len = cpj_get16(&r);
    const unsigned char *fp = fp_len <= CP_JOIN_FP_MAX ? cpj_get(&r, fp_len) : NULL;
    const unsigned char *desc = desc_len <= CP_JOIN_DESC_MAX ? cpj_get(&r, desc_len) : NULL;
    if (r.bad || !fp || !desc || r.off != len || memchr(desc, 0, desc_len)) return stray(h, i, "a malformed hello");

    int status = LC_EINVAL;
    char at[CP_JOIN_HOST_MAX + 16];
    if (n_hosts != (unsigned)p->n_hosts || digest != h->digest) {
        if (!h->fatal)
            cpj_errf(h->text, sizeof h->text,
                     "the host at %s (index %u) has another host list (%u entries; host 0 has %d%s): every host "
                     "must be given the same parallel.context_hosts",
                     c->addr, index, n_hosts, p->n_hosts, n_hosts == (unsigned)p->n_hosts ? ", other entries" : "");
    } else if (index == 0 || index >= (unsigned)p->n_hosts) {
        if (!h->fatal)
            cpj_errf(h->text, sizeof h->text, "the host at %s claims index %u%s", c->addr, index,
                     index ? ", past the list's end" : ", which is host 0's");
    } else if (h->joined[index] >= 0) {
        if (!h->fatal)
            cpj_errf(h->text, sizeof h->text, "index %u is claimed twice: by the hosts at %s and %s", index,
                     h->c[h->joined[index]].addr, c->addr);
    } else if (fp_len != p->fp_len || memcmp(fp, p->fp, fp_len)) {
        char theirs[CP_JOIN_DESC_MAX + 1], name[24], diff[CPJ_TEXT_MAX / 2];
        memcpy(theirs, desc, desc_len);
        theirs[desc_len] = 0;
        snprintf(name, sizeof name, "host %u", index);
        cpj_desc_diff(theirs, name, p->fp_desc ? p->fp_desc : "", "host 0", diff, sizeof diff);
        cpj_host_text(&p->hosts[index], at, sizeof at);
        if (!h->fatal)
            cpj_errf(h->text, sizeof h->text, "host %u (%s, connected from %s) differs from host 0: %s", index, at,
                     c->addr, diff);
    } else {
        status = 0;
    }
    if (status || h->fatal) {
        /* This host first (fail_group moves the connection slots), then
         * every joined one, the first claimant of a doubled index included. */
        if (!h->fatal) LC_DEBUG("cp_join: %s", h->text);
        reject(h, c->fd, h->fatal ? h->fatal : status, h->text);
        h->rejected++;
        drop(h, i);
        fail_group(h, status);
        return;
    }
    c->index = (int)index;
    h->joined[index] = i;
    memcpy(h->out->host[index].fp, fp, fp_len);
    h->out->host[index].fp_len = fp_len;
    memcpy(h->out->host[index].desc, desc, desc_len);
    h->out->host[index].desc[desc_len] = 0;
    send_wait(h);
}

/* Connection i is readable: takes what has arrived of its hello. */
static void on_readable(host0_t *h, int i) {
    conn_t *c = &h->c[i];
    if (c->index > 0) { // joined: it has nothing more to say; data or EOF ends it
        LC_DEBUG("cp_join: host %d (%s) left before the answer", c->index, c->addr);
        drop(h, i);
        send_wait(h);
        return;
    }
    int type = 0;
    uint32_t len = 0;
    unsigned version = 0;
    size_t need = CPJ_HDR;
    if (c->got >= CPJ_HDR) {
        cpj_parse_header(c->buf, &type, &len, &version);
        need = CPJ_HDR + len;
    }
    ssize_t k = recv(c->fd, c->buf + c->got, need - c->got, 0);
    if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return;
    if (k <= 0) return stray(h, i, k ? strerror(errno) : "closed before its hello");
    c->got += (size_t)k;
    if (memcmp(c->buf, CPJ_MAGIC, c->got < 4 ? c->got : 4)) return stray(h, i, "not the join protocol");
    if (c->got < CPJ_HDR) return;
    int rc = cpj_parse_header(c->buf, &type, &len, &version);
    if (rc == LC_EUNSUPPORTED && type == CPJ_HELLO) {
        if (!h->fatal)
            cpj_errf(h->text, sizeof h->text, "the host at %s speaks join protocol version %u; host 0 speaks %u",
                     c->addr, version, CP_JOIN_VERSION);
        reject(h, c->fd, h->fatal ? h->fatal : LC_EUNSUPPORTED, h->text);
        h->rejected++;
        drop(h, i);
        return fail_group(h, LC_EUNSUPPORTED);
    }
    if (rc || type != CPJ_HELLO) return stray(h, i, "not a hello");
    if (c->got == CPJ_HDR + len) on_hello(h, i, c->buf + CPJ_HDR, len);
}

static void on_accept(host0_t *h, int lfd) {
    for (;;) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) return;       // EAGAIN, or an aborted connection: nothing to keep
        if (h->nc == MAX_CONNS) { // evict the oldest connection that has not joined
            int old = -1;
            for (int i = 0; i < h->nc; i++)
                if (h->c[i].index < 0 && (old < 0 || h->c[i].since < h->c[old].since)) old = i;
            if (old < 0) {
                close(fd);
                continue;
            }
            stray(h, old, "evicted: too many connections");
        }
        conn_t *c = &h->c[h->nc++];
        memset(c, 0, sizeof *c);
        c->fd = fd, c->index = -1, c->since = lc_now_ns();
        cpj_peer_text(fd, c->addr, sizeof c->addr);
    }
}

/* Sends the id and every fingerprint to every host. */
static int welcome(host0_t *h, char *err, size_t errlen) {
    const cp_join_params_t *p = h->p;
    unsigned char *b = malloc(CPJ_WELCOME_MAX);
    if (!b) return cpj_errf(err, errlen, "host 0: out of memory"), LC_ENOMEM;
    cpj_wr_t w = {.p = b, .cap = CPJ_WELCOME_MAX};
    cpj_put16(&w, (unsigned)p->n_hosts);
    cpj_put(&w, h->out->id, CP_JOIN_ID_BYTES);
    for (int k = 0; k < p->n_hosts; k++) {
        size_t dl = strlen(h->out->host[k].desc);
        cpj_put16(&w, (unsigned)h->out->host[k].fp_len);
        cpj_put16(&w, (unsigned)dl);
        cpj_put(&w, h->out->host[k].fp, h->out->host[k].fp_len);
        cpj_put(&w, h->out->host[k].desc, dl);
    }
    uint64_t until = cpj_deadline_after(lc_now_ns(), CPJ_GRACE_MS);
    int rc = 0;
    for (int k = 1; k < p->n_hosts; k++) {
        char why[96];
        conn_t *c = &h->c[h->joined[k]];
        if (cpj_send_msg(c->fd, CPJ_WELCOME, b, w.n, until, why, sizeof why) && !rc) {
            rc = LC_EIO;
            cpj_errf(err, errlen,
                     "host %d (%s) left while host 0 sent the id (%s); the hosts that got it will wait for it in the "
                     "GPU communicator's set-up",
                     k, c->addr, why);
        }
    }
    free(b);
    return rc;
}

static int run_host0(const cp_join_params_t *p, cp_join_result_t *out, uint64_t t0, char *err, size_t errlen) {
    host0_t *h = calloc(1, sizeof *h); // about 60 KB: off the caller's stack
    if (!h) return cpj_errf(err, errlen, "host 0: out of memory"), LC_ENOMEM;
    h->p = p, h->out = out, h->digest = cpj_list_digest(p->hosts, p->n_hosts);
    h->deadline = cpj_deadline_after(t0, p->timeout_ms);
    for (int k = 0; k < CP_JOIN_MAX_HOSTS; k++) h->joined[k] = -1;
    int rc = cpj_listen(&p->hosts[0], h->lfd, &h->nl, err, errlen);
    if (rc) goto fail;
    for (;;) {
        int n_joined = 0;
        for (int k = 1; k < p->n_hosts; k++) n_joined += h->joined[k] >= 0;
        if (!h->fatal && n_joined == p->n_hosts - 1) break;
        /* After a failure every other process has been answered once the
         * rejections cover them (a doubled index stands for a missing one). */
        if (h->fatal && h->rejected >= p->n_hosts - 1) break;
        int ms = cpj_left_ms(h->deadline, 1 << 30);
        if (!ms) break;
        struct pollfd pf[CPJ_MAX_LISTEN + MAX_CONNS];
        for (int i = 0; i < h->nl; i++) pf[i] = (struct pollfd){.fd = h->lfd[i], .events = POLLIN};
        for (int i = 0; i < h->nc; i++) pf[h->nl + i] = (struct pollfd){.fd = h->c[i].fd, .events = POLLIN};
        int nc = h->nc, r = poll(pf, (nfds_t)(h->nl + nc), ms);
        if (r < 0 && errno != EINTR) {
            cpj_errf(err, errlen, "host 0: poll: %s", strerror(errno));
            rc = LC_EIO;
            goto fail;
        }
        if (r <= 0) continue;
        /* Connections first, from the last: a drop moves the last one into
         * the freed slot; one moved before its turn waits for the next poll. */
        for (int i = nc - 1; i >= 0; i--)
            if (i < h->nc && pf[h->nl + i].revents && pf[h->nl + i].fd == h->c[i].fd) on_readable(h, i);
        for (int i = 0; i < h->nl; i++)
            if (pf[i].revents) on_accept(h, h->lfd[i]);
    }
    char miss_text[CPJ_TEXT_MAX / 2];
    unsigned char miss[CP_JOIN_MAX_HOSTS] = {0};
    for (int k = 1; k < p->n_hosts; k++) miss[k] = h->joined[k] < 0;
    if (h->fatal) {
        cpj_errf(err, errlen, "%s", h->text);
        rc = h->fatal;
    } else if (missing_text(p->hosts, p->n_hosts, miss, miss_text, sizeof miss_text)) {
        cpj_errf(h->text, sizeof h->text, "%s had not joined host 0 when its %d ms deadline passed%s", miss_text,
                 p->timeout_ms, h->strays ? " (other connections came and were dropped: no valid hello)" : "");
        cpj_errf(err, errlen, "%s", h->text);
        rc = LC_ENOTFOUND;
        fail_group(h, rc);
    } else {
        rc = welcome(h, err, errlen);
    }
fail:
    while (h->nc) drop(h, h->nc - 1);
    for (int i = 0; i < h->nl; i++) close(h->lfd[i]);
    free(h);
    return rc;
}

/* ---- the other hosts ------------------------------------------------------------------ */
/* Reads host 0's welcome into out and checks it: every fingerprint equal
 * to this host's. */
static int on_welcome(const cp_join_params_t *p, const unsigned char *pl, size_t len, cp_join_result_t *out, char *err,
                      size_t errlen) {
    cpj_rd_t r = {.p = pl, .n = len};
    unsigned n = cpj_get16(&r);
    const unsigned char *id = cpj_get(&r, CP_JOIN_ID_BYTES);
    if (!r.bad && n != (unsigned)p->n_hosts)
        return cpj_errf(err, errlen, "host 0 answered for %u hosts; this host's list has %d", n, p->n_hosts), LC_EINVAL;
    for (unsigned k = 0; k < n && !r.bad; k++) {
        unsigned fl = cpj_get16(&r), dl = cpj_get16(&r);
        const unsigned char *fp = fl <= CP_JOIN_FP_MAX ? cpj_get(&r, fl) : NULL;
        const unsigned char *d = dl <= CP_JOIN_DESC_MAX ? cpj_get(&r, dl) : NULL;
        if (!fp || !d || memchr(d, 0, dl)) r.bad = 1;
        if (r.bad) break;
        memcpy(out->host[k].fp, fp, fl);
        out->host[k].fp_len = fl;
        memcpy(out->host[k].desc, d, dl);
        out->host[k].desc[dl] = 0;
    }
    if (r.bad || r.off != len) return cpj_errf(err, errlen, "host 0 sent a malformed answer"), LC_EFORMAT;
    memcpy(out->id, id, CP_JOIN_ID_BYTES);
    out->n_hosts = (int)n;
    for (unsigned k = 0; k < n; k++) {
        if (out->host[k].fp_len == p->fp_len && !memcmp(out->host[k].fp, p->fp, p->fp_len)) continue;
        char name[2][24], diff[CPJ_TEXT_MAX / 2];
        snprintf(name[0], sizeof name[0], "host %u", k);
        snprintf(name[1], sizeof name[1], "host %d", p->index);
        cpj_desc_diff(out->host[k].desc, name[0], p->fp_desc ? p->fp_desc : "", name[1], diff, sizeof diff);
        return cpj_errf(err, errlen, "host %u differs from host %d: %s", k, p->index, diff), LC_EINVAL;
    }
    return 0;
}

static void sleep_ms(int ms) {
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) && errno == EINTR) {
    }
}

/* One connection to host 0: 0 or a final status (done = 1), or a reason to
 * try again (done = 0, why set). Host 0's latest word on who is missing
 * lands in miss (flags by index; *waited = 1 once there is one). */
static int try_host0(const cp_join_params_t *p, int fd, uint64_t deadline, cp_join_result_t *out, int *done,
                     unsigned char *miss, int *waited, char *why, size_t whylen, char *err, size_t errlen) {
    unsigned char hello[CPJ_HELLO_MAX], *b = NULL;
    const char *desc = p->fp_desc ? p->fp_desc : "";
    cpj_wr_t w = {.p = hello, .cap = sizeof hello};
    cpj_put16(&w, (unsigned)p->n_hosts);
    cpj_put16(&w, (unsigned)p->index);
    cpj_put64(&w, cpj_list_digest(p->hosts, p->n_hosts));
    cpj_put16(&w, (unsigned)p->fp_len);
    cpj_put16(&w, (unsigned)strlen(desc));
    cpj_put(&w, p->fp, p->fp_len);
    cpj_put(&w, desc, strlen(desc));
    *done = 0;
    if (cpj_send_msg(fd, CPJ_HELLO, hello, w.n, deadline, why, whylen)) return 0;
    if (!(b = malloc(CPJ_MSG_MAX))) return *done = 1, cpj_errf(err, errlen, "out of memory"), LC_ENOMEM;
    /* Host 0 answers at its own deadline, which may fall after this one:
     * once connected, wait CPJ_GRACE_MS longer for the answer. */
    uint64_t until = cpj_deadline_after(deadline, CPJ_GRACE_MS);
    int rc = 0;
    for (;;) {
        int type;
        size_t len;
        unsigned version;
        rc = cpj_recv_msg(fd, until, &type, b, CPJ_MSG_MAX, &len, &version, why, whylen);
        if (rc == LC_EUNSUPPORTED) {
            *done = 1;
            cpj_errf(err, errlen, "host 0 speaks join protocol version %u; this host speaks %u", version,
                     CP_JOIN_VERSION);
            break;
        }
        if (rc) { // closed, a timeout or not the protocol: the caller tries again until its deadline
            rc = 0;
            break;
        }
        cpj_rd_t r = {.p = b, .n = len};
        if (type == CPJ_WAIT) {
            unsigned n = cpj_get16(&r);
            memset(miss, 0, CP_JOIN_MAX_HOSTS);
            for (unsigned k = 0, i; k < n && !r.bad; k++)
                if ((i = cpj_get16(&r)) < (unsigned)p->n_hosts) miss[i] = 1;
            *waited = 1;
            continue;
        }
        *done = 1;
        if (type == CPJ_WELCOME) {
            rc = on_welcome(p, b, len, out, err, errlen);
        } else if (type == CPJ_REJECT) {
            int status = (int16_t)cpj_get16(&r);
            rc = status < 0 ? status : LC_EINVAL;
            cpj_errf(err, errlen, "host 0 refused the group: %.*s", (int)(len - r.off), (const char *)b + r.off);
        } else {
            rc = LC_EFORMAT;
            cpj_errf(err, errlen, "host 0 sent a message of type %d before its answer", type);
        }
        break;
    }
    free(b);
    return rc;
}

static int run_peer(const cp_join_params_t *p, cp_join_result_t *out, uint64_t t0, char *err, size_t errlen) {
    uint64_t deadline = cpj_deadline_after(t0, p->timeout_ms);
    char at[CP_JOIN_HOST_MAX + 16], why[160] = "no attempt", miss_text[CPJ_TEXT_MAX / 2];
    unsigned char miss[CP_JOIN_MAX_HOSTS] = {0};
    int backoff = BACKOFF_MIN_MS, connected = 0, waited = 0;
    cpj_host_text(&p->hosts[0], at, sizeof at);
    while (cpj_left_ms(deadline, 1)) {
        int fd = cpj_connect(&p->hosts[0], deadline, ATTEMPT_MS, why, sizeof why);
        if (fd >= 0) {
            int done = 0;
            connected = 1;
            int rc = try_host0(p, fd, deadline, out, &done, miss, &waited, why, sizeof why, err, errlen);
            close(fd);
            if (done) return rc;
        }
        sleep_ms(cpj_left_ms(deadline, backoff));
        backoff = backoff * 2 < BACKOFF_MAX_MS ? backoff * 2 : BACKOFF_MAX_MS;
    }
    if (waited && missing_text(p->hosts, p->n_hosts, miss, miss_text, sizeof miss_text))
        cpj_errf(err, errlen, "host 0 (%s) had no answer within %d ms: it was still waiting for %s", at, p->timeout_ms,
                 miss_text);
    else
        cpj_errf(err, errlen, "could not %s host 0 (%s) within %d ms: %s", connected ? "join" : "reach", at,
                 p->timeout_ms, why);
    return LC_ENOTFOUND;
}

/* ---- entry ------------------------------------------------------------------------------ */
int cp_join(const cp_join_params_t *p, cp_join_result_t *out, char *err, size_t errlen) {
    uint64_t t0 = lc_now_ns();
    cpj_errf(err, errlen, "%s", "");
    if (!p || !out || !p->hosts || p->n_hosts < 1 || p->n_hosts > CP_JOIN_MAX_HOSTS)
        return cpj_errf(err, errlen, "cp_join: 1 to %d hosts", CP_JOIN_MAX_HOSTS), LC_EINVAL;
    if (p->index < 0 || p->index >= p->n_hosts)
        return cpj_errf(err, errlen, "this host's index %d is not in the host list (0 .. %d)", p->index,
                        p->n_hosts - 1),
               LC_EINVAL;
    if (p->fp_len > CP_JOIN_FP_MAX || (p->fp_len && !p->fp) || (p->fp_desc && strlen(p->fp_desc) > CP_JOIN_DESC_MAX))
        return cpj_errf(err, errlen, "cp_join: a fingerprint of at most %d bytes and %d characters", CP_JOIN_FP_MAX,
                        CP_JOIN_DESC_MAX),
               LC_EINVAL;
    if (p->timeout_ms <= 0) return cpj_errf(err, errlen, "cp_join: a timeout above 0 ms"), LC_EINVAL;
    if (p->index == 0 && !p->id) return cpj_errf(err, errlen, "cp_join: host 0 needs the id to hand out"), LC_EINVAL;
    memset(out, 0, sizeof *out);
    out->n_hosts = p->n_hosts;
    if (p->index == 0) {
        memcpy(out->id, p->id, CP_JOIN_ID_BYTES);
        if (p->fp_len) memcpy(out->host[0].fp, p->fp, p->fp_len);
        out->host[0].fp_len = p->fp_len;
        snprintf(out->host[0].desc, sizeof out->host[0].desc, "%s", p->fp_desc ? p->fp_desc : "");
        if (p->n_hosts == 1) return 0;
        return run_host0(p, out, t0, err, errlen);
    }
    return run_peer(p, out, t0, err, errlen);
}

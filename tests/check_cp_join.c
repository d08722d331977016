/* Check suite for src/attn/cp/cp_join: the start-up exchange of a ring
 * spanning hosts, on loopback with free ports. Every "host" is a thread of
 * this process calling cp_join with its index, over real TCP sockets:
 * - 2, 3 and 5 hosts all get host 0's id and every host's fingerprint;
 * - hosts started late (host 0 itself, or a peer) still join by the deadline;
 * - a host missing at a 300 ms deadline: host 0 names the index, and so does
 *   every joined host (from host 0's answer, or from its last word on who
 *   is missing when the host's own deadline comes first); no host 0 at all:
 *   the peer names its address;
 * - a fingerprint that differs fails every host, naming the host and the
 *   key=value field that differs; another host list, an index claimed twice
 *   and another protocol version fail the group with their reasons;
 * - stray connections (an HTTP request, an early close, a huge length, a
 *   silent client, a message of the wrong type) do not stop the join;
 * - a port in use, malformed host lists (the message names the entry), IPv6
 *   and host names. */
#include <arpa/inet.h>
#include <check.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "attn/cp/cp_join.h"
#include "attn/cp/cp_join_int.h"
#include "common/status.h"
#include "common/timeutil.h"
#include "testutil.h"

static int have_ipv6;

/* ---- helpers --------------------------------------------------------------------------- */
static void sleep_ms(int ms) {
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* A port nothing listens on now (bound, read, released), never one this
 * process was given before: a port just released may come back from the
 * next bind, and a host list must not name one twice by accident. */
static int given[512], n_given;

static int bound_port(int v6) {
    int fd = socket(v6 ? AF_INET6 : AF_INET, SOCK_STREAM, 0);
    ck_assert_int_ge(fd, 0);
    struct sockaddr_storage ss = {0};
    socklen_t sl;
    if (v6) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
        a->sin6_family = AF_INET6, a->sin6_addr = in6addr_loopback;
        sl = sizeof *a;
    } else {
        struct sockaddr_in *a = (struct sockaddr_in *)&ss;
        a->sin_family = AF_INET, a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        sl = sizeof *a;
    }
    ck_assert_int_eq(bind(fd, (struct sockaddr *)&ss, sl), 0);
    ck_assert_int_eq(getsockname(fd, (struct sockaddr *)&ss, &sl), 0);
    int port = ntohs(v6 ? ((struct sockaddr_in6 *)&ss)->sin6_port : ((struct sockaddr_in *)&ss)->sin_port);
    close(fd);
    return port;
}

static int free_port(int v6) {
    for (int tries = 0; tries < 1000; tries++) {
        const int port = bound_port(v6);
        int seen = 0;
        for (int i = 0; i < n_given && !seen; i++) seen = given[i] == port;
        if (seen) continue;
        ck_assert_int_lt(n_given, (int)(sizeof given / sizeof given[0]));
        given[n_given++] = port;
        return port;
    }
    ck_abort_msg("no fresh free port in 1000 binds");
    return -1;
}

/* "127.0.0.1:p0,127.0.0.1:p1,..." with n free ports. */
static void loop_list(int n, char *buf, size_t len) {
    buf[0] = 0;
    for (int i = 0; i < n; i++) {
        size_t used = strlen(buf);
        snprintf(buf + used, len - used, "%s127.0.0.1:%d", i ? "," : "", free_port(0));
    }
}

typedef struct {
    cp_host_t hosts[CP_JOIN_MAX_HOSTS];
    int n_hosts;
    int index;
    unsigned char fp[16];
    char desc[64];
    unsigned char id[CP_JOIN_ID_BYTES];
    int timeout_ms, delay_ms;
    int rc;
    double took_s;
    char err[CPJ_TEXT_MAX + 64];
    cp_join_result_t res;
    pthread_t th;
} host_t;

static void *host_main(void *arg) {
    host_t *h = arg;
    if (h->delay_ms) sleep_ms(h->delay_ms);
    cp_join_params_t p = {.hosts = h->hosts,
                          .n_hosts = h->n_hosts,
                          .index = h->index,
                          .fp = h->fp,
                          .fp_len = sizeof h->fp,
                          .fp_desc = h->desc,
                          .timeout_ms = h->timeout_ms,
                          .id = h->index == 0 ? h->id : NULL};
    double t0 = lc_now_s();
    h->rc = cp_join(&p, &h->res, h->err, sizeof h->err);
    h->took_s = lc_now_s() - t0;
    return NULL;
}

/* n hosts on `list`, all with the same fingerprint ("model=... gpus=8"),
 * host 0 with a random id; the caller changes what it tests, then runs. */
static host_t *group_new(int n, const char *list, int timeout_ms) {
    host_t *hs = calloc((size_t)n, sizeof *hs);
    ck_assert_ptr_nonnull(hs);
    for (int i = 0; i < n; i++) {
        char err[256];
        ck_assert_msg(cp_hosts_parse(list, hs[i].hosts, CP_JOIN_MAX_HOSTS, &hs[i].n_hosts, err, sizeof err) == 0, "%s",
                      err);
        hs[i].index = i, hs[i].timeout_ms = timeout_ms;
        for (int k = 0; k < (int)sizeof hs[i].fp; k++) hs[i].fp[k] = (unsigned char)(0xa0 + k);
        snprintf(hs[i].desc, sizeof hs[i].desc, "model=a0a1a2 ctx=8192 gpus=8");
    }
    srand((unsigned)time(NULL));
    for (int k = 0; k < CP_JOIN_ID_BYTES; k++) hs[0].id[k] = (unsigned char)rand();
    return hs;
}

/* Runs hosts [0, n) except those in skip (a bit mask), and waits for all. */
static void group_run(host_t *hs, int n, unsigned skip) {
    for (int i = 0; i < n; i++)
        if (!(skip >> i & 1)) ck_assert_int_eq(pthread_create(&hs[i].th, NULL, host_main, &hs[i]), 0);
    for (int i = 0; i < n; i++)
        if (!(skip >> i & 1)) pthread_join(hs[i].th, NULL);
}

/* Every host joined with host 0's id and everyone's fingerprint. */
static void assert_joined(host_t *hs, int n) {
    for (int i = 0; i < n; i++) {
        ck_assert_msg(hs[i].rc == 0, "host %d: %s (%s)", i, lc_status_name(hs[i].rc), hs[i].err);
        ck_assert_int_eq(hs[i].res.n_hosts, n);
        ck_assert_mem_eq(hs[i].res.id, hs[0].id, CP_JOIN_ID_BYTES);
        for (int k = 0; k < n; k++) {
            ck_assert_uint_eq(hs[i].res.host[k].fp_len, sizeof hs[k].fp);
            ck_assert_mem_eq(hs[i].res.host[k].fp, hs[k].fp, sizeof hs[k].fp);
            ck_assert_str_eq(hs[i].res.host[k].desc, hs[k].desc);
        }
    }
}

static void assert_failed(host_t *h, int rc, const char *needle) {
    ck_assert_msg(h->rc == rc, "host %d: %s, expected %s (%s)", h->index, lc_status_name(h->rc), lc_status_name(rc),
                  h->err);
    ck_assert_msg(strstr(h->err, needle), "host %d: '%s' lacks '%s'", h->index, h->err, needle);
    if (getenv("CP_JOIN_SHOW")) fprintf(stderr, "host %d: %s: %s\n", h->index, lc_status_name(h->rc), h->err);
}

/* ---- tests ------------------------------------------------------------------------------ */
START_TEST(test_join) {
    static const int sizes[] = {2, 3, 5};
    int n = sizes[_i];
    char list[512];
    loop_list(n, list, sizeof list);
    host_t *hs = group_new(n, list, 3000);
    group_run(hs, n, 0);
    assert_joined(hs, n);
    for (int i = 0; i < n; i++) ck_assert_msg(hs[i].took_s < 1.5, "host %d took %.2f s", i, hs[i].took_s);
    free(hs);
}
END_TEST

START_TEST(test_single_host) {
    char list[64];
    loop_list(1, list, sizeof list);
    host_t *hs = group_new(1, list, 100);
    group_run(hs, 1, 0);
    assert_joined(hs, 1);
    free(hs);
}
END_TEST

START_TEST(test_late) {
    char list[512];
    loop_list(4, list, sizeof list);
    host_t *hs = group_new(4, list, 3000);
    hs[0].delay_ms = 200; // the peers find no host 0 at first
    hs[3].delay_ms = 400; // host 0 waits for the last one
    group_run(hs, 4, 0);
    assert_joined(hs, 4);
    free(hs);
}
END_TEST

START_TEST(test_missing) {
    char list[512];
    loop_list(3, list, sizeof list);
    host_t *hs = group_new(3, list, 300);
    group_run(hs, 3, 1u << 2);
    char needle[320];
    snprintf(needle, sizeof needle, "2 (%s:%s)", hs[0].hosts[2].host, hs[0].hosts[2].port);
    assert_failed(&hs[0], LC_ENOTFOUND, needle);
    assert_failed(&hs[0], LC_ENOTFOUND, "had not joined host 0 when its 300 ms deadline passed");
    assert_failed(&hs[1], LC_ENOTFOUND, needle);
    for (int i = 0; i < 2; i++) ck_assert_msg(hs[i].took_s < 1.5, "host %d took %.2f s", i, hs[i].took_s);
    free(hs);
}
END_TEST

/* A host whose deadline comes before host 0's has host 0's last word on
 * who is missing; host 0 then sees it leave and names both. */
START_TEST(test_missing_early_deadline) {
    char list[512];
    loop_list(3, list, sizeof list);
    host_t *hs = group_new(3, list, 1600);
    hs[1].timeout_ms = 100;
    group_run(hs, 3, 1u << 2);
    char needle[320];
    snprintf(needle, sizeof needle, "it was still waiting for host 2 (%s:%s)", hs[1].hosts[2].host,
             hs[1].hosts[2].port);
    assert_failed(&hs[1], LC_ENOTFOUND, needle);
    ck_assert_msg(hs[1].took_s > 1.0 && hs[1].took_s < 2.0, "host 1 took %.2f s (deadline + 1 s of grace)",
                  hs[1].took_s);
    assert_failed(&hs[0], LC_ENOTFOUND, "hosts 1 (");
    assert_failed(&hs[0], LC_ENOTFOUND, "), 2 (");
    free(hs);
}
END_TEST

START_TEST(test_no_host0) {
    char list[512];
    loop_list(2, list, sizeof list);
    host_t *hs = group_new(2, list, 300);
    group_run(hs, 2, 1u << 0);
    char needle[320];
    snprintf(needle, sizeof needle, "could not reach host 0 (%s:%s)", hs[1].hosts[0].host, hs[1].hosts[0].port);
    assert_failed(&hs[1], LC_ENOTFOUND, needle);
    assert_failed(&hs[1], LC_ENOTFOUND, "refused");
    ck_assert_msg(hs[1].took_s < 1.0, "took %.2f s", hs[1].took_s);
    free(hs);
}
END_TEST

START_TEST(test_fingerprint_differs) {
    char list[512];
    loop_list(3, list, sizeof list);
    host_t *hs = group_new(3, list, 2000);
    hs[2].fp[0] ^= 1;
    snprintf(hs[2].desc, sizeof hs[2].desc, "model=a0a1a2 ctx=8192 gpus=4");
    group_run(hs, 3, 0);
    for (int i = 0; i < 3; i++) {
        assert_failed(&hs[i], LC_EINVAL, "host 2");
        assert_failed(&hs[i], LC_EINVAL, "gpus: 4 on host 2, 8 on host 0");
        ck_assert_msg(!strstr(hs[i].err, "ctx"), "host %d names a field that agrees: %s", i, hs[i].err);
        ck_assert_msg(hs[i].took_s < 1.5, "host %d took %.2f s", i, hs[i].took_s);
    }
    free(hs);
}
END_TEST

/* The description, not the caller, says which field differs; an
 * unstructured one is quoted whole. */
START_TEST(test_desc_diff) {
    char b[256];
    cpj_desc_diff("m=1 ctx=8 gpus=4", "host 2", "m=1 ctx=9 gpus=4 tp=2", "host 0", b, sizeof b);
    ck_assert_str_eq(b, "ctx: 8 on host 2, 9 on host 0; tp: absent on host 2, 2 on host 0");
    cpj_desc_diff("llama 8B", "host 1", "llama 70B", "host 0", b, sizeof b);
    ck_assert_str_eq(b, "host 1 says 'llama 8B', host 0 says 'llama 70B'");
    cpj_desc_diff("m=1", "host 1", "m=1", "host 0", b, sizeof b);
    ck_assert_ptr_nonnull(strstr(b, "the same description over different bytes"));
}
END_TEST

START_TEST(test_list_differs) {
    char list[512], other[1024];
    loop_list(3, list, sizeof list);
    host_t *hs = group_new(3, list, 2000);
    snprintf(other, sizeof other, "%s:%s,%s:%s,127.0.0.1:%d", hs[0].hosts[0].host, hs[0].hosts[0].port,
             hs[0].hosts[1].host, hs[0].hosts[1].port, atoi(hs[0].hosts[2].port) % 65535 + 1); // entry 2 moved
    char err[256];
    ck_assert_int_eq(cp_hosts_parse(other, hs[1].hosts, CP_JOIN_MAX_HOSTS, &hs[1].n_hosts, err, sizeof err), 0);
    group_run(hs, 3, 0);
    for (int i = 0; i < 3; i++) assert_failed(&hs[i], LC_EINVAL, "another host list (3 entries; host 0 has 3, other");
    free(hs);
}
END_TEST

START_TEST(test_duplicate_index) {
    char list[512];
    loop_list(3, list, sizeof list);
    host_t *hs = group_new(3, list, 2000);
    hs[2].index = 1;
    group_run(hs, 3, 0);
    for (int i = 0; i < 3; i++) {
        assert_failed(&hs[i], LC_EINVAL, "index 1 is claimed twice");
        ck_assert_msg(hs[i].took_s < 1.5, "host %d took %.2f s", i, hs[i].took_s);
    }
    free(hs);
}
END_TEST

/* Connects to 127.0.0.1:port, retrying for up to a second. */
static int connect_retry(const char *port) {
    cp_host_t h = {.host = "127.0.0.1"};
    snprintf(h.port, sizeof h.port, "%s", port);
    uint64_t deadline = cpj_deadline_after(lc_now_ns(), 1000);
    char why[128];
    for (;;) {
        int fd = cpj_connect(&h, deadline, 200, why, sizeof why);
        if (fd >= 0 || !cpj_left_ms(deadline, 1)) return fd;
        sleep_ms(10);
    }
}

/* 1 when host 0 has closed fd within a second (EOF, or a reset when it
 * closed with our bytes unread). */
static int closed_by_peer(int fd) {
    struct pollfd p = {.fd = fd, .events = POLLIN};
    char b[64];
    return poll(&p, 1, 1000) == 1 && recv(fd, b, sizeof b, 0) <= 0;
}

typedef struct {
    const char *port;
    int closed[4]; // host 0 closed each misbehaving connection
    int silent_fd;
} strays_t;

static void *strays_main(void *arg) {
    strays_t *s = arg;
    unsigned char huge[CPJ_HDR], wrong[CPJ_HDR];
    cpj_header(huge, CPJ_HELLO, 1u << 30);
    cpj_header(wrong, CPJ_WELCOME, 0);
    const struct {
        const void *b;
        size_t n;
    } sends[4] = {{"GET / HTTP/1.0\r\n\r\n", 18}, {"", 0}, {huge, sizeof huge}, {wrong, sizeof wrong}};
    s->silent_fd = connect_retry(s->port); // holds its slot, says nothing
    for (int k = 0; k < 4; k++) {
        int fd = connect_retry(s->port);
        if (fd < 0) continue;
        if (!sends[k].n)
            shutdown(fd, SHUT_WR); // an early close
        else
            cpj_send_all(fd, sends[k].b, sends[k].n, cpj_deadline_after(lc_now_ns(), 500), NULL, 0);
        s->closed[k] = closed_by_peer(fd);
        close(fd);
    }
    return NULL;
}

START_TEST(test_strays) {
    char list[512];
    loop_list(3, list, sizeof list);
    host_t *hs = group_new(3, list, 3000);
    strays_t s = {.port = hs[0].hosts[0].port, .silent_fd = -1};
    hs[1].delay_ms = hs[2].delay_ms = 300; // the strays come first
    pthread_t th;
    ck_assert_int_eq(pthread_create(&th, NULL, strays_main, &s), 0);
    group_run(hs, 3, 0);
    pthread_join(th, NULL);
    assert_joined(hs, 3);
    ck_assert_int_ge(s.silent_fd, 0);
    for (int k = 0; k < 4; k++) ck_assert_msg(s.closed[k], "stray %d was not dropped", k);
    close(s.silent_fd);
    free(hs);
}
END_TEST

/* A hello of another protocol version fails the group, and its sender is told. */
START_TEST(test_version) {
    char list[512];
    loop_list(2, list, sizeof list);
    host_t *hs = group_new(2, list, 2000);
    ck_assert_int_eq(pthread_create(&hs[0].th, NULL, host_main, &hs[0]), 0);
    int fd = connect_retry(hs[0].hosts[0].port);
    ck_assert_int_ge(fd, 0);
    unsigned char h[CPJ_HDR + 4] = {0};
    cpj_header(h, CPJ_HELLO, 4);
    h[5] = 99; // the version's low byte
    uint64_t dl = cpj_deadline_after(lc_now_ns(), 1500);
    ck_assert_int_eq(cpj_send_all(fd, h, sizeof h, dl, NULL, 0), 0);
    unsigned char b[CPJ_MSG_MAX];
    int type = 0;
    size_t len = 0;
    unsigned version = 0;
    char why[128];
    ck_assert_int_eq(cpj_recv_msg(fd, dl, &type, b, sizeof b, &len, &version, why, sizeof why), 0);
    ck_assert_int_eq(type, CPJ_REJECT);
    ck_assert_int_eq((int16_t)(b[0] << 8 | b[1]), LC_EUNSUPPORTED);
    ck_assert_ptr_nonnull(memmem(b, len, "version 99", 10));
    close(fd);
    /* A REJECT reads in every version (so a newer host learns why); nothing else does. */
    unsigned char r[CPJ_HDR];
    uint32_t rl;
    cpj_header(r, CPJ_REJECT, 5);
    r[5] = 99;
    ck_assert_int_eq(cpj_parse_header(r, &type, &rl, &version), 0);
    cpj_header(r, CPJ_WELCOME, 5);
    r[5] = 99;
    ck_assert_int_eq(cpj_parse_header(r, &type, &rl, &version), LC_EUNSUPPORTED);
    pthread_join(hs[0].th, NULL);
    assert_failed(&hs[0], LC_EUNSUPPORTED, "speaks join protocol version 99; host 0 speaks 1");
    free(hs);
}
END_TEST

START_TEST(test_port_busy) {
    char list[512];
    loop_list(2, list, sizeof list);
    host_t *hs = group_new(2, list, 500);
    int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    a.sin_port = htons((uint16_t)atoi(hs[0].hosts[0].port));
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    ck_assert_int_eq(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    ck_assert_int_eq(listen(fd, 4), 0);
    group_run(hs, 1, 0);
    char needle[320];
    snprintf(needle, sizeof needle, "port %s is in use", hs[0].hosts[0].port);
    assert_failed(&hs[0], LC_EBUSY, needle);
    ck_assert_msg(hs[0].took_s < 0.2, "took %.2f s", hs[0].took_s);
    close(fd);
    free(hs);
}
END_TEST

START_TEST(test_ipv6_and_names) {
    char list[512];
    snprintf(list, sizeof list, " [::1]:%d , localhost:%d,127.0.0.1:%d", free_port(1), free_port(0), free_port(0));
    host_t *hs = group_new(3, list, 3000);
    ck_assert_str_eq(hs[0].hosts[0].host, "::1");
    group_run(hs, 3, 0);
    assert_joined(hs, 3);
    free(hs);
    /* Host 0 by name, listening on every address the name has. */
    snprintf(list, sizeof list, "localhost:%d,[::1]:%d", free_port(0), free_port(1));
    hs = group_new(2, list, 3000);
    group_run(hs, 2, 0);
    assert_joined(hs, 2);
    free(hs);
}
END_TEST

START_TEST(test_hosts_parse) {
    cp_host_t h[4];
    int n;
    char err[256];
    ck_assert_int_eq(cp_hosts_parse("gpu-a.example:29500, 10.0.0.2:1 ,[fe80::1%eth0]:65535", h, 4, &n, err, sizeof err),
                     0);
    ck_assert_int_eq(n, 3);
    ck_assert_str_eq(h[0].host, "gpu-a.example");
    ck_assert_str_eq(h[0].port, "29500");
    ck_assert_str_eq(h[1].host, "10.0.0.2");
    ck_assert_str_eq(h[2].host, "fe80::1%eth0");
    ck_assert_str_eq(h[2].port, "65535");
    static const struct {
        const char *list, *msg;
    } bad[] = {
        {"", "the list is empty"},
        {"a:1,,b:2", "entry 1 is empty"},
        {"a:1,", "entry 1 is empty"},
        {"a:1,hostb", "entry 1 'hostb': no ':port'"},
        {"a:0", "entry 0 'a:0': port '0' is not a number in 1..65535"},
        {"a:1,b:70000", "entry 1 'b:70000': port '70000'"},
        {"a:1x", "port '1x'"},
        {"a:", "port ''"},
        {":29500", "no host before ':'"},
        {"a:1,::1:29500", "entry 1 '::1:29500': an IPv6 address needs brackets"},
        {"[::1:29500", "no ']'"},
        {"[::1]29500", "no ':port' after the address"},
        {"[host]:1", "'host' is not an IPv6 address"},
        {"a b:1", "'a b' is not a host name"},
        {"a:1,b:2,A:1", "entry 2 'A:1' repeats entry 0"},
        {"a:1,b:2,c:3,d:4,e:5", "more than 4 entries"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        ck_assert_int_eq(cp_hosts_parse(bad[i].list, h, 4, &n, err, sizeof err), LC_EINVAL);
        ck_assert_msg(strstr(err, bad[i].msg), "'%s': '%s' lacks '%s'", bad[i].list, err, bad[i].msg);
    }
}
END_TEST

START_TEST(test_bad_params) {
    char list[64], err[256];
    loop_list(2, list, sizeof list);
    host_t *hs = group_new(2, list, 100);
    cp_join_params_t p = {.hosts = hs[0].hosts, .n_hosts = 2, .index = 2, .timeout_ms = 100, .id = hs[0].id};
    ck_assert_int_eq(cp_join(&p, &hs[0].res, err, sizeof err), LC_EINVAL);
    ck_assert_ptr_nonnull(strstr(err, "index 2 is not in the host list"));
    p.index = 0, p.id = NULL;
    ck_assert_int_eq(cp_join(&p, &hs[0].res, err, sizeof err), LC_EINVAL);
    p.id = hs[0].id, p.fp_len = CP_JOIN_FP_MAX + 1, p.fp = hs[0].fp;
    ck_assert_int_eq(cp_join(&p, &hs[0].res, err, sizeof err), LC_EINVAL);
    free(hs);
}
END_TEST

/* ---- suite ------------------------------------------------------------------------------ */
int main(void) {
    /* IPv6 loopback: the case needs it; without it that case is skipped. */
    int fd = socket(AF_INET6, SOCK_STREAM, 0);
    struct sockaddr_in6 a = {.sin6_family = AF_INET6, .sin6_addr = in6addr_loopback};
    have_ipv6 = fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof a) == 0;
    if (fd >= 0) close(fd);

    Suite *s = suite_create("cp_join");
    TCase *tc = tcase_create("join");
    tcase_set_timeout(tc, 20);
    tcase_add_loop_test(tc, test_join, 0, 3);
    tcase_add_test(tc, test_single_host);
    tcase_add_test(tc, test_late);
    tcase_add_test(tc, test_missing);
    tcase_add_test(tc, test_missing_early_deadline);
    tcase_add_test(tc, test_no_host0);
    tcase_add_test(tc, test_fingerprint_differs);
    tcase_add_test(tc, test_desc_diff);
    tcase_add_test(tc, test_list_differs);
    tcase_add_test(tc, test_duplicate_index);
    tcase_add_test(tc, test_strays);
    tcase_add_test(tc, test_version);
    tcase_add_test(tc, test_port_busy);
    tcase_add_test(tc, test_hosts_parse);
    tcase_add_test(tc, test_bad_params);
    if (have_ipv6)
        tcase_add_test(tc, test_ipv6_and_names);
    else
        tu_skip("no IPv6 loopback (::1): the IPv6 and host-name case left out");
    suite_add_tcase(s, tc);
    return tu_run(s);
}

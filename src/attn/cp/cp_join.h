/* Several hosts forming one context-parallel ring agree at start-up, over
 * TCP, before any GPU communicator exists. The NCCL communicator of a group
 * spanning hosts needs one 128-byte unique id made by rank 0 and handed to
 * every other process (cp_nccl_create_rank, cp_comm_cuda.h); this module
 * hands it over, and checks on the way that the hosts agree on what they are
 * about to run. It knows nothing of CUDA or NCCL: the id and the
 * fingerprints are the caller's opaque bytes.
 *
 * The group is a list of hosts, "hostA:port,hostB:port,..." (the same list
 * on every host), and each process knows its index in it. Host 0 listens on
 * its listed port; every other host connects to host 0 (retrying until the
 * deadline: the hosts start in any order) and says hello with its index, the
 * list's length and digest, and its fingerprint. Host 0 answers each hello
 * once every index has joined: with the id and every host's fingerprint, or
 * with an error text that every host then returns. What must agree: the
 * protocol version, the host list, distinct indices in range, and the
 * fingerprints, byte for byte. The fingerprint's description (a short text
 * sent beside it, "model=3f2a... ctx=8192 gpus=8") is only for the error:
 * when its words are key=value pairs, the error names the keys that differ.
 *
 * The only port listened on is host 0's; the other entries' ports are not
 * used by the exchange (each process, given the whole list, could be host 0).
 *
 * Errors (0 or a negative lc status, with a sentence in the caller's buffer):
 *  - LC_EINVAL: a malformed host list (naming the entry), an index out of
 *    range, a fingerprint or host list that differs between hosts, an index
 *    claimed twice;
 *  - LC_ENOTFOUND: the deadline passed with hosts missing (host 0 names the
 *    indices and addresses not joined, and tells every joined host) or, on
 *    another host, host 0 could not be reached (naming its address and the
 *    last reason) or had not answered (naming the hosts it last said it
 *    was waiting for);
 *  - LC_EUNSUPPORTED: a peer speaks another protocol version;
 *  - LC_EBUSY: host 0's port is in use; LC_EIO: another socket error;
 *  - LC_EFORMAT: host 0 answered with a malformed message.
 * A stray connection (garbage, silence, an early close) never ends the join:
 * host 0 drops it and keeps waiting for the right peer until the deadline.
 * Every socket wait is bounded by the deadline, so the call never hangs: it
 * returns by the deadline plus at most CPJ_GRACE_MS (one second), the time
 * host 0 takes to deliver its answers and a connected host waits for them
 * (host 0's deadline, counted from its own start, may fall after this one).
 * One wait escapes it: a name lookup (getaddrinfo) lasts as long as the
 * resolver's own timeouts when DNS does not answer; addresses never wait.
 *
 * Thread safety: no shared state; concurrent joins (the tests run every host
 * as a thread of one process) are fine. */
#ifndef LC_ATTN_CP_JOIN_H
#define LC_ATTN_CP_JOIN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define CP_JOIN_VERSION 1
/* The id's size: NCCL's unique id (CP_NCCL_ID_BYTES). */
#define CP_JOIN_ID_BYTES 128
#define CP_JOIN_MAX_HOSTS 64
/* A fingerprint's bytes, and its description's characters (without the NUL). */
#define CP_JOIN_FP_MAX 64
#define CP_JOIN_DESC_MAX 255
/* Longest host name or address in a list entry (without brackets). */
#define CP_JOIN_HOST_MAX 255

/* One entry of the host list. */
typedef struct {
    char host[CP_JOIN_HOST_MAX + 1]; // a name or an address; an IPv6 address without its brackets
    char port[6];                    // decimal, 1 .. 65535
} cp_host_t;

/* Parses "hostA:port,[::1]:port,..." (spaces around entries ignored) into
 * hosts[0 .. *n) (room for max). LC_EINVAL with a message naming the entry
 * (by position and text) when one is empty, lacks a port, has a bad port or
 * host, is an unbracketed IPv6 address, repeats an earlier entry, or when
 * there are more than max. */
int cp_hosts_parse(const char *list, cp_host_t *hosts, int max, int *n, char *err, size_t errlen);

/* What a process brings to the join. */
typedef struct {
    const cp_host_t *hosts;  // (n_hosts): the parsed list, the same on every host
    int n_hosts;             // 1 .. CP_JOIN_MAX_HOSTS
    int index;               // this process's position in hosts
    const unsigned char *fp; // (fp_len): must equal every other host's
    size_t fp_len;           // 0 .. CP_JOIN_FP_MAX
    const char *fp_desc;     // NUL-terminated, <= CP_JOIN_DESC_MAX chars; NULL: ""
    int timeout_ms;          // the whole join's deadline, from the call
    const unsigned char *id; // (CP_JOIN_ID_BYTES) host 0's id to hand out; ignored elsewhere
} cp_join_params_t;

/* What every host learns; embedded by the caller (about 21 KB). */
typedef struct {
    unsigned char id[CP_JOIN_ID_BYTES]; // host 0's id
    int n_hosts;
    struct {
        unsigned char fp[CP_JOIN_FP_MAX]; // (fp_len)
        size_t fp_len;
        char desc[CP_JOIN_DESC_MAX + 1];
    } host[CP_JOIN_MAX_HOSTS]; // (n_hosts): each host's fingerprint and description
} cp_join_result_t;

/* Joins the group; blocks until every host has joined (host 0) or host 0
 * has answered (the others), or the deadline. 0 fills *out; otherwise a
 * negative status (above) with the reason in err (errlen bytes, may be 0). */
int cp_join(const cp_join_params_t *p, cp_join_result_t *out, char *err, size_t errlen);

#ifdef __cplusplus
}
#endif
#endif

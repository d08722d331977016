/* API-key checks for `Authorization: Bearer <key>`. Keys are compared in
 * constant time (per key length) so response timing does not leak them.
 * Loop thread only; srv_auth_set swaps the key list on SIGHUP. */
#ifndef SRV_AUTH_H
#define SRV_AUTH_H

#include <stddef.h>

typedef struct {
    char **keys; // owned
    int n_keys;
} srv_auth_t;

/* Takes ownership of keys (array and strings, as lc_config_keys returns). */
void srv_auth_set(srv_auth_t *a, char **keys, int n_keys);
void srv_auth_fini(srv_auth_t *a);
/* 1 if no keys are configured or the header holds a valid Bearer key. */
int srv_auth_check(const srv_auth_t *a, const char *authorization_header);
/* Constant-time equality over max(la, lb) bytes; 1 when equal. */
int srv_ct_equal(const char *a, size_t la, const char *b, size_t lb);

#endif

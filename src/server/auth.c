/* Bearer-key checks. Every configured key is compared (no early exit), and
 * each comparison touches every byte, so timing depends only on lengths. */
#include "server/auth.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/config.h"

int srv_ct_equal(const char *a, size_t la, const char *b, size_t lb) {
    size_t n = la > lb ? la : lb;
    volatile unsigned char diff = (unsigned char)(la != lb);
    for (size_t i = 0; i < n; i++) {
        unsigned char x = i < la ? (unsigned char)a[i] : 0;
        unsigned char y = i < lb ? (unsigned char)b[i] : 0;
        diff |= x ^ y;
    }
    return diff == 0;
}

void srv_auth_set(srv_auth_t *a, char **keys, int n_keys) {
    srv_auth_fini(a);
    a->keys = keys;
    a->n_keys = n_keys;
}

void srv_auth_fini(srv_auth_t *a) {
    lc_config_keys_free(a->keys, a->n_keys);
    a->keys = NULL;
    a->n_keys = 0;
}

int srv_auth_check(const srv_auth_t *a, const char *h) {
    if (a->n_keys == 0) return 1;
    if (!h || strncasecmp(h, "Bearer ", 7)) return 0;
    h += 7;
    while (*h == ' ') h++;
    size_t len = strlen(h);
    while (len && (h[len - 1] == ' ' || h[len - 1] == '\t')) len--;
    int ok = 0;
    for (int i = 0; i < a->n_keys; i++) ok |= srv_ct_equal(h, len, a->keys[i], strlen(a->keys[i]));
    return ok;
}

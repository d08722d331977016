/* The kernel checks of the check_anchor_cuda suite (check_anchor_kern.c):
 * the token-gather attention and the dense prefill's rowmax. */
#ifndef LC_CHECK_ANCHOR_KERN_H
#define LC_CHECK_ANCHOR_KERN_H

#include <check.h>

TCase *anchor_kern_tcase(void);

#endif

/* Check suite for src/common: status table and log level parsing. */
#include <check.h>
#include <stdint.h>
#include <string.h>

#include "common/buf.h"
#include "common/log.h"
#include "common/status.h"

START_TEST(test_buf_appends) {
    lc_buf_t b = {0};
    ck_assert_int_eq(lc_buf_put(&b, "", 0), 0);
    ck_assert_ptr_nonnull(b.p); // an empty append still gives a string
    ck_assert_str_eq(b.p, "");
    char chunk[100];
    memset(chunk, 'x', sizeof chunk);
    for (int i = 0; i < 50; i++) ck_assert_int_eq(lc_buf_put(&b, chunk, sizeof chunk), 0); // many regrowths
    ck_assert_int_eq(lc_buf_puts(&b, "end"), 0);
    ck_assert_uint_eq(b.n, 5003);
    ck_assert_uint_eq(strlen(b.p), 5003); // NUL right after the bytes
    ck_assert_str_eq(b.p + 5000, "end");
    ck_assert(b.cap > b.n);
    lc_buf_free(&b);
    ck_assert_ptr_null(b.p);
    ck_assert_uint_eq(b.n, 0);
}
END_TEST

START_TEST(test_buf_oom_sticks) {
    lc_buf_t b = {0};
    ck_assert_int_eq(lc_buf_puts(&b, "abc"), 0);
    ck_assert_int_eq(lc_buf_put(&b, "x", SIZE_MAX - 1), LC_ENOMEM); // cannot be had: no overflow, no write
    ck_assert(b.oom);
    ck_assert_int_eq(lc_buf_puts(&b, "d"), LC_ENOMEM); // every later append refused
    ck_assert_str_eq(b.p, "abc");
    lc_buf_free(&b);
    ck_assert(!b.oom);
}
END_TEST

START_TEST(test_status_table) {
    ck_assert_str_eq(lc_strerror(LC_OK), "success");
    ck_assert_str_eq(lc_strerror(LC_ENOSPC), "no free KV blocks");
    ck_assert_str_eq(lc_status_name(LC_EFORMAT), "EFORMAT");
    ck_assert_str_eq(lc_strerror(-999), "unknown status");
}
END_TEST

START_TEST(test_log_levels) {
    lc_log_level_t l;
    ck_assert_int_eq(lc_log_parse_level("debug", &l), 0);
    ck_assert_int_eq(l, LC_LOG_DEBUG);
    ck_assert_int_eq(lc_log_parse_level("WARNING", &l), 0);
    ck_assert_int_eq(l, LC_LOG_WARN);
    ck_assert_int_eq(lc_log_parse_level("loud", &l), LC_EINVAL);
}
END_TEST

int main(void) {
    Suite *s = suite_create("common");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, test_status_table);
    tcase_add_test(tc, test_log_levels);
    tcase_add_test(tc, test_buf_appends);
    tcase_add_test(tc, test_buf_oom_sticks);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}

/* Check suite for src/common: status table and log level parsing. */
#include <check.h>
#include <string.h>

#include "common/log.h"
#include "common/status.h"

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
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}

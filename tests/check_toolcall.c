/* Check suite for the tool-call splitter (server/toolcall.h): the same
 * content and calls whether the text arrives whole or one byte at a time,
 * tags split across deltas, malformed calls kept as content, and an
 * unterminated last call (cut by the "</tool_call>" stop string). */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "server/toolcall.h"

static chat_tool_syntax_t qwen(void) {
    chat_template_t ct;
    chat_tool_syntax_t sy;
    ck_assert_int_eq(chat_template_from_name("qwen2.5", &ct), 0);
    ck_assert_int_eq(chat_tool_syntax(&ct, &sy), 0);
    return sy;
}

/* Splits text fed in pieces of `step` bytes (0: whole). */
static void split(const char *text, size_t step, srv_tp_out_t *out) {
    static chat_tool_syntax_t sy;
    sy = qwen();
    srv_tp_t t;
    srv_tp_init(&t, &sy);
    memset(out, 0, sizeof *out);
    size_t n = strlen(text);
    if (!step) step = n ? n : 1;
    for (size_t i = 0; i < n; i += step)
        ck_assert_int_eq(srv_tp_feed(&t, text + i, i + step > n ? n - i : step, out), 0);
    ck_assert_int_eq(srv_tp_finish(&t, out), 0);
    srv_tp_free(&t);
}

static void expect(const char *text, const char *content, int n_calls, const char *const *names,
                   const char *const *args) {
    for (size_t step = 0; step <= 3; step++) {
        srv_tp_out_t o;
        split(text, step, &o);
        ck_assert_str_eq(o.content.data ? o.content.data : "", content);
        ck_assert_int_eq(o.n_calls, n_calls);
        for (int i = 0; i < n_calls; i++) {
            ck_assert_str_eq(o.calls[i].name, names[i]);
            ck_assert_str_eq(o.calls[i].arguments, args[i]);
        }
        srv_tp_out_free(&o);
    }
}

START_TEST(test_split) {
    expect("plain text, no calls <tool", "plain text, no calls <tool", 0, NULL, NULL);
    expect("<tool_call>\n{\"name\": \"f\", \"arguments\": {\"a\": 1}}\n</tool_call>", "", 1, (const char *[]){"f"},
           (const char *[]){"{\"a\":1}"});
    expect("Let me check.\n<tool_call>\n{\"name\": \"a\", \"arguments\": {}}\n</tool_call>\n<tool_call>\n{\"name\": "
           "\"b\", \"arguments\": {\"x\": [1, \"<tool_call>\"]}}\n</tool_call>",
           "Let me check.\n\n", 2, (const char *[]){"a", "b"}, (const char *[]){"{}", "{\"x\":[1,\"<tool_call>\"]}"});
    /* malformed: kept as text, tags and all */
    expect("x<tool_call>not json</tool_call>y", "x<tool_call>not json</tool_call>y", 0, NULL, NULL);
    expect("<tool_call>{\"name\": 3, \"arguments\": {}}</tool_call>",
           "<tool_call>{\"name\": 3, \"arguments\": {}}</tool_call>", 0, NULL, NULL);
    /* arguments given as a JSON string pass through */
    expect("<tool_call>{\"name\": \"s\", \"arguments\": \"{\\\"q\\\": 1}\"}</tool_call>", "", 1, (const char *[]){"s"},
           (const char *[]){"{\"q\": 1}"});
    /* cut by the stop string: the body is complete, the close tag never came */
    expect("<tool_call>\n{\"name\": \"f\", \"arguments\": {}}\n", "", 1, (const char *[]){"f"}, (const char *[]){"{}"});
    /* cut mid-body: content, with the open tag */
    expect("<tool_call>\n{\"name\": \"f\", \"argu", "<tool_call>\n{\"name\": \"f\", \"argu", 0, NULL, NULL);
}
END_TEST

int main(void) {
    Suite *s = suite_create("toolcall");
    TCase *tc = tcase_create("toolcall");
    tcase_add_test(tc, test_split);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}

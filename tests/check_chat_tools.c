/* Check suite for chat templates with tools: the native Qwen2.5 renderer
 * against the bytes jinja2 produces from the real template text
 * (tests/fixtures/chat_tools_qwen25.json, scripts/gen_chat_tools_fixtures.py),
 * template detection, and the json.dumps-style printer (chat_json.h). */
#include <check.h>
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/status.h"
#include "model/chat.h"
#include "model/chat_json.h"
#include "testutil.h"
#include "tools/mkmodel.h"

static char *slurp(const char *rel, size_t *len) {
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", tu_srcdir(), rel);
    FILE *f = fopen(path, "rb");
    ck_assert_msg(f != NULL, "cannot open %s", path);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = malloc((size_t)n + 1);
    ck_assert_int_eq(fread(s, 1, (size_t)n, f), (size_t)n);
    s[n] = 0;
    fclose(f);
    if (len) *len = (size_t)n;
    return s;
}

static char *render_json(const char *s) {
    char *out = NULL;
    ck_assert_int_eq(chat_json_render(s, strlen(s), &out), 0);
    return out;
}

START_TEST(test_fixtures) {
    char *text = slurp("tests/fixtures/chat_tools_qwen25.json", NULL);
    cJSON *cases = cJSON_Parse(text);
    ck_assert_ptr_nonnull(cases);
    chat_template_t ct;
    ck_assert_int_eq(chat_template_from_name("qwen2.5", &ct), 0);
    int k = 0;
    const cJSON *c;
    cJSON_ArrayForEach(c, cases) {
        const cJSON *msgs = cJSON_GetObjectItem(c, "messages"), *raw = cJSON_GetObjectItem(c, "tools_raw");
        int n = cJSON_GetArraySize(msgs);
        chat_msg_t *m = calloc((size_t)n, sizeof *m);
        chat_msg_calls_t *calls = calloc((size_t)n, sizeof *calls);
        char **args = calloc(64, sizeof *args);
        int n_args = 0, i = 0;
        const cJSON *e;
        cJSON_ArrayForEach(e, msgs) {
            m[i].role = cJSON_GetObjectItem(e, "role")->valuestring;
            const cJSON *ct_ = cJSON_GetObjectItem(e, "content");
            m[i].content = cJSON_IsString(ct_) ? ct_->valuestring : NULL;
            const cJSON *tc = cJSON_GetObjectItem(e, "tool_calls");
            if (tc) {
                chat_tool_call_t *cl = calloc((size_t)cJSON_GetArraySize(tc), sizeof *cl);
                const cJSON *x;
                size_t j = 0;
                cJSON_ArrayForEach(x, tc) {
                    const cJSON *fn = cJSON_GetObjectItem(x, "function");
                    cl[j].name = cJSON_GetObjectItem(fn, "name")->valuestring;
                    args[n_args] = render_json(cJSON_GetObjectItem(fn, "arguments")->valuestring);
                    cl[j++].arguments = args[n_args++];
                }
                calls[i].calls = cl;
                calls[i].n = j;
            }
            i++;
        }
        char *tools[8];
        size_t n_tools = 0;
        if (cJSON_IsString(raw)) {
            const char *v;
            size_t vl;
            while (chat_json_element(raw->valuestring, strlen(raw->valuestring), (int)n_tools, &v, &vl) == 0) {
                ck_assert_int_eq(chat_json_render(v, vl, &tools[n_tools]), 0);
                n_tools++;
            }
        }
        char *out = NULL, err[256] = "";
        int gen = cJSON_IsTrue(cJSON_GetObjectItem(c, "add_generation_prompt"));
        ck_assert_int_eq(chat_render_tools(&ct, m, calls, (size_t)n, (const char *const *)tools, n_tools, gen, &out,
                                           err, sizeof err),
                         0);
        const char *want = cJSON_GetObjectItem(c, "expected")->valuestring;
        ck_assert_msg(!strcmp(out, want), "case %d differs:\n--- got\n%s\n--- want\n%s", k, out, want);
        free(out);
        for (size_t t = 0; t < n_tools; t++) free(tools[t]);
        for (int a = 0; a < n_args; a++) free(args[a]);
        for (int a = 0; a < n; a++) free((void *)calls[a].calls);
        free(args);
        free(calls);
        free(m);
        k++;
    }
    ck_assert_int_ge(k, 10);
    cJSON_Delete(cases);
    free(text);
}
END_TEST

START_TEST(test_detect) {
    size_t n;
    char *t = slurp("tests/fixtures/qwen2.5_chat_template.jinja", &n);
    chat_template_t ct;
    char err[128];
    ck_assert_int_eq(chat_template_detect(t, n, &ct, err, sizeof err), 0);
    ck_assert_int_eq(ct.family, CHAT_QWEN25);
    ck_assert(chat_supports_tools(&ct));
    chat_tool_syntax_t sy;
    ck_assert_int_eq(chat_tool_syntax(&ct, &sy), 0);
    ck_assert_str_eq(sy.open_tag, "<tool_call>");
    /* mkmodel's copy of the template is the fixture, byte for byte */
    ck_assert_str_eq(mkmodel_qwen25_template, t);
    free(t);
    /* SmolLM2's template has no tool support */
    ck_assert_int_eq(
        chat_template_detect(mkmodel_chatml_template, strlen(mkmodel_chatml_template), &ct, err, sizeof err), 0);
    ck_assert(!chat_supports_tools(&ct));
    ck_assert_int_eq(chat_tool_syntax(&ct, &sy), LC_EUNSUPPORTED);
    const char *tools[1] = {"{}"};
    chat_msg_t m[1] = {{"user", "hi"}};
    char *out = NULL;
    ck_assert_int_eq(chat_render_tools(&ct, m, NULL, 1, tools, 1, 1, &out, err, sizeof err), LC_EUNSUPPORTED);
    ck_assert_ptr_null(out);
}
END_TEST

START_TEST(test_json_print) {
    static const struct {
        const char *in, *out;
    } c[] = {
        {"{\"a\":1,\"b\":[1.0,2.5e0,-0,1e-5,123456789012345678901234567890]}",
         "{\"a\": 1, \"b\": [1.0, 2.5, 0, 1e-05, 123456789012345678901234567890]}"},
        {" [ ] ", "[]"},
        {"{}", "{}"},
        {"\"\\u00e9\\ud83d\\ude00\\/\\\"\\\\\\b\\f\\n\\r\\t\\u001f\"", "\"é😀/\\\"\\\\\\b\\f\\n\\r\\t\\u001f\""},
        {"[true,false,null]", "[true, false, null]"},
        {"0.1", "0.1"},
        {"1e22", "1e+22"},
        {"123456789.0", "123456789.0"},
        {"1.5E-7", "1.5e-07"},
        {"0.0001", "0.0001"},
        {"1e400", "Infinity"},
    };
    for (size_t i = 0; i < sizeof c / sizeof c[0]; i++) {
        char *o = render_json(c[i].in);
        ck_assert_msg(!strcmp(o, c[i].out), "%s -> %s, want %s", c[i].in, o, c[i].out);
        free(o);
    }
    static const char *const bad[] = {
        "{\"a\":1,\"a\":2}", "\"\\ud800\"", "\"\xff\"", "[1,]", "01", "{\"a\" 1}", "", "1 2"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char *o = NULL;
        ck_assert_msg(chat_json_render(bad[i], strlen(bad[i]), &o) == LC_EINVAL, "accepted %s", bad[i]);
    }
    const char *v;
    size_t vl;
    const char *obj = "{\"x\": [1, {\"tools\": 2}], \"tools\" : [ {\"a\":1} , 3 ]}";
    ck_assert_int_eq(chat_json_member(obj, strlen(obj), "tools", &v, &vl), 0);
    ck_assert_int_eq((int)vl, 15);
    ck_assert_int_eq(chat_json_element(v, vl, 1, &v, &vl), 0);
    ck_assert_int_eq((int)vl, 1);
    ck_assert_int_eq(chat_json_member(obj, strlen(obj), "nope", &v, &vl), LC_ENOTFOUND);
}
END_TEST

int main(void) {
    Suite *s = suite_create("chat_tools");
    TCase *tc = tcase_create("chat_tools");
    tcase_add_test(tc, test_fixtures);
    tcase_add_test(tc, test_detect);
    tcase_add_test(tc, test_json_print);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}

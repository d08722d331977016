/* libFuzzer target: the JSON and SSE writers (respond.c) fed with arbitrary
 * token bytes, logprob values (NaN and infinities included), finish reasons
 * and error messages. Every SSE event must be exactly "data: <JSON>\n\n" with
 * no other line break, the JSON valid UTF-8 that cJSON reads back, and the
 * text it carries must be the input bytes (bad UTF-8 replaced by U+FFFD).
 *
 * Input layout: byte 0 flags, byte 1 the number of logprob entries, byte 2
 * the top-n, then 4-byte floats for the logprobs (as many as needed, read
 * cyclically), the rest is text. Token ids pick slices of the text as their
 * pieces, so pieces hold arbitrary bytes too. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/respond.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(x)                                                                                                       \
    do {                                                                                                               \
        if (!(x)) __builtin_trap();                                                                                    \
    } while (0)

typedef struct {
    const char *text;
    size_t len;
} vocab_t;

/* Token id → a slice of the text; ids past 1023 are unknown (NULL). */
static const char *piece(void *ud, int32_t id, size_t *len) {
    const vocab_t *v = ud;
    if (id < 0 || id > 1023 || !v->len) return NULL;
    size_t off = ((size_t)id * 37) % v->len;
    size_t n = ((size_t)id % 9);
    if (off + n > v->len) n = v->len - off;
    *len = n;
    return v->text + off;
}

static int valid_utf8(const char *s, size_t n) {
    char *d = srv_utf8_dup(s, n);
    int ok = d && strlen(d) == n && memcmp(d, s, n) == 0;
    free(d);
    return ok;
}

/* Checks every event in out and returns the parsed JSON of the first one
 * (caller deletes), or NULL for [DONE]. */
static cJSON *check_events(const srv_buf_t *out, int n_events) {
    cJSON *first = NULL;
    const char *p = out->data, *end = out->data + out->len;
    for (int i = 0; i < n_events; i++) {
        CHECK(end - p >= 8 && memcmp(p, "data: ", 6) == 0);
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        CHECK(nl && nl + 1 < end && nl[1] == '\n');
        const char *j = p + 6;
        size_t jl = (size_t)(nl - j);
        CHECK(!memchr(j, '\r', jl));
        CHECK(valid_utf8(j, jl));
        if (jl == 6 && !memcmp(j, "[DONE]", 6)) {
            p = nl + 2;
            continue;
        }
        cJSON *o = cJSON_ParseWithLength(j, jl);
        CHECK(o);
        if (!first)
            first = o;
        else
            cJSON_Delete(o);
        p = nl + 2;
    }
    CHECK(p == end);
    return first;
}

static void check_body(const char *s) {
    CHECK(s);
    CHECK(!strchr(s, '\n') && !strchr(s, '\r'));
    CHECK(valid_utf8(s, strlen(s)));
    cJSON *o = cJSON_Parse(s);
    CHECK(o);
    cJSON_Delete(o);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 3) return 0;
    uint8_t flags = data[0];
    int n_lps = data[1] % 6;
    int n_top = data[2] % (SAMPLER_MAX_LOGPROBS + 1);
    data += 3;
    size -= 3;
    size_t n_floats = (size_t)n_lps * (1 + (size_t)n_top);
    size_t fbytes = n_floats * 4 < size / 2 ? n_floats * 4 : (size / 2) & ~(size_t)3;
    const uint8_t *fl = data;
    vocab_t v = {(const char *)data + fbytes, size - fbytes};

    sched_logprob_t lps[5];
    size_t fi = 0;
    for (int i = 0; i < n_lps; i++) {
        float f = NAN;
        if (fbytes) memcpy(&f, fl + (fi++ * 4) % fbytes, 4);
        lps[i].token = (int32_t)(f == f ? (uint32_t)i * 131u + (uint32_t)(flags >> 1) : 2000u);
        lps[i].logprob = f;
        lps[i].n_top = n_top;
        for (int k = 0; k < n_top; k++) {
            float g = -1.0f;
            if (fbytes) memcpy(&g, fl + (fi++ * 4) % fbytes, 4);
            lps[i].top_ids[k] = (int32_t)((uint32_t)k * 17u + (uint32_t)i) % 1100;
            lps[i].top_logprobs[k] = g;
        }
    }

    srv_resp_ctx_t c = {.id = "cmpl-fuzz",
                        .created = 1700000000,
                        .model = "m",
                        .kind = (flags & 1) ? SRV_REQ_CHAT : SRV_REQ_COMPLETION,
                        .piece = piece,
                        .piece_ud = &v};
    int role_first = (flags >> 1) & 1;
    int want_lps = (flags >> 2) & 1;
    sched_finish_t finish = (sched_finish_t)(((flags >> 3) & 7) % 5);
    const char *fr = srv_finish_reason(finish);

    /* One streaming chunk: its text must survive the round trip. */
    srv_buf_t out = {0};
    CHECK(srv_sse_chunk(&out, &c, flags >> 6, role_first, v.text, v.len, lps, n_lps, want_lps, 7, finish) == 0);
    cJSON *o = check_events(&out, 1);
    char *want = srv_utf8_dup(v.text, v.len);
    CHECK(want);
    const cJSON *ch = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(o, "choices"), 0);
    CHECK(ch);
    const cJSON *t = c.kind == SRV_REQ_CHAT
                         ? cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(ch, "delta"), "content")
                         : cJSON_GetObjectItemCaseSensitive(ch, "text");
    if (t)
        CHECK(cJSON_IsString(t) && strcmp(t->valuestring, want) == 0);
    else
        CHECK(c.kind == SRV_REQ_CHAT && !role_first && finish != SCHED_FINISH_NONE && !want[0]);
    const cJSON *f = cJSON_GetObjectItemCaseSensitive(ch, "finish_reason");
    CHECK(fr ? (cJSON_IsString(f) && !strcmp(f->valuestring, fr)) : cJSON_IsNull(f));
    const cJSON *lo = cJSON_GetObjectItemCaseSensitive(ch, "logprobs");
    if (want_lps && n_lps) {
        const cJSON *arr = cJSON_GetObjectItemCaseSensitive(lo, c.kind == SRV_REQ_CHAT ? "content" : "tokens");
        CHECK(cJSON_GetArraySize(arr) == n_lps);
    } else {
        CHECK(cJSON_IsNull(lo));
    }
    cJSON_Delete(o);
    free(want);
    srv_buf_free(&out);

    /* Usage (densities from the floats), an error with arbitrary text, [DONE], a ping. */
    srv_usage_t u = {.prompt_tokens = (int)v.len,
                     .completion_tokens = n_lps,
                     .cached_tokens = 0,
                     .prefill_method = (int)(flags % 7) - 1,
                     .decode_method = (int)(flags % 5) - 1,
                     .prefill_density = n_lps ? lps[0].logprob : 1.0,
                     .decode_density = n_lps ? -lps[0].logprob : 0};
    srv_error_t e = {.status = 400};
    snprintf(e.type, sizeof e.type, "invalid_request_error");
    snprintf(e.param, sizeof e.param, "%.*s", (int)(v.len < 63 ? v.len : 63), v.text);
    snprintf(e.message, sizeof e.message, "%.*s", (int)(v.len < 511 ? v.len : 511), v.text);
    CHECK(srv_sse_usage(&out, &c, &u) == 0);
    CHECK(srv_sse_error(&out, &e) == 0);
    CHECK(srv_sse_done(&out) == 0);
    cJSON_Delete(check_events(&out, 3));
    CHECK(srv_sse_ping(&out) == 0);
    CHECK(out.len >= 8 && !memcmp(out.data + out.len - 8, ": ping\n\n", 8));
    srv_buf_free(&out);

    /* The non-streaming body of the same choice, and the error body alone. */
    srv_choice_t choice = {.index = 0,
                           .text = (char *)v.text,
                           .len = v.len,
                           .lps = lps,
                           .n_lps = n_lps,
                           .want_lps = want_lps,
                           .finish = finish};
    char *body = srv_render_response(&c, &choice, 1, &u);
    check_body(body);
    free(body);
    body = srv_render_error(&e);
    check_body(body);
    free(body);
    return 0;
}

/* The synthetic vocabulary of `lacuna mkmodel`: a byte-level BPE (gpt2)
 * tokenizer shaped like SmolLM2's, small enough for tests. Ids 0..2 are the
 * ChatML control tokens, then the 256 byte tokens in GPT-2's byte-to-unicode
 * form, then merged tokens built from a list of common English words: each
 * word contributes the left-to-right chain of merges that spells it, so BPE
 * reaches every word through its own prefixes. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/status.h"
#include "model/gguf.h"
#include "tools/mkmodel.h"

const char mkmodel_chatml_template[] =
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

const char mkmodel_qwen25_template[] =
    "{%- if tools %}\n"
    "    {{- '<|im_start|>system\\n' }}\n"
    "    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- messages[0]['content'] }}\n"
    "    {%- else %}\n"
    "        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}\n"
    "    {%- endif %}\n"
    "    {{- \"\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are "
    "provided with function signatures within <tools></tools> XML tags:\\n<tools>\" }}\n"
    "    {%- for tool in tools %}\n"
    "        {{- \"\\n\" }}\n"
    "        {{- tool | tojson }}\n"
    "    {%- endfor %}\n"
    "    {{- \"\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\\"name\\\": <function-name>, \\\"arguments\\\": "
    "<args-json-object>}\\n</tool_call><|im_end|>\\n\" }}\n"
    "{%- else %}\n"
    "    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n"
    "    {%- else %}\n"
    "        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
    "assistant.<|im_end|>\\n' }}\n"
    "    {%- endif %}\n"
    "{%- endif %}\n"
    "{%- for message in messages %}\n"
    "    {%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) or (message.role == "
    "\"assistant\" and not message.tool_calls) %}\n"
    "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n"
    "    {%- elif message.role == \"assistant\" %}\n"
    "        {{- '<|im_start|>' + message.role }}\n"
    "        {%- if message.content %}\n"
    "            {{- '\\n' + message.content }}\n"
    "        {%- endif %}\n"
    "        {%- for tool_call in message.tool_calls %}\n"
    "            {%- if tool_call.function is defined %}\n"
    "                {%- set tool_call = tool_call.function %}\n"
    "            {%- endif %}\n"
    "            {{- '\\n<tool_call>\\n{\"name\": \"' }}\n"
    "            {{- tool_call.name }}\n"
    "            {{- '\", \"arguments\": ' }}\n"
    "            {{- tool_call.arguments | tojson }}\n"
    "            {{- '}\\n</tool_call>' }}\n"
    "        {%- endfor %}\n"
    "        {{- '<|im_end|>\\n' }}\n"
    "    {%- elif message.role == \"tool\" %}\n"
    "        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != \"tool\") %}\n"
    "            {{- '<|im_start|>user' }}\n"
    "        {%- endif %}\n"
    "        {{- '\\n<tool_response>\\n' }}\n"
    "        {{- message.content }}\n"
    "        {{- '\\n</tool_response>' }}\n"
    "        {%- if loop.last or (messages[loop.index0 + 1].role != \"tool\") %}\n"
    "            {{- '<|im_end|>\\n' }}\n"
    "        {%- endif %}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|im_start|>assistant\\n' }}\n"
    "{%- endif %}";

/* Words merged with a leading space (Ġ); the same list also yields the
 * bare forms of the first few, which start sentences. */
static const char *const words[] = {
    "the",   "of",     "and",  "to",    "in",    "is",    "that",   "for",    "it",       "as",     "was",
    "with",  "be",     "by",   "on",    "not",   "he",    "this",   "are",    "or",       "his",    "from",
    "at",    "which",  "but",  "have",  "an",    "had",   "they",   "you",    "were",     "their",  "one",
    "all",   "we",     "can",  "her",   "has",   "there", "been",   "if",     "more",     "when",   "will",
    "would", "who",    "so",   "no",    "she",   "other", "its",    "may",    "these",    "what",   "them",
    "than",  "some",   "him",  "time",  "into",  "only",  "do",     "could",  "new",      "about",  "two",
    "first", "then",   "also", "after", "any",   "like",  "should", "people", "very",     "over",   "how",
    "most",  "such",   "made", "world", "water", "hello", "model",  "token",  "question", "answer", "assistant",
    "user",  "system", "help", "write", "story", "once",  "upon",   "day",    "good",     "name",   "number",
    "like",  "ing",    "ed",   "er",    "ly",    "tion",  "es",     "al",     "re",       "en",     "st",
};

/* GPT-2's byte-to-unicode map, as UTF-8 (at most 2 bytes + NUL). */
static void byte_token(int b, char out[4]) {
    int cp;
    if ((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255)) {
        cp = b;
    } else {
        int n = 0; // index among the remapped bytes, in byte order
        for (int x = 0; x < b; x++)
            if (!((x >= 33 && x <= 126) || (x >= 161 && x <= 172) || (x >= 174 && x <= 255))) n++;
        cp = 256 + n;
    }
    if (cp < 0x80) {
        out[0] = (char)cp;
        out[1] = 0;
    } else {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        out[2] = 0;
    }
}

typedef struct {
    char **v;
    int n, cap;
} strlist_t;

static int sl_find(const strlist_t *l, const char *s) {
    for (int i = 0; i < l->n; i++)
        if (!strcmp(l->v[i], s)) return i;
    return -1;
}

static int sl_add(strlist_t *l, const char *s) {
    if (l->n == l->cap) {
        int cap = l->cap ? l->cap * 2 : 512;
        char **v = realloc(l->v, (size_t)cap * sizeof *v);
        if (!v) return LC_ENOMEM;
        l->v = v;
        l->cap = cap;
    }
    if (!(l->v[l->n] = strdup(s))) return LC_ENOMEM;
    l->n++;
    return 0;
}

static void sl_free(strlist_t *l) {
    for (int i = 0; i < l->n; i++) free(l->v[i]);
    free(l->v);
}

/* Adds the merge chain spelling `w` (already in byte-token form, one token
 * per element of parts). */
static int add_chain(strlist_t *toks, strlist_t *merges, char parts[][4], int n) {
    char cur[128] = "", merge[160], next[128];
    strcpy(cur, parts[0]);
    for (int i = 1; i < n; i++) {
        snprintf(merge, sizeof merge, "%s %s", cur, parts[i]);
        snprintf(next, sizeof next, "%s%s", cur, parts[i]);
        if (sl_find(merges, merge) < 0) {
            if (sl_find(toks, next) >= 0) { // reachable another way already
                strcpy(cur, next);
                continue;
            }
            int rc = sl_add(merges, merge);
            if (!rc) rc = sl_add(toks, next);
            if (rc) return rc;
        }
        strcpy(cur, next);
    }
    return 0;
}

int mkmodel_synthetic_vocab(struct gguf_writer *w) {
    return mkmodel_synthetic_vocab_tmpl(w, mkmodel_chatml_template, 0);
}

static uint64_t str_hash(const char *s) {
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h | 1;
}

/* Pads toks with distinct random words up to n tokens (byte-token form). */
static int pad_vocab(strlist_t *toks, int n) {
    size_t cap = (size_t)n * 2 + 1;
    uint64_t *seen = calloc(cap, sizeof *seen);
    if (!seen) return LC_ENOMEM;
    for (int i = 0; i < toks->n; i++) {
        uint64_t h = str_hash(toks->v[i]);
        size_t at = h % cap;
        while (seen[at]) at = (at + 1) % cap;
        seen[at] = h;
    }
    uint64_t x = 0x5eed;
    int rc = 0;
    while (toks->n < n && !rc) {
        char word[96] = "", part[4];
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        uint64_t r = x >> 33;
        if (r % 10 < 6) strcat(word, "\xc4\xa0"); // "Ġ": a leading space
        int len = 1 + (int)((r >> 8) % 9);
        for (int i = 0; i < len; i++) {
            x = x * 6364136223846793005ull + 1442695040888963407ull;
            int c = (x >> 40) % 40 == 0 ? '0' + (int)((x >> 45) % 10) : 'a' + (int)((x >> 45) % 26);
            byte_token(c, part);
            strcat(word, part);
        }
        uint64_t h = str_hash(word);
        size_t at = h % cap;
        int dup = 0;
        for (; seen[at]; at = (at + 1) % cap)
            if (seen[at] == h) dup = 1;
        if (dup) continue; // (a hash collision only skips a word)
        seen[at] = h;
        rc = sl_add(toks, word);
    }
    free(seen);
    return rc;
}

int mkmodel_synthetic_vocab_tmpl(struct gguf_writer *w, const char *chat_template, int n_vocab) {
    strlist_t toks = {0}, merges = {0};
    int rc = 0;
    int32_t *types = NULL;
    const char *specials[] = {"<|endoftext|>", "<|im_start|>", "<|im_end|>"};
    for (int i = 0; i < 3 && !rc; i++) rc = sl_add(&toks, specials[i]);
    for (int b = 0; b < 256 && !rc; b++) {
        char t[4];
        byte_token(b, t);
        rc = sl_add(&toks, t);
    }
    int n_words = (int)(sizeof words / sizeof words[0]);
    for (int pass = 0; pass < 2 && !rc; pass++)
        for (int i = 0; i < n_words && !rc; i++) {
            char parts[40][4];
            int n = 0;
            if (pass == 0)
                byte_token(' ', parts[n++]); // Ġ-prefixed form first: most frequent
            else if (i >= 20)
                break;
            for (const char *c = words[i]; *c && n < 40; c++) byte_token((unsigned char)*c, parts[n++]);
            if (n > 1) rc = add_chain(&toks, &merges, parts, n);
        }
    if (!rc && n_vocab > toks.n) rc = pad_vocab(&toks, n_vocab);
    if (!rc && !(types = malloc((size_t)toks.n * sizeof *types))) rc = LC_ENOMEM;
    if (rc) goto done;
    for (int i = 0; i < toks.n; i++) types[i] = i < 3 ? 3 : 1;
    if ((rc = gguf_writer_set_str(w, "tokenizer.ggml.model", "gpt2")) ||
        (rc = gguf_writer_set_str(w, "tokenizer.ggml.pre", "smollm")) ||
        (rc = gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", (const char *const *)toks.v, toks.n)) ||
        (rc = gguf_writer_set_arr_i32(w, "tokenizer.ggml.token_type", types, toks.n)) ||
        (rc = gguf_writer_set_arr_str(w, "tokenizer.ggml.merges", (const char *const *)merges.v, merges.n)) ||
        (rc = gguf_writer_set_u32(w, "tokenizer.ggml.bos_token_id", 1)) ||
        (rc = gguf_writer_set_u32(w, "tokenizer.ggml.eos_token_id", 2)) ||
        (rc = gguf_writer_set_u32(w, "tokenizer.ggml.unknown_token_id", 0)) ||
        (rc = gguf_writer_set_u32(w, "tokenizer.ggml.padding_token_id", 2)) ||
        (rc = gguf_writer_set_bool(w, "tokenizer.ggml.add_bos_token", 0)) ||
        (rc = gguf_writer_set_bool(w, "tokenizer.ggml.add_space_prefix", 0)) ||
        (chat_template && (rc = gguf_writer_set_str(w, "tokenizer.chat_template", chat_template))))
        goto done;
    rc = toks.n;
done:
    free(types);
    sl_free(&toks);
    sl_free(&merges);
    return rc;
}

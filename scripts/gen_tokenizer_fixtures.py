#!/usr/bin/env python3
"""Generates the tokenizer fixtures: Hugging Face's tokenization, decoding
and chat renderings of a real model, which check_tokenizer (SmolLM2) and
check_gemma (Gemma 3 270M) must reproduce id for id.

Usage: scripts/gen_tokenizer_fixtures.py [MODEL.gguf] [OUT.json]
  default: models/SmolLM2-135M-Instruct.Q4_1.gguf -> tests/fixtures/tokenizer_smollm2.json
  scripts/gen_tokenizer_fixtures.py models/gemma-3-270m-q4_k_m.gguf tests/fixtures/tokenizer_gemma3.json
Needs: pip install transformers gguf tokenizers sentencepiece protobuf (torch
is not needed).

The reference is transformers' tokenizer loaded from the same GGUF. For
SmolLM2, with one correction: transformers' GGUF converter builds a plain
ByteLevel pre-tokenizer, but SmolLM2's own tokenizer.json (and llama.cpp's
"smollm" pre-tokenizer) is Sequence[Digits(individual_digits=True),
ByteLevel]. The two differ on whitespace before a digit ("a  1"), so we
restore the Digits step; the script prints how many corpus strings that
changes. For Gemma (a base model whose GGUF carries no chat template) the
chat renderings use GEMMA3_TEMPLATE below, the template Google ships with the
instruction-tuned Gemma 3 models, set on the tokenizer by hand.
"""
import json
import os
import random
import sys

from tokenizers import pre_tokenizers
from transformers import AutoTokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
MODEL = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
OUT = sys.argv[2] if len(sys.argv) > 2 else os.path.join(ROOT, "tests", "fixtures", "tokenizer_smollm2.json")


def corpus():
    c = [
        "", " ", "  ", "\t", "\n", "\r\n", "Hello", "Hello world", " Hello world", "Hello world ",
        "hello  world", "Hello   world   ", "HELLO WORLD", "hElLo WoRlD", "Hello, world!",
        "The quick brown fox jumps over the lazy dog.",
        "it's", "It's", "don't", "we're", "they've", "I'm", "you'll", "he'd", "IT'S", "DON'T",
        "'s 't 're 've 'm 'll 'd", "rock 'n' roll", "O'Neil's", "'quoted'", "\"double quoted\"",
        "0", "1", "12", "123", "1234", "12345678901234567890", "3.14159", "1,000,000", "-42",
        "+1 (555) 123-4567", "2024-11-29T03:00:00Z", "v1.2.3", "a1b2c3", "abc123def456",
        "x = 10", "x  = 10", "a  1", "a\t1", "a\n1", "  1", " 1", "1 ", "1  2  3", "100%",
        "$1,234.56", "0x1F", "1e-5", "½ ¼ ¾", "²³¹", "Ⅻ", "٣٤٥", "१२३", "①②③",
        "tab\tseparated\tvalues", "line1\nline2\nline3", "windows\r\nline\r\nendings",
        "trailing newline\n", "\n\nleading newlines", "many\n\n\n\nnewlines", "  \n  \n",
        "spaces    then\ttab", "\t\tindented", "mixed \t \n whitespace", "end with spaces   ",
        "\u00a0nbsp\u00a0here", "em\u2003space", "ideographic\u3000space", "nel\u0085here",
        "line\u2028sep", "zero\u200bwidth", "soft\u00adhyphen", "\x02stx\x01ctrl\x7f",
        "Café", "naïve", "résumé", "façade", "Ångström", "Straße", "ÆØÅ æøå",
        "e\u0301", "cafe\u0301", "n\u0303", "a\u0300\u0301\u0302\u0303", "Z\u0351\u0364\u0363a\u0357lgo",
        "你好，世界！", "这是一个测试。", "日本語のテキスト", "カタカナ ひらがな", "한국어 텍스트입니다",
        "Россия и Україна", "Привет, мир!", "Γειά σου Κόσμε", "שלום עולם", "مرحبا بالعالم",
        "עברית and English mixed", "العربية 123 English", "हिन्दी भाषा", "ภาษาไทย", "Tiếng Việt có dấu",
        "😀", "👍🏽", "🇺🇸🇫🇷", "❤️", "👨‍👩‍👧‍👦", "Emoji: 😀👍🏽🇺🇸 and ❤️!", "🤖🤖🤖", "∀x∈ℝ: x²≥0",
        "→ ← ↑ ↓", "©®™", "¿Qué? ¡Sí!", "«guillemets»", "„Anführungszeichen“", "…", "— – -",
        "def foo(x):\n    return x ** 2  # comment\n",
        "int main(void) {\n\treturn 0;\n}\n",
        "for (int i = 0; i < n; i++) { sum += a[i]; }",
        "#include <stdio.h>\n#define MAX(a,b) ((a)>(b)?(a):(b))",
        "fn main() { println!(\"Hello, {}!\", name); }",
        "const x = await fetch(`/api/${id}`);",
        "SELECT * FROM users WHERE id = 42 AND name LIKE '%bob%';",
        "<html><body><p class=\"x\">Hi</p></body></html>",
        "{\"key\": \"value\", \"n\": [1, 2, 3], \"ok\": true}",
        "#!/bin/bash\nset -euo pipefail\necho \"$HOME\" | grep -v '^#'",
        "    four spaces\n        eight spaces", "if x:\n\tpass\nelse:\n\t\tpass",
        "a_b_c snake_case camelCase PascalCase kebab-case SCREAMING_CASE",
        "https://example.com/path?query=1&x=y#frag", "user@example.com", "C:\\Windows\\System32",
        "~/.config/lacuna/lacuna.conf", "sha256:b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea3",
        "!!!", "???", "...", "---", "***", "!?!?", "((()))", "[[]]", "{{}}", "<<>>", "@#$%^&*",
        "a.b.c", "a,b,c", "a;b;c", "a:b:c", "a/b/c", "a|b|c", "a\\b\\c", "1+1=2", "x^2", "~tilde",
        "supercalifragilisticexpialidocious", "Pneumonoultramicroscopicsilicovolcanoconiosis",
        "a" * 200, "ab" * 150, "xyz " * 60, "🙂" * 40, "中" * 100, "1" * 100, " " * 50, "\n" * 30,
        "Llanfairpwllgwyngyllgogerychwyrndrobwllllantysiliogogogoch",
        "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|im_start|>user\nHi<|im_end|>\n",
        "text<|im_end|>more", "<|im_start|><|im_end|>", "<|im_start", "im_start|>", "<|im_start|",
        "< |im_start|>", "<|IM_START|>", "before <|endoftext|> after", "<repo_name>lacuna<file_sep>x.c",
        "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
        "<|im_start|>assistant\n",
        "<filename>main.py\n<jupyter_code>print(1)<jupyter_output>1<empty_output>",
        "<<|im_end|>>", "<|im_end|><|im_end|><|im_end|>", "x<|endoftext|>", "<|endoftext|>x",
        "Mr. Smith's car costs $30,000.", "The year 1999 was before 2000.", "It costs 5€ or £4.",
        "COVID-19 vaccines", "GPT-4o and Llama-3.1-8B", "e.g. i.e. etc.", "U.S.A.", "Dr.Who",
        "Ünïcödé Çhäräçtérs", "ℌ𝔢𝔩𝔩𝔬", "𝓗𝓮𝓵𝓵𝓸", "ｆｕｌｌｗｉｄｔｈ", "ﬁ ligature", "İstanbul ıi",
        "𐍈 gothic", "𝄞 music", "\U0001F600\U0001F601\U0001F602", "\U000E0041 tag", "\uFEFFbom",
        "\uFFFD replacement", "A\u030A", "ǅ titlecase", "ß ẞ", "ΣΑΣ σας",
    ]
    # Deterministic random mixtures of the pieces that exercise the
    # pre-tokenizer's boundaries (case, digits, whitespace, scripts).
    rng = random.Random(20261129)
    atoms = ["Hello", "world", " ", "  ", "\t", "\n", "\r\n", "123", "4", "'s", "'re", "don't", ",",
             ".", "!", "?", "中文", "日本", "😀", "é", "e\u0301", "ñ", "Привет", "مرحبا", "x=1;",
             "(", ")", "{", "}", "#", "$", "__init__", "CamelCase", "ALLCAPS", "<|im_end|>", "-",
             "3.5", "\u00a0", "  42", "a1", "Zürich", "naïve", "😀👍", "0x", "ff", "//", "/*", "*/"]
    while len(c) < 320:
        k = rng.randint(2, 12)
        c.append("".join(rng.choice(atoms) for _ in range(k)))
    return c


CONVERSATIONS = [
    ([{"role": "user", "content": "Hello!"}], True),
    ([{"role": "user", "content": "Hello!"}], False),
    ([{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi"}], True),
    ([{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"},
      {"role": "user", "content": "And 3+3?"}], True),
    ([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "  spaced  \n"},
      {"role": "assistant", "content": "ok"}], False),
    ([{"role": "user", "content": "多语言 😀 and <b>tags</b>"}], True),
    ([{"role": "assistant", "content": "I start."}, {"role": "user", "content": "Fine."}], True),
    ([{"role": "user", "content": ""}], True),
]


def main():
    tok = AutoTokenizer.from_pretrained(os.path.dirname(MODEL), gguf_file=os.path.basename(MODEL))
    if "gemma" in os.path.basename(MODEL).lower():
        return gemma(tok)
    backend = tok.backend_tokenizer
    plain_pre = backend.pre_tokenizer
    digits_pre = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
    ])

    strings = corpus()
    backend.pre_tokenizer = plain_pre
    plain = [tok(s, add_special_tokens=False).input_ids for s in strings]
    backend.pre_tokenizer = digits_pre

    cases = []
    changed = 0
    for s, p in zip(strings, plain):
        ids = tok(s, add_special_tokens=False).input_ids
        changed += ids != p
        case = {"text": s, "ids": ids}
        nos = tok(s, add_special_tokens=False, split_special_tokens=True).input_ids
        if nos != ids:
            case["ids_nospecial"] = nos
        cases.append(case)

    decodes = []
    for s in strings[:60:3] + ["<|im_start|>user\nHi<|im_end|>\n", "Emoji: 😀👍🏽🇺🇸 and ❤️!"]:
        ids = tok(s, add_special_tokens=False).input_ids
        for skip in (False, True):
            decodes.append({"ids": ids, "skip_special": skip,
                            "text": tok.decode(ids, skip_special_tokens=skip,
                                               clean_up_tokenization_spaces=False)})
    # Sequences that end or start inside a character: lossy decoding.
    for s in ["😀", "中", "é", "👍🏽"]:
        ids = tok(s, add_special_tokens=False).input_ids
        for cut in range(1, len(ids)):
            for part in (ids[:cut], ids[cut:]):
                decodes.append({"ids": part, "skip_special": False,
                                "text": tok.decode(part, clean_up_tokenization_spaces=False)})

    chats = []
    for msgs, gen in CONVERSATIONS:
        text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)
        chats.append({"messages": msgs, "add_generation_prompt": gen, "text": text,
                      "ids": tok(text, add_special_tokens=False).input_ids})

    out = {
        "model": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "generator": "scripts/gen_tokenizer_fixtures.py",
        "pre_tokenizer": "Sequence[Digits(individual_digits), ByteLevel]",
        "bos": tok.bos_token_id, "eos": tok.eos_token_id, "n_vocab": len(tok),
        "chat_template": tok.chat_template,
        "encode": cases, "decode": decodes, "chat": chats,
    }
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, indent=0)
        f.write("\n")
    print(f"{len(cases)} strings ({changed} differ without the Digits step), "
          f"{len(decodes)} decodes, {len(chats)} chats -> {OUT}")


# Gemma 3's chat template, as in google/gemma-3-270m-it's tokenizer_config.json.
GEMMA3_TEMPLATE = (
    "{{ bos_token }}\n"
    "{%- if messages[0]['role'] == 'system' -%}\n"
    "    {%- if messages[0]['content'] is string -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}\n"
    "    {%- else -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\\n\\n' -%}\n"
    "    {%- endif -%}\n"
    "    {%- set loop_messages = messages[1:] -%}\n"
    "{%- else -%}\n"
    "    {%- set first_user_prefix = \"\" -%}\n"
    "    {%- set loop_messages = messages -%}\n"
    "{%- endif -%}\n"
    "{%- for message in loop_messages -%}\n"
    "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}\n"
    "        {{ raise_exception(\"Conversation roles must alternate user/assistant/user/assistant/...\") }}\n"
    "    {%- endif -%}\n"
    "    {%- if (message['role'] == 'assistant') -%}\n"
    "        {%- set role = \"model\" -%}\n"
    "    {%- else -%}\n"
    "        {%- set role = message['role'] -%}\n"
    "    {%- endif -%}\n"
    "    {{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else \"\") }}\n"
    "    {%- if message['content'] is string -%}\n"
    "        {{ message['content'] | trim }}\n"
    "    {%- elif message['content'] is iterable -%}\n"
    "        {%- for item in message['content'] -%}\n"
    "            {%- if item['type'] == 'image' -%}\n"
    "                {{ '<start_of_image>' }}\n"
    "            {%- elif item['type'] == 'text' -%}\n"
    "                {{ item['text'] | trim }}\n"
    "            {%- endif -%}\n"
    "        {%- endfor -%}\n"
    "    {%- else -%}\n"
    "        {{ raise_exception(\"Invalid content type\") }}\n"
    "    {%- endif -%}\n"
    "    {{ '<end_of_turn>\\n' }}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}\n"
    "    {{'<start_of_turn>model\\n'}}\n"
    "{%- endif -%}\n"
)

GEMMA_EXTRA = [
    "<bos>", "<eos>", "<pad>", "<start_of_turn>", "<end_of_turn>", "<start_of_turn>user\nHi<end_of_turn>\n",
    "<start_of_turn>model\n", "<unused0>", "<unused6241>", "<mask>", "[multimodal]", "<start_of_image>",
    "x<end_of_turn>y", "<start_of_turn", "start_of_turn>", "<START_OF_TURN>", "< start_of_turn>",
    "<b>bold</b> <i>it</i>", "<table><tr><td>1</td></tr></table>", "</div></span></li>", "<h1>Title</h1>",
    "a  b", "a   b", "a    b", " " * 31, " " * 32, " " * 40, " " * 70, "x" + " " * 33 + "y",
    "\n" * 31, "\n" * 32, "\n" * 45, "a\n\nb", " \n \n", "\n ", " \n", "\t\t\t", "\t \t",
    "  leading two", "trailing two  ", " single lead", "single trail ", "mid  dle   spaces    here",
    "\u2581 already a metaspace", "\u2581\u2581", "a\u2581b",
]

GEMMA_CONVERSATIONS = [
    ([{"role": "user", "content": "Hello!"}], True),
    ([{"role": "user", "content": "Hello!"}], False),
    ([{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi"}], True),
    ([{"role": "system", "content": "  Keep my spaces.  "}, {"role": "user", "content": "  trimmed  \n"}], True),
    ([{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"},
      {"role": "user", "content": "And 3+3?"}], True),
    ([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "  spaced  \n"},
      {"role": "assistant", "content": "ok"}], False),
    ([{"role": "user", "content": "多语言 😀 and <b>tags</b>"}], True),
    ([{"role": "user", "content": "\u00a0\u3000unicode spaces\u2003\u0085"}], True),
    ([{"role": "user", "content": ""}], True),
    ([{"role": "system", "content": "Only a system message."}], True),
    # Not alternating: the template raises; our renderer must refuse too.
    ([{"role": "assistant", "content": "I start."}, {"role": "user", "content": "Fine."}], True),
    ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], True),
]


def gemma(tok):
    strings = corpus() + GEMMA_EXTRA
    cases = []
    for s in strings:
        ids = tok(s, add_special_tokens=False).input_ids
        case = {"text": s, "ids": ids}
        nos = tok(s, add_special_tokens=False, split_special_tokens=True).input_ids
        if nos != ids:
            case["ids_nospecial"] = nos
        back = tok.decode(ids, clean_up_tokenization_spaces=False)
        if back != s:  # a literal U+2581 comes back as a space
            case["decoded"] = back
        cases.append(case)
    decodes = []
    for s in strings[:60:3] + ["<start_of_turn>user\nHi<end_of_turn>\n", "Emoji: 😀👍🏽🇺🇸 and ❤️!", "a  b   c"]:
        ids = tok(s, add_special_tokens=False).input_ids
        for skip in (False, True):
            decodes.append({"ids": ids, "skip_special": skip,
                            "text": tok.decode(ids, skip_special_tokens=skip, clean_up_tokenization_spaces=False)})
    tok.chat_template = GEMMA3_TEMPLATE
    chats = []
    for msgs, gen in GEMMA_CONVERSATIONS:
        try:
            text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)
        except Exception as e:  # jinja's raise_exception
            chats.append({"messages": msgs, "add_generation_prompt": gen, "error": str(e)})
            continue
        chats.append({"messages": msgs, "add_generation_prompt": gen, "text": text,
                      "ids": tok(text, add_special_tokens=False).input_ids})
    out = {
        "model": os.path.basename(MODEL),
        "generator": "scripts/gen_tokenizer_fixtures.py",
        "bos": tok.bos_token_id, "eos": tok.eos_token_id, "n_vocab": len(tok),
        "add_bos": tok("x").input_ids[0] == tok.bos_token_id,
        "chat_template": GEMMA3_TEMPLATE,
        "encode": cases, "decode": decodes, "chat": chats,
    }
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, indent=0)
        f.write("\n")
    print(f"{len(cases)} strings, {len(decodes)} decodes, {len(chats)} chats -> {OUT}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Generates tests/fixtures/chat_tools_qwen25.json: conversations with tools
rendered by Qwen2.5-Instruct's chat template (tests/fixtures/
qwen2.5_chat_template.jinja) exactly as transformers' apply_chat_template
renders them: jinja2's ImmutableSandboxedEnvironment with trim_blocks and
lstrip_blocks, the loopcontrols extension, and a tojson filter that is
json.dumps(x, ensure_ascii=False). check_chat_tools must reproduce every byte.

Inputs are kept as the raw JSON a client sends ("tools" and each call's
"arguments" string), since number formatting (1 vs 1.0, 1e-05) depends on
the text. As vLLM does, a call's arguments string is parsed (json.loads)
before rendering, and "developer" turns are rendered as "system".

Usage: scripts/gen_chat_tools_fixtures.py [OUT.json]
Needs: jinja2 (Debian's python3-jinja2 or pip).
"""
import json
import os
import sys

import jinja2
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TEMPLATE = os.path.join(ROOT, "tests", "fixtures", "qwen2.5_chat_template.jinja")
OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "tests", "fixtures", "chat_tools_qwen25.json")


def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def render(template, messages, tools, add_generation_prompt):
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    msgs = []
    for m in messages:
        m = dict(m)
        if m.get("role") == "developer":
            m["role"] = "system"
        if m.get("tool_calls"):
            calls = []
            for c in m["tool_calls"]:
                c = json.loads(json.dumps(c))
                c["function"]["arguments"] = json.loads(c["function"]["arguments"])
                calls.append(c)
            m["tool_calls"] = calls
        msgs.append(m)
    return env.from_string(template).render(messages=msgs, tools=tools, add_generation_prompt=add_generation_prompt,
                                            bos_token="", eos_token="<|im_end|>")


WEATHER = ('{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city, \\"now\\"",'
           '"parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "Zürich, 東京"},'
           '"unit": {"enum": ["c", "f"]}, "days": {"type": "integer", "default": 1, "maximum": 1.0e1},'
           '"eps": {"type": "number", "default": 0.00001}, "big": {"default": 1e16}, "neg": {"default": -0.0},'
           '"tab": {"default": "a\\tb\\u0001\\/"}}, "required": ["city"]}}}')
SEARCH = ('{"type":"function","function":{"name":"search","parameters":{"type":"object","properties":'
          '{"q":{"type":"string"},"n":{"type":"integer","minimum":1,"maximum":10.5}},"required":["q","n"]}}}')

CASES = [
    {"messages": [{"role": "user", "content": "Hi"}], "tools": None},
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}], "tools": None},
    {"messages": [{"role": "user", "content": "Weather in Paris?"}], "tools": "[" + WEATHER + "]"},
    {"messages": [{"role": "system", "content": "You call tools."}, {"role": "user", "content": "Find cats"}],
     "tools": "[" + WEATHER + ", " + SEARCH + "]"},
    {"messages": [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\", \"days\": 2.0}"}},
            {"id": "call_2", "type": "function",
             "function": {"name": "get_weather", "arguments": "{\"city\":\"Rome\",\"x\":[1,2.5,{\"y\":null}]}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "call_2", "content": "rain"},
        {"role": "user", "content": "Thanks"}],
     "tools": "[" + WEATHER + "]"},
    {"messages": [
        {"role": "developer", "content": "Dev rules."},
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "Let me look.", "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "search", "arguments": "{\"q\": \"é\\n\", \"n\": 3}"}}]},
        {"role": "tool", "tool_call_id": "c", "content": "[1, 2]"},
        {"role": "system", "content": "Late system turn."},
        {"role": "assistant", "content": "Done."}],
     "tools": "[" + SEARCH + "]"},
    {"messages": [{"role": "tool", "tool_call_id": "x", "content": "orphan"}, {"role": "user", "content": "u"}],
     "tools": "[" + SEARCH + "]"},
]


def main():
    template = open(TEMPLATE, encoding="utf-8").read()
    out = []
    for case in CASES:
        tools = json.loads(case["tools"]) if case["tools"] else None
        for gen in (True, False):
            out.append({"messages": case["messages"], "tools_raw": case["tools"], "add_generation_prompt": gen,
                        "expected": render(template, case["messages"], tools, gen)})
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print("wrote %d cases to %s" % (len(out), OUT))


if __name__ == "__main__":
    main()

"""Structured outputs through lacunad with the official openai client:
response_format json_object and json_schema (a suite of schemas, streaming
and not, n > 1, batched with unconstrained requests), forced tool calls on
a model whose chat template supports tools, and the 400s for what we do not
implement. The models are tiny random-weight ones (lacuna mkmodel): their
text is nonsense, but under a grammar it must still parse and validate.
Every result is checked with the jsonschema package."""
import concurrent.futures
import json
import subprocess

import jsonschema
import openai
import pytest

from conftest import LACUNA, Daemon, make_model

MAX_TOKENS = 1500


def schemas():
    person = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
              "required": ["name", "age"], "additionalProperties": False}
    return [
        {"type": "string"},
        {"type": "integer"},
        {"type": "number"},
        {"type": "boolean"},
        {"type": "null"},
        {"enum": ["red", "green", "blue"]},
        {"const": "fixed"},
        {"type": ["string", "null"]},
        {"enum": [1, "two", None, True, {"k": [1, 2]}]},
        person,
        {"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "number"}}, "required": ["b"]},
        {"type": "object", "properties": {"x": {"type": "boolean"}}},
        {"type": "object"},
        {"type": "object", "additionalProperties": {"type": "integer"}},
        {"type": "object", "additionalProperties": False},
        {"type": "array", "items": {"type": "integer"}, "maxItems": 8},
        {"type": "array", "items": {"type": "string"}, "minItems": 2, "maxItems": 3},
        {"type": "array", "items": person, "maxItems": 3},
        {"type": "array", "items": {"enum": ["a", "b"]}, "minItems": 1, "maxItems": 5},
        {"type": "object", "properties": {"p": person, "tags": {"type": "array", "items": {"type": "string"},
                                                                 "maxItems": 4}},
         "required": ["p", "tags"], "additionalProperties": False},
        {"anyOf": [{"type": "integer"}, {"type": "string"}]},
        {"anyOf": [person, {"type": "null"}]},
        {"type": "object", "properties": {"v": {"anyOf": [{"type": "number"}, {"type": "boolean"},
                                                          {"enum": ["none"]}]}}, "required": ["v"]},
        {"$defs": {"p": person}, "type": "array", "items": {"$ref": "#/$defs/p"}, "maxItems": 2},
        {"definitions": {"c": {"enum": ["x", "y"]}}, "type": "object",
         "properties": {"c": {"$ref": "#/definitions/c"}}, "required": ["c"]},
        {"$defs": {"node": {"type": "object", "properties": {"v": {"type": "integer"},
                                                             "kids": {"type": "array", "maxItems": 1,
                                                                      "items": {"$ref": "#/$defs/node"}}},
                            "required": ["v", "kids"], "additionalProperties": False}},
         "$ref": "#/$defs/node"},
        {"type": "object", "properties": {"next": {"anyOf": [{"$ref": "#"}, {"type": "null"}]},
                                          "n": {"type": "integer"}}, "required": ["n", "next"]},
        {"title": "Event", "description": "an event", "type": "object",
         "properties": {"when": {"type": "string", "description": "a date"},
                        "kind": {"enum": ["meeting", "call"], "default": "call"}},
         "required": ["when", "kind"], "additionalProperties": False},
        {"type": "object", "properties": {"matrix": {"type": "array", "maxItems": 3,
                                                     "items": {"type": "array", "items": {"type": "number"},
                                                               "maxItems": 3}}},
         "required": ["matrix"]},
        {"type": "object", "properties": {"ünïcode": {"const": "日本語 \"quoted\" \\ back"},
                                          "n": {"type": "integer"}},
         "required": ["ünïcode", "n"]},
        {"type": "array", "maxItems": 0},
        True,
    ]


@pytest.fixture(scope="module")
def qwen_daemon(tmp_path_factory):
    """A tiny model with Qwen2.5's chat template (tools) and room for long outputs."""
    if not LACUNA.exists():
        pytest.skip("lacuna not built")
    model = make_model(tmp_path_factory.mktemp("model") / "qwen.gguf", "--ctx", "4096", "--template", "qwen2.5")
    d = Daemon(model, tmp_path_factory.mktemp("dq"),
               conf={"server": {"max_n": "8"}, "engine": {"kv_blocks": "4096", "max_running": "64"}})
    yield d
    d.stop()


@pytest.fixture(scope="module")
def client(qwen_daemon):
    return openai.OpenAI(base_url=qwen_daemon.url + "/v1", api_key=qwen_daemon.key, max_retries=0)


def fmt(schema, strict=True):
    return {"type": "json_schema", "json_schema": {"name": "out", "strict": strict, "schema": schema}}


def validate(text, schema):
    value = json.loads(text)
    jsonschema.Draft202012Validator(schema).validate(value)
    return value


def chat(client, schema, **kw):
    kw.setdefault("max_tokens", MAX_TOKENS)
    kw.setdefault("seed", 7)
    return client.chat.completions.create(model="qwen", messages=[{"role": "user", "content": "Answer in JSON."}],
                                          response_format=fmt(schema) if schema is not None else None, **kw)


def closing_bias(daemon):
    """Random weights have no reason to stop recursing (a tree, a linked
    list): a logit bias on ']' and 'null' makes them close, as a trained
    model would. The grammar still decides what is allowed."""
    bias = {}
    for text in ("]", "null", "n"):
        r = daemon.post("/tokenize", {"prompt": text, "add_special_tokens": False})
        bias[str(r.json()["tokens"][0])] = 60
    return bias


@pytest.mark.parametrize("i", range(len(schemas())))
def test_schema_suite(client, qwen_daemon, i):
    schema = schemas()[i]
    recursive = "$ref" in json.dumps(schema) and "#/definitions/c" not in json.dumps(schema)
    r = chat(client, schema, seed=100 + i, logit_bias=closing_bias(qwen_daemon) if recursive else None)
    c = r.choices[0]
    assert c.finish_reason == "stop", (c.finish_reason, c.message.content[-200:])
    validate(c.message.content, schema)


def test_suite_streaming_equals_non_streaming(client):
    for i, schema in enumerate(schemas()[::3]):
        whole = chat(client, schema, seed=200 + i).choices[0].message.content
        parts, finish = [], None
        for ch in chat(client, schema, seed=200 + i, stream=True):
            if ch.choices and ch.choices[0].delta.content:
                parts.append(ch.choices[0].delta.content)
            if ch.choices and ch.choices[0].finish_reason:
                finish = ch.choices[0].finish_reason
        assert finish == "stop"
        assert "".join(parts) == whole
        validate(whole, schema)


def test_json_object_mode(client):
    for seed in range(4):
        r = client.chat.completions.create(model="qwen", messages=[{"role": "user", "content": "JSON please"}],
                                           response_format={"type": "json_object"}, max_tokens=MAX_TOKENS, seed=seed)
        assert r.choices[0].finish_reason == "stop"
        assert isinstance(json.loads(r.choices[0].message.content), dict)
    # completions take response_format too
    r = client.completions.create(model="qwen", prompt="{", max_tokens=MAX_TOKENS, seed=3,
                                  extra_body={"response_format": {"type": "json_object"}})
    assert isinstance(json.loads(r.choices[0].text), dict)


def test_n_choices(client):
    schema = schemas()[9]
    r = chat(client, schema, n=3, seed=11)
    assert len(r.choices) == 3
    for c in r.choices:
        assert c.finish_reason == "stop"
        validate(c.message.content, schema)


def test_batched_with_unconstrained_equals_alone(client):
    """Constrained and plain requests together: each output is the one it
    has alone (batch invariance), and the constrained ones validate."""
    suite = schemas()
    jobs = [(suite[i] if i % 3 else None, 300 + i) for i in range(12)]

    def run(job):
        schema, seed = job
        kw = {"max_tokens": MAX_TOKENS if schema is not None else 40, "seed": seed}
        if schema is None:
            kw["extra_body"] = {"ignore_eos": True}
        return chat(client, schema, **kw).choices[0].message.content

    alone = [run(j) for j in jobs]
    with concurrent.futures.ThreadPoolExecutor(len(jobs)) as ex:
        together = list(ex.map(run, jobs))
    assert together == alone
    for (schema, _), text in zip(jobs, together):
        if schema is not None:
            validate(text, schema)


WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                                                    "unit": {"enum": ["c", "f"]},
                                                    "days": {"type": "integer"}},
                   "required": ["city", "unit", "days"], "additionalProperties": False}}}
SEARCH = {"type": "function", "function": {
    "name": "search", "parameters": {"type": "object", "properties": {"q": {"type": "string"}},
                                     "required": ["q"]}}}


def test_forced_tool_call(client):
    tools = [WEATHER, SEARCH]
    for choice, name in (({"type": "function", "function": {"name": "get_weather"}}, "get_weather"),
                         ("required", None)):
        r = client.chat.completions.create(model="qwen", messages=[{"role": "user", "content": "Weather in Oslo?"}],
                                           tools=tools, tool_choice=choice, max_tokens=MAX_TOKENS, seed=5)
        c = r.choices[0]
        assert c.finish_reason == "tool_calls", c
        assert c.message.content is None
        assert len(c.message.tool_calls) == 1
        call = c.message.tool_calls[0]
        assert call.type == "function" and call.id
        if name:
            assert call.function.name == name
        spec = {t["function"]["name"]: t["function"]["parameters"] for t in tools}[call.function.name]
        validate(call.function.arguments, spec)


def test_forced_tool_call_streaming(client):
    stream = client.chat.completions.create(model="qwen", messages=[{"role": "user", "content": "Weather?"}],
                                            tools=[WEATHER], tool_choice="required", max_tokens=MAX_TOKENS,
                                            seed=9, stream=True)
    name, args, ids, finish = None, "", set(), None
    for ch in stream:
        if not ch.choices:
            continue
        d = ch.choices[0].delta
        for tc in d.tool_calls or []:
            assert tc.index == 0
            if tc.id:
                ids.add(tc.id)
            if tc.function and tc.function.name:
                name = tc.function.name
            if tc.function and tc.function.arguments:
                args += tc.function.arguments
        finish = ch.choices[0].finish_reason or finish
    assert finish == "tool_calls"
    assert name == "get_weather" and len(ids) == 1
    validate(args, WEATHER["function"]["parameters"])


def test_tool_history_renders(client):
    """A conversation with past calls and tool results is accepted and
    answered (the template renders it; the fixture tests check the bytes)."""
    msgs = [{"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "c1", "type": "function",
                 "function": {"name": "get_weather", "arguments": "{\"city\": \"Oslo\", \"unit\": \"c\", \"days\": 1}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "-3 and snow"}]
    r = client.chat.completions.create(model="qwen", messages=msgs, tools=[WEATHER], max_tokens=5, seed=1)
    assert r.choices[0].finish_reason in ("stop", "length", "tool_calls")
    with pytest.raises(openai.BadRequestError) as e:
        bad = [dict(msgs[0]), dict(msgs[1])]
        bad[1]["tool_calls"] = [{"id": "x", "type": "function", "function": {"name": "f", "arguments": "{oops"}}]
        client.chat.completions.create(model="qwen", messages=bad, tools=[WEATHER], max_tokens=5)
    assert "arguments" in e.value.body["message"]


@pytest.mark.parametrize("body,param", [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "string",
                                                                                           "pattern": "a+"}}}},
     "response_format.json_schema.schema"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"format": "date"}}}},
     "response_format.json_schema.schema"),
    ({"response_format": {"type": "xml"}}, "response_format.type"),
    ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "bad name!"}}},
     "response_format.json_schema.name"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "r", "schema": {"$ref": "#"}}}},
     "response_format.json_schema.schema"),
    ({"audio": {"voice": "alloy", "format": "wav"}}, "audio"),
    ({"functions": [{"name": "f"}]}, "functions"),
    ({"guided_json": {"type": "string"}}, "guided_json"),
    ({"store": True}, "store"),
    ({"modalities": ["text", "audio"]}, "modalities"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
    ({"tools": [{"type": "custom", "custom": {"name": "x"}}]}, "tools[0]"),
    ({"tools": [WEATHER], "response_format": {"type": "json_object"}}, "response_format"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {
        "d": {"type": "string", "format": "date"}}}}}], "tool_choice": "required"}, "tools[0].function.parameters"),
])
def test_refused(qwen_daemon, body, param):
    b = {"model": "qwen", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    b.update(body)
    r = qwen_daemon.post("/v1/chat/completions", b)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param, err
    assert err["message"]


def test_harmless_fields_accepted(qwen_daemon):
    b = {"model": "qwen", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "user": "u1",
         "metadata": {"k": "v"}, "store": False, "service_tier": "auto", "prompt_cache_key": "p",
         "safety_identifier": "s", "modalities": ["text"], "parallel_tool_calls": True,
         "response_format": {"type": "text"}, "stream_options": None}
    r = qwen_daemon.post("/v1/chat/completions", b)
    assert r.status_code == 200, r.text


def test_tools_refused_without_template_support(daemon):
    """mkmodel's default template is SmolLM2's ChatML: no tool syntax."""
    b = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "tools": [WEATHER]}
    r = daemon.post("/v1/chat/completions", b)
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["param"] == "tools" and "chat template" in err["message"]
    b.pop("tools")
    b["messages"].append({"role": "tool", "content": "x"})
    assert daemon.post("/v1/chat/completions", b).status_code == 400

"""The OpenAI surface against a tiny model: completions and chat, streaming
and not, usage, logprobs, stop strings, n > 1, seeds, echo, token prompts,
tokenize/detokenize, and the official client's view of errors."""
import json
import subprocess

import openai
import pytest
import requests

from conftest import KEY, Daemon

MODEL = "tiny"


def client(d, **kw):
    return openai.OpenAI(base_url=d.url + "/v1", api_key=kw.pop("api_key", d.key), max_retries=0, **kw)


def sse_events(resp):
    """Parses an SSE body: returns (json events, saw_done). Checks framing."""
    events, done = [], False
    for block in resp.text.split("\n\n"):
        if not block:
            continue
        assert "\n" not in block, f"multi-line event: {block!r}"
        if block.startswith(":"):
            continue
        assert block.startswith("data: ")
        data = block[6:]
        if data == "[DONE]":
            done = True
            continue
        assert not done, "event after [DONE]"
        events.append(json.loads(data))
    return events, done


def test_models_and_health(daemon):
    r = requests.get(daemon.url + "/v1/models", headers=daemon.headers())
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/json")
    assert [m["id"] for m in r.json()["data"]] == [MODEL]
    assert client(daemon).models.list().data[0].id == MODEL
    assert requests.get(daemon.url + "/health").status_code == 200


def test_completion_basic(daemon):
    c = client(daemon).completions.create(model=MODEL, prompt="Hello world", max_tokens=8, temperature=0,
                                          extra_body={"ignore_eos": True})
    assert c.object == "text_completion"
    assert len(c.choices) == 1
    assert c.choices[0].finish_reason == "length"
    assert c.usage.completion_tokens == 8
    assert c.usage.total_tokens == c.usage.prompt_tokens + 8
    assert c.usage.prompt_tokens_details.cached_tokens >= 0
    assert c.id.startswith("cmpl-")


def test_chat_basic(daemon):
    c = client(daemon).chat.completions.create(
        model=MODEL, messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        max_completion_tokens=6, temperature=0, extra_body={"ignore_eos": True})
    assert c.object == "chat.completion"
    assert c.choices[0].message.role == "assistant"
    assert isinstance(c.choices[0].message.content, str)
    assert c.choices[0].finish_reason == "length"
    assert c.usage.completion_tokens == 6
    sa = c.model_extra["usage"]["sparse_attention"] if "usage" in (c.model_extra or {}) else \
        c.usage.model_extra["sparse_attention"]
    assert sa["prefill"] in ("dense", "flexprefill", "anchor", "streaming")


def test_curl_completion(daemon):
    out = subprocess.run(["curl", "-sS", "-i", daemon.url + "/v1/completions", "-H", "Authorization: Bearer " + KEY,
                          "-H", "Content-Type: application/json", "-d",
                          json.dumps({"model": MODEL, "prompt": "abc", "max_tokens": 3})],
                         capture_output=True, text=True, check=True).stdout
    head, body = out.replace("\r\n", "\n").split("\n\n", 1)
    assert head.startswith("HTTP/1.1 200")
    assert "x-request-id:" in head.lower()
    assert json.loads(body)["choices"][0]["index"] == 0


def test_streaming_chat_shape_and_usage(daemon):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "count"}], "max_tokens": 5, "stream": True,
            "temperature": 0, "ignore_eos": True, "stream_options": {"include_usage": True}}
    r = daemon.post("/v1/chat/completions", body, headers={"Accept": "application/json"})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    events, done = sse_events(r)
    assert done
    ids = {e["id"] for e in events}
    created = {e["created"] for e in events}
    assert len(ids) == 1 and len(created) == 1
    assert all(e["object"] == "chat.completion.chunk" for e in events)
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    last_choice = events[-2]["choices"][0]
    assert last_choice["delta"] == {} and last_choice["finish_reason"] == "length"
    assert all(c["finish_reason"] is None for e in events[:-2] for c in e["choices"])
    usage = events[-1]
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 5
    # Without include_usage no usage chunk.
    body.pop("stream_options")
    events, done = sse_events(daemon.post("/v1/chat/completions", body))
    assert done and all("usage" not in e or e["usage"] is None for e in events)


def test_stream_equals_nonstream(daemon):
    for ep, base in (("/v1/completions", {"prompt": "The quick brown"}),
                     ("/v1/chat/completions", {"messages": [{"role": "user", "content": "tell me"}]})):
        body = dict(base, model=MODEL, max_tokens=24, seed=1234, temperature=0.9, n=2)
        full = daemon.post(ep, body).json()
        events, done = sse_events(daemon.post(ep, dict(body, stream=True)))
        assert done
        texts, finish = {}, {}
        for e in events:
            for c in e["choices"]:
                piece = c.get("text") if "text" in c else c["delta"].get("content", "")
                texts[c["index"]] = texts.get(c["index"], "") + (piece or "")
                if c["finish_reason"]:
                    finish[c["index"]] = c["finish_reason"]
        for c in full["choices"]:
            got = c["text"] if "text" in c else c["message"]["content"]
            assert texts[c["index"]] == got
            assert finish[c["index"]] == c["finish_reason"]


def test_seed_reproducible(daemon):
    cl = client(daemon)
    a = cl.completions.create(model=MODEL, prompt="seed test", max_tokens=16, seed=7, temperature=1.0)
    b = cl.completions.create(model=MODEL, prompt="seed test", max_tokens=16, seed=7, temperature=1.0)
    assert a.choices[0].text == b.choices[0].text


def test_n_and_multiple_prompts(daemon):
    r = daemon.post("/v1/completions", {"model": MODEL, "prompt": ["one", "two"], "n": 2, "max_tokens": 3})
    assert r.status_code == 200
    assert sorted(c["index"] for c in r.json()["choices"]) == [0, 1, 2, 3]
    r = daemon.post("/v1/completions", {"model": MODEL, "prompt": [[5, 6, 7], [8, 9]], "max_tokens": 2})
    assert r.status_code == 200 and len(r.json()["choices"]) == 2
    r = daemon.post("/v1/completions", {"model": MODEL, "prompt": "best", "n": 1, "best_of": 3, "max_tokens": 4})
    assert r.status_code == 200 and len(r.json()["choices"]) == 1


def test_logprobs(daemon):
    c = client(daemon).completions.create(model=MODEL, prompt="log", max_tokens=4, logprobs=2, temperature=0,
                                          extra_body={"ignore_eos": True})
    lp = c.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 4
    assert all(x <= 0 for x in lp.token_logprobs)
    assert all(1 <= len(t) <= 2 for t in lp.top_logprobs)
    # Greedy: the chosen token is the most likely one.
    for tok, l, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert abs(max(top.values()) - l) < 1e-4
    ch = client(daemon).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}],
                                                max_tokens=3, logprobs=True, top_logprobs=2,
                                                extra_body={"ignore_eos": True})
    content = ch.choices[0].logprobs.content
    assert len(content) == 3
    assert all(len(t.top_logprobs) == 2 and isinstance(t.bytes, list) for t in content)


def test_echo(daemon):
    r = daemon.post("/v1/completions", {"model": MODEL, "prompt": "echo me", "max_tokens": 0, "echo": True})
    assert r.status_code == 200
    assert r.json()["choices"][0]["text"] == "echo me"
    r = daemon.post("/v1/completions", {"model": MODEL, "prompt": "echo me", "max_tokens": 2, "echo": True,
                                        "logprobs": 1, "ignore_eos": True})
    c = r.json()["choices"][0]
    assert c["text"].startswith("echo me")
    assert c["logprobs"]["token_logprobs"][0] is None


def test_stop_string(daemon):
    body = {"model": MODEL, "prompt": "stop here", "max_tokens": 40, "temperature": 0, "ignore_eos": True}
    text = daemon.post("/v1/completions", body).json()["choices"][0]["text"]
    if len(text) < 8:
        pytest.skip("greedy output too short to pick a stop string")
    stop = text[len(text) // 2: len(text) // 2 + 3]
    cut = text.find(stop)
    c = daemon.post("/v1/completions", dict(body, stop=[stop])).json()["choices"][0]
    assert c["text"] == text[:cut]
    assert c["finish_reason"] == "stop"
    events, _ = sse_events(daemon.post("/v1/completions", dict(body, stop=stop, stream=True)))
    assert "".join(ch["text"] for e in events for ch in e["choices"]) == text[:cut]


def test_tokenize_roundtrip(daemon):
    r = daemon.post("/tokenize", {"prompt": "hello tokens", "add_special_tokens": False})
    assert r.status_code == 200
    j = r.json()
    assert j["count"] == len(j["tokens"]) and j["max_model_len"] == 512
    r = daemon.post("/detokenize", {"tokens": j["tokens"]})
    assert r.json()["prompt"] == "hello tokens"


def test_sparse_attention_accepted(daemon):
    r = daemon.post("/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": 2,
                                        "sparse_attention": {"prefill": "dense", "decode": "quest",
                                                             "decode_budget": 64}})
    assert r.status_code == 200
    assert "sparse_attention" in r.json()["usage"]


def test_flex_select(daemon):
    """sparse_attention.flex_select through lacunad: both rules answer under
    FlexPrefill (the tiny model's 512 positions are 4 blocks, too few for
    them to differ: check_attn and check_sparse compare their densities),
    and a rule that does not exist is a 400 naming the field."""
    for rule in ("tokens", "blocks"):
        r = daemon.post("/v1/completions", {"model": MODEL, "prompt": "a b c d e f g h " * 56, "max_tokens": 1,
                                            "sparse_attention": {"prefill": "flexprefill", "tau": 0, "gamma": 0.9,
                                                                 "min_budget": 16, "flex_select": rule}})
        assert r.status_code == 200, r.text
        sa = r.json()["usage"]["sparse_attention"]
        assert sa["prefill"] == "flexprefill" and 0 < sa["prefill_density"] <= 1, sa
    r = daemon.post("/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": 1,
                                        "sparse_attention": {"flex_select": "pooled"}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "sparse_attention.flex_select", r.text


def test_anchor_probe_config(tiny_model, tmp_path):
    """attention.anchor_probe reaches the kernel through lacunad: the same
    AnchorAttention request (windows short enough for the tiny model's 512
    positions to have candidates) reports a lower prefill density without
    the probe than with a probe the random model's flat heads exceed."""
    dens = {}
    for probe in ("0", "0.001"):
        d = Daemon(tiny_model, tmp_path, conf={"attention": {
            "anchor_init": "64", "anchor_local": "128", "anchor_lookback": "64", "anchor_probe": probe}})
        try:
            r = d.post("/v1/completions", {"model": MODEL, "prompt": "a b c d e f g h " * 56, "max_tokens": 1,
                                           "sparse_attention": {"prefill": "anchor", "theta": 0.5}})
            assert r.status_code == 200, r.text
            sa = r.json()["usage"]["sparse_attention"]
            assert sa["prefill"] == "anchor"
            dens[probe] = sa["prefill_density"]
        finally:
            d.stop()
    assert dens["0"] < 0.95 and dens["0.001"] > dens["0"], dens


def test_client_errors(daemon):
    with pytest.raises(openai.AuthenticationError):
        client(daemon, api_key="wrong").completions.create(model=MODEL, prompt="x", max_tokens=1)
    with pytest.raises(openai.BadRequestError) as e:
        client(daemon).completions.create(model=MODEL, prompt="x", max_tokens=1, temperature=5)
    assert e.value.body["param"] == "temperature"
    with pytest.raises(openai.NotFoundError):
        client(daemon).completions.create(model="nope", prompt="x", max_tokens=1)
    with pytest.raises(openai.BadRequestError) as e:
        client(daemon).completions.create(model=MODEL, prompt=[5] * 600, max_tokens=1)
    assert e.value.body["code"] == "context_length_exceeded"
    assert "maximum context length is 512 tokens" in e.value.body["message"]


def test_request_id(daemon):
    r = requests.get(daemon.url + "/v1/models", headers=dict(daemon.headers(), **{"x-request-id": "abc-123"}))
    assert r.headers["x-request-id"] == "abc-123"
    r = requests.get(daemon.url + "/nope")
    assert r.status_code == 404 and r.headers.get("x-request-id")
    r = requests.get(daemon.url + "/v1/models", headers={"x-request-id": "bad id with spaces"})
    assert r.status_code == 401 and r.headers["x-request-id"] != "bad id with spaces"


def test_metrics_open_and_named(daemon):
    m = daemon.metrics()
    for name in ("lacuna:num_requests_running", "lacuna:num_requests_waiting", "lacuna:kv_cache_usage_perc",
                 "lacuna:kv_blocks_used", "lacuna:prompt_tokens_total", "lacuna:generation_tokens_total",
                 "lacuna:num_preemptions_total", "lacuna:prefix_cache_queries_total",
                 "lacuna:prefix_cache_hits_total", "lacuna:time_to_first_token_seconds_count",
                 "lacuna:inter_token_latency_seconds_count", "lacuna:e2e_request_latency_seconds_count",
                 "lacuna:request_queue_time_seconds_count", "lacuna:attention_density",
                 "lacuna:http_requests_total"):
        assert name in m, name
    assert m["lacuna:generation_tokens_total"] > 0

"""Table of malformed requests: each gets its exact status, param and
message, and the daemon keeps serving afterwards."""
import json

import pytest
import requests

M = "tiny"
BIG = "x" * 70000  # over the fixture's max_body_bytes (65536)

CASES = [
    # (method, path, raw body or dict, status, param, message)
    ("POST", "/v1/completions", '{"model": "tiny",', 400, None,
     "We could not parse the JSON body of your request."),
    ("POST", "/v1/completions", "[]", 400, None, "The request body must be a JSON object."),
    ("POST", "/v1/completions", {"prompt": "x"}, 400, "model", "Missing required parameter: 'model'."),
    ("POST", "/v1/completions", {"model": M}, 400, "prompt", "Missing required parameter: 'prompt'."),
    ("POST", "/v1/completions", {"model": M, "prompt": 5}, 400, "prompt",
     "Invalid type for 'prompt': expected a string, an array of strings, an array of token ids or an array of "
     "token-id arrays."),
    ("POST", "/v1/completions", {"model": M, "prompt": "x", "max_tokens": "10"}, 400, "max_tokens",
     "Invalid type for 'max_tokens': expected an integer."),
    ("POST", "/v1/completions", {"model": M, "prompt": "x", "temperature": 2.5}, 400, "temperature",
     "Invalid value for 'temperature': must be between 0 and 2."),
    ("POST", "/v1/completions", {"model": M, "prompt": "x", "n": 9}, 400, "n",
     "Invalid value for 'n': must be between 1 and 8."),
    ("POST", "/v1/completions", {"model": M, "prompt": "x", "logprobs": 9}, 400, "logprobs",
     "Invalid value for 'logprobs': must be between 0 and 5."),
    ("POST", "/v1/completions", {"model": M, "prompt": "x", "best_of": 2, "stream": True}, 400, "best_of",
     "'best_of' cannot be used with 'stream'."),
    ("POST", "/v1/completions", {"model": M, "prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, 400, "stop",
     "Invalid value for 'stop': at most 4 stop sequences are allowed."),
    ("POST", "/v1/completions", {"model": M, "prompt": ["a", "b", "c", "d", "e"]}, 400, "prompt",
     "Invalid value for 'prompt': at most 4 prompts per request."),
    ("POST", "/v1/completions", {"model": M, "prompt": [1, 999999]}, 400, "prompt",
     "Invalid value for 'prompt': token id 999999 is out of range (vocabulary size {vocab})."),
    ("POST", "/v1/completions", {"model": M, "prompt": "x", "logit_bias": {"1": 500}}, 400, "logit_bias",
     "Invalid value for 'logit_bias': biases must be between -100 and 100."),
    ("POST", "/v1/completions", {"model": M, "prompt": "x", "sparse_attention": {"decode": "magic"}}, 400,
     "sparse_attention.decode",
     "Invalid value for 'sparse_attention.decode': expected one of auto, dense, quest, tidal, streaming."),
    ("POST", "/v1/completions", {"model": "gpt-9", "prompt": "x"}, 404, "model", "The model `gpt-9` does not exist."),
    ("POST", "/v1/completions", {"model": M, "prompt": BIG}, 413, None,
     "Request body too large: the limit is 65536 bytes."),
    ("POST", "/v1/chat/completions", {"model": M, "messages": []}, 400, "messages",
     "Invalid value for 'messages': must contain at least one message."),
    ("POST", "/v1/chat/completions", {"model": M, "messages": [{"role": "wizard", "content": "x"}]}, 400,
     "messages[0].role",
     "Invalid value for 'messages[0].role': expected one of system, developer, user, assistant, tool."),
    ("POST", "/v1/chat/completions", {"model": M, "messages": [{"role": "user", "content": "x"}],
                                      "max_tokens": 100000}, 400, "messages", None),
    ("GET", "/v1/completions", None, 405, None, "Method GET is not allowed for /v1/completions (allowed: POST)."),
    ("GET", "/v1/nothing", None, 404, None, "Unknown route GET /v1/nothing."),
]


@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]} {c[1]} {c[3]} {c[4]}" for c in CASES])
def test_malformed(daemon, case):
    method, path, body, status, param, message = case
    data = body if isinstance(body, str) or body is None else json.dumps(body)
    h = dict(daemon.headers(), **{"Content-Type": "application/json"})
    r = requests.request(method, daemon.url + path, data=data, headers=h, timeout=30)
    assert r.status_code == status, r.text
    assert r.headers.get("x-request-id")
    err = r.json()["error"]
    assert err["param"] == param
    if message and "{vocab}" not in message:
        assert err["message"] == message
    elif message:
        assert err["message"].startswith(message.split("{vocab}")[0])
    if status == 400 and body and isinstance(body, dict) and body.get("max_tokens") == 100000:
        assert err["code"] == "context_length_exceeded"
        assert err["message"].startswith("This model's maximum context length is 512 tokens. However, you requested")
    if status == 405:
        assert r.headers["Allow"] == "POST"
    # The daemon still serves.
    ok = daemon.post("/v1/completions", {"model": M, "prompt": "still alive", "max_tokens": 1})
    assert ok.status_code == 200


def test_auth_errors(daemon):
    r = requests.post(daemon.url + "/v1/completions", json={"model": M, "prompt": "x"})
    assert r.status_code == 401
    assert r.json()["error"]["message"] == "You didn't provide an API key."
    r = requests.post(daemon.url + "/v1/completions", json={"model": M, "prompt": "x"},
                      headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "invalid_api_key"
    assert requests.get(daemon.url + "/metrics").status_code == 200

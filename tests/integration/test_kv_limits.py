"""A request that fits the model's context but not the whole KV pool gets a
400 that names the KV cache (not the model's context) before any model
work, and the daemon keeps serving."""
from conftest import Daemon


def test_request_larger_than_the_kv_pool(tiny_model, tmp_path):
    d = Daemon(tiny_model, tmp_path, conf={"engine": {"kv_blocks": "8", "block_size": "16"}})
    try:
        r = d.post("/v1/completions", {"model": "tiny", "prompt": "hello", "max_tokens": 300})
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert err["code"] == "context_length_exceeded"
        assert "KV cache holds 128 tokens" in err["message"], err["message"]
        assert "kv_bytes" in err["message"]
        ok = d.post("/v1/completions", {"model": "tiny", "prompt": "hello", "max_tokens": 4})
        assert ok.status_code == 200, ok.text
    finally:
        d.stop()

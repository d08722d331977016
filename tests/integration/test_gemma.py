"""Gemma 3 270M served by lacunad: the real 32K-context model with
sliding-window layers. Completions through the official openai client must
continue as Hugging Face does (tests/fixtures/logits_gemma3.json) for as long
as HF's own top-2 margins leave no room for a near-tie, on a short prompt and
on one longer than the 512-token window; chat is refused with the reason (the
base model's GGUF has no chat template). Skips without the model
(scripts/fetch_model.sh gemma3-270m) unless LACUNA_REQUIRE_MODEL=1."""
import json
import os
import pathlib

import pytest
import requests
from openai import OpenAI

from conftest import KEY, LACUNAD, SRC, Daemon

MODEL = pathlib.Path(os.environ.get("LACUNA_GEMMA_MODEL") or SRC / "models" / "gemma-3-270m-q4_k_m.gguf")
FIXTURE = SRC / "tests" / "fixtures" / "logits_gemma3.json"
SURE = 0.4  # HF margin above which the 8-bit decode path must pick HF's token (check_gemma's Q8_TIE)


@pytest.fixture(scope="module")
def gemma(tmp_path_factory):
    if not MODEL.is_file():
        if os.environ.get("LACUNA_REQUIRE_MODEL") == "1":
            pytest.fail(f"LACUNA_REQUIRE_MODEL=1 but {MODEL} is missing")
        pytest.skip("Gemma model not fetched (scripts/fetch_model.sh gemma3-270m)")
    if not LACUNAD.exists():
        pytest.skip("lacunad not built")
    d = Daemon(MODEL, tmp_path_factory.mktemp("gemma"), conf={"engine": {"kv_blocks": "256"}})
    yield d
    assert d.stop() == 0


def cases():
    return json.loads(FIXTURE.read_text())["cases"]


def sure_prefix(case, limit):
    """HF's greedy tokens up to the first near-tie (at most limit)."""
    n = 0
    while n < limit and case["greedy_margins"][n] >= SURE:
        n += 1
    return case["greedy"][:n]


@pytest.mark.parametrize("which", ["short", "long"])
def test_completion_continues_like_hugging_face(gemma, which):
    cs = cases()
    case = cs[0] if which == "short" else next(c for c in cs if 512 < len(c["ids"]) < 1024)
    want = sure_prefix(case, 8)  # long: the answer ("salt", from before the window), then a near-tie
    assert len(want) >= 1, case["greedy_margins"][:8]
    client = OpenAI(base_url=gemma.url + "/v1", api_key=KEY)
    r = client.completions.create(model="gemma-3-270m-q4_k_m", prompt=case["prompt"], max_tokens=len(want),
                                  temperature=0)
    assert r.usage.prompt_tokens == len(case["ids"])  # <bos> added, ids as HF's
    assert r.usage.completion_tokens == len(want)
    assert r.choices[0].finish_reason == "length"
    text = requests.post(gemma.url + "/detokenize", json={"tokens": want}, headers=gemma.headers(),
                         timeout=30).json()["prompt"]
    assert r.choices[0].text == text, (r.choices[0].text, text)


def test_chat_is_refused_for_the_base_model(gemma):
    r = gemma.post("/v1/chat/completions", {"model": "gemma-3-270m-q4_k_m", "max_tokens": 4,
                                           "messages": [{"role": "user", "content": "Hi"}]})
    assert r.status_code == 400, r.text
    assert "no chat template" in r.json()["error"]["message"]


def test_models_lists_the_context(gemma):
    r = requests.get(gemma.url + "/v1/models", headers=gemma.headers(), timeout=10).json()
    assert r["data"][0]["id"] == "gemma-3-270m-q4_k_m"
    assert r["data"][0].get("max_model_len", 32768) == 32768

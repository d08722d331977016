"""A user's output never depends on who else is being served (issue 9:
through the daemon, 3 of 12 temperature-0 prompts returned different text
when sent concurrently than when sent one at a time).

Twelve temperature-0 requests, chat and completions, of varied lengths, some
sharing a prefix, with log-probabilities: sent one at a time to a fresh
daemon (the shared prefixes come from the prefix cache), then all twelve at
once to a second fresh daemon (prompts prefilled together, cut into chunks
at other places, decoded in one batch), then all twelve at once again (now
from that daemon's prefix cache). The choices, their text and every
log-probability, must be the same JSON values in the three runs: equal
floats, so equal bits.

Each kernel set the CPU has is forced in turn (LACUNA_CPU, common/cpu.h), and
the daemon's start-up line must confirm it. The real model serves the AVX-512
and AVX2 runs; the scalar kernels are too slow for it here (minutes), so the
scalar run serves a random-weight Q4_1 model of SmolLM2's attention shape
(`lacuna mkmodel`), which goes through the same kernels."""
import concurrent.futures
import json
import pathlib
import subprocess
import threading
import time

import pytest
import requests

from conftest import LACUNA, Daemon, real_model_path

PRE = ("You are the assistant of a small bakery on Harbour Street. The bakery opens at seven and closes at six, "
       "sells rye and wheat bread, croissants and seasonal cakes, and is closed on Mondays. Answer briefly. ")
DOC = ("Harbour Street Bakery, notes for new staff. We open at seven in the morning and close at six in the "
       "evening, every day but Monday. The rye bread is baked first, then the wheat loaves, then croissants. "
       "Cakes change with the season: plum in autumn, lemon in spring. ")
LONG = ("The lighthouse keeper climbed the spiral stairs each evening, counting the steps as his father had, "
        "and at the top he wiped the salt from the great lens before lighting the lamp. Ships passed far out "
        "on the dark water, and he wrote each one in the log with the hour and the wind. ") * 2
REQUESTS = [
    ("chat", [{"role": "system", "content": PRE}, {"role": "user", "content": "When do you open?"}]),
    ("chat", [{"role": "system", "content": PRE}, {"role": "user", "content": "Do you sell rye bread?"}]),
    ("chat", [{"role": "system", "content": PRE}, {"role": "user", "content": "Can I come on Monday?"}]),
    ("chat", [{"role": "user", "content": "Name three colors."}]),
    ("chat", [{"role": "user", "content": "Summarize in one sentence: " + LONG}]),
    ("chat", [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello! How can I help?"},
              {"role": "user", "content": "Tell me a fact about the sea."}]),
    ("completion", "The capital of France is"),
    ("completion", "def fibonacci(n):\n"),
    ("completion", DOC + "Question: when does the bakery close?\nAnswer:"),
    ("completion", DOC + "Question: which cake is sold in autumn?\nAnswer:"),
    ("completion", "1, 2, 3, 4, 5,"),
    ("completion", LONG),
]
MAX_TOKENS = 8
LEVELS = ["avx512", "avx2", "scalar"]
# Small chunks and batches: a prompt is cut at other places batched than alone.
CONF = {"engine": {"prefill_chunk": "32", "max_batch_tokens": "96"}}


def cpu_levels():
    """The kernel sets this CPU runs (common/cpu.c's detection, from /proc/cpuinfo)."""
    try:
        flags = set()
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        return {"scalar"}
    have = {"scalar"}
    if {"avx2", "fma", "f16c"} <= flags:
        have.add("avx2")
        if {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni"} <= flags:
            have.add("avx512")
    return have


@pytest.fixture(scope="module")
def scalar_model(tmp_path_factory):
    if not LACUNA.exists():
        pytest.skip("lacuna not built")
    p = tmp_path_factory.mktemp("model") / "q4_1-smollm2-shape.gguf"
    subprocess.run([str(LACUNA), "mkmodel", "-o", str(p), "--layers", "2", "--embd", "576", "--heads", "9",
                    "--kv-heads", "3", "--ff", "512", "--type", "q4_1", "--ctx", "2048", "--seed", "9"],
                   check=True, capture_output=True)
    return p


def model_name(d):
    return requests.get(d.url + "/v1/models", headers=d.headers(), timeout=10).json()["data"][0]["id"]


def send(d, name, i):
    kind, content = REQUESTS[i]
    body = {"model": name, "temperature": 0, "max_tokens": MAX_TOKENS, "ignore_eos": True}
    if kind == "chat":
        body.update(messages=content, logprobs=True, top_logprobs=3)
        path = "/v1/chat/completions"
    else:
        body.update(prompt=content, logprobs=3)
        path = "/v1/completions"
    r = d.post(path, body, timeout=600)
    assert r.status_code == 200, r.text
    return r.json()


def all_at_once(d, name):
    """Sends the twelve requests together; returns the responses and the
    most requests the engine ran at once."""
    peak = [0]
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            peak[0] = max(peak[0], d.metrics().get("lacuna:num_requests_running", 0))
            time.sleep(0.02)

    w = threading.Thread(target=watch)
    w.start()
    try:
        with concurrent.futures.ThreadPoolExecutor(len(REQUESTS)) as ex:
            out = list(ex.map(lambda i: send(d, name, i), range(len(REQUESTS))))
    finally:
        stop.set()
        w.join()
    return out, peak[0]


def first_difference(x, y):
    """Where two responses' choices part: the text, else the first token
    whose log-probabilities differ."""
    cx, cy = x["choices"][0], y["choices"][0]
    tx = cx.get("text", (cx.get("message") or {}).get("content"))
    ty = cy.get("text", (cy.get("message") or {}).get("content"))
    if tx != ty:
        return f"text {json.dumps(tx)} vs {json.dumps(ty)}"
    lx, ly = cx["logprobs"], cy["logprobs"]
    if lx and ly and "content" in lx:
        for k, (a, b) in enumerate(zip(lx["content"], ly["content"])):
            if a != b:
                return f"token {k} {json.dumps(a['token'])}: logprob {a['logprob']!r} vs {b['logprob']!r}, top " \
                       f"{json.dumps(a['top_logprobs'])} vs {json.dumps(b['top_logprobs'])}"
    if lx and ly and "token_logprobs" in lx:
        for k, (a, b) in enumerate(zip(lx["token_logprobs"], ly["token_logprobs"])):
            if a != b or lx["top_logprobs"][k] != ly["top_logprobs"][k]:
                return f"token {k} {json.dumps(lx['tokens'][k])}: logprob {a!r} vs {b!r}, top " \
                       f"{json.dumps(lx['top_logprobs'][k])} vs {json.dumps(ly['top_logprobs'][k])}"
    return f"{json.dumps(cx)[:600]} vs {json.dumps(cy)[:600]}"


def cached(resp):
    return resp["usage"]["prompt_tokens_details"]["cached_tokens"]


@pytest.mark.parametrize("level", LEVELS)
def test_outputs_do_not_depend_on_the_batch(level, tmp_path, request):
    if level not in cpu_levels():
        pytest.skip(f"this CPU has no {level} kernels")
    model = request.getfixturevalue("scalar_model") if level == "scalar" else real_model_path()
    env = {"LACUNA_CPU": level}
    a = Daemon(model, tmp_path, conf=CONF, env=env)
    try:
        assert f", {level} kernels" in a.logtext(), a.logtext()  # the forced set is the one in use
        name = model_name(a)
        alone = [send(a, name, i) for i in range(len(REQUESTS))]
    finally:
        assert a.stop() == 0
    assert sum(cached(r) for r in alone) > 0, "no prefix-cache hit among the prompts sent one at a time"
    b = Daemon(model, tmp_path, conf=CONF, env=env)
    try:
        together, peak = all_at_once(b, name)
        assert peak >= 4, f"at most {peak} requests ran at once: the batch was never formed"
        again, _ = all_at_once(b, name)  # the prompts now come from the prefix cache
    finally:
        assert b.stop() == 0
    assert all(cached(r) > 0 for r in again if r["usage"]["prompt_tokens"] > 32), [cached(r) for r in again]
    diffs = []
    for i, (x, y, z) in enumerate(zip(alone, together, again)):
        assert x["usage"]["completion_tokens"] == MAX_TOKENS
        for what, other in (("batched", y), ("batched, cached", z)):
            if other["choices"] != x["choices"]:
                diffs.append(f"request {i} ({REQUESTS[i][0]}), alone vs {what}: {first_difference(x, other)}")
    assert not diffs, f"{len(diffs)} differ ({level}):\n" + "\n".join(diffs)

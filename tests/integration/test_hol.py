"""Head-of-line blocking: while a long prompt is being prefilled, a short
request must start streaming within about two prefill chunks of its time to
first token (TTFT) alone, not wait for the whole long prefill (issue 9: 8-token
requests took 9.8-18.7 s behind a 4.7K-token prompt, against 0.21 s alone).

The daemon serves the real model with prefill_chunk = 128 and no step-time
target, so the long prompt is cut into exactly ceil(n / 128) chunks; the
prefix cache is off so that nothing is served from it. The chunk time is
measured, not assumed: the long request's TTFT divided by its chunks, in the
same run (the machine may be busy with other work; the ratio holds). Short
requests are sent one after another, each at a random point of a step, for
as long as the long one has not produced its first token. A short one waits
for the rest of the step under way, then runs in the next: about 1.5 chunks
on average, two at most. Asserted, with room for a noisy machine: the median
within 2.5 chunks of the TTFT alone, none beyond 5 (a blocked one waits for
most of the 16). Only the short requests whose first token came before the
long one's count for the median (else the long prefill was over and they
prove nothing), and at least three must; when fewer do, the run is redone
with a prompt twice as long. Made to admit nothing while a prompt is being
prefilled, the scheduler fails this test (the first short request: 20 s)."""
import random
import statistics
import threading
import time

import requests

from conftest import Daemon, real_model_path

CHUNK = 128


def stream_ttft(d, prompt, on_first=None):
    """Streams a one-token completion of prompt (token ids); returns (sent,
    first) monotonic times, first being the first token's chunk arrival."""
    body = {"model": d.model_name, "prompt": prompt, "max_tokens": 1, "temperature": 0, "stream": True,
            "ignore_eos": True}
    t0 = time.monotonic()
    first = None
    with requests.post(d.url + "/v1/completions", json=body, headers=d.headers(), stream=True, timeout=600) as r:
        assert r.status_code == 200, r.text
        for line in r.iter_lines():
            if line.startswith(b"data: ") and line != b"data: [DONE]" and first is None:
                first = time.monotonic()
                if on_first:
                    on_first(first)
    assert first is not None, "no token streamed"
    return t0, first


def one_run(d, rnd, n_long):
    """Starts an n_long-token prompt and sends short requests, one after
    another at random points of a step, until its first token arrives. Returns the long TTFT and, per short request, its TTFT
    and whether its first token came before the long one's."""
    long_prompt = [rnd.randrange(200, 40000) for _ in range(n_long)]
    long_first = []
    long_sent = []

    def run_long():
        t0, t1 = stream_ttft(d, long_prompt, on_first=long_first.append)
        long_sent.append(t0)

    th = threading.Thread(target=run_long)
    th.start()
    # The long request is running (in prefill) before the first short one goes.
    end = time.monotonic() + 30
    while time.monotonic() < end and not long_first:
        m = d.metrics()
        if any(k.endswith("num_requests_running") and v >= 1 for k, v in m.items()):
            break
        time.sleep(0.02)
    shorts = []
    step = 0.2  # a guess at a step's time, refined from the short requests' TTFTs (about two steps)
    while not long_first and th.is_alive():
        time.sleep(rnd.uniform(0, step))  # arrive anywhere in a step, not just as one starts
        t0, t1 = stream_ttft(d, [rnd.randrange(200, 40000) for _ in range(8)])
        step = (t1 - t0) / 2
        # Still running when the short one's first token came: no first token yet.
        shorts.append((t1 - t0, not long_first or t1 < long_first[0]))
    th.join()
    assert long_first, "the long request streamed nothing"
    return long_first[0] - long_sent[0], shorts


def test_short_request_is_not_blocked_by_a_long_prefill(tmp_path):
    model = real_model_path()
    d = Daemon(model, tmp_path, conf={
        "engine": {"prefill_chunk": str(CHUNK), "target_step_ms": "-1", "prefix_cache": "false",
                   "kv_blocks": "600"}})
    try:
        d.model_name = requests.get(d.url + "/v1/models", headers=d.headers(), timeout=10).json()["data"][0]["id"]
        rnd = random.Random(9)
        stream_ttft(d, [rnd.randrange(200, 40000) for _ in range(8)])  # warm-up
        alone = statistics.median(
            t1 - t0 for t0, t1 in (stream_ttft(d, [rnd.randrange(200, 40000) for _ in range(8)]) for _ in range(5)))
        n_long = 2048
        for attempt in range(3):
            long_ttft, shorts = one_run(d, rnd, n_long)
            n_chunks = -(-n_long // CHUNK)
            chunk = long_ttft / n_chunks
            valid = [t for t, before in shorts if before]
            report = (f"alone TTFT {alone:.3f} s; long prompt {n_long} tokens, TTFT {long_ttft:.2f} s over "
                      f"{n_chunks} chunks = {chunk:.3f} s a chunk; short TTFTs (* = after the long one's "
                      "first token): " + ", ".join(f"{t:.3f}" + ("" if b else "*") for t, b in shorts))
            print(report)
            # None waits for most of the long prefill ...
            assert all(t <= alone + 5 * chunk for t, _ in shorts), report
            if len(valid) >= 3:
                break
            n_long = min(2 * n_long, 7000)  # the long prefill ended too soon to judge: a longer one
        # ... and those that prove something (the long prefill still ran)
        # are at least three, their median near two chunks at most.
        assert len(valid) >= 3, "the long prefill never stayed running long enough to judge: " + report
        assert statistics.median(valid) <= alone + 2.5 * chunk, report
    finally:
        assert d.stop() == 0

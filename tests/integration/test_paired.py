"""bench/accuracy/paired.py, the paired retrieval harness: its statistics
against values computed by hand, its count across CPU kernel sets on results
written here, and one small run through `lacuna complete` under two kernel
sets."""
import json
import math
import subprocess
import sys

import pytest

from conftest import LACUNA, SRC, make_model

sys.path.insert(0, str(SRC / "bench" / "accuracy"))
import paired  # noqa: E402


def test_statistics_match_closed_forms():
    # No loss in n: the one-sided 95% bound solves (1 - p)^n = 0.05.
    for n in (10, 100, 300):
        assert paired.cp_upper(0, n) == pytest.approx(1 - 0.05 ** (1 / n), rel=1e-6)
    # 1 of 21 (the 16K table): binomial tail equal to 0.05 at the bound.
    u = paired.cp_upper(1, 21)
    assert paired.binom_cdf(1, 21, u) == pytest.approx(0.05, abs=1e-6)
    assert paired.mcnemar_exact(0, 5) == pytest.approx(2 * 0.5 ** 5)
    assert paired.mcnemar_exact(5, 5) == 1.0
    assert paired.mcnemar_exact(0, 0) == 1.0
    lo, hi = paired.wilson(5, 10)
    assert (lo, hi) == (pytest.approx(0.2366, abs=1e-4), pytest.approx(0.7634, abs=1e-4))
    assert all(math.isnan(x) for x in paired.wilson(0, 0))
    assert paired.parse_samples("3,4,10-12") == {3, 4, 10, 11, 12}
    assert paired.parse_samples("7") == {7}


def write(path, verdicts, method_of):
    """One result line per (method, sample): right when verdicts says so."""
    with open(path, "w") as f:
        for (m, s), right in verdicts.items():
            ans = "12345"
            f.write(json.dumps({"id": {"length": 4096, "task": "multikey", "sample": s, "method": method_of[m],
                                       "answer": ans},
                                "text": ans if right else "54321", "prefill_density": 0.5, "ttft_s": 1.0}) + "\n")


def test_across_kernel_sets_counts_persistent_losses(tmp_path):
    m = {"d": "dense", "a": "anchor"}
    # sample: (dense, anchor) under native, then under avx2
    cases = {0: ((1, 0), (1, 0)),   # lost under both: persistent
             1: ((1, 0), (1, 1)),   # lost under native only: a near-tie
             2: ((1, 1), (1, 0)),   # lost under avx2 only
             3: ((0, 1), (0, 1)),   # gained under both
             4: ((1, 1), (1, 1)),   # kept
             5: ((1, 1), (0, 0)),   # dense itself flips: not in the denominator
             6: ((0, 0), (0, 0))}
    native = {(k, s): v[0][i] for s, v in cases.items() for i, k in enumerate("da")}
    avx2 = {(k, s): v[1][i] for s, v in cases.items() for i, k in enumerate("da")}
    write(tmp_path / "paired.jsonl", native, m)
    write(tmp_path / "paired.avx2.jsonl", avx2, m)
    with open(tmp_path / "paired.avx2.jsonl", "a") as f:  # a sample only one set ran is left out
        f.write(json.dumps({"id": {"length": 4096, "task": "multikey", "sample": 7, "method": "dense",
                                   "answer": "1"}, "text": "1", "prefill_density": 1, "ttft_s": 1}) + "\n")
    paired.summarize(str(tmp_path), str(tmp_path / "paired.md"))
    md = (tmp_path / "paired.md").read_text()
    assert "Kernel set: native" in md and "Kernel set: avx2" in md
    row = next(l for l in md.splitlines()[md.splitlines().index("Across the kernel sets (native, avx2), per sample:"):]
               if l.startswith("| multikey | 4096 | anchor |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    # n, dense right under both, lost under both, lost under some only, gained under both
    assert cells[3:8] == ["7", "4", "1", "2", "1"]
    assert cells[9].startswith("1/4 = 0.250")


def paired_py(*args):
    return subprocess.run([sys.executable, str(SRC / "bench" / "accuracy" / "paired.py"), *args],
                          capture_output=True, text=True, timeout=300)


def test_run_writes_one_file_per_kernel_set(tmp_path):
    if not LACUNA.exists():
        pytest.skip("lacuna not built")
    model = make_model(tmp_path / "tiny.gguf", "--ctx", "1024")
    out = tmp_path / "out"
    run = ("--lacuna", str(LACUNA), "--model", str(model), "--format", "raw", "--plan", "256:2", "--tasks",
           "passkey", "--methods", "dense,flexprefill", "--max-tokens", "2", "--cpu-sets", "native,scalar",
           "--out", str(out))
    r = paired_py(*run)
    assert r.returncode == 0, r.stderr
    for name in ("paired.jsonl", "paired.scalar.jsonl"):
        lines = [json.loads(l) for l in (out / name).read_text().splitlines()]
        assert sorted((x["id"]["method"], x["id"]["sample"]) for x in lines) == \
            [("dense", 0), ("dense", 1), ("flexprefill", 0), ("flexprefill", 1)]
        assert all("error" not in x for x in lines)
    assert "Across the kernel sets (native, scalar)" in (out / "paired.md").read_text()
    # Run again: everything is answered, nothing is sent.
    r = paired_py(*run)
    assert r.returncode == 0 and "0 requests to run under kernel set scalar" in r.stderr
    # --samples: a larger plan, but only sample 3 of it runs.
    r = paired_py(*run[:run.index("--plan") + 1], "256:4", *run[run.index("--plan") + 2:run.index("--cpu-sets")],
                  "--samples", "3", "--out", str(out))
    assert r.returncode == 0 and "2 requests to run under kernel set native" in r.stderr, r.stderr
    assert sorted({json.loads(l)["id"]["sample"] for l in (out / "paired.jsonl").read_text().splitlines()}) == \
        [0, 1, 3]
    r = paired_py("--cpu-sets", "avx1024", "--out", str(out))
    assert r.returncode != 0 and "unknown kernel set 'avx1024'" in r.stderr

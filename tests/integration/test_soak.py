"""A short run of the soak driver (bench/soak.py): streaming and plain
clients, vanishing clients, slowloris, malformed and oversized bodies and
bursts past the queue for LACUNA_SOAK_SECONDS (default 20), then SIGTERM
under load and kill -9 plus restart. The driver judges everything itself and
exits nonzero on any violation; bench/soak.sh runs the full-length version."""
import json
import os
import subprocess
import sys

import pytest
from conftest import BUILD, LACUNA, LACUNAD, SRC


def sanitizer_build():
    try:
        return "-fsanitize=address" in (BUILD / "Makefile").read_text()
    except OSError:
        return False


def test_soak_short(tiny_model, tmp_path):
    secs = os.environ.get("LACUNA_SOAK_SECONDS", "20")
    out = tmp_path / "soak.json"
    cmd = [sys.executable, str(SRC / "bench" / "soak.py"), "--lacunad", str(LACUNAD), "--lacuna", str(LACUNA),
           "--duration", secs, "--workdir", str(tmp_path / "w"), "--json", str(out)]
    if sanitizer_build():
        cmd.append("--no-rss-check")  # ASan's quarantine grows by design
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=float(secs) + 240)
    assert p.returncode == 0, p.stdout[-6000:] + p.stderr[-3000:]
    s = json.loads(out.read_text())
    assert s["answered_200"] > 0 and s["burst"]["429"] > 0 and not s["violations"]


def test_soak_long_sparse_sharded(tmp_path):
    """The same driver with half the requests long (150-700 words) under a
    random sparse_attention, on a Gemma 3 shape (heads of 256, sliding
    layers keeping their windows) with 2 context-parallel ranks from 256
    tokens: every method through the sharded paths, clients vanishing
    mid-request (it found a FlexPrefill ring step's arena too small)."""
    if not LACUNAD.exists() or not LACUNA.exists():
        pytest.skip("lacunad or lacuna not built")
    model = tmp_path / "gemma.gguf"
    subprocess.run([str(LACUNA), "mkmodel", "-o", str(model), "--layers", "6", "--embd", "256", "--heads", "4",
                    "--kv-heads", "1", "--head-dim", "256", "--ff", "512", "--vocab", "synthetic", "--ctx", "4096",
                    "--window", "128", "--swa-pattern", "3"], check=True, capture_output=True)
    secs = os.environ.get("LACUNA_SOAK_SECONDS", "20")
    out = tmp_path / "soak.json"
    cmd = [sys.executable, str(SRC / "bench" / "soak.py"), "--lacunad", str(LACUNAD), "--model", str(model),
           "--duration", secs, "--workdir", str(tmp_path / "w"), "--json", str(out), "--long-frac", "0.5",
           "--set", "parallel.context=2", "--set", "parallel.context_min_tokens=256"]
    if sanitizer_build():  # several times slower: its long prompts keep both cores busy for seconds
        cmd += ["--no-rss-check", "--time-scale", "5"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=float(secs) + 600)
    assert p.returncode == 0, p.stdout[-6000:] + p.stderr[-3000:]
    s = json.loads(out.read_text())
    assert s["answered_200"] > 0 and not s["violations"]
    assert s["idle_metrics"]["cp_sharded_rows_total"] > 0, s["idle_metrics"]

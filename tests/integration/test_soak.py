"""A short run of the soak driver (bench/soak.py): streaming and plain
clients, vanishing clients, slowloris, malformed and oversized bodies and
bursts past the queue for LACUNA_SOAK_SECONDS (default 20), then SIGTERM
under load and kill -9 plus restart. The driver judges everything itself and
exits nonzero on any violation; bench/soak.sh runs the full-length version."""
import json
import os
import subprocess
import sys

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

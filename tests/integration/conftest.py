"""Fixtures for the lacunad integration tests: a tiny random model made with
`lacuna mkmodel`, and daemons started on free loopback ports with a config
file. The tests drive them with curl, requests, raw sockets and the official
`openai` client."""
import os
import pathlib
import signal
import socket
import subprocess
import time

import pytest
import requests

BUILD = pathlib.Path(os.environ.get("LACUNA_BUILDDIR", pathlib.Path(__file__).resolve().parents[2] / "build"))
SRC = pathlib.Path(os.environ.get("LACUNA_SRCDIR", pathlib.Path(__file__).resolve().parents[2]))
LACUNAD = BUILD / "lacunad"
LACUNA = BUILD / "lacuna"
KEY = "sk-test-0123456789"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_model(path, *extra):
    cmd = [str(LACUNA), "mkmodel", "-o", str(path), "--layers", "2", "--embd", "64", "--heads", "4",
           "--kv-heads", "2", "--ff", "128", "--vocab", "synthetic", *extra]
    subprocess.run(cmd, check=True, capture_output=True)
    return path


class Daemon:
    """One lacunad process. conf: extra INI lines, merged into the sections."""

    def __init__(self, model, workdir, conf=None, args=(), key=KEY, port=None, env=None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.key = key
        sections = {"server": {"api_keys": key, "keepalive_ping_s": "1", "drain_timeout_s": "20",
                               "log_level": "info"},
                    "engine": {"kv_blocks": "512"}}
        for sec, kv in (conf or {}).items():
            sections.setdefault(sec, {}).update(kv)
        self.conf_path = pathlib.Path(workdir) / f"lacuna-{self.port}.conf"
        self.write_conf(sections)
        self.log_path = pathlib.Path(workdir) / f"lacunad-{self.port}.log"
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([str(LACUNAD), "--config", str(self.conf_path), "--model", str(model),
                                      "--host", "127.0.0.1", "--port", str(self.port), *args],
                                     stdout=self.log, stderr=subprocess.STDOUT,
                                     env={**os.environ, **env} if env else None)
        self.wait_healthy()

    def write_conf(self, sections):
        self.sections = sections
        with open(self.conf_path, "w") as f:
            for sec, kv in sections.items():
                f.write(f"[{sec}]\n")
                for k, v in kv.items():
                    f.write(f"{k} = {v}\n")

    def wait_healthy(self, timeout=60):
        end = time.time() + timeout
        while time.time() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"lacunad exited {self.proc.returncode}:\n{self.logtext()}")
            try:
                if requests.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise RuntimeError("lacunad did not become healthy:\n" + self.logtext())

    def logtext(self):
        self.log.flush()
        return self.log_path.read_text(errors="replace")[-4000:]

    def headers(self):
        return {"Authorization": f"Bearer {self.key}"}

    def post(self, path, body, **kw):
        h = self.headers()
        h.update(kw.pop("headers", {}))
        return requests.post(self.url + path, json=body, headers=h, timeout=kw.pop("timeout", 60), **kw)

    def metrics(self):
        text = requests.get(self.url + "/metrics", timeout=5).text
        out = {}
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
            out.setdefault(name.split("{")[0], float(value))
        return out

    def stop(self, sig=signal.SIGTERM, timeout=30):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        # Under --enable-sanitizers any report (a leak at exit included) fails the test.
        text = self.log_path.read_text(errors="replace")
        for marker in ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:"):
            assert marker not in text, text[max(0, text.index(marker) - 200):][:6000]
        return self.proc.returncode


def real_model_path():
    """The default model ($LACUNA_MODEL, else models/ under the source tree):
    skips without it, fails instead under LACUNA_REQUIRE_MODEL=1 (testutil.h's rule)."""
    p = pathlib.Path(os.environ.get("LACUNA_MODEL") or SRC / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf")
    if not p.is_file():
        if os.environ.get("LACUNA_REQUIRE_MODEL") == "1":
            pytest.fail(f"LACUNA_REQUIRE_MODEL=1 but {p} is missing")
        pytest.skip(f"real model not fetched ({p}; scripts/fetch_model.sh)")
    if not LACUNAD.exists():
        pytest.skip("lacunad not built")
    return p


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    if not LACUNAD.exists() or not LACUNA.exists():
        pytest.skip("lacunad or lacuna not built")
    return make_model(tmp_path_factory.mktemp("model") / "tiny.gguf", "--ctx", "512")


@pytest.fixture(scope="session")
def slow_model(tmp_path_factory):
    """Big enough that a long generation takes seconds on one CPU core."""
    if not LACUNAD.exists() or not LACUNA.exists():
        pytest.skip("lacunad or lacuna not built")
    p = tmp_path_factory.mktemp("model") / "slow.gguf"
    cmd = [str(LACUNA), "mkmodel", "-o", str(p), "--layers", "6", "--embd", "512", "--heads", "8",
           "--kv-heads", "2", "--ff", "1536", "--vocab", "synthetic", "--ctx", "4096"]
    subprocess.run(cmd, check=True, capture_output=True)
    return p


@pytest.fixture(scope="module")
def daemon(tiny_model, tmp_path_factory):
    d = Daemon(tiny_model, tmp_path_factory.mktemp("d"),
               conf={"server": {"max_body_bytes": "65536", "max_n": "8", "max_prompts": "4"}})
    yield d
    d.stop()

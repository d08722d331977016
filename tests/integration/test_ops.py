"""Operations: client disconnects free their KV blocks, the waiting queue
answers 429, SIGTERM drains, SIGHUP reloads keys, --check-config, one daemon
per port unless reuse_port says otherwise, and the systemd unit verifies."""
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time

import openai
import pytest
import requests

from conftest import KEY, LACUNAD, SRC, Daemon


def raw_stream(port, body, key=KEY):
    """Opens a streaming request on a raw socket; returns the socket after
    the first SSE bytes arrived."""
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    data = json.dumps(body).encode()
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Authorization: Bearer " + key.encode() + b"\r\nContent-Length: " + str(len(data)).encode() +
              b"\r\n\r\n" + data)
    got = b""
    while b"data: " not in got:
        chunk = s.recv(4096)
        assert chunk, got
        got += chunk
    return s


def wait_for(pred, timeout):
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return True
        time.sleep(0.1)
    return pred()


def test_disconnect_frees_everything(slow_model, tmp_path):
    d = Daemon(slow_model, tmp_path, conf={"engine": {"kv_blocks": "4096", "max_running": "64",
                                                      "prefix_cache": "false"},
                                           "server": {"keepalive_ping_s": "1"}})
    try:
        body = {"model": "slow", "prompt": "disconnect me", "max_tokens": 3000, "stream": True,
                "ignore_eos": True}
        socks = [raw_stream(d.port, body) for _ in range(50)]
        m = d.metrics()
        assert m["lacuna:num_requests_running"] + m["lacuna:num_requests_waiting"] > 0
        for s in socks:
            s.close()
        # Freed within one keep-alive interval (1 s) plus scheduling slack.
        ok = wait_for(lambda: (lambda m: m["lacuna:num_requests_running"] == 0 and
                               m["lacuna:num_requests_waiting"] == 0 and
                               m["lacuna:kv_blocks_used"] == 0)(d.metrics()), 3.0)
        assert ok, d.metrics()
        r = d.post("/v1/completions", {"model": "slow", "prompt": "after", "max_tokens": 2})
        assert r.status_code == 200
    finally:
        d.stop()


def test_queue_full_gives_429(slow_model, tmp_path):
    d = Daemon(slow_model, tmp_path, conf={"engine": {"kv_blocks": "4096", "max_running": "1"},
                                           "server": {"max_waiting": "1"}})
    try:
        body = {"model": "slow", "prompt": "hold", "max_tokens": 3000, "stream": True, "ignore_eos": True}
        held = [raw_stream(d.port, body)]
        # The second waits (its first bytes come only once it runs): send it raw.
        s2 = socket.create_connection(("127.0.0.1", d.port))
        data = json.dumps(body).encode()
        s2.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                   b"Authorization: Bearer " + KEY.encode() + b"\r\nContent-Length: " + str(len(data)).encode() +
                   b"\r\n\r\n" + data)
        held.append(s2)
        assert wait_for(lambda: d.metrics()["lacuna:num_requests_waiting"] >= 1, 5)
        r = d.post("/v1/completions", {"model": "slow", "prompt": "x", "max_tokens": 1})
        assert r.status_code == 429
        assert r.headers["Retry-After"].isdigit()
        assert r.json()["error"]["type"] == "rate_limit_exceeded"
        cl = openai.OpenAI(base_url=d.url + "/v1", api_key=KEY, max_retries=0)
        with pytest.raises(openai.RateLimitError):
            cl.completions.create(model="slow", prompt="x", max_tokens=1)
        for s in held:
            s.close()
        assert wait_for(lambda: d.metrics()["lacuna:num_requests_running"] == 0, 5)
        assert d.post("/v1/completions", {"model": "slow", "prompt": "x", "max_tokens": 1}).status_code == 200
    finally:
        d.stop()


def test_sigterm_drains(slow_model, tmp_path):
    d = Daemon(slow_model, tmp_path, conf={"server": {"drain_timeout_s": "120"}})
    body = {"model": "slow", "prompt": "drain", "max_tokens": 150, "stream": True, "ignore_eos": True}
    result = {}
    started = threading.Event()
    sess = requests.Session()  # a keep-alive connection opened before the signal
    assert sess.get(d.url + "/health", timeout=5).status_code == 200

    def run():
        try:
            r = d.post("/v1/completions", body, stream=True, timeout=180)
            result["status"] = r.status_code
            chunks = []
            for chunk in r.iter_content(chunk_size=None):
                chunks.append(chunk)
                started.set()
            result["text"] = b"".join(chunks).decode()
        except Exception as e:  # reported below
            result["error"] = repr(e)
        started.set()

    t = threading.Thread(target=run)
    t.start()
    assert started.wait(30)
    d.proc.send_signal(signal.SIGTERM)
    in_flight = t.is_alive()
    time.sleep(0.3)
    # While draining: health and new work answer 503 on open connections.
    h = sess.get(d.url + "/health", timeout=5)
    assert h.status_code == 503
    r = sess.post(d.url + "/v1/completions", json={"model": "slow", "prompt": "late", "max_tokens": 1},
                  headers=d.headers(), timeout=5)
    assert r.status_code == 503 and r.json()["error"]["code"] == "draining"
    t.join(180)
    assert in_flight, "the stream ended before SIGTERM; make it longer"
    assert result.get("status") == 200, (result, d.logtext())
    assert result["text"].rstrip().endswith("data: [DONE]")
    assert result["text"].count('"finish_reason":"length"') == 1
    assert d.proc.wait(60) == 0
    d.log.close()
    log = d.log_path.read_text()
    assert "draining" in log and "drained; exiting" in log


def test_sighup_reloads_keys(tiny_model, tmp_path):
    d = Daemon(tiny_model, tmp_path)
    try:
        assert requests.get(d.url + "/v1/models", headers=d.headers()).status_code == 200
        d.sections["server"]["api_keys"] = "sk-new-key"
        d.sections["server"]["log_level"] = "debug"
        d.write_conf(d.sections)
        d.proc.send_signal(signal.SIGHUP)
        new = {"Authorization": "Bearer sk-new-key"}
        assert wait_for(lambda: requests.get(d.url + "/v1/models", headers=new).status_code == 200, 5)
        assert requests.get(d.url + "/v1/models", headers=d.headers()).status_code == 401
    finally:
        d.stop()


def test_check_config(tiny_model, tmp_path):
    conf = tmp_path / "ok.conf"
    conf.write_text("[server]\nport = 9999\napi_keys = a,b\n")
    r = subprocess.run([str(LACUNAD), "--config", str(conf), "--model", str(tiny_model), "--check-config"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "port = 9999" in r.stdout and "<2 keys>" in r.stdout and "a,b" not in r.stdout
    r = subprocess.run([str(LACUNAD), "--config", str(SRC / "conf" / "lacuna.conf"), "--model", str(tiny_model),
                        "--check-config"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    conf.write_text("[server]\nport = seventy\n")
    r = subprocess.run([str(LACUNAD), "--config", str(conf), "--model", str(tiny_model), "--check-config"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "port" in r.stderr


def test_one_daemon_per_port(tiny_model, tmp_path):
    """A second lacunad on a port in use fails at once with a clear message
    (no SO_REUSEPORT by default) and leaves the first one serving."""
    d = Daemon(tiny_model, tmp_path)
    try:
        r = subprocess.run([str(LACUNAD), "--model", str(tiny_model), "--host", "127.0.0.1", "--port", str(d.port),
                            "--set", "engine.kv_blocks=64"], capture_output=True, text=True, timeout=30)
        assert r.returncode == 1, r.stderr
        assert f"cannot listen on 127.0.0.1:{d.port}: address already in use" in r.stderr, r.stderr
        assert requests.get(d.url + "/health", timeout=5).status_code == 200
    finally:
        code = d.stop()
    assert code == 0


def test_reuse_port_shares_the_port(tiny_model, tmp_path):
    """With reuse_port set on both, a second daemon binds the same port."""
    (tmp_path / "1").mkdir()
    (tmp_path / "2").mkdir()
    d1 = Daemon(tiny_model, tmp_path / "1", args=("--reuse-port",))
    d2 = None
    try:
        d2 = Daemon(tiny_model, tmp_path / "2", conf={"server": {"reuse_port": "true"}}, port=d1.port)
        # /health may have been answered by d1: wait for d2's own log line.
        assert wait_for(lambda: "serving tiny" in d2.logtext() or d2.proc.poll() is not None, 30), d2.logtext()
        assert d2.proc.poll() is None, d2.logtext()
    finally:
        codes = [d2.stop() if d2 else 0, d1.stop()]  # stop both before asserting
    assert codes == [0, 0]


def test_systemd_unit_verifies(tmp_path):
    sa = shutil.which("systemd-analyze")
    if not sa:
        pytest.skip("systemd-analyze not available")
    unit = (SRC / "systemd" / "lacunad.service").read_text().replace("/usr/local/bin/lacunad", str(LACUNAD))
    path = tmp_path / "lacunad.service"
    path.write_text(unit)
    r = subprocess.run([sa, "verify", str(path)], capture_output=True, text=True,
                       env=dict(os.environ, SYSTEMD_LOG_LEVEL="warning"))
    assert r.returncode == 0, r.stderr
    assert "lacunad.service" not in r.stderr, r.stderr
    for want in ("Type=notify", "ExecReload=/bin/kill -HUP $MAINPID", "WatchdogSec=", "DeviceAllow=/dev/nvidia0",
                 "ExecStartPre="):
        assert want in unit
    assert "PrivateDevices=yes" not in unit

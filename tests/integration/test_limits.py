"""Connection-level limits: SSE keep-alive pings during a long prefill, the
total and per-IP connection limits, and the absolute deadline for receiving
a request (slowloris)."""
import json
import socket
import time

import pytest
import requests

from conftest import KEY, Daemon


def stream_lines(port, body, timeout=120):
    """POSTs a streaming completion on a raw socket; yields (seconds since the
    response headers, line) for every SSE line (chunked framing stripped)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    data = json.dumps(body).encode()
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Authorization: Bearer " + KEY.encode() + b"\r\nContent-Length: " + str(len(data)).encode() +
              b"\r\n\r\n" + data)
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(4096)
        assert chunk, buf
        buf += chunk
    head, buf = buf.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200"), head
    t0 = time.time()
    text = b""
    try:
        while True:
            # Chunked transfer: "<hex>\r\n<data>\r\n".
            while b"\r\n" not in buf:
                chunk = s.recv(4096)
                if not chunk:
                    return
                buf += chunk
            size_line, buf = buf.split(b"\r\n", 1)
            n = int(size_line.split(b";")[0], 16)
            if n == 0:
                return
            while len(buf) < n + 2:
                chunk = s.recv(4096)
                assert chunk
                buf += chunk
            text += buf[:n]
            buf = buf[n + 2:]
            while b"\n" in text:
                line, text = text.split(b"\n", 1)
                if line:
                    yield time.time() - t0, line.decode()
    finally:
        s.close()


def test_ping_before_first_token_during_long_prefill(slow_model, tmp_path):
    """A prompt prefilled in tiny chunks takes seconds before the first token;
    the client must see ': ping' comments meanwhile (keepalive_ping_s = 1)."""
    d = Daemon(slow_model, tmp_path, conf={"server": {"keepalive_ping_s": "1"},
                                           "engine": {"max_batch_tokens": "8", "prefill_chunk": "8",
                                                      "kv_blocks": "1024", "prefix_cache": "false"}})
    try:
        for words in (600, 1800):  # escalate if this machine prefills too fast to tell
            first_data = None
            pings_before = 0
            for t, line in stream_lines(d.port, {"model": "slow", "prompt": "hello world " * words,
                                                 "max_tokens": 1, "stream": True}):
                if line.startswith(":"):
                    assert line == ": ping"
                    pings_before += first_data is None
                elif first_data is None:
                    first_data = t
            assert first_data is not None
            if pings_before:
                return
            # No ping: only acceptable when the first token came before a
            # ping was due (the sweep runs every second: at most 2 s).
            assert first_data < 2.0, f"first data after {first_data:.1f}s with no ': ping' before it"
        pytest.fail("prefill too fast on this machine to observe a keep-alive ping")
    finally:
        d.stop()


def alive(sock):
    sock.setblocking(False)
    try:
        return sock.recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        sock.settimeout(5)


def held_sockets(port, n):
    """n idle connections the daemon accepted and kept. A connection of an
    earlier request may still count for a moment (the daemon sees its close
    a little later) and push one of ours over the limit: replace those."""
    socks = []
    for _ in range(20):
        while len(socks) < n:
            socks.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        time.sleep(0.3)
        kept = [s for s in socks if alive(s)]
        for s in socks:
            if s not in kept:
                s.close()
        socks = kept
        if len(socks) == n:
            return socks
    raise AssertionError("could not hold the connections")


def not_served(port, wait=1.5):
    """Opens one more connection and asks for /health. Past the per-IP limit
    MHD accepts and closes it; past the total limit it stops accepting, so
    the connection waits in the kernel backlog. Either way no answer may come
    while the limit holds. Returns the probe socket (still open or closed)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    s.settimeout(wait)
    try:
        got = s.recv(4096)
    except socket.timeout:
        return s
    except (ConnectionResetError, BrokenPipeError):
        got = b""
    assert got == b"", f"served past the limit: {got[:80]!r}"
    return s


def health_ok(port):
    return requests.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200


@pytest.mark.parametrize("setting", ["max_connections", "max_connections_per_ip"])
def test_connection_limits(tiny_model, tmp_path, setting):
    conf = {"server": {"max_connections": "50", "max_connections_per_ip": "0", "request_deadline_s": "20"}}
    conf["server"][setting] = "6"
    d = Daemon(tiny_model, tmp_path, conf=conf)
    try:
        socks = held_sockets(d.port, 6)
        probe = not_served(d.port)
        probe.close()
        socks.pop().close()
        time.sleep(0.5)
        assert health_ok(d.port)
        for s in socks:
            s.close()
        time.sleep(0.3)
        assert health_ok(d.port)
    finally:
        d.stop()


@pytest.mark.parametrize("kind", ["idle", "headers", "body"])
def test_slowloris_closed_by_deadline(tiny_model, tmp_path, kind):
    """A client that never completes its request is cut off request_deadline_s
    after connecting, however steadily it trickles bytes (which keeps the
    inactivity timeout from firing)."""
    deadline = 2
    d = Daemon(tiny_model, tmp_path, conf={"server": {"request_deadline_s": str(deadline),
                                                      "connection_timeout_s": "30"}})
    try:
        body = b'{"model":"tiny","prompt":"' + b"x" * 100 + b'"}'
        if kind == "idle":
            data = b""
        elif kind == "headers":
            data = b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100
        else:
            data = (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    b"Authorization: Bearer " + KEY.encode() + b"\r\nContent-Length: " +
                    str(len(body)).encode() + b"\r\n\r\n" + body)
        s = socket.create_connection(("127.0.0.1", d.port), timeout=10)
        t0 = time.time()
        i = data.index(b"\r\n\r\n") + 4 if kind == "body" else 0
        if i:
            s.sendall(data[:i])
        closed = None
        while time.time() - t0 < deadline + 6:
            try:
                if i < len(data) - 1:  # never the last byte
                    s.send(data[i:i + 1])
                    i += 1
                s.settimeout(0.25)
                if s.recv(4096) == b"":
                    closed = time.time() - t0
                    break
            except socket.timeout:
                continue
            except OSError:
                closed = time.time() - t0
                break
        s.close()
        assert closed is not None, "slow client never cut off"
        # The sweep runs once a second: closed within the deadline plus one period (and slack).
        assert deadline - 0.1 <= closed <= deadline + 2.0, closed
        assert health_ok(d.port)
    finally:
        d.stop()

#!/usr/bin/env python3
"""Soak test for lacunad: bad input, overload and vanishing clients, on
loopback only and bounded in time.

Starts lacunad with small limits (queue, body size, request deadline) on a
free 127.0.0.1 port and, for --duration seconds, drives it with:
  - streaming and non-streaming clients (completions and chat), each request
    carrying a unique x-request-id and `user`;
  - clients that vanish: before sending, mid-headers, mid-stream, with RST;
  - slowloris clients trickling headers or a body one byte at a time;
  - oversized (413) and malformed bodies, bad methods, routes and keys;
  - bursts of long requests beyond max_running + max_waiting (429s).
It samples the daemon's resident memory from /proc/PID/status all along and
reads /metrics at the end. Then it checks a SIGTERM under load (clean drain,
exit 0) and a kill -9 plus restart on the same port (serves again at once).

Checks (any failure exits 1): no crash, no 5xx; every request that got 200
got a complete answer exactly once (body or [DONE]; its id appears once in
the daemon's log); zero running / waiting requests and zero used KV blocks
once idle; resident memory flat (max of the last third within the margin of
the max of the first third); 429s during bursts, each with Retry-After;
slowloris connections closed by request_deadline_s (+ the sweep period and
slack); drain exit 0; restart healthy within a few seconds.

With --long-frac F a share F of the well-behaved and vanishing requests
carry long prompts (150-700 words, half of them starting with one of three
shared documents of up to 500 words, so that the prefix cache hits) and a random
`sparse_attention` (every prefill and decode method, sometimes small
budgets), and --set SECTION.KEY=V
changes the daemon's configuration: e.g. a GPU with context parallelism from
a few hundred tokens and a KV pool small enough to preempt
(tests/gpu/run.sh soak), which the same checks then hold to. --time-scale X
multiplies the time limits (a sanitizer build is several times slower).

Only the standard library is used. Usage:
  soak.py --lacunad build/lacunad --lacuna build/lacuna [--model M.gguf]
          [--duration 120] [--workdir DIR] [--json OUT]
          [--long-frac F] [--model-ctx N] [--set SECTION.KEY=VALUE ...] [--completions-only]
"""
import argparse
import http.client
import json
import os
import random
import re
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

HOST = "127.0.0.1"
KEY = "sk-soak-0123456789"

# The daemon's limits for the soak: small, so that bursts, slowloris and big
# bodies trip them within seconds.
LIMITS = {
    "server": {"max_waiting": "4", "request_deadline_s": "3", "connection_timeout_s": "10",
               "max_body_bytes": "65536", "keepalive_ping_s": "1", "drain_timeout_s": "30",
               "max_n": "4", "max_prompts": "4", "log_level": "info", "api_keys": KEY},
    "model": {"served_name": "soak"},
    "engine": {"max_running": "4", "kv_blocks": "1024", "max_batch_tokens": "512", "prefill_chunk": "256"},
}
SLOWLORIS_SLACK_S = 2.5   # beyond request_deadline_s: the 1 s sweep plus scheduling on a busy host
RSS_MARGIN_FRAC = 0.10    # "flat": last third's max <= first third's max * (1 + 10%) + 4 MiB
RSS_MARGIN_ABS = 4 << 20
RESTART_HEALTHY_S = 5.0

LONG_FRAC = 0.0  # --long-frac: the share of requests with long prompts and a sparse_attention
NO_CHAT = False  # --completions-only: a base model without a chat template
TIME_SCALE = 1.0  # --time-scale: the time limits' factor (a sanitizer build is several times slower)

WORDS = ("the quick brown fox jumps over a lazy dog while seven tired engineers "
         "watch the queue fill and drain again").split()


def free_port():
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def prompt(rng, n=None):
    return " ".join(rng.choice(WORDS) for _ in range(n or rng.randint(3, 40)))


# ---- the daemon -------------------------------------------------------------------------
class Daemon:
    def __init__(self, args, workdir, port=None, tag="soak"):
        self.args = args
        self.port = port or free_port()
        self.conf = os.path.join(workdir, f"{tag}.conf")
        with open(self.conf, "w") as f:
            for sec, kv in config(args).items():
                f.write(f"[{sec}]\n" + "".join(f"{k} = {v}\n" for k, v in kv.items()))
        self.log_path = os.path.join(workdir, f"{tag}-{self.port}.log")
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([args.lacunad, "--config", self.conf, "--model", args.model, "--host", HOST,
                                      "--port", str(self.port)], stdout=self.log, stderr=subprocess.STDOUT)

    def wait_healthy(self, timeout=60.0):
        t0 = time.time()
        while time.time() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"lacunad exited {self.proc.returncode}; see {self.log_path}")
            try:
                if get(self.port, "/health", timeout=1)[0] == 200:
                    return time.time() - t0
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"lacunad not healthy after {timeout}s; see {self.log_path}")

    def rss(self):
        try:
            with open(f"/proc/{self.proc.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        return None

    def metrics(self):
        status, _, body = get(self.port, "/metrics", timeout=5)
        out = {}
        for line in body.decode().splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                out[name] = float(value)
                out.setdefault(name.split("{")[0], float(value))
        return out

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def config(args):
    """LIMITS with the --set changes."""
    out = {sec: dict(kv) for sec, kv in LIMITS.items()}
    for item in args.set or []:
        key, _, value = item.partition("=")
        sec, _, name = key.partition(".")
        if not name or not _:
            raise SystemExit(f"--set {item!r}: want SECTION.KEY=VALUE")
        out.setdefault(sec, {})[name] = value
    return out


def get(port, path, timeout=5):
    c = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        c.close()


# ---- bookkeeping --------------------------------------------------------------------------
class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.counts = {}
        self.violations = []
        self.ok_ids = {}         # rid -> times a complete 200 arrived
        self.resp_ids = {}       # response "id" (cmpl-…) -> count
        self.slowloris = []      # seconds until the server closed
        self.burst_429 = 0
        self.burst_sent = 0
        self.sent = 0
        self.seq = 0

    def rid(self, kind):
        with self.lock:
            self.seq += 1
            return f"soak-{kind}-{self.seq}"

    def inc(self, key, n=1):
        with self.lock:
            self.counts[key] = self.counts.get(key, 0) + n

    def violate(self, msg):
        with self.lock:
            if len(self.violations) < 200:
                self.violations.append(msg)

    def answered(self, rid, resp_id):
        with self.lock:
            self.ok_ids[rid] = self.ok_ids.get(rid, 0) + 1
            if resp_id:
                self.resp_ids[resp_id] = self.resp_ids.get(resp_id, 0) + 1


# Three documents that long prompts start with, half of the time (--long-frac).
DOCS = [" ".join(random.Random(100 + i).choice(WORDS) for _ in range(n)) for i, n in enumerate((120, 300, 500))]


def sparse_spec(rng):
    """A random sparse_attention: every method, sometimes a small budget."""
    a = {"prefill": rng.choice(["auto", "dense", "flexprefill", "anchor", "streaming"]),
         "decode": rng.choice(["auto", "dense", "quest", "tidal", "streaming"])}
    if rng.random() < 0.5:
        a["decode_budget"] = rng.choice([64, 128, 300])
    if rng.random() < 0.3:
        a["gamma"], a["min_budget"] = rng.choice([0.5, 0.8, 0.95]), rng.choice([16, 128])
    if rng.random() < 0.3:
        a["flex_select"] = rng.choice(["tokens", "blocks"])
    if rng.random() < 0.3:
        a["theta"] = rng.choice([0.5, 3.0, 12.0])
    return a


def gen_body(rng, rid, chat, stream, max_tokens):
    chat = chat and not NO_CHAT
    b = {"model": "soak", "max_tokens": max_tokens, "user": rid, "temperature": rng.choice([0, 0.7, 1.0]),
         "seed": rng.randint(0, 1 << 30)}
    text = None
    if LONG_FRAC > 0 and rng.random() < LONG_FRAC:
        n = rng.randint(150, 700)
        if rng.random() < 0.5:  # a shared document first: prefix-cache hits on sharded blocks
            doc = DOCS[rng.randrange(len(DOCS))]
            text = doc + " " + prompt(rng, max(20, n - doc.count(" ") - 1))
        else:
            text = prompt(rng, n)
        b["sparse_attention"] = sparse_spec(rng)
    if chat:
        b["messages"] = [{"role": "user", "content": text or prompt(rng)}]
    else:
        b["prompt"] = text or prompt(rng)
    if stream:
        b["stream"] = True
        if rng.random() < 0.5:
            b["stream_options"] = {"include_usage": True}
    return b


def generate(port, st, rng, chat, stream, max_tokens, kind, timeout=None, started=None):
    """One well-behaved request. Returns the HTTP status (or None on a
    transport error, which is a violation: nobody asked to be dropped)."""
    rid = st.rid(kind)
    body = gen_body(rng, rid, chat, stream, max_tokens)
    path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
    data = json.dumps(body).encode()
    c = http.client.HTTPConnection(HOST, port, timeout=timeout or 60 * TIME_SCALE)
    with st.lock:
        st.sent += 1
    try:
        c.request("POST", path, body=data, headers={"Content-Type": "application/json", "x-request-id": rid,
                                                     "Authorization": f"Bearer {KEY}"})
        r = c.getresponse()
        st.inc(f"{kind}:{r.status}")
        if r.status in (429, 503):
            r.read()
            if not r.getheader("Retry-After"):
                st.violate(f"{rid}: {r.status} without Retry-After")
            return r.status
        if r.status != 200:
            text = r.read()[:200]
            st.violate(f"{rid}: unexpected {r.status}: {text!r}")
            return r.status
        if r.getheader("x-request-id") != rid:
            st.violate(f"{rid}: x-request-id came back as {r.getheader('x-request-id')!r}")
        if not stream:
            o = json.loads(r.read())
            ch = o.get("choices") or []
            if len(ch) != 1 or ch[0].get("finish_reason") not in ("stop", "length"):
                st.violate(f"{rid}: incomplete body {o!r:.200}")
                return 200
            st.answered(rid, o.get("id"))
            return 200
        ids, finished, done, usage_wanted, usage = set(), False, False, body.get("stream_options"), False
        for raw in r:
            line = raw.rstrip(b"\r\n")
            if not line or line.startswith(b":"):
                continue
            if not line.startswith(b"data: "):
                st.violate(f"{rid}: bad SSE line {line[:80]!r}")
                return 200
            payload = line[6:]
            if started:
                started.set()
            if payload == b"[DONE]":
                done = True
                continue
            if done:
                st.violate(f"{rid}: data after [DONE]")
            ev = json.loads(payload)
            if "error" in ev:
                st.violate(f"{rid}: error event {ev!r:.200}")
                return 200
            ids.add(ev.get("id"))
            for ch in ev.get("choices", []):
                if ch.get("finish_reason"):
                    finished = True
            if ev.get("usage"):
                usage = True
        if not (done and finished and len(ids) == 1 and bool(usage) == bool(usage_wanted)):
            st.violate(f"{rid}: stream incomplete (done={done} finished={finished} ids={len(ids)} usage={usage})")
            return 200
        st.answered(rid, ids.pop())
        return 200
    except (OSError, http.client.HTTPException, ValueError) as e:
        st.inc(f"{kind}:transport_error")
        st.violate(f"{rid}: {type(e).__name__}: {e}")
        return None
    finally:
        c.close()


# ---- client kinds ----------------------------------------------------------------------------
def client_loop(port, st, stop, seed, stream):
    rng = random.Random(seed)
    kind = "stream" if stream else "plain"
    while not stop.is_set():
        status = generate(port, st, rng, rng.random() < 0.5, stream, rng.randint(1, 48), kind)
        if status in (429, 503):
            time.sleep(0.2)


def raw_request(path, body, extra=b"", method=b"POST", key=KEY):
    hdr = (method + b" " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
           b"Authorization: Bearer " + key.encode() + b"\r\n" + extra)
    if body is not None:
        hdr += b"Content-Length: " + str(len(body)).encode() + b"\r\n"
    return hdr + b"\r\n" + (body or b"")


def read_status(s, timeout=None):
    """Reads until the status line and headers arrived; (status, headers-bytes) or (None, b'')."""
    s.settimeout(timeout or 10 * TIME_SCALE)
    got = b""
    try:
        while b"\r\n\r\n" not in got:
            chunk = s.recv(4096)
            if not chunk:
                break
            got += chunk
    except OSError:
        pass
    m = re.match(rb"HTTP/1\.[01] (\d{3})", got)
    return (int(m.group(1)) if m else None), got


def disconnect_loop(port, st, stop, seed):
    rng = random.Random(seed)
    while not stop.is_set():
        how = rng.choice(["connect", "mid_headers", "mid_stream", "before_reply", "rst_stream"])
        rid = st.rid("gone")
        body = json.dumps(gen_body(rng, rid, rng.random() < 0.5, how != "before_reply", rng.randint(8, 200))).encode()
        req = raw_request(b"/v1/completions" if b'"prompt"' in body else b"/v1/chat/completions", body,
                          b"x-request-id: " + rid.encode() + b"\r\n")
        try:
            s = socket.create_connection((HOST, port), timeout=10)
            if how == "rst_stream":
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            if how == "mid_headers":
                s.sendall(req[:rng.randint(1, 40)])
                time.sleep(rng.random() * 0.3)
            elif how in ("mid_stream", "rst_stream"):
                s.sendall(req)
                want = rng.randint(0, 3000)
                got = 0
                s.settimeout(10)
                while got < want:
                    chunk = s.recv(min(4096, want - got))
                    if not chunk:
                        break
                    got += len(chunk)
            elif how == "before_reply":
                s.sendall(req)
                time.sleep(rng.random() * 0.2)
            s.close()
            st.inc(f"disconnect:{how}")
        except OSError as e:
            st.inc("disconnect:oserror")
        time.sleep(rng.random() * 0.1)


def slowloris_loop(port, st, stop, seed, deadline_s):
    """Trickles a request one byte every 0.4 s; the server must close the
    connection within request_deadline_s (plus the sweep period and slack)."""
    rng = random.Random(seed)
    while not stop.is_set():
        body = b'{"model":"soak","prompt":"' + b"x" * 200 + b'"}'
        if rng.random() < 0.5:   # headers never finish
            data = b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"X-Slow: " + b"a" * 200
            kind = "headers"
        else:                    # headers done, the body trickles
            data = raw_request(b"/v1/completions", body)
            kind = "body"
        try:
            s = socket.create_connection((HOST, port), timeout=10)
        except OSError:
            st.inc("slowloris:connect_error")
            continue
        t0 = time.time()
        closed_at = None
        i = 0
        if kind == "body":
            hdr_end = data.index(b"\r\n\r\n") + 4
            s.sendall(data[:hdr_end])
            i = hdr_end
        slack = SLOWLORIS_SLACK_S * TIME_SCALE
        limit = deadline_s + slack + 3
        while time.time() - t0 < limit:
            try:
                if i < len(data):
                    s.send(data[i:i + 1])
                    i += 1
                s.settimeout(0.4)
                chunk = s.recv(4096)
                if not chunk:
                    closed_at = time.time() - t0
                    break
                # A 408/400 answer before closing is fine too.
            except socket.timeout:
                continue
            except OSError:
                closed_at = time.time() - t0
                break
        s.close()
        if closed_at is None:
            st.violate(f"slowloris ({kind}) still open after {limit:.1f}s")
        else:
            with st.lock:
                st.slowloris.append(closed_at)
            if closed_at > deadline_s + slack:
                st.violate(f"slowloris ({kind}) closed after {closed_at:.1f}s > {deadline_s}+{slack}s")
        st.inc(f"slowloris:{kind}")


MALFORMED = [
    b"", b"{", b"[]", b"null", b'{"model":"soak"}', b'{"model":"soak","prompt":5}',
    b'{"model":"soak","prompt":"x","max_tokens":-1}', b'{"model":"soak","prompt":"x","n":1000}',
    b'{"model":"soak","prompt":"x","temperature":"hot"}', b'{"model":"soak","messages":[]}',
    b'{"model":"soak","prompt":"x","logit_bias":{"abc":1}}', b'{"model":"soak","prompt":"\xff\xfe"}',
    b'{"model":"soak","prompt":"x","sparse_attention":{"prefill":"magic"}}',
    b'{"model":"soak","prompt":"x","seed":1e400}', b'{"model":"soak","prompt":[[1,2],[-3]]}',
    b'{"model":"soak","prompt":"' + b"x" * 5000 + b'","max_tokens":100000}',
    b'{"model":"soak","prompt":' + b"[" * 5000 + b"]" * 5000 + b"}",
]


def malformed_loop(port, st, stop, seed, max_body):
    rng = random.Random(seed)
    while not stop.is_set():
        case = rng.randrange(9)
        try:
            s = socket.create_connection((HOST, port), timeout=10)
            want = {400}
            if case == 0:    # bad JSON of many shapes (a few are valid, e.g. for /tokenize;
                want = {200, 400, 429}  # valid ones for the model meet a full queue during bursts)
                body = rng.choice(MALFORMED)
                if rng.random() < 0.3:
                    body = bytes(rng.randrange(256) for _ in range(rng.randint(1, 300)))
                s.sendall(raw_request(rng.choice([b"/v1/completions", b"/v1/chat/completions", b"/tokenize",
                                                  b"/detokenize"]), body))
            elif case == 1:  # oversized with Content-Length: refused before the body
                want = {413}
                s.sendall(raw_request(b"/v1/completions", None, b"Content-Length: %d\r\n" % (max_body * 4)))
            elif case == 2:  # oversized, chunked: refused while reading
                want = {413}
                s.sendall(raw_request(b"/v1/completions", None, b"Transfer-Encoding: chunked\r\n"))
                chunk = b"x" * 16384
                try:
                    for _ in range(max_body // len(chunk) + 2):
                        s.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
                    s.sendall(b"0\r\n\r\n")
                except OSError:
                    pass
            elif case == 3:
                want = {404}
                s.sendall(raw_request(b"/v1/nothing-here", b"{}"))
            elif case == 4:
                want = {405}
                s.sendall(raw_request(b"/v1/completions", None, method=b"GET"))
            elif case == 5:
                want = {401}
                s.sendall(raw_request(b"/v1/completions", b'{"model":"soak","prompt":"x"}', key="sk-wrong"))
            elif case == 6:  # not HTTP at all
                want = {400, None}
                s.sendall(bytes(rng.randrange(256) for _ in range(rng.randint(1, 200))) + b"\r\n\r\n")
            elif case == 7:  # absurd header
                want = {400, 413, 431, None}
                s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n")
            else:            # bad Content-Length
                want = {400, 413, None}
                s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n")
            status, _ = read_status(s)
            s.close()
            st.inc(f"malformed:{status}")
            if status not in want:
                st.violate(f"malformed case {case}: status {status}, wanted {sorted(map(str, want))}")
        except OSError as e:
            st.inc("malformed:oserror")
        time.sleep(rng.random() * 0.05)


def burst(port, st, rng, n):
    res = []

    def one(i):
        r = generate(port, st, random.Random(rng.random()), False, False, 160, "burst")
        res.append(r)
    th = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in th:
        t.start()
    for t in th:
        t.join()
    with st.lock:
        st.burst_sent += n
        st.burst_429 += sum(1 for r in res if r == 429)


def burst_loop(port, st, stop, seed, n, every):
    rng = random.Random(seed)
    while not stop.wait(every * (0.5 + rng.random())):
        burst(port, st, rng, n)


# ---- phases ------------------------------------------------------------------------------------
def wait_idle(d, timeout=15.0):
    end = time.time() + timeout * TIME_SCALE
    m = {}
    while time.time() < end:
        m = d.metrics()
        if (m.get("lacuna:num_requests_running") == 0 and m.get("lacuna:num_requests_waiting") == 0 and
                m.get("lacuna:kv_blocks_used") == 0 and m.get("lacuna:http_streams_open") == 0):
            return True, m
        time.sleep(0.2)
    return False, m


def log_ids(path):
    """rid -> [statuses] from lacunad's request log lines."""
    out = {}
    with open(path, errors="replace") as f:
        for line in f:
            m = re.search(r'\breq (\S+) "[^"]*" (\d+)', line)
            if m:
                out.setdefault(m.group(1), []).append(int(m.group(2)))
    return out


def phase_soak(args, workdir, summary, st):
    d = Daemon(args, workdir)
    d.wait_healthy()
    cfg = config(args)
    deadline_s = int(cfg["server"]["request_deadline_s"])
    max_body = int(cfg["server"]["max_body_bytes"])
    burst_n = 3 * (int(cfg["engine"]["max_running"]) + int(cfg["server"]["max_waiting"]))
    stop = threading.Event()
    threads = []
    seed = args.seed
    for i in range(args.clients):
        threads.append(threading.Thread(target=client_loop, args=(d.port, st, stop, seed + i, False)))
        threads.append(threading.Thread(target=client_loop, args=(d.port, st, stop, seed + 100 + i, True)))
    for i in range(2):
        threads.append(threading.Thread(target=disconnect_loop, args=(d.port, st, stop, seed + 200 + i)))
        threads.append(threading.Thread(target=slowloris_loop, args=(d.port, st, stop, seed + 300 + i, deadline_s)))
    threads.append(threading.Thread(target=malformed_loop, args=(d.port, st, stop, seed + 400, max_body)))
    threads.append(threading.Thread(target=burst_loop, args=(d.port, st, stop, seed + 500, burst_n,
                                                             max(4.0, args.duration / 8))))
    rss = []
    t0 = time.time()
    for t in threads:
        t.daemon = True
        t.start()
    crashed = None
    while time.time() - t0 < args.duration:
        if d.proc.poll() is not None:
            crashed = d.proc.returncode
            break
        v = d.rss()
        if v:
            rss.append((time.time() - t0, v))
        time.sleep(0.5)
    stop.set()
    for t in threads:
        t.join(timeout=args.duration + 60)
    if crashed is None and d.proc.poll() is not None:
        crashed = d.proc.returncode
    if crashed is not None:
        st.violate(f"lacunad died during the soak (exit {crashed}); see {d.log_path}")
        summary["crash"] = True
        d.close()
        return None
    # One burst at the end as well, so a short run always overloads the queue.
    if st.burst_sent == 0:
        burst(d.port, st, random.Random(seed), burst_n)
    idle, m = wait_idle(d)
    summary["idle_metrics"] = {k: m.get("lacuna:" + k) for k in
                               ("num_requests_running", "num_requests_waiting", "kv_blocks_used", "http_streams_open",
                                "http_connections_open", "client_disconnects_total", "num_preemptions_total",
                                "cp_sharded_rows_total", "prefix_cache_hits_total")}
    summary["http_codes"] = {k.split('"')[1]: int(v) for k, v in m.items() if k.startswith("lacuna:http_requests_total{")}
    if not idle:
        st.violate(f"not idle after the load: {summary['idle_metrics']}")
    # Memory: flat across the run.
    if rss:
        third = max(1, len(rss) // 3)
        first = max(v for _, v in rss[:third])
        last = max(v for _, v in rss[-third:])
        limit = first * (1 + RSS_MARGIN_FRAC) + RSS_MARGIN_ABS
        summary["rss_mib"] = {"first_third_max": round(first / 2**20, 1), "last_third_max": round(last / 2**20, 1),
                              "peak": round(max(v for _, v in rss) / 2**20, 1), "limit": round(limit / 2**20, 1),
                              "samples": len(rss),
                              "series": [[round(t, 1), round(v / 2**20, 1)] for t, v in rss[::max(1, len(rss) // 60)]]}
        if last > limit and not args.no_rss_check:
            st.violate(f"RSS grew: last third max {last / 2**20:.1f} MiB > {limit / 2**20:.1f} MiB")
    # Each 200 answered once, and once in the daemon's log.
    logged = log_ids(d.log_path)
    dups = [r for r, n in st.ok_ids.items() if n != 1]
    dup_resp = [r for r, n in st.resp_ids.items() if n != 1]
    not_logged = [r for r in st.ok_ids if logged.get(r) != [200]]
    logged_twice = [r for r, s in logged.items() if r.startswith("soak-") and len(s) > 1]
    for name, lst in (("answered more than once", dups), ("response id repeated", dup_resp),
                      ("200 not logged exactly once as 200", not_logged), ("logged twice", logged_twice)):
        if lst:
            st.violate(f"{len(lst)} requests {name}: {lst[:5]}")
    five = {c: n for c, n in summary["http_codes"].items() if c.startswith("5") and c != "503"}
    if five:
        st.violate(f"5xx answers: {five}")
    if st.burst_429 == 0:
        st.violate(f"no 429 in {st.burst_sent} burst requests")
    if not st.slowloris:
        st.violate("no slowloris connection completed")
    return d


def phase_sigterm(args, workdir, summary, st, d):
    """Long streams in flight, then SIGTERM: they finish, new requests get
    503 or a refused connection, the daemon exits 0."""
    rng = random.Random(args.seed + 900)
    results = []
    started = [threading.Event() for _ in range(4)]

    def one(i):
        results.append(generate(d.port, st, random.Random(i), i % 2 == 0, True, args.drain_tokens, "drain",
                                started=started[i]))
    th = [threading.Thread(target=one, args=(i,)) for i in range(4)]
    for t in th:
        t.start()
    # In flight = the stream has begun (a client whose connection still sits
    # in the listen backlog gets 503 instead; see docs/security.md).
    for ev in started:
        ev.wait(10)
    t0 = time.time()
    d.proc.send_signal(signal.SIGTERM)
    time.sleep(0.1)
    # A new request while draining: refused (the listener is closed) or 503.
    try:
        s = socket.create_connection((HOST, d.port), timeout=5)
        s.sendall(raw_request(b"/v1/completions", b'{"model":"soak","prompt":"late","max_tokens":2}'))
        late, _ = read_status(s)
        s.close()
    except OSError:
        late = "refused"
    if late not in ("refused", 503, None):
        st.violate(f"SIGTERM: a new request while draining got {late}")
    for t in th:
        t.join(timeout=60)
    try:
        rc = d.proc.wait(timeout=int(config(args)["server"]["drain_timeout_s"]) + 10)
    except subprocess.TimeoutExpired:
        rc = None
    summary["sigterm"] = {"exit": rc, "seconds": round(time.time() - t0, 2), "inflight": len(th),
                          "inflight_200": sum(1 for r in results if r == 200), "late_request": late}
    if rc != 0:
        st.violate(f"SIGTERM: exit status {rc}")
    if sum(1 for r in results if r == 200) != len(th):
        st.violate(f"SIGTERM: in-flight streams answered {results}")
    d.close()


def phase_kill9(args, workdir, summary, st):
    d = Daemon(args, workdir, tag="kill9")
    d.wait_healthy()
    port = d.port
    stop = threading.Event()
    th = [threading.Thread(target=lambda i=i: generate(port, Stats(), random.Random(i), False, True, 400, "k9"))
          for i in range(4)]
    for t in th:
        t.daemon = True
        t.start()
    time.sleep(0.5)
    d.proc.send_signal(signal.SIGKILL)
    d.proc.wait()
    d.log.close()
    t0 = time.time()
    d2 = Daemon(args, workdir, port=port, tag="kill9")
    try:
        took = d2.wait_healthy(timeout=30)
        r = generate(port, st, random.Random(7), False, False, 4, "restart")
        summary["kill9"] = {"healthy_after_s": round(time.time() - t0, 2), "first_request": r}
        if time.time() - t0 > RESTART_HEALTHY_S * TIME_SCALE:
            st.violate(f"restart after kill -9 took {time.time() - t0:.1f}s")
        if r != 200:
            st.violate(f"first request after restart: {r}")
    except RuntimeError as e:
        st.violate(f"restart after kill -9 failed: {e}")
    finally:
        d2.proc.send_signal(signal.SIGTERM)
        try:
            d2.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        d2.close()
    for t in th:
        t.join(timeout=5)


def make_model(args, workdir):
    path = os.path.join(workdir, "soak.gguf")
    subprocess.run([args.lacuna, "mkmodel", "-o", path, "--layers", "4", "--embd", "128", "--heads", "4",
                    "--kv-heads", "2", "--ff", "384", "--vocab", "synthetic", "--ctx", str(args.model_ctx)],
                   check=True, capture_output=True)
    return path


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lacunad", required=True)
    ap.add_argument("--lacuna", help="for `lacuna mkmodel` when --model is not given")
    ap.add_argument("--model")
    ap.add_argument("--duration", type=float, default=float(os.environ.get("LACUNA_SOAK_SECONDS", 120)))
    ap.add_argument("--clients", type=int, default=3, help="streaming and non-streaming clients, each")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--drain-tokens", type=int, default=400,
                    help="tokens of each stream in flight at SIGTERM; must finish within drain_timeout_s (30 s)")
    ap.add_argument("--workdir")
    ap.add_argument("--json", help="write the summary here")
    ap.add_argument("--no-rss-check", action="store_true", help="report RSS but do not judge it (sanitizer builds)")
    ap.add_argument("--long-frac", type=float, default=0.0,
                    help="share of requests with long prompts (150-700 words) and a random sparse_attention")
    ap.add_argument("--model-ctx", type=int, default=1024, help="context of the mkmodel model (without --model)")
    ap.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="a daemon setting (repeatable)")
    ap.add_argument("--time-scale", type=float, default=1.0,
                    help="multiply the time limits (restart, slowloris slack, replies) by this (sanitizer builds)")
    ap.add_argument("--completions-only", action="store_true",
                    help="no chat requests (a base model without a chat template, e.g. Gemma 3 270M)")
    args = ap.parse_args()
    global LONG_FRAC, NO_CHAT, TIME_SCALE
    LONG_FRAC = args.long_frac
    TIME_SCALE = args.time_scale
    NO_CHAT = args.completions_only
    workdir = args.workdir or tempfile.mkdtemp(prefix="lacuna-soak-")
    os.makedirs(workdir, exist_ok=True)
    if not args.model:
        if not args.lacuna:
            ap.error("--model or --lacuna is required")
        args.model = make_model(args, workdir)
    st = Stats()
    summary = {"duration_s": args.duration, "model": os.path.basename(args.model), "workdir": workdir}
    t0 = time.time()
    d = phase_soak(args, workdir, summary, st)
    if d:
        phase_sigterm(args, workdir, summary, st, d)
    phase_kill9(args, workdir, summary, st)
    summary["wall_s"] = round(time.time() - t0, 1)
    summary["counts"] = dict(sorted(st.counts.items()))
    summary["requests_sent"] = st.sent
    summary["answered_200"] = len(st.ok_ids)
    summary["burst"] = {"sent": st.burst_sent, "429": st.burst_429}
    if st.slowloris:
        summary["slowloris_close_s"] = {"n": len(st.slowloris), "min": round(min(st.slowloris), 2),
                                        "max": round(max(st.slowloris), 2)}
    summary["violations"] = st.violations
    print_table(summary)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=1)
    return 1 if st.violations else 0


def print_table(s):
    rows = [("duration (s) / wall (s)", f"{s['duration_s']:g} / {s.get('wall_s')}"),
            ("model", s["model"]),
            ("requests sent (well-behaved)", s.get("requests_sent")),
            ("200 complete, each exactly once", s.get("answered_200"))]
    c = s.get("counts", {})
    for k in ("plain:200", "stream:200", "plain:429", "stream:429", "burst:200", "burst:429"):
        rows.append((k, c.get(k, 0)))
    rows.append(("disconnects (all kinds)", sum(v for k, v in c.items() if k.startswith("disconnect:"))))
    rows.append(("malformed / oversized sent", sum(v for k, v in c.items() if k.startswith("malformed:"))))
    if "slowloris_close_s" in s:
        sl = s["slowloris_close_s"]
        rows.append(("slowloris closed after (s)", f"n={sl['n']} min={sl['min']} max={sl['max']}"))
    rows.append(("burst: 429 / sent", f"{s['burst']['429']} / {s['burst']['sent']}"))
    if "http_codes" in s:
        rows.append(("server status codes", " ".join(f"{k}:{v}" for k, v in sorted(s["http_codes"].items()))))
    if "idle_metrics" in s:
        im = s["idle_metrics"]
        rows.append(("idle: running / waiting / kv used",
                     f"{im['num_requests_running']:g} / {im['num_requests_waiting']:g} / {im['kv_blocks_used']:g}"))
        rows.append(("preemptions / sharded rows (context parallelism) / prefix-cache hit tokens",
                     f"{im.get('num_preemptions_total') or 0:g} / {im.get('cp_sharded_rows_total') or 0:g} / "
                     f"{im.get('prefix_cache_hits_total') or 0:g}"))
    if "rss_mib" in s:
        r = s["rss_mib"]
        rows.append(("RSS MiB first-third max / last-third max",
                     f"{r['first_third_max']} / {r['last_third_max']} (limit {r['limit']}, peak {r['peak']})"))
    if "sigterm" in s:
        t = s["sigterm"]
        rows.append(("SIGTERM under load", f"exit {t['exit']} in {t['seconds']}s, in-flight 200: "
                                           f"{t['inflight_200']}/{t['inflight']}, late request: {t['late_request']}"))
    if "kill9" in s:
        rows.append(("kill -9 + restart: healthy after (s)", f"{s['kill9']['healthy_after_s']}, "
                                                             f"first request {s['kill9']['first_request']}"))
    rows.append(("violations", len(s["violations"])))
    w = max(len(a) for a, _ in rows)
    print(f"| {'check'.ljust(w)} | result |")
    print(f"|{'-' * (w + 2)}|--------|")
    for a, b in rows:
        print(f"| {a.ljust(w)} | {b} |")
    for v in s["violations"]:
        print("VIOLATION:", v)


if __name__ == "__main__":
    sys.exit(main())

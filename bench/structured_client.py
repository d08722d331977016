#!/usr/bin/env python3
"""Decode tokens/s through lacunad with and without response_format: C
concurrent chat requests of max_tokens tokens each, plain (ignore_eos) or
under a JSON schema whose strings keep the model busy for the whole budget
(a list of long strings). Rounds alternate the order of the two arms
(A,B then B,A ...) so that drift on a shared machine hits both; prints the
median of each arm and every round's figures as a markdown table.

Usage: structured_client.py URL [--rounds R] [--concurrency 1,16] [--tokens N]
"""
import argparse
import concurrent.futures
import json
import statistics
import time
import urllib.request

SCHEMA = {"type": "object", "properties": {"items": {"type": "array", "items": {"type": "string"}}},
          "required": ["items"], "additionalProperties": False}


def post(url, body):
    req = urllib.request.Request(url + "/v1/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=3600) as r:
        return json.loads(r.read())


def model_name(url):
    with urllib.request.urlopen(url + "/v1/models", timeout=60) as r:
        return json.loads(r.read())["data"][0]["id"]


def run(url, model, conc, tokens, schema, seed0):
    def one(i):
        body = {"model": model, "max_tokens": tokens, "seed": seed0 + i, "temperature": 1.0,
                "messages": [{"role": "user", "content": f"List {i + 3} facts about the number {i + 7} in JSON."}]}
        if schema:
            body["response_format"] = {"type": "json_schema", "json_schema": {"name": "facts", "schema": SCHEMA}}
        else:
            body["ignore_eos"] = True
        r = post(url, body)
        return r["usage"]["completion_tokens"]

    t0 = time.time()
    with concurrent.futures.ThreadPoolExecutor(conc) as ex:
        n = sum(ex.map(one, range(conc)))
    return n / (time.time() - t0), n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--concurrency", default="1,16")
    ap.add_argument("--tokens", type=int, default=48)
    a = ap.parse_args()
    model = model_name(a.url)
    print("| concurrent requests | plain tok/s (median) | with schema tok/s (median) | ratio | rounds (plain / schema) |")
    print("|---|---|---|---|---|")
    for conc in [int(c) for c in a.concurrency.split(",")]:
        res = {False: [], True: []}
        for rnd in range(a.rounds):
            order = (False, True) if rnd % 2 == 0 else (True, False)
            for arm in order:
                tps, _ = run(a.url, model, conc, a.tokens, arm, 1000 * rnd)
                res[arm].append(tps)
        p, s = statistics.median(res[False]), statistics.median(res[True])
        rounds = ", ".join(f"{x:.1f}/{y:.1f}" for x, y in zip(res[False], res[True]))
        print(f"| {conc} | {p:.1f} | {s:.1f} | {s / p:.2f} | {rounds} |")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Paired retrieval accuracy: the same prompts through every method, the
answers each method loses and gains against dense, with 95% intervals.

Samples. One sample is one haystack and one question about it (independent
samples: no two questions share a haystack), built by retrieval.py's
generators: passkey (a pass key in filler), multikey (four magic numbers in
natural text, one asked: three distractors), vartrack (two one-hop variable
chains, one asked). Each (task, length, sample index) has its own random
stream (--seed), so a sample never depends on which others were built, and
a larger sample count in --plan extends a run rather than replacing it.

Methods (--methods, comma-separated NAME or NAME:key=value;key=value):
dense, flexprefill, anchor, streaming, each with the engine's defaults, and
e.g. "flexprefill:min_budget=256" or "anchor:theta=9" for a sparser setting.
Every method sees every sample (paired). A method whose defaults compute
every key at a length is still run (its density says so).

Prompts. --format chat (the model's chat template; SmolLM2) or raw (a base
model such as Gemma 3 270M: "<haystack>\\n\\nQuestion: <q>\\nAnswer:").
Greedy, --max-tokens 16; right when the expected number appears in the output.

Statistics, per task (and all tasks together), length and method:
  accuracy with a Wilson 95% interval;
  against dense on the same samples: lost (dense right, method wrong) and
  gained (the reverse), the exact McNemar p-value, a paired bootstrap 95%
  interval of the accuracy difference, and the share of dense's right answers
  lost with its exact (Clopper-Pearson) 95% upper bound: the issue's target
  is "loses no more than 1% of the answers dense gets right".

Kernel sets (--cpu-sets, CPU only). A sparse method's lost answer is often
a near-tie between two numbers in the haystack that rounding decides: the
same requests under another CPU kernel set (LACUNA_CPU=avx2: other
summation orders in every matmul) flip some of them either way. With two or
more sets every request runs under each (results in OUT/paired.jsonl for
the machine's own set, "native", and OUT/paired.SET.jsonl for a forced
one), each set gets its table, and a last table counts per sample across
the sets: dense right under every set (the denominator), lost under every
set (a persistent loss: the method's, not the rounding's), lost under some
set only (a near-tie), and gained under every set.

A results file of another machine joins the last table the same way: the
GPU executor's OUT/paired.jsonl copied in as OUT/paired.gpu.jsonl makes
bf16 on the GPU one more arithmetic beside the CPU's sets. --samples then
keeps the CPU run to the samples that can count (those some method, dense
included, answered right there): a sample wrong for every method under one
set is lost, gained and right under all sets for none.

Runs resume: results are appended to OUT/paired[.SET].jsonl as they come,
and a request already answered there is not sent again.

  python3 bench/accuracy/paired.py --lacuna build/lacuna --plan 4096:100 \\
      --methods dense,flexprefill,anchor --out bench/accuracy/results/smollm2
  python3 bench/accuracy/paired.py --cpu-sets native,avx2 ... --out DIR
  python3 bench/accuracy/paired.py --summarize --out bench/accuracy/results/smollm2
"""
import argparse
import collections
import concurrent.futures
import glob
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import retrieval  # noqa: E402

TASKS = ("passkey", "multikey", "vartrack")


# ---- samples ---------------------------------------------------------------------------
def one_question(task, length, i, qs, seed):
    """The question a sample asks: multikey and vartrack pick one of theirs."""
    if len(qs) == 1:
        return qs[0]
    return qs[random.Random(f"{seed}/{task}/{length}/{i}/q").randrange(len(qs))]


def render(fmt, hay, q):
    if fmt == "chat":
        return {"messages": [{"role": "user", "content": hay + "\n\n" + q}]}
    return {"prompt": hay + "\n\nQuestion: " + q + "\nAnswer:"}


def parse_method(s):
    name, _, knobs = s.partition(":")
    spec = {"prefill": name, "decode": "dense"}
    for kv in filter(None, knobs.split(";")):
        k, _, v = kv.partition("=")
        spec[k] = float(v) if "." in v else int(v)
    return s, spec


def parse_samples(s):
    """'3,4,10-12' -> {3, 4, 10, 11, 12}."""
    out = set()
    for part in filter(None, s.split(",")):
        a, _, b = part.partition("-")
        out.update(range(int(a), int(b or a) + 1))
    return out


def build(args, done):
    text = retrieval.corpus_text()
    methods = [parse_method(m) for m in args.methods.split(",")]
    plan = [(int(l), int(n)) for l, n in (x.split(":") for x in args.plan.split(","))]
    gen = argparse.Namespace(lacuna=args.lacuna, model=args.model, seed=args.seed)
    only = getattr(args, "samples", None)
    pending = []
    for length, n in plan:  # sample-major: a run cut short still has every task
        for i in range(n):
            if only is not None and i not in only:
                continue
            for task in args.tasks.split(","):
                keys = [json.dumps({"length": length, "task": task, "sample": i, "method": m}, sort_keys=True)
                        for m, _ in methods]
                if not all(k in done for k in keys):
                    pending.append((length, i, task, keys))
    # Each haystack has its own random stream and is sized by the model's
    # tokenizer (a `lacuna tokenize` process per try): built on every core.
    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as ex:
        hays = list(ex.map(lambda t: retrieval.make_haystack(gen, t[2], t[0], t[1], text), pending))
    lines = []
    for (length, i, task, keys), (hay, qs) in zip(pending, hays):
        q, ans = one_question(task, length, i, qs, args.seed)
        for (m, spec), key in zip(methods, keys):
            if key in done:
                continue
            line = {"id": dict(json.loads(key), answer=ans), "max_tokens": args.max_tokens,
                    "sparse_attention": spec}
            line.update(render(args.format, hay, q))
            lines.append(line)
    return lines


# ---- statistics ------------------------------------------------------------------------
def wilson(k, n, z=1.959963984540054):
    if n == 0:
        return (float("nan"), float("nan"))
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (max(0.0, c - h), min(1.0, c + h))


def binom_cdf(k, n, p):
    """P(X <= k) for X ~ Binomial(n, p), exactly (sums in log space)."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    s = 0.0
    for i in range(k + 1):
        s += math.exp(math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) +
                      (i * math.log(p) if i else 0.0) + ((n - i) * math.log1p(-p) if n - i else 0.0))
    return min(1.0, s)


def mcnemar_exact(b, c):
    """Two-sided exact McNemar p-value from the discordant counts."""
    n = b + c
    if n == 0:
        return 1.0
    return min(1.0, 2 * binom_cdf(min(b, c), n, 0.5))


def cp_upper(k, n, alpha=0.05):
    """Clopper-Pearson one-sided upper (1 - alpha) bound of a proportion k/n."""
    if n == 0:
        return float("nan")
    if k >= n:
        return 1.0
    lo, hi = k / n, 1.0
    for _ in range(60):  # P(X <= k | p) decreases in p: find where it equals alpha
        mid = (lo + hi) / 2
        if binom_cdf(k, n, mid) > alpha:
            lo = mid
        else:
            hi = mid
    return hi


def bootstrap_diff(pairs, reps=4000, seed=1):
    """Paired bootstrap 95% interval of mean(method) - mean(dense)."""
    if not pairs:
        return (float("nan"), float("nan"))
    rng = random.Random(seed)
    n = len(pairs)
    d = [m - r for r, m in pairs]
    stats = sorted(sum(d[rng.randrange(n)] for _ in range(n)) / n for _ in range(reps))
    return (stats[int(0.025 * reps)], stats[int(0.975 * reps) - 1])


# ---- running and summarizing -------------------------------------------------------------
def load(path):
    res = {}
    if os.path.exists(path):
        for line in open(path):
            try:
                r = json.loads(line)
            except ValueError:
                continue  # a line cut short by an interrupted run
            i = dict(r["id"])
            i.pop("answer", None)
            res[json.dumps(i, sort_keys=True)] = r
    return res


def collect(path):
    """(task, length, method) -> {sample: (right, density, ttft)}, every task also under "all"."""
    by = collections.defaultdict(dict)
    for r in load(path).values():
        i = r["id"]
        if "error" in r:
            print(f"refused by the engine: {i} ({r['error']})", file=sys.stderr)
            continue
        by[(i["task"], i["length"], i["method"])][i["sample"]] = (i["answer"] in r["text"],
                                                                  r.get("prefill_density") or 1.0, r["ttft_s"])
    for (task, length, m), cur in list(by.items()):  # every task together: the target holds for each and all
        for i, v in cur.items():
            by[("all", length, m)][(task, i)] = v
    return by


def methods_of(by):
    return sorted({k[2] for k in by}, key=lambda m: (m != "dense", m))


def keys_of(by):
    """(task, length) in table order: each task, then all tasks together."""
    return [(t, l) for t in TASKS + ("all",) for l in sorted({k[1] for k in by if k[0] == t})]


def table(by):
    rows = ["| task | length | method | n | accuracy [95% CI] | density | lost | gained | McNemar p | "
            "difference [95% CI] | lost / dense right [95% upper] |",
            "|---|---:|---|---:|---|---:|---:|---:|---:|---|---|"]
    for task, length in keys_of(by):
        ref = by.get((task, length, "dense"), {})
        for m in methods_of(by):
            cur = by.get((task, length, m))
            if not cur:
                continue
            n = len(cur)
            k = sum(v[0] for v in cur.values())
            lo, hi = wilson(k, n)
            dens = sum(v[1] for v in cur.values()) / n
            cell = f"| {task} | {length} | {m} | {n} | {k / n:.2f} [{lo:.2f}, {hi:.2f}] | {dens:.3f} |"
            common = sorted(set(cur) & set(ref))
            if m == "dense" or not common:
                rows.append(cell + " | | | | |")
                continue
            pairs = [(int(ref[s][0]), int(cur[s][0])) for s in common]
            lost = sum(1 for r, c in pairs if r and not c)
            gained = sum(1 for r, c in pairs if c and not r)
            right = sum(r for r, _ in pairs)
            dlo, dhi = bootstrap_diff(pairs)
            share = f"{lost}/{right} = {lost / right:.3f} [≤ {cp_upper(lost, right):.3f}]" if right else "–"
            rows.append(cell + f" {lost} | {gained} | {mcnemar_exact(lost, gained):.3f} | "
                        f"{(sum(c for _, c in pairs) - right) / len(pairs):+.3f} [{dlo:+.3f}, {dhi:+.3f}] | "
                        f"{share} |")
    return "\n".join(rows)


def across(bys):
    """Per sample across kernel sets: only samples every set ran for dense and the method count."""
    names = list(bys)
    first = bys[names[0]]
    rows = [f"| task | length | method | n | dense right under all {len(names)} | lost under all | "
            "lost under some only | gained under all | McNemar p (all) | "
            "persistent lost / dense right [95% upper] |",
            "|---|---:|---|---:|---:|---:|---:|---:|---:|---|"]
    for task, length in keys_of(first):
        for m in methods_of(first):
            if m == "dense":
                continue
            sets = [(b.get((task, length, "dense"), {}), b.get((task, length, m), {})) for b in bys.values()]
            common = set.intersection(*(set(d) & set(c) for d, c in sets))
            if not common:
                continue
            ref_all = lost_all = lost_some = gained_all = 0
            for s in common:
                r = [d[s][0] for d, _ in sets]
                c = [x[s][0] for _, x in sets]
                lost = [a and not b for a, b in zip(r, c)]
                gain = [b and not a for a, b in zip(r, c)]
                ref_all += all(r)
                lost_all += all(lost)
                lost_some += any(lost) and not all(lost)
                gained_all += all(gain)
            share = (f"{lost_all}/{ref_all} = {lost_all / ref_all:.3f} [≤ {cp_upper(lost_all, ref_all):.3f}]"
                     if ref_all else "–")
            rows.append(f"| {task} | {length} | {m} | {len(common)} | {ref_all} | {lost_all} | {lost_some} | "
                        f"{gained_all} | {mcnemar_exact(lost_all, gained_all):.3f} | {share} |")
    return "\n".join(rows)


def result_files(out):
    """{kernel set: results file}: paired.jsonl is the machine's own set."""
    files = {"native": os.path.join(out, "paired.jsonl")}
    for f in sorted(glob.glob(os.path.join(out, "paired.*.jsonl"))):
        files[os.path.basename(f)[len("paired."):-len(".jsonl")]] = f
    return {k: v for k, v in files.items() if os.path.exists(v)}


def summarize(out, out_md=None):
    bys = {k: collect(f) for k, f in result_files(out).items()}
    parts = []
    for k, by in bys.items():
        if len(bys) > 1:
            parts.append(f"Kernel set: {k}\n")
        parts.append(table(by) + "\n")
    if len(bys) > 1:
        parts.append(f"Across the kernel sets ({', '.join(bys)}), per sample:\n")
        parts.append(across(bys) + "\n")
    text = "\n".join(parts)
    print(text, end="")
    if out_md:
        open(out_md, "w").write(text)


def run(args, cpu):
    """Every request of the plan not yet answered under kernel set cpu, through lacuna complete."""
    if cpu not in ("native", "avx512", "avx2", "scalar"):
        sys.exit(f"paired: unknown kernel set {cpu!r} (native, avx512, avx2, scalar)")
    path = os.path.join(args.out, "paired.jsonl" if cpu == "native" else f"paired.{cpu}.jsonl")
    lines = build(args, load(path))
    print(f"paired: {len(lines)} requests to run under kernel set {cpu}", file=sys.stderr)
    if not lines:
        return
    env = dict(os.environ)
    env.pop("LACUNA_CPU", None)
    if cpu != "native":
        env["LACUNA_CPU"] = cpu
    fd, req = tempfile.mkstemp(suffix=".jsonl")  # the prompts: large, not kept
    with os.fdopen(fd, "w") as f:
        for line in lines:
            f.write(json.dumps(line) + "\n")
    t0 = time.time()
    part = path + ".part"
    rc = subprocess.run([args.lacuna, "complete", "-m", args.model, "-i", req, "-o", part, "-c",
                         str(args.concurrency), "--chunk", str(args.chunk), "--device", args.device],
                        env=env).returncode
    os.remove(req)
    with open(path, "a") as out:  # what finished, also after an interruption
        if os.path.exists(part):
            out.write(open(part).read())
            os.remove(part)
    print(f"paired: {time.time() - t0:.0f} s (rc {rc})", file=sys.stderr)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lacuna", default="./lacuna")
    ap.add_argument("--model", default=os.path.join(HERE, "../../models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--out", default=os.path.join(HERE, "results", "paired"))
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--plan", default="4096:100,8192:100,16384:20,32768:20",
                    help="LENGTH:SAMPLES per task, comma-separated")
    ap.add_argument("--methods", default="dense,flexprefill,anchor,flexprefill:min_budget=256,anchor:theta=9")
    ap.add_argument("--samples", type=parse_samples, default=None,
                    help="only these sample indices of each length, e.g. 3,4,10-12 (default: all of the plan's)")
    ap.add_argument("--format", choices=("chat", "raw"), default="chat")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--chunk", type=int, default=2048, help="prefill chunk (what sparse prefill chooses over)")
    ap.add_argument("--concurrency", type=int, default=1)
    ap.add_argument("--device", default="cpu", help="lacuna complete's device (cpu, cuda:0, auto)")
    ap.add_argument("--cpu-sets", default="native",
                    help="CPU kernel sets to run every request under: native (the machine's own), avx512, avx2, "
                         "scalar (LACUNA_CPU), comma-separated")
    ap.add_argument("--summarize", action="store_true", help="only print the table from existing results")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    if not args.summarize:
        for cpu in args.cpu_sets.split(","):
            run(args, cpu)
    summarize(args.out, os.path.join(args.out, "paired.md"))


if __name__ == "__main__":
    main()

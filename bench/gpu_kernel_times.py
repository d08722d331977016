#!/usr/bin/env python3
"""Per-kernel GPU time of a program's decode steps, from Nsight Compute.

Runs CMD under `ncu --metrics gpu__time_duration.sum --csv` (clocks left
alone), keeping the kernels whose names match --kernels, skipping the first
--skip of them (the prompt's) and profiling the next --count; then prints,
per kernel, how many launches, their mean and their total in microseconds,
and the total divided by --per (e.g. the decode steps profiled, to read
microseconds per step) or by the launches of --per-kernel (a kernel that
runs once a layer: microseconds per layer). ncu runs each kernel alone, so the times are the
kernels' own, without the gaps between them: compare methods on them, not
with wall-clock step times.

    python3 bench/gpu_kernel_times.py --kernels 'decode_kernel|score_kernel' \\
        --skip 300 --count 300 --per 32 -- lacuna complete -m M.gguf ...
"""
import argparse
import collections
import csv
import io
import re
import subprocess
import sys


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kernels", required=True, help="regex of kernel names (ncu -k regex:...)")
    ap.add_argument("--skip", type=int, default=0)
    ap.add_argument("--count", type=int, default=200)
    ap.add_argument("--per", type=float, default=0, help="divide each total by this (e.g. steps profiled)")
    ap.add_argument("--per-kernel", help="divide each total by this kernel's launches (one a layer: per layer)")
    ap.add_argument("--ncu", default="ncu")
    ap.add_argument("--label", default="")
    ap.add_argument("cmd", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    cmd = a.cmd[1:] if a.cmd[:1] == ["--"] else a.cmd
    if not cmd:
        ap.error("no command")
    run = [a.ncu, "--clock-control", "none", "--metrics", "gpu__time_duration.sum", "--csv",
           "-k", "regex:" + a.kernels, "--launch-skip", str(a.skip), "--launch-count", str(a.count)] + cmd
    p = subprocess.run(run, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # the CSV starts at its header line; the program's own output comes before it
    out = p.stdout
    start = out.find('"ID","Process ID"')
    if start < 0:
        sys.stderr.write(p.stderr[-2000:] + "\n")
        print(f"{a.label}: no kernel profiled (ncu status {p.returncode})")
        return 1
    n, tot = collections.Counter(), collections.Counter()
    for row in csv.DictReader(io.StringIO(out[start:])):
        if row.get("Metric Name") != "gpu__time_duration.sum":
            continue
        name = re.sub(r"\(.*", "", row["Kernel Name"]).replace("void ", "").replace("<unnamed>::", "")
        scale = {"ns": 1e-3, "usecond": 1, "us": 1, "msecond": 1e3, "ms": 1e3}.get(row["Metric Unit"], 1e-3)
        n[name] += 1
        tot[name] += float(row["Metric Value"].replace(",", "")) * scale
    if a.per_kernel:
        a.per = next((n[k] for k in n if a.per_kernel in k), 0)
        per = f" | per {a.per_kernel} launch"
    else:
        per = f" | per {a.per:g}" if a.per else ""
    print(f"\n{a.label} (ncu, kernels alone)\n\n| kernel | launches | mean µs | total µs{per} |")
    print("|---|---:|---:|---:|" + ("---:|" if a.per else ""))
    for k in sorted(tot, key=lambda k: -tot[k]):
        extra = f" | {tot[k] / a.per:.1f}" if a.per else ""
        print(f"| {k} | {n[k]} | {tot[k] / n[k]:.1f} | {tot[k]:.1f}{extra} |")
    s = sum(tot.values())
    print(f"| all | {sum(n.values())} | | {s:.1f}" + (f" | {s / a.per:.1f} |" if a.per else " |"))
    return 0


if __name__ == "__main__":
    sys.exit(main())

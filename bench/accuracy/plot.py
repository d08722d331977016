#!/usr/bin/env python3
"""docs/img/accuracy.png from bench/accuracy/results: (left) relative error of
each prefill and decode setting against its density, per prompt length,
from attn-eval's CSVs; (right) retrieval accuracy per method and length.
Needs matplotlib (pip install matplotlib); exits 1 with a note without it.
  python3 bench/accuracy/plot.py [RESULTS_DIR]"""
import collections
import csv
import glob
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    res = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "results")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("plot.py: matplotlib is not installed; no plot", file=sys.stderr)
        return 1
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 5))
    # attn-eval: mean over sampled layers of relerr and density per (tokens, setting)
    agg = collections.defaultdict(lambda: [0.0, 0.0, 0])
    for path in sorted(glob.glob(os.path.join(res, "attn_eval_*.csv"))):
        for r in csv.DictReader(open(path)):
            if r["kind"] != "prefill":
                continue
            a = agg[(int(r["tokens"]), r["setting"])]
            a[0] += float(r["relerr"])
            a[1] += float(r["density"])
            a[2] += 1
    markers = {"flexprefill": "o", "anchor": "s", "streaming": "^"}
    colors = {2048: "tab:blue", 4096: "tab:orange", 8000: "tab:green"}
    for (tok, setting), (re, de, n) in sorted(agg.items()):
        m = markers[setting.split()[0]]
        ax.scatter(de / n, re / n, marker=m, color=colors.get(tok, "gray"), s=40)
        ax.annotate(setting.replace("flexprefill", "flex"), (de / n, re / n), fontsize=6, alpha=0.7)
    for tok, c in colors.items():
        ax.scatter([], [], color=c, label=f"{tok} tokens")
    for name, m in markers.items():
        ax.scatter([], [], marker=m, color="k", label=name)
    ax.set_xlabel("prefill density (computed / causal pairs)")
    ax.set_ylabel("relative error of attention output (mean over sampled layers)")
    ax.set_yscale("symlog", linthresh=1e-3)
    ax.set_title("SmolLM2-135M activations: error vs density (prefill)")
    ax.legend(fontsize=7)
    # retrieval accuracy
    sp = os.path.join(res, "retrieval_summary.json")
    if os.path.exists(sp):
        s = json.load(open(sp))
        acc = collections.defaultdict(lambda: [0, 0])
        for k, v in s.items():
            task, length, method = k.split("|")
            a = acc[(method, int(length))]
            a[0] += v[0]
            a[1] += v[1]
        methods = ["dense", "flexprefill", "anchor", "streaming", "quest", "tidal"]
        lengths = sorted({l for _, l in acc})
        w = 0.8 / len(methods)
        for i, m in enumerate(methods):
            xs = [j + i * w for j, l in enumerate(lengths) if (m, l) in acc]
            ys = [acc[(m, l)][0] / acc[(m, l)][1] for l in lengths if (m, l) in acc]
            bx.bar(xs, ys, width=w, label=m)
        bx.set_xticks([j + 0.4 - w / 2 for j in range(len(lengths))])
        bx.set_xticklabels([f"~{l}" for l in lengths])
        bx.set_xlabel("prompt tokens (target)")
        bx.set_ylabel("accuracy (all tasks pooled)")
        bx.set_title("Retrieval through the engine (small samples, see tables)")
        bx.legend(fontsize=7)
    out = os.path.join(HERE, "../../docs/img/accuracy.png")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"plot.py: wrote {os.path.normpath(out)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

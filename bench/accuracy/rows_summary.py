#!/usr/bin/env python3
"""Summarizes `lacuna attn-eval --rows` CSVs: per file, setting and layer,
the rows whose attention output is off by more than --bad (relative), the
worst rows with their lowest head recall, and the mean error per span of
--span rows (where in the prompt a method loses rows).

  python3 bench/accuracy/rows_summary.py [--bad 0.05] [--span 1024] ROWS.csv [MORE.csv]
"""
import argparse
import collections
import csv


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+")
    ap.add_argument("--bad", type=float, default=0.05)
    ap.add_argument("--span", type=int, default=1024)
    args = ap.parse_args()
    print("| file | setting | layer | rows | rows off > %g | mean error | worst rows (error, lowest recall) | "
          "mean error per %d rows |" % (args.bad, args.span))
    print("|---|---|---:|---:|---:|---:|---|---|")
    for f in args.files:
        by = collections.defaultdict(list)
        for r in csv.DictReader(open(f)):
            by[(r["setting"], int(r["layer"]))].append((int(r["row"]), float(r["relerr"]), float(r["recall_min"])))
        for (s, layer), v in sorted(by.items()):
            bad = sum(1 for _, e, _ in v if e > args.bad)
            worst = sorted(v, key=lambda x: -x[1])[:3]
            spans = collections.defaultdict(list)
            for row, e, _ in v:
                spans[row // args.span].append(e)
            print(f"| {f.rsplit('/', 1)[-1]} | {s} | {layer} | {len(v)} | {bad} | "
                  f"{sum(e for _, e, _ in v) / len(v):.4f} | "
                  + ", ".join(f"{row} ({e:.2f}, {m:.2f})" for row, e, m in worst) + " | "
                  + " ".join(f"{sum(x) / len(x):.3f}" for _, x in sorted(spans.items())) + " |")


if __name__ == "__main__":
    main()

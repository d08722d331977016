"""What tests/gpu/bench_flex_ref.py's rows are and how they are compared:
the row record, the main table, the LSE form of recall, and the equal-error
tables (issue 11: "our FlexPrefill >= 2x faster than the reference with no
more error", "our AnchorAttention faster than our FlexPrefill at equal
error").

Equal error, exactly: a row B is "at <= the error of" a row A when both are
on the same input (same name, same captured layer) at the same length, both
were measured (a time and a rel. error), and rel_err(B) <= rel_err(A), with
rel_err = ||o - o_sdpa|| / ||o_sdpa|| over the whole output (every row and
head, f32) and no tolerance. For each target row A, the candidate family's
fastest row at <= A's error (least total ms) is A's match; speed-up = A's ms
/ the match's ms (> 1: the family is faster than A at no more error). "none"
when no row of the family reaches A's error. Tables:
  ours flex vs ref     every reference row against our FlexPrefill settings
  anchor at flex err   every FlexPrefill setting against our AnchorAttention
  flex at anchor err   every AnchorAttention setting against our FlexPrefill
The times compared are per layer: FlexPrefill's selection + block-sparse
kernel (its once-per-step host plan excluded), AnchorAttention's run (its
once-per-step plan excluded), the reference's entry point.
"""
import math

# a row's "family": what the equal-error tables compare
FAMILIES = ("ref", "flex", "anchor")


def row(inp, L, method, **kw):
    r = {"input": inp, "length": L, "method": method, "family": None, "ms": None, "select_ms": None,
         "kernel_ms": None, "density": None, "rel_err": None, "recall": None, "recall_p10": None,
         "efficiency": None, "select_share": None, "speedup_vs_ref": None, "note": ""}
    r.update(kw)
    return r


def fmt(x, spec, unit=""):
    return "-" if x is None else format(x, spec) + unit


HEADER = ("| input (keys holding 90% of a row's mass: median, p90) | length | method | ms | selection ms | kernel ms "
          "| density | rel err | recall (mean, p10) | kernel eff. | selection / dense | speed-up vs ref | note |\n"
          "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")


def table(rows):
    out = [HEADER]
    for r in rows:
        st = r.get("input_stats") or {}
        inp = r["input"]
        if st:
            inp += f" ({st['median_keys_90'] * 100:.2g}%, {st['p90_keys_90'] * 100:.2g}%)"
        rec = "-" if r["recall"] is None else f"{r['recall']:.4f}, {r['recall_p10']:.3f}"
        out.append(f"| {inp} | {r['length'] // 1024}K | {r['method']} | {fmt(r['ms'], '.2f')} "
                   f"| {fmt(r['select_ms'], '.2f')} | {fmt(r['kernel_ms'], '.2f')} | {fmt(r['density'], '.4f')} "
                   f"| {fmt(r['rel_err'], '.4f')} | {rec} | {fmt(r['efficiency'], '.2f')} "
                   f"| {fmt(r['select_share'], '.3f')} | {fmt(r['speedup_vs_ref'], '.2f', 'x')} | {r['note']} |")
    return "\n".join(out)


def lse_recall(lse_m, lse_d):
    """The dense softmax mass on the keys a method attended, per sampled (row,
    head), from LSEs: lse_m (natural log of sum exp(scale q.k) over the keys
    the method computed, as every kernel here returns it) and lse_d the same
    over every causal key (f32): exp(lse_m - lse_d). Exact when the method
    attends each key at most once (AnchorAttention's three key sets are
    disjoint; a block mask computes each key once). (mean, 10th percentile)."""
    r = (lse_m.double() - lse_d.double()).exp().reshape(-1)
    return float(r.mean()), float(r.quantile(0.1))


# --- equal error -----------------------------------------------------------

def _measured(r):
    return r.get("ms") is not None and r.get("rel_err") is not None and math.isfinite(r["rel_err"])


def _fastest_at(rows, target, family):
    """target's match in family (the module docstring's rule), or None."""
    best = None
    for r in rows:
        if (r.get("family") == family and _measured(r) and r["input"] == target["input"]
                and r["length"] == target["length"] and r["rel_err"] <= target["rel_err"]
                and (best is None or r["ms"] < best["ms"])):
            best = r
    return best


TABLES = (("ours flex vs ref", "ref", "flex"), ("anchor at flex err", "flex", "anchor"),
          ("flex at anchor err", "anchor", "flex"))


def equal_error(rows):
    """The three tables as records: for each target row (measured, in the
    table's target family), its match or none. Dense rows are context only
    (dense_ms: our dense kernel on the same input and length)."""
    dense = {(r["input"], r["length"]): r["ms"] for r in rows if r["method"] == "ours dense" and r["ms"]}
    out = []
    for name, tfam, cfam in TABLES:
        for t in rows:
            if t.get("family") != tfam or not _measured(t):
                continue
            m = _fastest_at(rows, t, cfam)
            out.append({"table": name, "input": t["input"], "length": t["length"], "target": t["method"],
                        "target_ms": t["ms"], "target_err": t["rel_err"], "target_density": t["density"],
                        "match": m["method"] if m else None, "match_ms": m["ms"] if m else None,
                        "match_err": m["rel_err"] if m else None, "match_density": m["density"] if m else None,
                        "speedup": t["ms"] / m["ms"] if m else None,
                        "dense_ms": dense.get((t["input"], t["length"]))})
    return out


EE_HEADER = ("| table | input | length | target | its ms | its rel err | fastest at <= its error | ms | rel err "
             "| density | speed-up (target ms / match ms) | ours dense ms |\n"
             "|---|---|---|---|---:|---:|---|---:|---:|---:|---:|---:|")


def equal_error_table(ee):
    out = [EE_HEADER]
    for e in ee:
        out.append(f"| {e['table']} | {e['input']} | {e['length'] // 1024}K | {e['target']} | {e['target_ms']:.2f} "
                   f"| {e['target_err']:.4f} | {e['match'] or 'none'} | {fmt(e['match_ms'], '.2f')} "
                   f"| {fmt(e['match_err'], '.4f')} | {fmt(e['match_density'], '.4f')} "
                   f"| {fmt(e['speedup'], '.2f', 'x')} | {fmt(e['dense_ms'], '.2f')} |")
    return "\n".join(out)


def check_equal_error(check):
    """The dry run's check of the rule on FABRICATED rows (made-up numbers,
    no measurement): ties count as equal error, other inputs and lengths and
    unmeasured rows are never matched, the fastest qualifying row wins."""
    fab = "FABRICATED"
    rows = [row("x", 4096, "ours dense", family=None, ms=10.0, rel_err=0.001, note=fab),
            row("x", 4096, "ref flex 0.9", family="ref", ms=8.0, rel_err=0.10, note=fab),
            row("x", 4096, "ref flex 0.95", family="ref", ms=12.0, rel_err=0.01, note=fab),
            row("x", 4096, "ours flex 0.7", family="flex", ms=2.0, rel_err=0.20, note=fab),
            row("x", 4096, "ours flex 0.8", family="flex", ms=4.0, rel_err=0.10, note=fab),  # a tie with ref 0.9
            row("x", 4096, "ours flex 0.9", family="flex", ms=5.0, rel_err=0.05, note=fab),
            row("x", 4096, "ours flex 0.95", family="flex", ms=None, rel_err=0.001, note=fab + "; failed"),
            row("x", 8192, "ours flex 0.95", family="flex", ms=1.0, rel_err=0.001, note=fab + "; other length"),
            row("y", 4096, "ours flex 0.95", family="flex", ms=1.0, rel_err=0.001, note=fab + "; other input"),
            row("x", 4096, "ours anchor 3", family="anchor", ms=1.0, rel_err=0.30, note=fab),
            row("x", 4096, "ours anchor 9", family="anchor", ms=3.0, rel_err=0.04, note=fab),
            row("x", 4096, "ours anchor 12", family="anchor", ms=3.5, rel_err=0.02, note=fab)]
    ee = {(e["table"], e["target"]): e for e in equal_error(rows) if e["input"] == "x" and e["length"] == 4096}
    got = {k: e["match"] for k, e in ee.items()}
    want = {("ours flex vs ref", "ref flex 0.9"): "ours flex 0.8",
            ("ours flex vs ref", "ref flex 0.95"): None,
            ("anchor at flex err", "ours flex 0.7"): "ours anchor 9",
            ("anchor at flex err", "ours flex 0.8"): "ours anchor 9",
            ("anchor at flex err", "ours flex 0.9"): "ours anchor 9",
            ("flex at anchor err", "ours anchor 3"): "ours flex 0.7",
            ("flex at anchor err", "ours anchor 9"): None,
            ("flex at anchor err", "ours anchor 12"): None}
    check(got == want, "equal error on fabricated rows: the expected matches" +
          ("" if got == want else f" (got {got})"))
    sp = ee[("ours flex vs ref", "ref flex 0.9")]["speedup"]
    check(sp is not None and abs(sp - 2.0) < 1e-12, "equal error: speed-up = target ms / match ms (8 / 4)")
    check(ee[("ours flex vs ref", "ref flex 0.9")]["dense_ms"] == 10.0, "equal error: ours dense beside it")
    print("  the equal-error table of these FABRICATED rows (made-up numbers, not a measurement):")
    print(equal_error_table(list(ee.values())))
    return rows

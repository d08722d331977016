"""Writes the requests of Gemma 3 270M's three lost 8K multikey samples (1,
4, 24), through dense, FlexPrefill and AnchorAttention, as paired.py builds
them, to the file named by the first argument (default lost_samples.jsonl),
for `lacuna complete` under each CPU kernel set (docs/benchmarks.md)."""
import argparse
import json
import os
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "..")
sys.path.insert(0, os.path.join(ROOT, "bench", "accuracy"))
import paired  # noqa: E402

args = argparse.Namespace(lacuna=os.path.join(ROOT, "build", "lacuna"),
                          model=os.path.join(ROOT, "models", "gemma-3-270m-q4_k_m.gguf"), seed=2026,
                          methods="dense,flexprefill,anchor", plan="8192:25", tasks="multikey", format="raw",
                          max_tokens=16)
done = {json.dumps({"length": 8192, "task": "multikey", "sample": i, "method": m}, sort_keys=True)
        for i in range(25) if i not in (1, 4, 24) for m in ("dense", "flexprefill", "anchor")}
with open(sys.argv[1] if len(sys.argv) > 1 else "lost_samples.jsonl", "w") as f:
    for line in paired.build(args, done):
        f.write(json.dumps(line) + "\n")

import argparse, json, sys
sys.path.insert(0, '/work/main/bench/accuracy')
import paired
args = argparse.Namespace(lacuna='/work/main/build/lacuna', model='/work/main/models/gemma-3-270m-q4_k_m.gguf', seed=2026,
                          methods='dense,flexprefill,anchor', plan='8192:25', tasks='multikey', format='raw', max_tokens=16)
# everything done except samples 1, 4, 24
done = set()
for i in range(25):
    if i in (1, 4, 24): continue
    for m in ('dense', 'flexprefill', 'anchor'):
        done.add(json.dumps({"length": 8192, "task": "multikey", "sample": i, "method": m}, sort_keys=True))
lines = paired.build(args, done)
with open('/tmp/flip.jsonl', 'w') as f:
    for l in lines: f.write(json.dumps(l) + '\n')
print(len(lines))

#!/usr/bin/env python3
"""Generated long-context retrieval tasks answered by SmolLM2 through the real
engine (`lacuna complete`: scheduler, paged KV, per-request sparse policy).

Tasks (fixed seed, no download):
  passkey   a 5-digit pass key hidden at a random depth in repetitive filler;
  multikey  four "special magic number for <word>" needles at random depths in
            natural text (the repository's docs and comments as of one commit,
            corpus.py --frozen), one
            question per needle (the other three are distractors);
  vartrack  two chains VAR A = n ... VAR B = VAR A spread through natural
            text, one question per chain (one hop: the answer is never next
            to the name asked for).
Greedy, chat template, max_tokens 32; an answer is right when the expected
number appears in the output.

Every question about one haystack shares the prompt prefix (the haystack
comes first, the question last), so the engine's prefix cache computes each
haystack once per prefill policy; Quest and TidalDecode use dense prefill
and reuse the dense haystack's blocks.

Which methods run at which length (defaults of each method; see
docs/sparse-attention.md): FlexPrefill runs dense up to min_budget (1024)
keys, AnchorAttention's 2048-token initial and local windows cover every key
up to 4096 tokens, StreamingLLM's 1024 window covers 1K: those runs would be
dense, so they are skipped and the tables say so.

  python3 bench/accuracy/retrieval.py --lacuna build/lacuna --out bench/accuracy/results
"""
import argparse
import collections
import json
import os
import random
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import corpus  # noqa: E402

CHARS_PER_TOKEN = {"passkey": 4.3, "multikey": 3.55, "vartrack": 3.55}  # first guesses
FILLER = ("The grass is green. The sky is blue. The sun is yellow. Here we go. "
          "There and back again. ")
WORDS = ["apple", "river", "candle", "falcon", "marble", "violet", "harbor", "meadow",
         "copper", "lantern", "orchid", "pepper", "saddle", "thunder", "walnut", "zephyr"]
# prefill method -> smallest prompt length (tokens) where its defaults are sparse
PREFILL = {"dense": 0, "flexprefill": 1100, "anchor": 4200, "streaming": 1100}
DECODE = ["quest", "tidal"]


def corpus_text():
    """The natural text of multikey and vartrack: corpus.py's frozen snapshot
    (the same prompts at every commit)."""
    return corpus.text(400000, frozen=True)


def insert(text, needles, rng):
    """Inserts sentences at sentence boundaries at increasing random depths."""
    cuts = sorted(rng.uniform(0.05, 0.95) for _ in needles)
    out, last = [], 0
    for frac, s in zip(cuts, needles):
        pos = text.find(". ", int(frac * len(text)))
        pos = len(text) if pos < 0 else pos + 2
        pos = max(pos, last)
        out.append(text[last:pos])
        out.append(" " + s + " ")
        last = pos
    out.append(text[last:])
    return "".join(out)


def haystack_passkey(n_tok, rng, cpt):
    key = rng.randint(10000, 99999)
    fill = FILLER * int(n_tok * cpt / len(FILLER))
    body = insert(fill, [f"The pass key is {key}. Remember it. {key} is the pass key."], rng)
    intro = ("There is an important piece of information hidden inside a lot of irrelevant text. "
             "Find it and memorize it.\n\n")
    return intro + body, [("What is the pass key? Answer with the number only.", str(key))]


def haystack_multikey(n_tok, rng, text, cpt):
    n = int(n_tok * cpt)
    start = rng.randrange(0, len(text) - n)
    words = rng.sample(WORDS, 4)
    vals = [rng.randint(10000, 99999) for _ in words]
    body = insert(text[start:start + n], [f"The special magic number for {w} is: {v}." for w, v in zip(words, vals)], rng)
    intro = "Some special magic numbers are hidden in the following text. Memorize them.\n\n"
    qs = [(f"What is the special magic number for {w}? Answer with the number only.", str(v)) for w, v in zip(words, vals)]
    return intro + body, qs


def haystack_vartrack(n_tok, rng, text, cpt):
    n = int(n_tok * cpt)
    start = rng.randrange(0, len(text) - n)
    names = ["".join(rng.choice("ABCDEFGHJKLMNPQRSTUVWXYZ") for _ in range(5)) for _ in range(4)]
    chains, sent = [], []
    for c in range(2):
        a, cc = names[2 * c: 2 * c + 2]
        v = rng.randint(10000, 99999)
        chains.append((cc, v))
        sent.append([f"VAR {a} = {v}.", f"VAR {cc} = VAR {a}."])
    # interleave the chains, keeping each chain's order
    order = [s for trio in zip(*sent) for s in trio]
    body = insert(text[start:start + n], order, rng)
    intro = "Variable assignments are hidden in the following text. Track them.\n\n"
    qs = [(f"What is the value of VAR {cc}? Follow the assignments and answer with the number only.", str(v))
          for cc, v in chains]
    return intro + body, qs


def count_tokens(args, text):
    r = subprocess.run([args.lacuna, "tokenize", "-m", args.model, "--ids-only"], input=text,
                       capture_output=True, text=True, check=True)
    return len(r.stdout.split())


def make_haystack(args, task, length, h, text):
    """A haystack of `length` tokens (within 3 %, counted by the model's own
    tokenizer: characters per token vary several-fold between prose and
    code). Each (task, length, index) has its own random stream, so a
    haystack does not depend on which others were generated."""
    cpt = CHARS_PER_TOKEN[task]
    for _ in range(5):
        rng = random.Random(f"{args.seed}/{task}/{length}/{h}")
        if task == "passkey":
            hay, qs = haystack_passkey(length, rng, cpt)
        elif task == "multikey":
            hay, qs = haystack_multikey(length, rng, text, cpt)
        else:
            hay, qs = haystack_vartrack(length, rng, text, cpt)
        n = count_tokens(args, hay)
        if abs(n - length) <= 0.03 * length:
            break
        cpt *= length / n
    return hay, qs


def build(args):
    text = corpus_text()
    lines = []
    plan = [(int(l), int(h)) for l, h in (x.split(":") for x in args.plan.split(","))]
    for length, n_hay in plan:
        for task in args.tasks.split(","):
            for h in range(n_hay):
                hay, qs = make_haystack(args, task, length, h, text)
                runs = [(m, "dense") for m in PREFILL if length >= PREFILL[m]] + [("dense", d) for d in DECODE]
                # dense-prefill runs first: quest and tidal reuse the dense haystack
                runs.sort(key=lambda r: (r[0] != "dense",))
                for pre, dec in runs:
                    for qi, (q, ans) in enumerate(qs):
                        lines.append({
                            "id": {"length": length, "task": task, "hay": h, "q": qi, "answer": ans,
                                   "method": pre if dec == "dense" else dec},
                            "messages": [{"role": "user", "content": hay + "\n\n" + q}],
                            "max_tokens": 32,
                            "sparse_attention": {"prefill": pre, "decode": dec},
                        })
    return lines


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lacuna", default="./lacuna")
    ap.add_argument("--model", default=os.path.join(HERE, "../../models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--tasks", default="passkey,multikey,vartrack")
    ap.add_argument("--plan", default="1024:3,2048:2,4096:1",
                    help="LENGTH:HAYSTACKS per task, comma-separated")
    ap.add_argument("--plan8k", default="7800:1",
                    help="like --plan, multikey only (7800: with the question and 32 answer tokens it fits 8192)")
    ap.add_argument("--summarize", action="store_true", help="only print the tables from existing results")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    res_path = os.path.join(args.out, "retrieval.jsonl")
    if not args.summarize:
        lines = build(args)
        a8 = argparse.Namespace(**vars(args))
        a8.plan, a8.tasks = args.plan8k, "multikey"
        if args.plan8k:
            lines += build(a8)
        req = os.path.join(args.out, "retrieval_requests.jsonl")
        with open(req, "w") as f:
            for l in lines:
                f.write(json.dumps(l) + "\n")
        print(f"retrieval: {len(lines)} requests", file=sys.stderr)
        t0 = time.time()
        # --chunk 2048: a chunk is what sparse prefill chooses its pattern over
        subprocess.run([args.lacuna, "complete", "-m", args.model, "-i", req, "-o", res_path, "-c", "1",
                        "--chunk", "2048"], check=True)
        print(f"retrieval: {time.time() - t0:.0f} s", file=sys.stderr)
    summarize(res_path)


def summarize(path):
    acc = collections.defaultdict(lambda: [0, 0, 0.0, 0.0, 0])
    for line in open(path):
        r = json.loads(line)
        i = r["id"]
        if "error" in r:
            print(f"refused by the engine: {i} ({r['error']}, {r['prompt_tokens']} tokens)", file=sys.stderr)
            continue
        k = (i["task"], i["length"], i["method"])
        a = acc[k]
        a[0] += i["answer"] in r["text"]
        a[1] += 1
        dens = r["prefill_density"] if i["method"] in PREFILL else r["decode_density"]
        a[2] += dens if dens is not None else 1.0
        a[3] += r["prompt_tokens"]
    methods = list(PREFILL) + DECODE
    print("| task | prompt tokens | " + " | ".join(methods) + " |")
    print("|---|---:|" + "---:|" * len(methods))
    for task in ("passkey", "multikey", "vartrack"):
        for length in sorted({k[1] for k in acc if k[0] == task}):
            cells, toks = [], 0
            for m in methods:
                a = acc.get((task, length, m))
                if not a:
                    cells.append("(dense)" if m in PREFILL else "–")
                    continue
                toks = a[3] / a[1]
                cells.append(f"{a[0]}/{a[1]} (d {a[2] / a[1]:.2f})")
            print(f"| {task} | {toks:.0f} | " + " | ".join(cells) + " |")
    json.dump({"|".join(map(str, k)): v for k, v in acc.items()},
              open(os.path.join(os.path.dirname(path), "retrieval_summary.json"), "w"), indent=1)


if __name__ == "__main__":
    main()

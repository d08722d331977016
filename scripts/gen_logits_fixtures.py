#!/usr/bin/env python3
"""Writes tests/fixtures/logits_smollm2.json: reference logits and greedy
continuations of SmolLM2-135M-Instruct (Q4_1 GGUF) computed by Hugging Face
transformers, an implementation independent of ours. transformers dequantizes
the GGUF to float32 itself, so both sides run the same weights.

Usage: scripts/gen_logits_fixtures.py [MODEL.gguf] [OUT.json]
Token ids come from the HF tokenizer so that tests/check_model.c does not
depend on our tokenizer."""
import base64
import json
import os
import sys

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(HERE)
MODEL = sys.argv[1] if len(sys.argv) > 1 else os.path.join(TOP, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
OUT = sys.argv[2] if len(sys.argv) > 2 else os.path.join(TOP, "tests", "fixtures", "logits_smollm2.json")
N_GEN = 32
TOP_N = 20

PROMPTS = [
    "The capital of France is",
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    "<|im_start|>user\nWhat is the boiling point of water in Celsius?<|im_end|>\n<|im_start|>assistant\n",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return",
    "In 1969, 3 astronauts flew 384400 km to the Moon; 12 people have walked on it since then, and",
    "Once upon a time, in a small village at the edge of a dark forest, there lived an old woman who "
    "kept bees. Every morning she walked to her hives, listened to their humming and told them the news "
    "of the village: who had married, who had been born, and who had died. The villagers laughed at her, "
    "but the bees",
]


def f32_b64(a):
    return base64.b64encode(np.asarray(a, dtype="<f4").tobytes()).decode("ascii")


def main():
    torch.manual_seed(0)
    torch.set_num_threads(2)
    d, name = os.path.split(os.path.abspath(MODEL))
    tok = AutoTokenizer.from_pretrained(d, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=name, dtype=torch.float32)
    model.eval()
    cases = []
    for text in PROMPTS:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0].float().numpy()  # (n, vocab)
            out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                 do_sample=False, max_new_tokens=N_GEN, pad_token_id=tok.eos_token_id)
        gen = out[0, len(ids):].tolist()
        # Margins between the best and second-best logit at every greedy step
        # tell the test where a near-tie could legitimately flip the choice.
        full = gen and torch.tensor([ids + gen[:-1]])
        with torch.no_grad():
            gl = model(full).logits[0, len(ids) - 1:].float().numpy()
        srt = np.sort(gl, axis=1)
        margins = (srt[:, -1] - srt[:, -2]).tolist()
        last = logits[-1]
        top = np.argsort(-last, kind="stable")[:TOP_N]
        # Per-position top-20 (ids and values) for every prompt position.
        pos_top = []
        for p in range(len(ids)):
            t = np.argsort(-logits[p], kind="stable")[:TOP_N]
            pos_top.append({"ids": t.tolist(), "logits": [round(float(x), 5) for x in logits[p][t]]})
        cases.append({
            "prompt": text,
            "ids": ids,
            "last_top_ids": top.tolist(),
            "last_top_logits": [float(x) for x in last[top]],
            "last_logits_f32_b64": f32_b64(last),
            "positions_top": pos_top,
            "greedy": gen,
            "greedy_text": tok.decode(gen),
            "greedy_margins": [round(m, 5) for m in margins],
        })
        print(f"{len(ids):4d} tokens -> {tok.decode(gen)!r} (min margin {min(margins):.4f})", file=sys.stderr)
    doc = {
        "model": name,
        "generator": "transformers %s, torch %s, float32" % (__import__("transformers").__version__, torch.__version__),
        "n_vocab": int(logits.shape[1]),
        "cases": cases,
    }
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump(doc, f, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {OUT} ({os.path.getsize(OUT)} bytes)", file=sys.stderr)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Writes tests/fixtures/logits_gemma3.json: reference logits and greedy
continuations of Gemma 3 270M (the Q4_K_M GGUF of scripts/fetch_model.sh
gemma3-270m) computed by Hugging Face transformers, an implementation
independent of ours. transformers dequantizes the GGUF to float32 itself, so
both sides run the same weights.

Usage: scripts/gen_logits_fixtures_gemma.py [MODEL.gguf] [OUT.json]
Needs: pip install torch transformers accelerate gguf sentencepiece protobuf.

A full logit vector is 262,144 floats (1 MiB), so unlike the SmolLM2 fixture
(scripts/gen_logits_fixtures.py) this one keeps, for the last prompt
position: the top 64 logits, every 64th vocabulary entry (4,096 values) and
the vector's max, mean, standard deviation and log-sum-exp; the top 10 of
every position for the short prompts; and 32 greedy tokens with HF's top-2
margin at each step. Prompts start with <bos> (the tokenizer adds it, as the
server does). Two prompts are longer than the 512-token sliding window, one
of them 1,599 tokens, so the window is exercised; the test needs no torch.
"""
import base64
import json
import os
import sys

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(HERE)
MODEL = sys.argv[1] if len(sys.argv) > 1 else os.path.join(TOP, "models", "gemma-3-270m-q4_k_m.gguf")
OUT = sys.argv[2] if len(sys.argv) > 2 else os.path.join(TOP, "tests", "fixtures", "logits_gemma3.json")
N_GEN = 32
TOP_LAST = 64
TOP_POS = 10
STRIDE = 64  # every STRIDE-th vocabulary entry of the last position
SHORT = 64   # prompts up to this many tokens also get every position's top 10

# A deterministic long text: numbered facts about invented towns, so that a
# late question can only be answered from early in the prompt (beyond the
# sliding window of 512 tokens, through the global layers).
TOWNS = ["Arden", "Brill", "Caddow", "Dunmere", "Elsby", "Farrow", "Galt", "Hessel", "Ilkton", "Jarrow",
         "Kelso", "Lyme", "Morden", "Nettle", "Orford", "Penrith", "Quarley", "Rydal", "Selby", "Tarn"]
TRADES = ["salt", "wool", "copper", "barley", "glass", "timber", "cheese", "rope", "tin", "honey"]


def facts(n):
    out = []
    for i in range(n):
        t = TOWNS[i % len(TOWNS)] + ("" if i < len(TOWNS) else f" {i // len(TOWNS) + 1}")
        out.append(f"Fact {i + 1}: the town of {t} trades mostly in {TRADES[(i * 7) % len(TRADES)]}, "
                   f"has {100 + (i * 37) % 900} houses and a bridge built in {1500 + (i * 53) % 400}.")
    return " ".join(out)


PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return",
    "<start_of_turn>user\nWhat is the boiling point of water in Celsius?<end_of_turn>\n<start_of_turn>model\n",
    "In 1969, 3 astronauts flew 384400 km to the Moon; 12 people have walked on it since then, and",
    # 525 tokens: past the 512-token window
    "Here is a list of facts. " + facts(16) + " Question: what does the town of Arden trade in? Answer: Arden trades in",
    # 1,599 tokens
    "Here is a list of facts. " + facts(48) + " Question: what does the town of Brill trade in? Answer: Brill trades in",
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
    cfg = model.config
    cases = []
    for text in PROMPTS:
        ids = tok(text)["input_ids"]  # with <bos>
        n = len(ids)
        with torch.no_grad():
            if n <= SHORT:
                logits = model(torch.tensor([ids])).logits[0].float().numpy()
            else:
                logits = model(torch.tensor([ids]), logits_to_keep=1).logits[0].float().numpy()
            out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, n, dtype=torch.long),
                                 do_sample=False, max_new_tokens=N_GEN, pad_token_id=tok.pad_token_id)
            gen = out[0, n:].tolist()
            gl = model(torch.tensor([ids + gen[:-1]]), logits_to_keep=len(gen)).logits[0].float().numpy()
        srt = np.sort(gl, axis=1)
        margins = (srt[:, -1] - srt[:, -2]).tolist()
        last = logits[-1].astype(np.float64)
        top = np.argsort(-last, kind="stable")[:TOP_LAST]
        mx = last.max()
        case = {
            "prompt": text,
            "ids": ids,
            "last_top_ids": top.tolist(),
            "last_top_logits": [float(x) for x in last[top]],
            "last_stride": STRIDE,
            "last_strided_f32_b64": f32_b64(last[::STRIDE]),
            "last_stats": {"max": float(mx), "mean": float(last.mean()), "std": float(last.std()),
                           "logsumexp": float(mx + np.log(np.exp(last - mx).sum()))},
            "greedy": gen,
            "greedy_text": tok.decode(gen),
            "greedy_margins": [round(m, 5) for m in margins],
        }
        if n <= SHORT:
            case["positions_top"] = []
            for p in range(n):
                t = np.argsort(-logits[p], kind="stable")[:TOP_POS]
                case["positions_top"].append({"ids": t.tolist(), "logits": [round(float(x), 5) for x in logits[p][t]]})
        cases.append(case)
        print(f"{n:5d} tokens -> {tok.decode(gen)!r} (min margin {min(margins):.4f})", file=sys.stderr)
    doc = {
        "model": name,
        "generator": "scripts/gen_logits_fixtures_gemma.py: transformers %s, torch %s, float32"
                     % (__import__("transformers").__version__, torch.__version__),
        "n_vocab": int(logits.shape[1]),
        "hf_config": {"sliding_window": cfg.sliding_window, "layer_types": cfg.layer_types,
                      "query_pre_attn_scalar": cfg.query_pre_attn_scalar,
                      "rope_parameters": cfg.rope_parameters, "rms_norm_eps": cfg.rms_norm_eps,
                      "final_logit_softcapping": cfg.final_logit_softcapping,
                      "hidden_activation": cfg.hidden_activation},
        "cases": cases,
    }
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump(doc, f, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {OUT} ({os.path.getsize(OUT)} bytes)", file=sys.stderr)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Deterministic natural-ish English text for attn-eval, with no download:
the repository's Markdown documents and the prose of its C comments, in
sorted path order, repeated if needed until it is at least --min-chars long.
The text changes only when the repository's docs and comments change."""
import argparse
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def comments(src):
    out = []
    for m in re.finditer(r"/\*(.*?)\*/", src, re.S):
        lines = [re.sub(r"^\s*\*\s?", "", l).rstrip() for l in m.group(1).splitlines()]
        body = " ".join(l.strip() for l in lines if l.strip())
        if len(body) > 60 and not body.startswith("----"):  # skip banners and one-word notes
            out.append(re.sub(r"-{4,}", "", body).strip())
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--min-chars", type=int, default=200000)
    ap.add_argument("-o", "--output", default="-")
    a = ap.parse_args()
    parts = []
    for p in sorted(ROOT.glob("*.md")) + sorted((ROOT / "docs").glob("*.md")):
        parts.append(p.read_text(errors="replace"))
    for d in ("src", "tools"):
        for p in sorted((ROOT / d).rglob("*.[ch]")):
            parts.extend(comments(p.read_text(errors="replace")))
    text = "\n\n".join(parts)
    base = text
    while len(text) < a.min_chars:
        text += "\n\n" + base
    (sys.stdout if a.output == "-" else open(a.output, "w")).write(text)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Deterministic natural-ish English text for attn-eval, with no download:
the repository's Markdown documents and the prose of its C comments, in
sorted path order, repeated if needed until it is at least --min-chars long.
That text changes whenever the docs and comments do; --frozen gives instead
the snapshot checked in beside this script (FROZEN: the same text as of
commit 4983e68), which the retrieval tasks use so that their prompts stay
the same from one commit to the next and runs on different days compare."""
import argparse
import lzma
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
FROZEN = pathlib.Path(__file__).resolve().parent / "corpus-4983e68.txt.xz"


def comments(src):
    out = []
    for m in re.finditer(r"/\*(.*?)\*/", src, re.S):
        lines = [re.sub(r"^\s*\*\s?", "", l).rstrip() for l in m.group(1).splitlines()]
        body = " ".join(l.strip() for l in lines if l.strip())
        if len(body) > 60 and not body.startswith("----"):  # skip banners and one-word notes
            out.append(re.sub(r"-{4,}", "", body).strip())
    return out


def text(min_chars=0, frozen=False):
    """The corpus (the live tree's, or the frozen snapshot), repeated with a
    blank line between copies until it is at least min_chars long."""
    if frozen:
        base = lzma.decompress(FROZEN.read_bytes()).decode()
    else:
        parts = []
        for p in sorted(ROOT.glob("*.md")) + sorted((ROOT / "docs").glob("*.md")):
            parts.append(p.read_text(errors="replace"))
        for d in ("src", "tools"):
            for p in sorted((ROOT / d).rglob("*.[ch]")):
                parts.extend(comments(p.read_text(errors="replace")))
        base = "\n\n".join(parts)
    out = base
    while len(out) < min_chars:
        out += "\n\n" + base
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--min-chars", type=int, default=200000)
    ap.add_argument("--frozen", action="store_true", help="the checked-in snapshot, not the live tree")
    ap.add_argument("-o", "--output", default="-")
    a = ap.parse_args()
    (sys.stdout if a.output == "-" else open(a.output, "w")).write(text(a.min_chars, a.frozen))


if __name__ == "__main__":
    main()

#!/usr/bin/env bash
# Copies the public FlexPrefill reference (github.com/bytedance/FlexPrefill,
# Apache-2.0) from a fetched mirror into the git-ignored .peer/flexprefill/,
# for the side-by-side benchmark tests/gpu/bench_flex_ref.py. Only what that
# benchmark runs travels (the ops module with the Triton kernels and the
# licence, ~75 KB), so that the device tool's carry stays small. Peer code is
# never committed and never copied into our sources.
#
#   scripts/fetch_peer_flexprefill.sh [MIRROR_GIT_DIR]
#     MIRROR_GIT_DIR: a bare git dir of the repository (default: the fetch
#     tool's /work/.mirror/bytedance+FlexPrefill/repo)
set -euo pipefail
cd "$(dirname "$0")/.."
git_dir=${1:-/work/.mirror/bytedance+FlexPrefill/repo}
dest=.peer/flexprefill
files=(LICENSE flex_prefill/ops/flex_prefill_attention.py)
if ! git --git-dir="$git_dir" rev-parse --verify -q HEAD >/dev/null; then
    echo "fetch_peer_flexprefill: $git_dir is not a git dir with a HEAD (fetch github:bytedance/FlexPrefill first)" >&2
    exit 2
fi
rm -rf "$dest"
mkdir -p "$dest"
git --git-dir="$git_dir" archive HEAD "${files[@]}" | tar x -C "$dest"
git --git-dir="$git_dir" rev-parse HEAD >"$dest/COMMIT"
head -3 "$dest/LICENSE" | grep -q "Apache License" || {
    echo "fetch_peer_flexprefill: the licence is no longer Apache-2.0; read $dest/LICENSE before running it" >&2
    exit 3
}
echo "fetch_peer_flexprefill: $dest at $(cat "$dest/COMMIT") ($(du -sk "$dest" | cut -f1) KB)"

#!/usr/bin/env bash
# Packs what the GPU machine needs into .gpu/ (git-ignored): the binaries
# built here with CUDA (lacunad, lacuna, the GPU Check suites, the attention
# benchmark's library) and the Debian shared libraries they need that an Ubuntu
# image lacks, each xz-compressed (the binaries share most of their CUDA
# code: 28 MiB become about 2), and the default model cut into two parts
# small enough for the device tool's 64 MiB per call (the first alone, the
# second with the binaries). tests/gpu/run.sh unpacks and runs them there. Binaries from Debian 12 (glibc 2.36) run on Ubuntu 24.04.
#   scripts/gpu_bundle.sh [BUILD_DIR]   (default build/)
set -euo pipefail
cd "$(dirname "$0")/.."
b=${1:-build}
out=.gpu
rm -rf "$out/bin" "$out/bin.tar.xz" "$out/libs.tar.xz"
mkdir -p "$out/bin"
cp "$b/lacunad" "$b/lacuna" "$b/tests/gpu/check_cuda" "$b/tests/gpu/check_attn_cuda" "$b/tests/gpu/bench_gemm" \
    "$b/tests/gpu/check_cp_cuda" "$b/tests/gpu/check_cp_nccl" "$b/tests/gpu/libattn_cuda.so" \
    "$b/tests/gpu/check_quest_cuda" "$b/tests/gpu/check_flex_cuda" "$out/bin/"
strip --strip-debug "$out"/bin/lacunad "$out"/bin/lacuna "$out"/bin/check_cuda "$out"/bin/check_attn_cuda \
    "$out"/bin/bench_gemm "$out"/bin/check_cp_cuda "$out"/bin/check_cp_nccl "$out"/bin/check_quest_cuda \
    "$out"/bin/check_flex_cuda
cp "$b/tests/gpu/check_tidal_cuda" "$out/bin/"
strip --strip-debug "$out"/bin/check_tidal_cuda
make -C "$b" -s tests/gpu/libattn_cuda_trace.so # the decode kernel's phase timer (tests/gpu/trace_decode.py)
cp "$b/tests/gpu/libattn_cuda_trace.so" "$out/bin/"
cp "$b/tests/gpu/check_anchor_cuda" "$out/bin/"
strip --strip-debug "$out"/bin/check_anchor_cuda
tar cJf "$out/bin.tar.xz" -C "$out" bin
tmp=$(mktemp -d)
mkdir "$tmp/lib"
for l in libpcre2-8.so.0 libinih.so.1 libgfortran.so.5 libquadmath.so.0 libgomp.so.1 libmicrohttpd.so.12 \
    libuv.so.1 libcjson.so.1; do
    cp -L "/lib/x86_64-linux-gnu/$l" "$tmp/lib/"
done
cp -L /usr/lib/x86_64-linux-gnu/openblas-openmp/libopenblas.so.0 "$tmp/lib/"
tar cJf "$out/libs.tar.xz" -C "$tmp" lib
# The gguf package (pure Python) for transformers on the GPU machine, which
# has none (`tests/gpu/run.sh equal-error` captures activations through it);
# carry .gpu/py with that call.
mkdir -p "$out/py"
ls "$out"/py/gguf-*.whl >/dev/null 2>&1 || pip download -q --no-deps -d "$out/py" gguf==0.19.0 ||
    echo "gpu_bundle: could not fetch the gguf wheel (equal-error then runs the synthetic inputs only)" >&2
rm -rf "$tmp"
m=models/SmolLM2-135M-Instruct.Q4_1.gguf
# Two parts: 50 MiB travel alone (with the tree, ~8 MiB), the rest with the binaries.
if [ -f "$m" ] && { [ ! -f "$out/model.part1" ] || [ -f "$out/model.part2" ]; }; then
    rm -f "$out"/model.part*
    split -b 50M -d -a 1 "$m" "$out/model.part"
    sha256sum "$m" | cut -d' ' -f1 > "$out/model.sha256"
fi
# Gemma 3 270M (253 MB) in five parts over five calls to a warm machine:
# gemma.part0..3 (54 MiB: with the tree, ~8 MiB, under the 64 MiB a call
# carries) alone, each kept there by `tests/gpu/run.sh stash`, and
# gemma.part4 (25 MiB) with the binaries (tests/gpu/run.sh assembles and
# checks them: PAIRED_MODEL=gemma).
g=models/gemma-3-270m-q4_k_m.gguf
if [ -f "$g" ] && { [ ! -f "$out/gemma.part4" ] || [ "$(stat -c %s "$out/gemma.part0")" != 56623104 ]; }; then
    rm -f "$out"/gemma.part*
    split -b 54M -d -a 1 "$g" "$out/gemma.part"
    sha256sum "$g" | cut -d' ' -f1 > "$out/gemma.sha256"
fi
du -sh "$out"/* | sort -h

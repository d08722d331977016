#!/usr/bin/env bash
# GPU attention on the GPU machine: the Check suite against the CPU kernels
# (one case per process, each under a time limit, so that a hang or a broken
# context in one does not hide the others), optionally compute-sanitizer over
# the small cases, then the benchmark against torch SDPA, whose table comes last.
#
#   tests/gpu/run_attn.sh [DIR]   DIR holds check_attn_cuda and libattn_cuda.so
#                                 (default: build/tests/gpu)
#   ATTN_SANITIZE=1  also run the small cases under compute-sanitizer (memcheck)
#   ATTN_BENCH=0     skip the benchmark; ATTN_BENCH=quick for fewer sizes
#   ATTN_LIMIT=S     seconds per step (default 300)
# Exit status: 77 when no GPU is present, else that of the first failing step.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
dir=${1:-build/tests/gpu}
limit=${ATTN_LIMIT:-300}
status=0
fail() {
    echo "run_attn: $1 failed (status $2)"
    [ "$status" = 0 ] && status=$2
}

for c in errors small prefill decode; do
    CK_RUN_CASE=$c timeout "$limit" "$dir/check_attn_cuda"
    rc=$?
    if [ "$rc" = 77 ]; then
        echo "SKIP: no GPU"
        exit 77
    fi
    [ "$rc" = 0 ] || fail "check $c" "$rc"
done
if [ "${ATTN_SANITIZE:-0}" = 1 ]; then
    CK_RUN_CASE=small timeout "$limit" compute-sanitizer --tool memcheck --error-exitcode 3 "$dir/check_attn_cuda" ||
        fail "compute-sanitizer" 3
fi
bench() { timeout "$limit" python3 "$here/bench_attn_cuda.py" --lib "$dir/libattn_cuda.so" "$@" || fail "bench $*" 4; }
case "${ATTN_BENCH:-1}" in
0) ;;
quick) bench --quick ;;
*)
    bench --part prefill --table "${TMPDIR:-/tmp}/attn_prefill.md"
    bench --part decode --table "${TMPDIR:-/tmp}/attn_decode.md"
    echo
    echo "| kind | size | ours | ours ms | ours TFLOP/s or TB/s | SDPA ms | SDPA TFLOP/s or TB/s | ours/SDPA | SDPA backend | rel err vs SDPA |"
    echo "|---|---|---|---|---|---|---|---|---|---|"
    cat "${TMPDIR:-/tmp}/attn_prefill.md" "${TMPDIR:-/tmp}/attn_decode.md" 2>/dev/null
    ;;
esac
exit "$status"

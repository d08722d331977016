#!/usr/bin/env bash
# GPU attention on the GPU machine: the Check suite against the CPU kernels,
# optionally compute-sanitizer over its small cases, then the benchmark
# against torch SDPA, whose table comes last.
#
#   tests/gpu/run_attn.sh [DIR]   DIR holds check_attn_cuda and libattn_cuda.so
#                                 (default: build/tests/gpu)
#   ATTN_SANITIZE=1  also run the small cases under compute-sanitizer (memcheck)
#   ATTN_BENCH=0     skip the benchmark; ATTN_BENCH=quick for fewer sizes
# Exit status: 77 when no GPU is present, else that of the first failing step.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
dir=${1:-build/tests/gpu}
status=0
fail() { [ "$status" = 0 ] && status=$1; }

"$dir/check_attn_cuda"
rc=$?
if [ "$rc" = 77 ]; then
    echo "SKIP: no GPU"
    exit 77
fi
[ "$rc" = 0 ] || fail "$rc"
if [ "${ATTN_SANITIZE:-0}" = 1 ]; then
    CK_RUN_CASE=small compute-sanitizer --tool memcheck --error-exitcode 3 "$dir/check_attn_cuda" || fail 3
fi
case "${ATTN_BENCH:-1}" in
0) ;;
quick) python3 "$here/bench_attn_cuda.py" --lib "$dir/libattn_cuda.so" --quick || fail 4 ;;
*) python3 "$here/bench_attn_cuda.py" --lib "$dir/libattn_cuda.so" || fail 4 ;;
esac
exit "$status"

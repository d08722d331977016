#!/usr/bin/env bash
# GPU attention on the GPU machine: the Check suite against the CPU kernels
# (one case per process, each under a time limit, so that a hang or a broken
# context in one does not hide the others), optionally compute-sanitizer over
# the small cases, then the benchmark against torch SDPA, whose table comes last.
#
#   tests/gpu/run_attn.sh [DIR]   DIR holds check_attn_cuda and libattn_cuda.so
#                                 (default: build/tests/gpu)
#   ATTN_SANITIZE=1  also run the small cases under compute-sanitizer (memcheck)
#   ATTN_BENCH=0     skip the benchmark; ATTN_BENCH=quick for fewer sizes;
#   ATTN_PARTS="prefill decode"  the kernel families checked under the sanitizer and benchmarked
#                (sparse: the block-sparse prefill against our dense kernel, benchmark only)
#   ATTN_LIMIT=S     seconds per check step (default 300); ATTN_BENCH_LIMIT=S per benchmark part (600)
# A kernel family whose small case hangs is left out of the later steps.
# Exit status: 77 when no GPU is present, else that of the first failing step.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
dir=${1:-build/tests/gpu}
limit=${ATTN_LIMIT:-300}
blimit=${ATTN_BENCH_LIMIT:-600}
status=0
hung=""
fail() {
    echo "run_attn: $1 failed (status $2)"
    [ "$status" = 0 ] && status=$2
}
check() { # case, kernel family
    case " $hung " in *" $2 "*) echo "run_attn: $1 skipped ($2 hangs)"; return ;; esac
    CK_RUN_CASE=$1 timeout "$limit" "$dir/check_attn_cuda"
    local rc=$?
    if [ "$rc" = 77 ]; then
        echo "SKIP: no GPU"
        exit 77
    fi
    [ "$rc" = 124 ] && hung="$hung $2"
    [ "$rc" = 0 ] || fail "check $1" "$rc"
}

check errors none
check prefill_small prefill
check decode_small decode
check prefill prefill
check decode decode
if [ "${ATTN_SANITIZE:-0}" = 1 ]; then
    for k in ${ATTN_PARTS:-prefill decode}; do
        case " $hung " in *" $k "*) continue ;; esac
        [ "$k" = sparse ] && continue # its small case is prefill_small's
        CK_RUN_CASE=${k}_small timeout "$limit" compute-sanitizer --tool memcheck --error-exitcode 3 \
            "$dir/check_attn_cuda" || fail "compute-sanitizer ${k}_small" 3
    done
fi
bench() { timeout "$blimit" python3 "$here/bench_attn_cuda.py" --lib "$dir/libattn_cuda.so" "$@" || fail "bench $*" 4; }
tables=${TMPDIR:-/tmp}/attn_bench.$$
case "${ATTN_BENCH:-1}" in
0) ;;
quick) bench --quick ;;
*)
    for k in ${ATTN_PARTS:-prefill decode}; do
        f=$k
        [ "$k" = sparse ] && f=prefill # the block-sparse prefill is the prefill kernel
        case " $hung " in *" $f "*) continue ;; esac
        bench --part "$k" --table "$tables.$k"
    done
    echo
    echo "| kind | size | ours | ours ms | ours TFLOP/s or TB/s | SDPA ms | SDPA TFLOP/s or TB/s | ours/SDPA | SDPA backend | rel err vs SDPA |"
    echo "|---|---|---|---|---|---|---|---|---|---|"
    cat "$tables.prefill" "$tables.decode" "$tables.sparse" 2>/dev/null
    rm -f "$tables.prefill" "$tables.decode" "$tables.sparse"
    ;;
esac
exit "$status"

#!/bin/sh
# The scheduler's bitwise batch-invariance suite (tests/check_sched: batched
# == alone, preemption, prefix reuse, randomized runs, on every kernel set)
# under each x86 kernel set of OpenBLAS (OPENBLAS_CORETYPE) that this CPU can
# execute. A result must not depend on the batch under any BLAS kernel set
# either (issue 9: with SkylakeX's sgemm, batched greedy tokens differed from
# alone; with Haswell's they did not). The forward pass makes no BLAS call
# today (ops/cpu/gemm.c); this keeps it so, whatever BLAS a machine has (an
# sgemm put back for the prompt rows fails here under every core type).
#
# For each core type: skipped when /proc/cpuinfo lacks its instructions or
# when this OpenBLAS cannot be forced to it; otherwise the tiny-model cases
# run with OPENBLAS_VERBOSE=2, and OpenBLAS's own "Core: NAME" line must
# name the forced core (the variable took effect: check_sched reads it at
# load, as it never re-executes; lacunad's start-up re-exec leaves a set
# OPENBLAS_CORETYPE alone). A name this OpenBLAS does not know counts when
# its fallback detection lands on that core anyway (Cooperlake in 0.3.21).
# The real model's case (alone vs batched, preempted and prefix-cached) runs
# under the core lacunad's start-up picks on this CPU (SkylakeX with AVX-512,
# else Haswell), at the CPU's widest kernel set.
#
# Exits 77 (SKIP) when check_sched does not link OpenBLAS, no core type
# could be tested or the real model is missing (with LACUNA_REQUIRE_MODEL=1
# check_sched fails instead).
builddir=${LACUNA_BUILDDIR:-.}
prog=$builddir/tests/check_sched
[ -x "$prog" ] || { echo "SKIP: $prog is not built"; exit 77; }
if ! command -v ldd >/dev/null 2>&1; then
    echo "SKIP: no ldd to tell which BLAS check_sched links"
    exit 77
fi
if ! ldd "$prog" | grep -q 'libopenblas'; then
    echo "SKIP: check_sched does not link OpenBLAS:"
    ldd "$prog" | grep -i blas
    exit 77
fi

flags=" $(sed -n 's/^flags[[:space:]]*:\(.*\)$/\1/p' /proc/cpuinfo 2>/dev/null | head -n 1) "
has() {
    for f in "$@"; do
        case $flags in *" $f "*) ;; *) return 1 ;; esac
    done
}

# OpenBLAS's x86-64 core types and the CPU flags their kernels need.
cores="Prescott:pni
Core2:ssse3
Penryn:sse4_1
Dunnington:sse4_1
Nehalem:sse4_2,popcnt
Atom:ssse3
Opteron:sse2
Opteron_SSE3:pni
Barcelona:sse4a
Bobcat:sse4a,ssse3
Sandybridge:avx
Bulldozer:avx,fma4,xop
Piledriver:avx,fma,fma4,xop
Steamroller:avx,fma,fma4,xop
Excavator:avx2,fma,fma4,xop
Haswell:avx2,fma
Zen:avx2,fma
SkylakeX:avx512f,avx512cd,avx512bw,avx512dq,avx512vl
Cooperlake:avx512f,avx512cd,avx512bw,avx512dq,avx512vl,avx512_bf16
SapphireRapids:avx512f,avx512cd,avx512bw,avx512dq,avx512vl,avx512_bf16,avx512_fp16,amx_tile,amx_bf16"

# The widest kernel set of ours (common/cpu.c), and the core lacunad's
# start-up gives OpenBLAS on this CPU (ops/cpu/threads.c).
level=scalar
has avx2 fma f16c && level=avx2
has avx2 fma f16c avx512f avx512bw avx512vl avx512dq avx512_vnni && level=avx512
startup=
has avx2 fma && startup=Haswell
has avx512f avx512bw avx512vl avx512dq && startup=SkylakeX

log=${TMPDIR:-/tmp}/blas_coretypes.$$
trap 'rm -f "$log"' EXIT
tested=0 failed=0 forced=" "
for entry in $cores; do
    name=${entry%%:*}
    need=$(echo "${entry#*:}" | tr ',' ' ')
    # shellcheck disable=SC2086
    if ! has $need; then
        echo "skip $name: this CPU lacks one of: $need"
        continue
    fi
    OPENBLAS_VERBOSE=2 OPENBLAS_CORETYPE=$name CK_RUN_CASE=engine "$prog" >"$log" 2>&1
    rc=$?
    ran=$(sed -n 's/^Core: //p' "$log" | head -n 1)
    if [ "$ran" != "$name" ]; then
        echo "skip $name: this OpenBLAS cannot be forced to it (it ran ${ran:-an unnamed core})"
        continue
    fi
    # 0.3.21 does not know some names, yet its fallback may detect that very core.
    grep -q '^Core not found' "$log" && name="$name (by detection)"
    tested=$((tested + 1))
    forced="$forced$ran "
    # 77: the tiny cases ran and passed, the real model is missing (run below).
    if [ $rc -eq 0 ] || { [ $rc -eq 77 ] && grep -q '^100%: Checks: [1-9][0-9]*, Failures: 0, Errors: 0' "$log"; }; then
        echo "ok   $name: tiny models, every kernel set"
    else
        echo "FAIL $name (exit $rc):"
        tail -n 20 "$log"
        failed=$((failed + 1))
    fi
done
[ $tested -gt 0 ] || { echo "SKIP: no OpenBLAS core type could be tested"; exit 77; }

for name in $startup; do
    case $forced in *" $name "*) ;; *) continue ;; esac
    OPENBLAS_VERBOSE=2 OPENBLAS_CORETYPE=$name LACUNA_CPU=$level CK_RUN_CASE=smollm2 "$prog" >"$log" 2>&1
    rc=$?
    if [ $rc -eq 0 ] && grep -q "^Core: $name\$" "$log"; then
        echo "ok   $name: the real model ($level kernels)"
    elif [ $rc -eq 77 ]; then
        echo "skip $name: the real model is missing"
        real_missing=1
    else
        echo "FAIL $name, the real model (exit $rc):"
        tail -n 20 "$log"
        failed=$((failed + 1))
    fi
done
echo "$tested core types tested, $failed failed"
[ $failed -eq 0 ] || exit 1
# As testutil.h does: a part that could not run makes the whole a SKIP.
[ -z "$real_missing" ] || exit 77

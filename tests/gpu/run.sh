#!/usr/bin/env bash
# The GPU test and benchmark run, on the GPU machine, from the repository root
# with .gpu/ carried there (scripts/gpu_bundle.sh makes it here: carry
# .gpu/bin.tar.xz and .gpu/libs.tar.xz). The default model travels in two
# parts over consecutive calls to a warm machine: the first call carries
# .gpu/model.part0 and runs `tests/gpu/run.sh stash` (which keeps it in /tmp),
# the next carries .gpu/model.part1 and .gpu/model.sha256 with the binaries.
#
#   tests/gpu/run.sh STEP...
#     env    the GPU, the unpacked libraries, what the binaries resolve to
#     attn   the attention kernels' Check suite (ATTN_BENCH=0) or suite and
#            SDPA benchmark (tests/gpu/run_attn.sh)
#     quest  Quest sparse decode's Check suite (selection, output, dense
#            equality; cases small, then full), with QUEST_SANITIZE=1 the
#            small cases under compute-sanitizer memcheck and racecheck, with
#            QUEST_BENCH=1 its benchmark against the dense decode
#            (tests/gpu/check_quest_cuda; QUEST_SPLIT=keys: split-K chunk)
#     flex   FlexPrefill's selection on the GPU against the CPU's masks
#            (tests/gpu/check_flex_cuda), with FLEX_BENCH=1 its timing
#            against the dense prefill
#     anchor AnchorAttention's GPU prefill against the CPU kernel, the dense
#            GPU kernel and itself alone, its gather kernel and the dense
#            rowmax against host references (tests/gpu/check_anchor_cuda),
#            with ANCHOR_BENCH=1 its timing, density and kernel efficiency
#            against the dense prefill (random and structured inputs;
#            ANCHOR_BENCH_ONLY=structured:131072 one case, e.g. under ncu)
#     flexref  our FlexPrefill (selection + block-sparse kernel) against the
#            public FlexPrefill reference, our AnchorAttention (theta 12),
#            dense ours and SDPA beside them
#            (tests/gpu/bench_flex_ref.py; the reference in .peer/flexprefill,
#            scripts/fetch_peer_flexprefill.sh, carried with the device tool;
#            FLEXREF_FLAGS e.g. "--quick" or "--lengths 128K")
#     equal-error  the same script's --preset equal-error: ours FlexPrefill
#            against the reference, and AnchorAttention against FlexPrefill,
#            at equal error, on synthetic inputs and on real q, k, v captured
#            from the default model with this machine's transformers (when
#            the model is here: its two parts, as for e2e; else synthetic
#            only); about 5 min; EQERR_TIMEOUT (s, default 540: SIGTERM
#            still prints the rows so far), EQERR_FLAGS more options
#     tidal  TidalDecode sparse decode's Check suite (selection, output on
#            the selection layer and the next, dense equality; cases small,
#            then full), with TIDAL_SANITIZE=1 the small cases under
#            compute-sanitizer memcheck and racecheck, with TIDAL_BENCH=1 its
#            benchmark against the dense decode (tests/gpu/check_tidal_cuda;
#            TIDAL_SPLIT=entries: the attention's chunk)
#     cuda   the executor's Check suite: ops against the CPU, batch
#            invariance, tiny models and (once the model is assembled) the
#            default model teacher-forced through both executors
#     cp     the context-parallel communicators: device-local ranks on this
#            GPU (checks, then the ring's per-step compute and transfer
#            times) and NCCL with one rank per GPU (check_cp_nccl, with the
#            system's libnccl or else torch's)
#     cp-serve  lacunad on this GPU with parallel.context = 4: a prompt past
#            context_min_tokens through /v1/completions, /metrics' per-rank lines
#     dectrace  where a batch-1 dense decode call's time goes: times at 8K-128K
#            fitted to bytes / rate + a fixed cost, and the CTAs' phases from
#            the kernel built with its timer (tests/gpu/trace_decode.py;
#            DECTRACE_FLAGS e.g. "--splits 0,16,24")
#     gemm   what batch-invariant (deterministic) matmuls cost against
#            cuBLASLt's heuristic choice (tests/gpu/bench_gemm)
#     e2e    lacunad on the GPU against transformers + SDPA (bench/gpu_e2e.py)
#     e2e-nographs  lacunad alone with engine.cuda_graphs = false (the A/B)
#     e2e-sampled   lacunad alone, decode streams at temperature 0.8 (host sampling)
#     e2e-methods  time to first token through lacunad per prefill method, one
#            lacunad per method on the same prompts, no peer: E2EM_METHODS
#            (dense anchor anchor-noprobe flexprefill; anchor-noprobe is
#            AnchorAttention with attention.anchor_probe = 0), E2EM_MODEL
#            (default: the default model; 8b: the e2e8b model at E2E8B_CTX;
#            gemma: a random-weight Gemma 3 270M shape, modelgemma below),
#            E2EM_FLAGS (more gpu_e2e.py options); e2e-METHOD.json each
#     soak   bench/soak.py against lacunad on this GPU (SOAK_SECONDS each,
#            default 60): its bad input, vanishing clients, bursts, SIGTERM and
#            kill -9, with half the requests long (150-700 words) under a
#            random sparse_attention, SOAK_CONTEXT (default 2) context-parallel
#            ranks from 256 tokens and a pool of 60 pages, so that requests
#            are sharded and preempted (SOAK_SEED: the driver's seed); random-weight models (SOAK_MODELS: llama, 4 layers of
#            4 heads of 64; gemma, Gemma 3 with 6 layers of 4 heads of 256 on
#            one KV head, two global, the others sliding over 128);
#            soak-MODEL.json, the daemon's warnings and errors counted
#     kv-windows  the random-weight Gemma 3 270M shape through lacunad with
#            its sliding layers keeping their windows and then every
#            position (engine.kv_keep_sliding): time to first token at 30K
#            tokens, 1 and 8 streams decoding after 30K-token prompts, and
#            the peak KV memory of each (kv-windows-*.json); KVW_RUNS="false
#            true cp4" adds the windows with parallel.context = 4 from 16K
#     e2e8b  the same on a random-weight Llama-3-8B-shaped model written here
#            by `lacuna mkmodel` (q8_0, 128256-token synthetic vocabulary)
#     flexprof  where a FlexPrefill selection's time goes: each of its
#            kernels' time under ncu (bench/gpu_kernel_times.py) over
#            check_flex_cuda's benchmark at FLEXPROF_CTX keys (default
#            131072; 32 q / 8 kv heads, d 128, a 4,096-row chunk, every head
#            vertical-slash and then every head query-aware), per selection
#     steps8b  the attention kernels of decode steps in place, on the e2e8b
#            model: `lacuna complete` (one 30,000-word prompt, dense prefill,
#            24 tokens) under ncu, per decode method (STEPS8B_METHODS: dense
#            quest tidal), each kernel's time per layer
#            (bench/gpu_kernel_times.py; the prompt's launches skipped)
#     profile8b  where a decode step's time goes, on the e2e8b model:
#            `lacuna complete` (the 30,000-word prompt, dense prefill, 128
#            tokens) with LACUNA_CUDA_PROFILE=1, per decode method
#            (PROFILE8B_RUNS: method:streams[:budget] ..., default dense:1
#            quest:1 tidal:1 quest:1:1000000), the host and GPU phases of
#            a decode step (the executor's step profile)
#     paired the paired retrieval sweep (bench/accuracy/paired.py) through the
#            GPU executor on the default model (PAIRED_MODEL=gemma: Gemma 3
#            270M, its five parts stashed first, scripts/gpu_bundle.sh): PAIRED_PLAN (4096:100,8192:100),
#            PAIRED_METHODS (dense,flexprefill,flexprefill:min_budget=256),
#            PAIRED_TASKS (all), PAIRED_FLAGS (more paired.py options, e.g. --format raw)
# Output worth keeping goes to $OUT (the device tool brings it back).
# Exit status: 77 without a GPU, else the first failing step's.
set -uo pipefail
cd "$(dirname "$0")/../.."
G=$PWD/.gpu
OUT=${OUT:-/tmp/lacuna-out}
mkdir -p "$OUT"
status=0
fail() {
    echo "run.sh: $1 failed (status $2)"
    [ "$status" = 0 ] && status=$2
}

if ! nvidia-smi -L >/dev/null 2>&1; then
    echo "SKIP: no GPU"
    exit 77
fi
if [ "${1:-}" = stash ]; then # model parts carried by this call, kept for the next calls on this machine
    st=1
    for f in "$G"/model.part0 "$G"/gemma.part[0-4] "$G"/gemma.sha256; do
        [ -f "$f" ] && cp "$f" "/tmp/lacuna-$(basename "$f")" && echo "stashed $(basename "$f")" && st=0
    done
    [ $# -gt 1 ] || exit $st
    shift
fi
[ -d "$G/lib" ] || tar xJf "$G/libs.tar.xz" -C "$G"
[ -f "$G/bin.tar.xz" ] && tar xJf "$G/bin.tar.xz" -C "$G"
CUDA_LIB=$(dirname "$(ls /usr/local/cuda/lib64/libcublasLt.so.* /usr/local/cuda*/targets/*/lib/libcublasLt.so.* \
    2>/dev/null | head -1)")
# Our binaries see the carried libraries; Python (torch) keeps its own.
ours() { LD_LIBRARY_PATH="$G/lib:$CUDA_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" "$@"; }
# The random-weight Llama-3-8B shape with context $1, written once (q8_0,
# 128256-token synthetic vocabulary): its path in M8.
model8b() {
    M8=/tmp/lacuna-llama8b-$1.gguf
    [ -f "$M8" ] || ours "$G/bin/lacuna" mkmodel -o "$M8" --layers 32 --embd 4096 --heads 32 --kv-heads 8 \
        --ff 14336 --ctx "$1" --type q8_0 --vocab-size 128256 --seed 8
}

# The random-weight Gemma 3 270M shape (18 layers, 640 wide, 4 heads of 256
# on one KV head, every 6th layer global, the others sliding over 512;
# q8_0, 262144-token synthetic vocabulary, context 32768): its path in MG.
modelgemma() {
    MG=/tmp/lacuna-gemma270m.gguf
    [ -f "$MG" ] || ours "$G/bin/lacuna" mkmodel -o "$MG" --layers 18 --embd 640 --heads 4 --kv-heads 1 \
        --head-dim 256 --ff 2048 --ctx 32768 --window 512 --type q8_0 --vocab-size 262144 --seed 6
}

# N copies (ids 1..N) of a 30,000-word prompt, as JSON lines for `lacuna complete`.
prompt8b() {
    python3 -c 'import json, sys; w = "the of and to in is it that was for on are with as his they be at one have this from or had by".split(); p = " ".join(w[(i * 7) % len(w)] for i in range(30000)); [print(json.dumps({"id": i + 1, "prompt": p})) for i in range(int(sys.argv[1]))]' "$1"
}

# The default model, once its two parts are here.
M=$G/model.gguf
p0=$G/model.part0
[ -f "$p0" ] || p0=/tmp/lacuna-model.part0
if [ ! -f "$M" ] && [ -f "$p0" ] && [ -f "$G/model.part1" ]; then
    cat "$p0" "$G"/model.part1 > "$M.tmp"
    if [ "$(sha256sum "$M.tmp" | cut -d' ' -f1)" = "$(cat "$G/model.sha256")" ]; then
        mv "$M.tmp" "$M"
    else
        rm -f "$M.tmp"
        fail "model assembly (sha256)" 2
    fi
fi
[ -f "$M" ] && export LACUNA_MODEL=$M
# Gemma 3 270M, once its five parts are here (scripts/gpu_bundle.sh: stashed over calls)
MGR=/tmp/lacuna-gemma3-270m.gguf
if [ ! -f "$MGR" ] && [ -f /tmp/lacuna-gemma.sha256 ] && [ -f /tmp/lacuna-gemma.part4 ]; then
    cat /tmp/lacuna-gemma.part[0-4] > "$MGR.tmp"
    if [ "$(sha256sum "$MGR.tmp" | cut -d' ' -f1)" = "$(cat /tmp/lacuna-gemma.sha256)" ]; then
        mv "$MGR.tmp" "$MGR" && echo "Gemma 3 270M assembled"
    else
        rm -f "$MGR.tmp"
        fail "Gemma assembly (sha256)" 2
    fi
fi

for step in "$@"; do
    echo "==> $step"
    case $step in
    env)
        nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv
        ours ldd "$G/bin/lacunad" | grep -E "not found|cublas|gomp" || true
        ours "$G/bin/lacuna" --help >/dev/null 2>&1 || fail "lacuna runs" 1
        ;;
    attn)
        ours env ATTN_BENCH=${ATTN_BENCH:-0} tests/gpu/run_attn.sh "$G/bin" 2>&1 | tee "$OUT/attn.log"
        [ "${PIPESTATUS[0]}" = 0 ] || fail attn 1
        ;;
    quest)
        : >"$OUT/quest.log"
        for c in small full; do
            ours env -u QUEST_BENCH CK_RUN_CASE=$c timeout 900 "$G/bin/check_quest_cuda" 2>&1 | tee -a "$OUT/quest.log"
            rc=${PIPESTATUS[0]}
            [ "$rc" = 0 ] || fail "check_quest_cuda $c" "$rc"
        done
        if [ "${QUEST_SANITIZE:-0}" = 1 ]; then # the small cases under memcheck and racecheck
            # racecheck: Quest's own kernels (the dense decode's TMA pipeline is the attn step's)
            for tool in memcheck racecheck; do
                excl=""
                [ $tool = racecheck ] && excl="--kernel-name-exclude kns=decode_kernel"
                # shellcheck disable=SC2086
                ours env -u QUEST_BENCH CK_RUN_CASE=small timeout 900 compute-sanitizer --tool $tool $excl --error-exitcode 3 \
                    "$G/bin/check_quest_cuda" 2>&1 | tee -a "$OUT/quest.log"
                rc=${PIPESTATUS[0]}
                [ "$rc" = 0 ] || fail "check_quest_cuda small under $tool" "$rc"
            done
        fi
        if [ "${QUEST_BENCH:-0}" = 1 ]; then
            ours env QUEST_BENCH=1 timeout 600 "$G/bin/check_quest_cuda" 2>&1 | tee "$OUT/quest-bench.log"
            rc=${PIPESTATUS[0]}
            [ "$rc" = 0 ] || fail "quest bench" "$rc"
        fi
        ;;
    flex)
        ours env -u FLEX_BENCH timeout 900 "$G/bin/check_flex_cuda" 2>&1 | tee "$OUT/flex.log"
        rc=${PIPESTATUS[0]}
        [ "$rc" = 0 ] || fail "check_flex_cuda" "$rc"
        if [ "${FLEX_BENCH:-0}" = 1 ]; then
            ours env FLEX_BENCH=1 timeout 600 "$G/bin/check_flex_cuda" 2>&1 | tee "$OUT/flex-bench.log"
            rc=${PIPESTATUS[0]}
            [ "$rc" = 0 ] || fail "flex bench" "$rc"
        fi
        ;;
    anchor)
        ours env -u ANCHOR_BENCH timeout 900 "$G/bin/check_anchor_cuda" 2>&1 | tee "$OUT/anchor.log"
        rc=${PIPESTATUS[0]}
        [ "$rc" = 0 ] || fail "check_anchor_cuda" "$rc"
        if [ "${ANCHOR_BENCH:-0}" = 1 ]; then
            ours env ANCHOR_BENCH=1 timeout 600 "$G/bin/check_anchor_cuda" 2>&1 | tee "$OUT/anchor-bench.log"
            rc=${PIPESTATUS[0]}
            [ "$rc" = 0 ] || fail "anchor bench" "$rc"
        fi
        ;;
    flexref)
        # python as it is (libattn_cuda.so needs none of the carried libraries; Triton compiles with the system's)
        # shellcheck disable=SC2086 # FLEXREF_FLAGS: several words
        timeout -k 10 "${FLEXREF_TIMEOUT:-580}" python3 tests/gpu/bench_flex_ref.py --lib "$G/bin/libattn_cuda.so" \
            --peer .peer/flexprefill --out "$OUT/flexref.json" ${FLEXREF_FLAGS:-} 2>&1 | tee "$OUT/flexref.log"
        [ "${PIPESTATUS[0]}" = 0 ] || fail flexref 1
        ;;
    equal-error)
        # transformers reads a GGUF through the gguf package, which the GPU
        # machine lacks: scripts/gpu_bundle.sh puts its wheel in .gpu/py
        whl=("$G"/py/gguf-*.whl)
        if ! python3 -c "import gguf" 2>/dev/null && [ -f "${whl[0]}" ]; then
            mkdir -p /tmp/lacuna-py && python3 -m zipfile -e "${whl[0]}" /tmp/lacuna-py
            export PYTHONPATH=/tmp/lacuna-py${PYTHONPATH:+:$PYTHONPATH}
        fi
        cap=()
        if [ -f "$M" ]; then cap=(--capture-hf "$M"); else echo "equal-error: no model here: synthetic inputs only"; fi
        # shellcheck disable=SC2086 # EQERR_FLAGS: several words
        timeout -k 10 "${EQERR_TIMEOUT:-540}" python3 tests/gpu/bench_flex_ref.py --lib "$G/bin/libattn_cuda.so" \
            --peer .peer/flexprefill --preset equal-error "${cap[@]}" --out "$OUT/equal-error.json" \
            ${EQERR_FLAGS:-} 2>&1 | tee "$OUT/equal-error.log"
        [ "${PIPESTATUS[0]}" = 0 ] || fail equal-error 1
        ;;
    tidal)
        : >"$OUT/tidal.log"
        for c in small full; do
            ours env -u TIDAL_BENCH CK_RUN_CASE=$c timeout 900 "$G/bin/check_tidal_cuda" 2>&1 | tee -a "$OUT/tidal.log"
            rc=${PIPESTATUS[0]}
            [ "$rc" = 0 ] || fail "check_tidal_cuda $c" "$rc"
        done
        if [ "${TIDAL_SANITIZE:-0}" = 1 ]; then # the small cases under memcheck and racecheck
            # racecheck: TidalDecode's own kernels (the dense decode's TMA pipeline is the attn step's)
            for tool in memcheck racecheck; do
                excl=""
                [ $tool = racecheck ] && excl="--kernel-name-exclude kns=decode_kernel"
                # shellcheck disable=SC2086
                ours env -u TIDAL_BENCH CK_RUN_CASE=small timeout 900 compute-sanitizer --tool $tool $excl --error-exitcode 3 \
                    "$G/bin/check_tidal_cuda" 2>&1 | tee -a "$OUT/tidal.log"
                rc=${PIPESTATUS[0]}
                [ "$rc" = 0 ] || fail "check_tidal_cuda small under $tool" "$rc"
            done
        fi
        if [ "${TIDAL_BENCH:-0}" = 1 ]; then
            ours env TIDAL_BENCH=1 timeout 600 "$G/bin/check_tidal_cuda" 2>&1 | tee "$OUT/tidal-bench.log"
            rc=${PIPESTATUS[0]}
            [ "$rc" = 0 ] || fail "tidal bench" "$rc"
        fi
        ;;
    cuda)
        ours timeout 900 "$G/bin/check_cuda" 2>&1 | tee "$OUT/cuda.log"
        rc=${PIPESTATUS[0]}
        [ "$rc" = 0 ] || fail "check_cuda" "$rc"
        ;;
    cp)
        ours timeout 900 "$G/bin/check_cp_cuda" 2>&1 | tee "$OUT/cp.log"
        rc=${PIPESTATUS[0]}
        [ "$rc" = 0 ] || fail "check_cp_cuda" "$rc"
        nccl_lib=$(python3 -c 'import os, nvidia.nccl as m; print(os.path.join(list(m.__path__)[0], "lib"))' \
            2>/dev/null || true)
        LD_LIBRARY_PATH="${nccl_lib:+$nccl_lib:}${LD_LIBRARY_PATH:-}" ours timeout 300 "$G/bin/check_cp_nccl" 2>&1 |
            tee -a "$OUT/cp.log"
        rc=${PIPESTATUS[0]}
        [ "$rc" = 0 ] || fail "check_cp_nccl" "$rc"
        ;;
    cp-serve)
        # lacunad on this GPU with parallel.context = 4 (device-local ranks): a prompt past
        # context_min_tokens through /v1/completions, then the per-rank lines of /metrics
        Mt=/tmp/lacuna-cp-tiny.gguf port=18931
        ours "$G/bin/lacuna" mkmodel -o "$Mt" --layers 4 --embd 256 --heads 4 --kv-heads 2 --ff 512 --ctx 8192 \
            --type q8_0 --seed 3 >/dev/null || { fail "mkmodel cp-serve" 1; continue; }
        LD_LIBRARY_PATH="$G/lib:$CUDA_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" "$G/bin/lacunad" --model "$Mt" \
            --served-name cp-tiny --device cuda:0 --host 127.0.0.1 --port $port --set parallel.context=4 \
            --set parallel.context_min_tokens=1024 >"$OUT/cp-serve-lacunad.log" 2>&1 &
        dpid=$!
        for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; sleep 0.2; done
        prompt=$(python3 -c 'print(" ".join(["alpha beta gamma delta"] * 300))')
        body=$(python3 -c 'import json, sys; print(json.dumps({"model": "cp-tiny", "prompt": sys.argv[1], "max_tokens": 8, "temperature": 0}))' "$prompt")
        curl -sf "http://127.0.0.1:$port/v1/completions" -H 'Content-Type: application/json' -d "$body" \
            >"$OUT/cp-serve.json" || fail "cp-serve completion" 1
        python3 -c 'import json, sys; d = json.load(open(sys.argv[1])); print("cp-serve: usage", d["usage"], "text", repr(d["choices"][0]["text"]))' \
            "$OUT/cp-serve.json" | tee "$OUT/cp-serve.log"
        curl -sf "http://127.0.0.1:$port/metrics" | grep -E '^lacuna:cp_' | tee -a "$OUT/cp-serve.log"
        grep -Eq '^lacuna:cp_sharded_rows_total\{.*\} [1-9]' "$OUT/cp-serve.log" &&
            grep -Eq '^lacuna:cp_ring_steps_total\{.*rank="3"\} [1-9]' "$OUT/cp-serve.log" || fail "cp-serve metrics" 1
        kill "$dpid" 2>/dev/null
        wait "$dpid" 2>/dev/null
        ;;
    dectrace)
        # shellcheck disable=SC2086
        ours python3 tests/gpu/trace_decode.py --lib "$G/bin/libattn_cuda.so" \
            --trace-lib "$G/bin/libattn_cuda_trace.so" ${DECTRACE_FLAGS:-} 2>&1 | tee "$OUT/dectrace.log"
        [ "${PIPESTATUS[0]}" = 0 ] || fail dectrace 1
        ;;
    gemm)
        ours "$G/bin/bench_gemm" "$OUT/gemm.json" 2>&1 | tee "$OUT/gemm.log"
        [ "${PIPESTATUS[0]}" = 0 ] || fail gemm 1
        ;;
    e2e)
        [ -f "$M" ] || { fail "e2e (no model)" 2; continue; }
        timeout -k 10 ${E2E_TIMEOUT:-300} python3 bench/gpu_e2e.py --lacunad "$G/bin/lacunad" \
            --libpath "$G/lib:$CUDA_LIB" --model "$M" --lacunad-log "$OUT/e2e-lacunad.log" ${E2E_FLAGS:-} \
            --out "$OUT/e2e.json" 2>&1 | tee "$OUT/e2e.log"
        [ "${PIPESTATUS[0]}" = 0 ] || fail e2e 1
        ;;
    e2e-methods)
        if [ "${E2EM_MODEL:-}" = 8b ]; then
            model8b "${E2E8B_CTX:-32768}" || { fail "mkmodel 8b" 1; continue; }
            EM=$M8 EV=128256
        elif [ "${E2EM_MODEL:-}" = gemma ]; then
            modelgemma || { fail "mkmodel gemma" 1; continue; }
            EM=$MG EV=262144
        else
            [ -f "$M" ] || { fail "e2e-methods (no model)" 2; continue; }
            EM=$M EV=49152
        fi
        for m in ${E2EM_METHODS:-dense anchor anchor-noprobe flexprefill}; do
            extra=()
            case $m in
            anchor-noprobe) pm=anchor extra=(--lacunad-arg=--set --lacunad-arg=attention.anchor_probe=0) ;;
            *) pm=$m ;;
            esac
            # shellcheck disable=SC2086
            timeout -k 10 ${E2E_TIMEOUT:-300} python3 bench/gpu_e2e.py --lacunad "$G/bin/lacunad" \
                --libpath "$G/lib:$CUDA_LIB" --model "$EM" --vocab "$EV" --skip-hf --streams= \
                --sparse="{\"prefill\":\"$pm\"}" "${extra[@]}" --lacunad-log "$OUT/e2e-$m-lacunad.log" \
                ${E2EM_FLAGS:-} --out "$OUT/e2e-$m.json" 2>&1 | tail -8 | tee "$OUT/e2e-$m.log"
            [ "${PIPESTATUS[0]}" = 0 ] || fail "e2e-methods $m" 1
        done
        ;;
    kv-windows)
        modelgemma || { fail "mkmodel gemma" 1; continue; }
        for run in ${KVW_RUNS:-false true}; do # false, true: engine.kv_keep_sliding; cp4: false, 4 ranks from 16K
            keep=$run extra=""
            [ "$run" = cp4 ] && keep=false extra="--lacunad-arg=--set --lacunad-arg=parallel.context=4 \
                --lacunad-arg=--set --lacunad-arg=parallel.context_min_tokens=16384"
            # shellcheck disable=SC2086
            timeout -k 10 ${E2E_TIMEOUT:-300} python3 bench/gpu_e2e.py --lacunad "$G/bin/lacunad" \
                --libpath "$G/lib:$CUDA_LIB" --model "$MG" --vocab 262144 --skip-hf --prompts 30000 --reps 2 \
                --streams 1,8 --decode-prompt 30000 --lacunad-arg=--set \
                --lacunad-arg=engine.kv_keep_sliding=$keep $extra --lacunad-log "$OUT/kv-windows-$run-lacunad.log" \
                --out "$OUT/kv-windows-$run.json" 2>&1 | tail -12 | tee "$OUT/kv-windows-$run.log"
            [ "${PIPESTATUS[0]}" = 0 ] || fail "kv-windows $run" 1
        done
        ;;
    soak)
        for sm in ${SOAK_MODELS:-llama gemma}; do
            MS=/tmp/lacuna-soak-$sm.gguf
            mk="--layers 4 --embd 256 --heads 4 --kv-heads 2 --ff 512"
            [ "$sm" = gemma ] && mk="--layers 6 --embd 256 --heads 4 --kv-heads 1 --head-dim 256 --ff 512 --window 128 \
                --swa-pattern 3"
            # shellcheck disable=SC2086
            [ -f "$MS" ] || ours "$G/bin/lacuna" mkmodel -o "$MS" $mk --vocab synthetic --ctx 4096 ||
                { fail "mkmodel soak $sm" 1; continue; }
            ours timeout -k 10 $((${SOAK_SECONDS:-60} + 240)) python3 bench/soak.py --lacunad "$G/bin/lacunad" \
                --model "$MS" --duration "${SOAK_SECONDS:-60}" --long-frac 0.5 --set model.device=cuda \
                --set parallel.context="${SOAK_CONTEXT:-2}" --set parallel.context_min_tokens=256 \
                --set engine.kv_blocks=60 --seed "${SOAK_SEED:-1}" \
                --workdir "$OUT/soak-$sm" --json "$OUT/soak-$sm.json" 2>&1 | tail -40 | tee "$OUT/soak-$sm.log"
            [ "${PIPESTATUS[0]}" = 0 ] || fail "soak $sm" 1
            grep -h " warn \| error " "$OUT/soak-$sm"/*.log | sed 's/^[^ ]* //' | sort | uniq -c | sort -rn | head -20
            rm -f "$OUT/soak-$sm"/*.gguf
        done
        ;;
    e2e-sampled)
        # lacunad alone, the decode streams drawn at temperature 0.8 (every row's logits to the host sampler)
        [ -f "$M" ] || { fail "e2e-sampled (no model)" 2; continue; }
        timeout -k 10 ${E2E_TIMEOUT:-300} python3 bench/gpu_e2e.py --lacunad "$G/bin/lacunad" \
            --libpath "$G/lib:$CUDA_LIB" --model "$M" --lacunad-log "$OUT/e2e-sampled-lacunad.log" --skip-hf \
            --temperature 0.8 --out "$OUT/e2e-sampled.json" 2>&1 | tee "$OUT/e2e-sampled.log"
        [ "${PIPESTATUS[0]}" = 0 ] || fail e2e-sampled 1
        ;;
    e2e-nographs)
        # lacunad alone, decode steps without CUDA graphs (the A/B of engine.cuda_graphs)
        [ -f "$M" ] || { fail "e2e-nographs (no model)" 2; continue; }
        timeout -k 10 ${E2E_TIMEOUT:-300} python3 bench/gpu_e2e.py --lacunad "$G/bin/lacunad" \
            --libpath "$G/lib:$CUDA_LIB" --model "$M" --lacunad-log "$OUT/e2e-nographs-lacunad.log" --skip-hf \
            --lacunad-arg=--set --lacunad-arg=engine.cuda_graphs=false \
            --out "$OUT/e2e-nographs.json" 2>&1 | tee "$OUT/e2e-nographs.log"
        [ "${PIPESTATUS[0]}" = 0 ] || fail e2e-nographs 1
        ;;
    e2e8b)
        model8b "${E2E8B_CTX:-32768}" || { fail "mkmodel 8b" 1; continue; } # E2E8B_CTX: 131072 for 128K prompts
        timeout -k 10 ${E2E_TIMEOUT:-500} python3 bench/gpu_e2e.py --lacunad "$G/bin/lacunad" \
            --libpath "$G/lib:$CUDA_LIB" --model "$M8" --lacunad-log "$OUT/e2e8b-lacunad.log" --vocab 128256 --prompts "${E2E8B_PROMPTS:-1024,8192,32000}" --streams 1,64 ${E2E8B_FLAGS:-} \
            --out "$OUT/e2e8b.json" 2>&1 | tee "$OUT/e2e8b.log"
        [ "${PIPESTATUS[0]}" = 0 ] || fail e2e8b 1
        ;;
    flexprof)
        fctx=${FLEXPROF_CTX:-131072}
        ours env FLEX_BENCH=1 FLEX_BENCH_CTX="$fctx" timeout 400 python3 bench/gpu_kernel_times.py \
            --label "FlexPrefill's selection, 32 q / 8 kv heads, d 128, $fctx keys, a 4,096-row chunk" \
            --kernels 'rep_prep|score_kernel|merge_ml|slash_kernel|kpool|diverge|qpool|cells_kernel|select_kernel|colsel|mask_kernel' \
            --count 600 --per-kernel select_kernel -- "$G/bin/check_flex_cuda" 2>&1 | tee "$OUT/flexprof.md"
        [ "${PIPESTATUS[0]}" = 0 ] || fail flexprof 1
        ;;
    steps8b)
        model8b 32768 || { fail "mkmodel 8b" 1; continue; }
        P8=/tmp/lacuna-steps8b.jsonl
        prompt8b 1 >"$P8"
        : >"$OUT/steps8b.md"
        for m in ${STEPS8B_METHODS:-dense quest tidal}; do
            # the prompt's 8 chunks x 32 layers of summaries are skipped, then 400 launches of decode steps
            ours timeout 300 python3 bench/gpu_kernel_times.py --label "decode $m, 8B shape, ~30K context, one stream" \
                --kernels 'decode_kernel|score_kernel|select_kernel|summarize|mass_kernel|attend_kernel|merge_kernel' \
                --skip 512 --count 400 --per-kernel summarize_list -- \
                "$G/bin/lacuna" complete -m "$M8" -i "$P8" -n 24 --decode "$m" --decode-budget 2048 \
                --prefill dense --device cuda:0 2>&1 | tee -a "$OUT/steps8b.md"
            [ "${PIPESTATUS[0]}" = 0 ] || fail "steps8b $m" 1
        done
        ;;
    profile8b)
        model8b 32768 || { fail "mkmodel 8b" 1; continue; }
        : >"$OUT/profile8b.log"
        for r in ${PROFILE8B_RUNS:-dense:1 quest:1 tidal:1 quest:1:1000000}; do
            IFS=: read -r m n bud <<<"$r"
            P8=/tmp/lacuna-profile8b-$n.jsonl
            prompt8b "$n" >"$P8"
            echo "--- decode $m, $n stream(s), budget ${bud:-2048}" | tee -a "$OUT/profile8b.log"
            ours env LACUNA_CUDA_PROFILE=1 timeout 300 "$G/bin/lacuna" complete -m "$M8" -i "$P8" -c "$n" -n 128 \
                --decode "$m" --decode-budget "${bud:-2048}" --prefill dense --device cuda:0 -o "$OUT/profile8b-$m-$n.jsonl" \
                2>&1 | grep -E "cuda profile|requests in|rror" | tee -a "$OUT/profile8b.log"
            [ "${PIPESTATUS[0]}" = 0 ] || fail "profile8b $r" 1
            python3 -c 'import json, sys; r = [json.loads(l) for l in open(sys.argv[1])]; print("ms/token after the first, per stream: %.3f" % (1e3 * sum((x["e2e_s"] - x["ttft_s"]) / max(1, x["completion_tokens"] - 1) for x in r) / len(r)))' \
                "$OUT/profile8b-$m-$n.jsonl" | tee -a "$OUT/profile8b.log"
        done
        ;;
    paired)
        PM=$M
        [ "${PAIRED_MODEL:-}" = gemma ] && PM=$MGR
        [ -f "$PM" ] || { fail "paired (no model)" 2; continue; }
        LD_LIBRARY_PATH="$G/lib:$CUDA_LIB" timeout -k 10 ${PAIRED_TIMEOUT:-540} python3 bench/accuracy/paired.py \
            --lacuna "$G/bin/lacuna" --model "$PM" --device cuda:0 --concurrency 16 \
            --plan "${PAIRED_PLAN:-4096:100,8192:100}" \
            --methods "${PAIRED_METHODS:-dense,flexprefill,flexprefill:min_budget=256}" \
            ${PAIRED_TASKS:+--tasks "$PAIRED_TASKS"} ${PAIRED_FLAGS:-} --out "$OUT/paired" 2>&1 |
            tail -40 | tee "$OUT/paired.log"
        [ "${PIPESTATUS[0]}" = 0 ] || fail paired 1
        ;;
    *) fail "unknown step $step" 2 ;;
    esac
done
exit "$status"

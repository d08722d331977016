#!/usr/bin/env bash
# Runs a subset of the Check unit tests and the fuzz replays under valgrind
# memcheck (no forking, so leaks are seen): any error or definite, indirect or
# possible leak fails. `make check-valgrind` calls it; test.sh runs it when
# valgrind is installed. Usage: scripts/valgrind.sh [BUILD_DIR] (default build/).
#
# Left out because they take many minutes under valgrind and exercise numeric
# kernels rather than memory handling: check_model, check_attn, check_sched
# (all three run under ASan+UBSan in the sanitizer build). check_tokenizer runs
# without the real models (their cases are speed tests as well).
set -uo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
bdir=$(cd "${1:-$src/build}" && pwd)
command -v valgrind >/dev/null || { echo "valgrind: not installed; skipping"; exit 0; }
export LACUNA_SRCDIR=$src LACUNA_BUILDDIR=$bdir CK_FORK=no OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
export LACUNA_MODEL=/nonexistent-under-valgrind LACUNA_GEMMA_MODEL=/nonexistent-under-valgrind
unset LACUNA_REQUIRE_MODEL
tests="check_common check_server check_device check_kv check_gguf check_sampler check_tokenizer check_grammar
  check_toolcall check_chat_tools
  fuzz/replay_request fuzz/replay_sse fuzz/replay_chat fuzz/replay_gguf fuzz/replay_schema"
status=0
for t in $tests; do
  exe=$bdir/tests/$t
  [ -x "$exe" ] || { echo "valgrind: $exe not built (make check first)"; status=1; continue; }
  log=$bdir/tests/$(basename "$t").valgrind.log
  t0=$(date +%s)
  # valgrind's own errors exit 1; a program that skipped part of its tests
  # (no model here on purpose, no GPU) exits 77, which is clean too.
  valgrind -q --error-exitcode=1 --leak-check=full --errors-for-leak-kinds=definite,indirect,possible \
    --track-origins=yes "$exe" >"$log" 2>&1
  rc=$?
  if [ $rc = 0 ] || [ $rc = 77 ]; then
    echo "PASS: valgrind $t ($(( $(date +%s) - t0 )) s)"
  else
    echo "FAIL: valgrind $t ($(( $(date +%s) - t0 )) s); see $log"
    tail -n 40 "$log"
    status=1
  fi
done
exit $status

#!/usr/bin/env bash
# Runs every test MarchProxy has, from a fresh checkout: installs dependencies, builds each preset,
# runs unit tests (plain and under ASan+UBSan), integration tests (release build, and the
# concurrency-heavy ones again under TSan), and every fuzzer for a bounded time.
#
#   scripts/test.sh                 everything (what .ci/run calls)
#   FUZZ_SECONDS=10 scripts/test.sh shorter fuzzing
#   STAGES="release asan" scripts/test.sh   a subset of: release asan tsan fuzz web
set -euo pipefail
cd "$(dirname "$0")/.."

FUZZ_SECONDS=${FUZZ_SECONDS:-60}
STAGES=${STAGES:-"release asan tsan fuzz web"}
JOBS=${JOBS:-$(nproc)}
export CTEST_OUTPUT_ON_FAILURE=1

bash scripts/setup.sh
bash scripts/build_web.sh   # the manager serves web/dist (integration tests and the web stage use it)

has_stage() { [[ " $STAGES " == *" $1 "* ]]; }
section() { printf '\n==== %s (%s)\n' "$1" "$(date +%H:%M:%S)"; }
build() {  # build PRESET [targets...]
  local preset=$1; shift
  cmake --preset "$preset" >/dev/null
  if (($#)); then cmake --build --preset "$preset" -j "$JOBS" --target "$@"
  else cmake --build --preset "$preset" -j "$JOBS"; fi
}

failed=()
passed=0
run() {  # run NAME CMD...: keeps going after a failure, reports all at the end
  local name=$1; shift
  if "$@"; then passed=$((passed + 1)); else failed+=("$name"); fi
}

if has_stage release; then
  section "release: build"
  build release
  section "release: unit + integration tests"
  # Integration tests run real processes on a shared 2-core machine: a test that fails is run once
  # more, and ctest prints both outcomes (a test that fails twice fails the stage).
  run release-tests ctest --test-dir build/release -j "$JOBS" --timeout 900 --repeat until-pass:2
fi

if has_stage asan; then
  section "asan-ubsan: build"
  build asan-ubsan
  section "asan-ubsan: unit tests"
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    run asan-unit ctest --test-dir build/asan-ubsan -L unit -j "$JOBS"
  section "asan-ubsan: integration tests against the sanitized binary"
  # A smaller quarantine than the 256 MiB default: the flood tests churn memory fast, and their RSS
  # bounds (MARCHPROXY_ITEST_RSS_LIMIT_MIB) would otherwise measure ASan's quarantine, not ours.
  ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:quarantine_size_mb=64 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    run asan-integration ctest --test-dir build/asan-ubsan -L integration -j "$JOBS" --timeout 900 --repeat until-pass:2
fi

if has_stage tsan; then
  section "tsan: build marchproxy"
  build tsan marchproxy
  section "tsan: multi-worker integration tests (reload under load, load balancing, drain)"
  TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1" \
    run tsan-integration ctest --test-dir build/tsan -L integration -R "reload|load_balancing|health" -j 1 --timeout 900 --repeat until-pass:2
fi

if has_stage fuzz; then
  section "fuzz: build"
  fuzz_targets=()
  for src in tests/fuzz/*_fuzz.cc; do fuzz_targets+=("$(basename "$src" .cc)"); done
  build fuzz "${fuzz_targets[@]}"
  # One fuzzer per core at a time: each runs single-threaded for FUZZ_SECONDS, so on 2 cores the stage
  # takes half as long. Each fuzzer's output goes to its own log, printed when it ends.
  fuzz_one() {  # fuzz_one BINARY LOG
    local f=$1 log=$2 name corpus_seed work
    name=$(basename "$f")
    corpus_seed=tests/fuzz/corpus/${name%_fuzz}
    work=build/fuzz/corpus-$name
    mkdir -p "$work"
    local seeds=()
    [ -d "$corpus_seed" ] && seeds+=("$corpus_seed")
    "$f" -max_total_time="$FUZZ_SECONDS" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
      -artifact_prefix=build/fuzz/ "$work" "${seeds[@]}" >"$log" 2>&1
  }
  fuzz_finish() {  # fuzz_finish PID NAME LOG: waits for one fuzzer, prints its summary, records the result
    local rc=0
    wait "$1" || rc=$?
    section "fuzz: $2 (${FUZZ_SECONDS}s) exit $rc"
    if ((rc == 0)); then grep -E '^(stat::|Done|INFO: Seed|#[0-9]+ +DONE)' "$3" | tail -n 12 || true
    else tail -n 60 "$3"; fi
    if ((rc == 0)); then passed=$((passed + 1)); else failed+=("$2"); fi
  }
  section "fuzz: ${#fuzz_targets[@]} targets, ${FUZZ_SECONDS}s each, $JOBS at a time"
  pids=() names=() logs=()
  for f in build/fuzz/tests/fuzz/*_fuzz; do
    if ((${#pids[@]} >= JOBS)); then
      fuzz_finish "${pids[0]}" "${names[0]}" "${logs[0]}"
      pids=("${pids[@]:1}") names=("${names[@]:1}") logs=("${logs[@]:1}")
    fi
    name=$(basename "$f")
    log=build/fuzz/$name.log
    fuzz_one "$f" "$log" &
    pids+=($!) names+=("$name") logs+=("$log")
  done
  for i in "${!pids[@]}"; do fuzz_finish "${pids[$i]}" "${names[$i]}" "${logs[$i]}"; done
fi

if has_stage web; then
  section "web: component tests (vitest)"
  run web-unit bash -c 'cd web && npx vitest run'
  section "web: end-to-end in Chromium against a real manager"
  build release marchproxy
  E2E_OUT=build/web-e2e run web-e2e node tests/web/e2e.mjs
fi

section "summary"
((${#failed[@]})) && echo "failed stages: ${failed[*]}"
echo "stages: $passed passed, ${#failed[@]} failed"
((${#failed[@]} == 0))

#!/usr/bin/env bash
# Runs every benchmark one after the other (never in parallel: they would skew each other's timings),
# keeps each one's full output in a log directory, then prints every RESULT line and which scripts
# missed a goal. Exit status: 0 when all goals were met, 1 otherwise.
# Usage: benchmarks/run_all.sh [log directory]   (PYTHON picks the interpreter; default python3)
set -uo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
LOGS=${1:-$(mktemp -d "${TMPDIR:-/tmp}/cdnetworks-bench.XXXXXX")}
mkdir -p "$LOGS"
BENCHES=(bench_polling bench_metrics bench_notify bench_ha bench_scrape_load bench_freshness bench_planning bench_browser)

declare -A STATUS SECONDS_TAKEN
for bench in "${BENCHES[@]}"; do
  echo "=== $bench ==="
  started=$(date +%s)
  "$PY" "benchmarks/$bench.py" 2>&1 | tee "$LOGS/$bench.log"
  STATUS[$bench]=${PIPESTATUS[0]}
  SECONDS_TAKEN[$bench]=$(( $(date +%s) - started ))
  echo
done

echo "=== summary (full output in $LOGS) ==="
failed=0
for bench in "${BENCHES[@]}"; do
  if [ "${STATUS[$bench]}" -eq 0 ]; then verdict="ok"; else verdict="MISSED A GOAL (exit ${STATUS[$bench]})"; failed=1; fi
  printf '%-14s %4ss  %s\n' "$bench" "${SECONDS_TAKEN[$bench]}" "$verdict"
done
echo
for bench in "${BENCHES[@]}"; do
  grep '^RESULT ' "$LOGS/$bench.log" | sed 's/^RESULT //'
done
exit $failed

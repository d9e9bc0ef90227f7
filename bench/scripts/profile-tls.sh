#!/usr/bin/env bash
# Where posrelay's CPU goes over wss (`small` and `large`, BENCHMARKS.md "Where the wss
# CPU goes"): perf record on the relay process that this run started (found as a child
# of its own posrelay-bench, never by name: other relays may run on the machine).
# Needs perf and root (or perf_event_paranoid <= 1). Writes into the current directory.
# Usage: bash bench/scripts/profile-tls.sh [path/to/posrelay-bench]
set -u
BENCH=${1:-target/release/posrelay-bench}
for s in small large; do
  "$BENCH" --no-build --quiet --scenario $s --target posrelay --tls --duration 20s --json > prof-$s.json 2> prof-$s.err &
  B=$!
  sleep 14  # setup and warm-up
  PID=""
  for c in $(pgrep -P $B); do
    if tr '\0' ' ' < /proc/$c/cmdline 2>/dev/null | grep -q " serve "; then PID=$c; fi
  done
  [ -n "$PID" ] && perf record -F 2999 -e cpu-clock -g -p "$PID" -o perf-$s.data -- sleep 5 2>/dev/null
  wait $B
  perf report -i perf-$s.data --no-children --sort dso --stdio -g none 2>/dev/null | grep "%" > dso-$s.txt
  perf report -i perf-$s.data --no-children --sort sym --stdio -g none 2>/dev/null | grep "%" | head -50 > sym-$s.txt
done

#!/bin/bash
# Where the target's CPU goes during `small`, for posrelay and the baseline (the
# analysis in BENCHMARKS.md): system calls and io_uring submissions per round trip
# (perf stat, 4 s), then a profile by binary and by symbol (perf record, 4 s).
# Needs perf and root (or perf_event_paranoid <= 1). Writes into the current directory.
# Usage: bash bench/scripts/profile.sh [path/to/posrelay-bench]
set -euo pipefail
BENCH=${1:-target/release/posrelay-bench}
for t in posrelay baseline; do
  "$BENCH" --scenario small --target $t --duration 20s --json > prof-$t.json 2> prof-$t.err &
  B=$!
  sleep 11  # setup and warm-up
  if [ $t = posrelay ]; then PID=$(pgrep -f "posrelay serve" | head -1); else PID=$(pgrep -f "serve-baseline" | head -1); fi
  perf stat -e raw_syscalls:sys_enter,syscalls:sys_enter_sendmsg,syscalls:sys_enter_sendto,syscalls:sys_enter_recvfrom,syscalls:sys_enter_io_uring_enter,syscalls:sys_enter_epoll_wait,io_uring:io_uring_submit_req,irq_vectors:reschedule_entry -p "$PID" -o stat-$t.txt -- sleep 4
  perf record -F 4999 -e cpu-clock -g -p "$PID" -o perf-$t.data -- sleep 4 2>/dev/null
  wait $B
  perf report -i perf-$t.data --no-children --sort dso --stdio -g none 2>/dev/null | grep "%" > dso-$t.txt
  perf report -i perf-$t.data --no-children --sort sym --stdio -g none 2>/dev/null | grep "%" | head -60 > sym-$t.txt
  python3 -c "import json,sys; l=json.load(open('prof-$t.json'))['scenarios'][0]['results'][0]['load']; print('$t: round trips/s', round(l['round_trips_per_sec']), 'target CPU us/round trip', round(l['target_cpu_us_per_round_trip'],1))"
done

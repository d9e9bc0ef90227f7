#!/usr/bin/env bash
# A posrelay cluster on this machine's loopback (PROTOCOL.md §12), and its failover:
# three NATS servers (deploy/nats/loopback.sh), three relay nodes a, b, c, a terminal
# (`posrelay device-sim`, given nodes b and a as behind DNS round robin) and a POS
# (`posrelay pos-sim`) on node c. It sends a message through the cluster, kills node b
# (the terminal's) with kill -9, waits for the terminal to come back on a, and sends again.
#   bash deploy/cluster-loopback.sh [WORK_DIR]      (default: a fresh temp directory)
# Needs nats-server 2.11+ ($POSRELAY_NATS_SERVER or on PATH; `bash .ci/install-nats`
# installs one) and a posrelay binary ($POSRELAY, else the newer of target/release and
# target/debug: `cargo build --release -p posrelay`).
# Ports: NATS 4222-4224, relay 8081-8083, admin 9081-9083. Stops everything it started
# when it ends (KEEP=1 keeps the cluster running until Ctrl-C). TERMINALS=N runs N
# terminals on node b (1001, 1002, …) and reports when all are back (BENCHMARKS.md's
# failover figure is TERMINALS=1000).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
WORK="${1:-$(mktemp -d)}"
mkdir -p "$WORK" && WORK="$(cd "$WORK" && pwd)"
# The newest of the release and debug builds, unless $POSRELAY says which.
POSRELAY="${POSRELAY:-$(ls -t "$ROOT/target/release/posrelay" "$ROOT/target/debug/posrelay" 2>/dev/null | head -n 1)}"
[ -x "$POSRELAY" ] || { echo "no posrelay binary: cargo build --release -p posrelay (or set POSRELAY)" >&2; exit 1; }
export POSRELAY_ADMIN_TOKEN="$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"

PIDS=()
stop_all() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap stop_all EXIT INT TERM
step() { printf '\n== %s\n' "$*"; }
# Waits (30 s at most) for a line matching $2 in file $1.
wait_for_line() {
  for _ in $(seq 1 300); do grep -q -- "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
  echo "not seen in $1 within 30 s: $2" >&2; tail -n 20 "$1" >&2; exit 1
}

step "three NATS servers with JetStream (logs in $WORK/nats)"
bash "$ROOT/deploy/nats/loopback.sh" "$WORK/nats" >"$WORK/nats.out" 2>&1 &
PIDS+=($!)
wait_for_line "$WORK/nats.out" "three NATS servers ready"
CLUSTER=nats://127.0.0.1:4222,nats://127.0.0.1:4223,nats://127.0.0.1:4224

declare -A NODE_PID
i=0
for id in a b c; do
  i=$((i + 1))
  step "node $id: relay ws://127.0.0.1:808$i, admin http://127.0.0.1:908$i"
  "$POSRELAY" serve --cluster "$CLUSTER" --node-id "$id" --node-url "ws://127.0.0.1:808$i" \
    --listen "127.0.0.1:808$i" --admin-listen "127.0.0.1:908$i" --data-dir "$WORK/node-$id" \
    --shards 1 >"$WORK/node-$id.out" 2>"$WORK/node-$id.log" &
  NODE_PID[$id]=$!
  PIDS+=($!)
done
for id in a b c; do wait_for_line "$WORK/node-$id.out" "admin listening"; done
curl -fs http://127.0.0.1:9082/healthz

step "provisioning through node a (it holds on b and c at once)"
ADMIN=(--admin-url http://127.0.0.1:9081)
"$POSRELAY" admin "${ADMIN[@]}" create-domain demo >/dev/null
"$POSRELAY" admin "${ADMIN[@]}" create-store --domain demo --merchant demo store-1 >/dev/null
TERMINALS="${TERMINALS:-1}"
# Through the admin API in one process (a CLI call per terminal is slow for thousands).
python3 - "$TERMINALS" <<'PY'
import json, os, sys, urllib.request
for i in range(int(sys.argv[1])):
    body = json.dumps({"tsn": str(1001 + i), "make": "ingenico", "model": "axium", "store": "store-1"})
    req = urllib.request.Request("http://127.0.0.1:9081/admin/v1/domains/demo/devices", body.encode(),
        {"Authorization": "Bearer " + os.environ["POSRELAY_ADMIN_TOKEN"], "Content-Type": "application/json"})
    urllib.request.urlopen(req).read()
PY
echo "$TERMINALS terminal(s) provisioned"
CLIENT_JSON="$("$POSRELAY" admin "${ADMIN[@]}" --json create-client --domain demo --store store-1)"
export POSRELAY_CLIENT_ID="$(python3 -c 'import json,sys; print(json.load(sys.stdin)["client_id"])' <<<"$CLIENT_JSON")"
export POSRELAY_CLIENT_SECRET="$(python3 -c 'import json,sys; print(json.load(sys.stdin)["client_secret"])' <<<"$CLIENT_JSON")"
echo "client $POSRELAY_CLIENT_ID"

# Waits (120 s at most) until "] online" appears at least $1 times in device.out.
wait_online() {
  for _ in $(seq 1 1200); do [ "$(grep -c '] online' "$WORK/device.out")" -ge "$1" ] && return 0; sleep 0.1; done
  echo "only $(grep -c '] online' "$WORK/device.out") of $1 terminal connections came online" >&2
  tail "$WORK/device.out" >&2; exit 1
}
step "$TERMINALS terminal(s) from 1001 on node b (device-sim --relay b --relay a)"
TSNS=()
for i in $(seq 0 $((TERMINALS - 1))); do TSNS+=(--tsn $((1001 + i))); done
"$POSRELAY" device-sim --relay ws://127.0.0.1:8082 --relay ws://127.0.0.1:8081 "${TSNS[@]}" --echo \
  >"$WORK/device.out" 2>&1 &
PIDS+=($!)
wait_online "$TERMINALS"

pos() {
  echo "$1" | "$POSRELAY" pos-sim --relay ws://127.0.0.1:8083 --domain demo --tsn 1001 --reply-timeout 5s
}
step "POS on node c claims 1001 (decided by b, which owns it) and sends through b"
pos "hello through the cluster"

step "kill -9 node b"
KILLED_AT=$(date +%s.%N)
kill -9 "${NODE_PID[b]}"
wait "${NODE_PID[b]}" 2>/dev/null || true
# Each terminal's second "online" line: it is back, on node a.
wait_online $((2 * TERMINALS))
BACK_AT=$(date +%s.%N)
echo "$TERMINALS terminal(s) back online on node a $(python3 -c "print(round(($BACK_AT - $KILLED_AT) * 1000))") ms after kill -9"

step "the POS on node c claims again (same session_id, now on a) and sends"
pos "hello again, through node a"

step "done: logs in $WORK"
if [ "${KEEP:-}" = 1 ]; then echo "KEEP=1: the cluster keeps running until Ctrl-C"; wait; fi

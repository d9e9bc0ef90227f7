#!/usr/bin/env bash
# §12 forwarded sessions against local ones, on this machine's loopback: three NATS
# servers (deploy/nats/loopback.sh), nodes a and b (one shard each), one terminal on b
# (`posrelay device-sim --echo`), and one POS that claims it and runs N sequential round
# trips through a session opened on b (local: the device is there) and then on a
# (forwarded to b over NATS), plain and then reliable (PROTOCOL.md §11: the claim's log
# on JetStream, fenced writes of three replicas), and the same on one node (redb log). Prints the round-trip percentiles and the CPU time each
# process spent per round trip (utime+stime from /proc, over each phase).
#   bash bench/scripts/cluster-forward.sh [ROUND_TRIPS] [PAYLOAD_BYTES]   (default 5000, 64)
# Needs nats-server 2.11+ ($POSRELAY_NATS_SERVER, or `bash .ci/install-nats`), a release
# build (`cargo build --release -p posrelay`; or $POSRELAY) and python3 with websockets.
# Ports: NATS 4222-4224, relay 8181-8182, admin 9181-9182. Stops what it started.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
N="${1:-5000}"
SIZE="${2:-64}"
WORK="$(mktemp -d)"
POSRELAY="${POSRELAY:-$ROOT/target/release/posrelay}"
[ -x "$POSRELAY" ] || { echo "no release build: cargo build --release -p posrelay (or set POSRELAY)" >&2; exit 1; }
export POSRELAY_ADMIN_TOKEN="$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
PIDS=()
stop_all() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap stop_all EXIT INT TERM
wait_for_line() {
  for _ in $(seq 1 300); do grep -q -- "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
  echo "not seen in $1 within 30 s: $2" >&2; tail -n 20 "$1" >&2; exit 1
}

bash "$ROOT/deploy/nats/loopback.sh" "$WORK/nats" >"$WORK/nats.out" 2>&1 &
PIDS+=($!)
wait_for_line "$WORK/nats.out" "three NATS servers ready"
CLUSTER=nats://127.0.0.1:4222,nats://127.0.0.1:4223,nats://127.0.0.1:4224
declare -A NODE_PID
i=0
for id in a b; do
  i=$((i + 1))
  "$POSRELAY" serve --cluster "$CLUSTER" --node-id "$id" --node-url "ws://127.0.0.1:818$i" \
    --listen "127.0.0.1:818$i" --admin-listen "127.0.0.1:918$i" --data-dir "$WORK/node-$id" \
    --shards 1 >"$WORK/node-$id.out" 2>"$WORK/node-$id.log" &
  NODE_PID[$id]=$!
  PIDS+=($!)
done
for id in a b; do wait_for_line "$WORK/node-$id.out" "admin listening"; done
ADMIN=(--admin-url http://127.0.0.1:9181)
"$POSRELAY" admin "${ADMIN[@]}" create-domain demo >/dev/null
"$POSRELAY" admin "${ADMIN[@]}" create-store --domain demo --merchant demo store-1 >/dev/null
"$POSRELAY" admin "${ADMIN[@]}" create-device --domain demo --store store-1 --make ingenico --model axium 1001 >/dev/null
CLIENT_JSON="$("$POSRELAY" admin "${ADMIN[@]}" --json create-client --domain demo --store store-1)"
export POSRELAY_CLIENT_ID="$(python3 -c 'import json,sys; print(json.load(sys.stdin)["client_id"])' <<<"$CLIENT_JSON")"
export POSRELAY_CLIENT_SECRET="$(python3 -c 'import json,sys; print(json.load(sys.stdin)["client_secret"])' <<<"$CLIENT_JSON")"
"$POSRELAY" device-sim --relay ws://127.0.0.1:8182 --tsn 1001 --echo >"$WORK/device.out" 2>&1 &
DEVICE=$!
PIDS+=($DEVICE)
wait_for_line "$WORK/device.out" "] online"
NATS_PIDS="$(pgrep -f "$WORK/nats/n[123].conf" | tr '\n' ',')"

ROWS="$WORK/rows"
python3 "$ROOT/bench/scripts/rtt-probe.py" "$N" "$SIZE" 8182 "${NODE_PID[a]}" "${NODE_PID[b]}" "$NATS_PIDS" \
  "node b (cluster, local: the device is there)=8182" "node a (cluster, forwarded to b)=8181" \
  "node b (cluster, local, reliable: JetStream log)=8182~reliable" \
  "node a (cluster, forwarded to b, reliable)=8181~reliable" >"$ROWS"
# The same terminal and POS on a single node (embedded store), for the local path's cost.
for id in a b; do kill "${NODE_PID[$id]}"; done
kill "$DEVICE"
"$POSRELAY" serve --listen 127.0.0.1:8183 --admin-listen 127.0.0.1:9183 --data-dir "$WORK/single" \
  --shards 1 >"$WORK/single.out" 2>"$WORK/single.log" &
SINGLE=$!
PIDS+=($SINGLE)
wait_for_line "$WORK/single.out" "admin listening"
ADMIN=(--admin-url http://127.0.0.1:9183)
"$POSRELAY" admin "${ADMIN[@]}" create-domain demo >/dev/null
"$POSRELAY" admin "${ADMIN[@]}" create-store --domain demo --merchant demo store-1 >/dev/null
"$POSRELAY" admin "${ADMIN[@]}" create-device --domain demo --store store-1 --make ingenico --model axium 1001 >/dev/null
CLIENT_JSON="$("$POSRELAY" admin "${ADMIN[@]}" --json create-client --domain demo --store store-1)"
export POSRELAY_CLIENT_ID="$(python3 -c 'import json,sys; print(json.load(sys.stdin)["client_id"])' <<<"$CLIENT_JSON")"
export POSRELAY_CLIENT_SECRET="$(python3 -c 'import json,sys; print(json.load(sys.stdin)["client_secret"])' <<<"$CLIENT_JSON")"
"$POSRELAY" device-sim --relay ws://127.0.0.1:8183 --tsn 1001 --echo >"$WORK/device-single.out" 2>&1 &
PIDS+=($!)
wait_for_line "$WORK/device-single.out" "] online"
python3 "$ROOT/bench/scripts/rtt-probe.py" "$N" "$SIZE" 8183 "$SINGLE" "$SINGLE" "" \
  "single node (embedded store)=8183" "single node, reliable (redb log)=8183~reliable" | tail -n 2 \
  | sed 's/| [0-9]* µs | \([0-9]* µs\) | [0-9]* µs |$/| – | \1 | – |/' >>"$ROWS"
cat "$ROWS"

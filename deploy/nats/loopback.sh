#!/usr/bin/env bash
# Three NATS servers with JetStream on this machine's loopback, to try a posrelay cluster
# (PROTOCOL.md §12) without three hosts. Not for production: see nats-{1,2,3}.conf.
#   bash deploy/nats/loopback.sh [DATA_DIR]     (default: ./nats-data; Ctrl-C stops them)
# Clients: nats://127.0.0.1:4222,nats://127.0.0.1:4223,nats://127.0.0.1:4224
# Needs nats-server 2.11+: $POSRELAY_NATS_SERVER, else the one on PATH
# (`bash .ci/install-nats` installs one and prints its path).
set -euo pipefail
DATA="$(mkdir -p "${1:-./nats-data}" && cd "${1:-./nats-data}" && pwd)"
NATS="${POSRELAY_NATS_SERVER:-$(command -v nats-server || true)}"
[ -x "$NATS" ] || { echo "nats-server not found: set POSRELAY_NATS_SERVER or run: bash .ci/install-nats" >&2; exit 1; }
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null; wait' EXIT INT TERM
for i in 1 2 3; do
  mkdir -p "$DATA/n$i"
  cat > "$DATA/n$i.conf" <<CONF
server_name: loopback-$i
listen: 127.0.0.1:$((4221 + i))
http: 127.0.0.1:$((8221 + i))
jetstream { store_dir: "$DATA/n$i" }
cluster {
  name: posrelay-loopback
  listen: 127.0.0.1:$((6221 + i))
  routes: [nats-route://127.0.0.1:6222, nats-route://127.0.0.1:6223, nats-route://127.0.0.1:6224]
}
CONF
  "$NATS" -c "$DATA/n$i.conf" >"$DATA/n$i.log" 2>&1 &
  PIDS+=($!)
done
# Ready when each answers /healthz with 200 (JetStream has a meta leader).
for _ in $(seq 1 300); do
  ok=0
  for i in 1 2 3; do
    curl -fs "http://127.0.0.1:$((8221 + i))/healthz" >/dev/null 2>&1 && ok=$((ok + 1))
  done
  [ "$ok" = 3 ] && break
  sleep 0.1
done
[ "$ok" = 3 ] || { echo "JetStream not ready; logs in $DATA/n*.log" >&2; tail -n 5 "$DATA"/n*.log >&2; exit 1; }
echo "three NATS servers ready (data and logs in $DATA):"
echo "  --cluster nats://127.0.0.1:4222,nats://127.0.0.1:4223,nats://127.0.0.1:4224"
wait

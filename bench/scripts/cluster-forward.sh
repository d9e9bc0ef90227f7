#!/usr/bin/env bash
# §12 forwarded sessions against local ones, on this machine's loopback: three NATS
# servers (deploy/nats/loopback.sh), nodes a and b (one shard each), one terminal on b
# (`posrelay device-sim --echo`), and one POS that claims it and runs N sequential round
# trips through a session opened on b (local: the device is there) and then on a
# (forwarded to b over NATS). Prints the round-trip percentiles and the CPU time each
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

python3 - "$N" "$SIZE" "${NODE_PID[a]}" "${NODE_PID[b]}" "$NATS_PIDS" <<'PY'
import json, os, sys, time, urllib.parse, urllib.request, warnings
warnings.simplefilter("ignore", DeprecationWarning)
from websockets.sync.client import connect
n, size, pid_a, pid_b, nats = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
procs = {"node a": [pid_a], "node b": [pid_b], "3 nats-servers": [p for p in nats.split(",") if p]}
tick = os.sysconf("SC_CLK_TCK")
def cpu(pids):
    total = 0
    for p in pids:
        f = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
        total += int(f[11]) + int(f[12])
    return total / tick
body = urllib.parse.urlencode({"grant_type": "client_credentials", "client_id": os.environ["POSRELAY_CLIENT_ID"],
                               "client_secret": os.environ["POSRELAY_CLIENT_SECRET"]}).encode()
token = json.load(urllib.request.urlopen("http://127.0.0.1:8182/oauth2/v1/demo/token", body))["access_token"]
auth = {"Authorization": "Bearer " + token}
control = connect("ws://127.0.0.1:8182/cloud-connector/v1/pos-listener", additional_headers=auth)
control.send(json.dumps({"type": "claim", "tsn": "1001", "request_id": "c"}))
claimed = json.loads(control.recv(timeout=10))
assert claimed["type"] == "claimed", claimed
sid = claimed["session_id"]
payload = "x" * size
print(f"{n} sequential round trips of {size} B (POS -> relay -> terminal echo -> relay -> POS), release build")
print("| session on | p50 | p90 | p99 | " + " | ".join(f"{k} CPU per round trip" for k in procs) + " |")
print("|---|---:|---:|---:|" + "---:|" * len(procs))
for name, port in (("node b (local: the device is there)", 8182), ("node a (forwarded to b)", 8181)):
    with connect(f"ws://127.0.0.1:{port}/cloud-connector/v1/session/{sid}", additional_headers=auth) as s:
        for _ in range(200):  # warm-up
            s.send(payload); s.recv(timeout=10)
        before = {k: cpu(v) for k, v in procs.items()}
        rtts = []
        for i in range(n):
            t = time.perf_counter()
            s.send(payload)
            got = s.recv(timeout=10)
            rtts.append(time.perf_counter() - t)
            assert got == payload
        after = {k: cpu(v) for k, v in procs.items()}
    rtts.sort()
    pct = lambda q: rtts[min(len(rtts) - 1, int(q * len(rtts)))] * 1e3
    cpus = " | ".join(f"{(after[k] - before[k]) / n * 1e6:.0f} µs" for k in procs)
    print(f"| {name} | {pct(0.5):.3f} ms | {pct(0.9):.3f} ms | {pct(0.99):.3f} ms | {cpus} |")
    time.sleep(0.5)  # the older session's close settles before the next opens
PY

"""One POS, N sequential round trips through an echoing terminal, per session URL.

rtt-probe.py N SIZE CONTROL_PORT PID_A PID_B NATS_PIDS LABEL=PORT[~reliable]...
Gets a token and claims tsn 1001 on CONTROL_PORT (client from POSRELAY_CLIENT_ID and
POSRELAY_CLIENT_SECRET, domain demo), then for each LABEL=PORT opens the session on PORT
and prints a Markdown row: round-trip percentiles and the CPU time (utime+stime from
/proc) each of PID_A, PID_B and the NATS_PIDS (comma-separated) spent per round trip.
A PORT ending in ~reliable opens a PROTOCOL.md §11 session (posrelay.reliable.v1): each
round trip is a `data` envelope out, the terminal's echo back as a numbered `data`
envelope (held in the relay's log before it is sent), and the POS's `ack` of it.
Used by cluster-forward.sh.
"""
import json, os, sys, time, urllib.parse, urllib.request, warnings
warnings.simplefilter("ignore", DeprecationWarning)
from websockets.sync.client import connect

n, size, port = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
procs = {"node a": [sys.argv[4]], "node b": [sys.argv[5]],
         "3 nats-servers": [p for p in sys.argv[6].split(",") if p]}
targets = [arg.rsplit("=", 1) for arg in sys.argv[7:]]
tick = os.sysconf("SC_CLK_TCK")


def cpu(pids):
    total = 0
    for p in pids:
        f = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
        total += int(f[11]) + int(f[12])
    return total / tick


body = urllib.parse.urlencode({"grant_type": "client_credentials",
                               "client_id": os.environ["POSRELAY_CLIENT_ID"],
                               "client_secret": os.environ["POSRELAY_CLIENT_SECRET"]}).encode()
token = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/oauth2/v1/demo/token", body))["access_token"]
auth = {"Authorization": "Bearer " + token}
control = connect(f"ws://127.0.0.1:{port}/cloud-connector/v1/pos-listener", additional_headers=auth)
control.send(json.dumps({"type": "claim", "tsn": "1001", "request_id": "c"}))
claimed = json.loads(control.recv(timeout=10))
assert claimed["type"] == "claimed", claimed
sid = claimed["session_id"]
payload = "x" * size
print(f"{n} sequential round trips of {size} B (POS -> relay -> terminal echo -> relay -> POS), release build")
print("| session on | p50 | p90 | p99 | " + " | ".join(f"{k} CPU per round trip" for k in procs) + " |")
print("|---|---:|---:|---:|" + "---:|" * len(procs))


class Plain:
    def __init__(self, s):
        self.s = s

    def round_trip(self):
        self.s.send(payload)
        assert self.s.recv(timeout=10) == payload


class Reliable:
    """§11 envelopes: data out, the echo back numbered, acked. One claim for every
    reliable target: each session resumes where the last one's acks ended."""
    processed = 0

    def __init__(self, s):
        self.s, self.seq = s, Reliable.processed
        s.send(json.dumps({"type": "resume", "seq": self.seq}))
        resumed = json.loads(s.recv(timeout=10))
        assert resumed["type"] == "resumed", resumed
        self.sent = resumed["seq"]

    def round_trip(self):
        self.sent += 1
        self.s.send(json.dumps({"type": "data", "seq": self.sent, "text": payload}))
        while True:
            v = json.loads(self.s.recv(timeout=10))
            if v["type"] == "data":
                break
            assert v["type"] == "ack", v
        assert v["text"] == payload and v["seq"] > self.seq, v
        self.seq = Reliable.processed = v["seq"]
        self.s.send(json.dumps({"type": "ack", "seq": self.seq}))


for label, session_port in targets:
    reliable = session_port.endswith("~reliable")
    session_port = session_port.removesuffix("~reliable")
    extra = {"subprotocols": ["posrelay.reliable.v1"]} if reliable else {}
    with connect(f"ws://127.0.0.1:{session_port}/cloud-connector/v1/session/{sid}", additional_headers=auth, **extra) as s:
        probe = Reliable(s) if reliable else Plain(s)
        for _ in range(200):  # warm-up
            probe.round_trip()
        before = {k: cpu(v) for k, v in procs.items()}
        rtts = []
        for i in range(n):
            t = time.perf_counter()
            probe.round_trip()
            rtts.append(time.perf_counter() - t)
        after = {k: cpu(v) for k, v in procs.items()}
    rtts.sort()
    pct = lambda q: rtts[min(len(rtts) - 1, int(q * len(rtts)))] * 1e3
    cpus = " | ".join(f"{(after[k] - before[k]) / n * 1e6:.0f} µs" for k in procs)
    print(f"| {label} | {pct(0.5):.3f} ms | {pct(0.9):.3f} ms | {pct(0.99):.3f} ms | {cpus} |")
    time.sleep(0.5)  # the older session's close settles before the next opens

#!/usr/bin/env python3
"""Turns `posrelay-bench --json` reports into the Markdown tables of BENCHMARKS.md.

Usage: python3 bench/scripts/summarize.py report.json [more.json ...]
Each scenario gets one table: a row per figure, a column per target and
repetition (r1, r2, r3), then its ratios per repetition.
"""
import json
import sys


def fmt(v, digits=1):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.0f}" if abs(v) >= 100 else f"{v:.{digits}f}"
    return str(v)


LOAD_ROWS = [
    ("round trips/s", lambda l: l["round_trips_per_sec"]),
    ("MiB/s", lambda l: round(l["mib_per_sec"], 2)),
    ("p50 µs", lambda l: l["latency"]["p50_us"]),
    ("p90 µs", lambda l: l["latency"]["p90_us"]),
    ("p99 µs", lambda l: l["latency"]["p99_us"]),
    ("p99.9 µs", lambda l: l["latency"]["p999_us"]),
    ("p99.99 µs", lambda l: l["latency"]["p9999_us"]),
    ("max µs", lambda l: l["latency"]["max_us"]),
    ("target CPU µs/round trip", lambda l: l["target_cpu_us_per_round_trip"]),
    ("target CPU use %", lambda l: 100 * l["target_cpu_utilisation"]),
    ("errors/mismatches", lambda l: f'{l["errors"]}/{l["mismatches"]}'),
    ("other procs on target CPU %", lambda l: None if l["foreign_load_target_cpu"] is None else 100 * l["foreign_load_target_cpu"]),
    ("other procs on generator CPU %", lambda l: None if l["foreign_load_generator_cpu"] is None else 100 * l["foreign_load_generator_cpu"]),
    ("hypervisor steal on target CPU %", lambda l: None if l.get("steal_target_cpu") is None else 100 * l["steal_target_cpu"]),
    ("hypervisor steal on generator CPU %", lambda l: None if l.get("steal_generator_cpu") is None else 100 * l["steal_generator_cpu"]),
]


def main(paths):
    scenarios = {}
    for p in paths:
        with open(p) as f:
            report = json.load(f)
        for s in report["scenarios"]:
            scenarios.setdefault(s["name"], []).append(s)
    for name, reps in scenarios.items():
        first = reps[0]
        targets = [r["target"] for r in first["results"]]
        cols = [(t, i) for t in targets for i in range(len(reps))]
        print(f"### {name}: {first['about']}\n")
        print("| figure | " + " | ".join(f"{t} r{i + 1}" for t, i in cols) + " |")
        print("|---|" + "---:|" * len(cols))
        kind = first["work"]["kind"]
        if kind == "load":
            rows = LOAD_ROWS
            get = lambda r: r.get("load")
        else:
            continue
        for label, f in rows:
            cells = []
            for t, i in cols:
                res = next((r for r in reps[i]["results"] if r["target"] == t), None)
                data = get(res) if res else None
                cells.append(fmt(f(data)) if data else "-")
            print(f"| {label} | " + " | ".join(cells) + " |")
        print()
        print("| ratio (goal) | " + " | ".join(f"r{i + 1}" for i in range(len(reps))) + " |")
        print("|---|" + "---:|" * len(reps))
        for k, ratio in enumerate(first["ratios"]):
            vals = []
            for rep in reps:
                r = rep["ratios"][k]
                v = r["value"]
                vals.append("-" if v is None else f"{v:.2f} {'met' if r['met'] else 'MISSED'}")
            print(f"| {ratio['name']} ({ratio['goal']}) | " + " | ".join(vals) + " |")
        print()


if __name__ == "__main__":
    main(sys.argv[1:])

#!/usr/bin/env python3
"""Merges hyperfine JSON exports of interleaved single-run rounds (bench/run.sh `hf`)
into one export with hyperfine's fields: times, mean, stddev, median, min, max, and
mean user/system CPU, per command in the order of the first round.

usage: merge.py OUT.json ROUND1.json [ROUND2.json ...]
"""

import json
import statistics
import sys

out, rounds = sys.argv[1], sys.argv[2:]
rounds.sort(key=lambda p: int(p.rsplit(".r", 1)[1].split(".")[0]))
merged = None
for p in rounds:
    results = json.load(open(p))["results"]
    if merged is None:
        merged = [{"command": r["command"], "times": [], "user_l": [], "system_l": [], "exit_codes": []} for r in results]
    for m, r in zip(merged, results):
        m["times"] += r["times"]
        m["user_l"].append(r["user"])
        m["system_l"].append(r["system"])
        m["exit_codes"] += r.get("exit_codes", [])
for m in merged:
    t = m["times"]
    m.update(
        mean=statistics.mean(t),
        stddev=statistics.stdev(t) if len(t) > 1 else 0.0,
        median=statistics.median(t),
        min=min(t),
        max=max(t),
        user=statistics.mean(m.pop("user_l")),
        system=statistics.mean(m.pop("system_l")),
    )
    def f(x):
        return f"{x * 1000:.1f} ms" if x < 1 else f"{x:.3f} s"
    print(f"  {m['command']:<55} median {f(m['median']):>10}  mean {f(m['mean'])} ± {f(m['stddev'])}  "
          f"[{f(m['min'])} … {f(m['max'])}]  {len(t)} runs", file=sys.stderr)
json.dump({"results": merged}, open(out, "w"), indent=2)

"""What a result record costs on its way out, this checkout against an older one, side by side.

    python -m bench.record_speed --before DIR      # DIR: an older checkout (git archive REV | tar -x -C DIR)

Times, in this process's CPU time (best of ``--repeats``, milliseconds per 1000 rows), the steps a
Result goes through after the loop built it (issue 28 item 2): the line ``twentyq classify --json``
prints, a JSON-lines and a Parquet shard written by the store, a Ray actor's Arrow table, the Ray
driver's work on one finished shard (written to Parquet, its rows for the caller) and a JSON-lines
shard read back (``--resume``). Each version runs in its own interpreter (``PYTHONPATH``) on the
same synthetic Results (15 classes, 6 steps, top 5); the older one through its own API (records as
dicts: ``store.record``, ``records_to_arrow``, ``records_from_arrow``, ``result_from_record``), this
one through Results (``Result.to_dict``, ``results_to_arrow``, ``results_from_arrow``). One thread.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# runs in the interpreter of one version; prints {step: ms per 1000 rows}
_CHILD = r'''
import json, sys, tempfile, time
from pathlib import Path
from engine.core.results import Result, Step
import engine.run.store as st

N, REPEATS = int(sys.argv[1]), int(sys.argv[2])
labels = [f"class{i}" for i in range(15)]

def make(i):
    steps = [Step(f"g{j}", 0.1 * j, f"opt{j}", 0.7, 0.2 + 0.1 * j) for j in range(6)]
    return Result(labels[i % 15], 0.93, [(labels[(i + k) % 15], 0.9 / (k + 1)) for k in range(5)], steps, 40,
                  "confident", image=f"/data/img{i}.png")

def best(f):
    times = []
    for _ in range(REPEATS):
        t0 = time.process_time()
        f()
        times.append(time.process_time() - t0)
    return min(times) / N * 1e6  # ms per 1000 rows

tmp = Path(tempfile.mkdtemp())
rs = [make(i) for i in range(N)]
out = {}
if not hasattr(st, "record"):  # Results all the way
    for r in rs:
        r.true_label = r.label
    table = st.results_to_arrow(rs)
    out["classify --json line"] = best(lambda: [json.dumps(r.to_dict(), ensure_ascii=False) for r in rs])
    out["JSON-lines shard written"] = best(lambda: st.FORMATS[".jsonl"].write(tmp / "a.jsonl", rs))
    out["Parquet shard written"] = best(lambda: st.FORMATS[".parquet"].write(tmp / "a.parquet", rs))
    out["Ray actor: its Arrow table"] = best(lambda: st.results_to_arrow(rs))
    out["Ray driver: a shard written + its rows"] = best(
        lambda: (st.FORMATS[".parquet"].write(tmp / "b.parquet", rs, table), st.results_from_arrow(table)))
    out["JSON-lines shard read"] = best(lambda: st.FORMATS[".jsonl"].read(tmp / "a.jsonl"))
else:  # records as dicts (before issue 28 item 2)
    table = st.records_to_arrow([st.record(r, r.label) for r in rs])
    out["classify --json line"] = best(
        lambda: [json.dumps(st.result_from_record(st.record(r)).to_dict(), ensure_ascii=False) for r in rs])
    out["JSON-lines shard written"] = best(
        lambda: st.FORMATS[".jsonl"].write(tmp / "a.jsonl", [st.record(r, r.label) for r in rs]))
    out["Parquet shard written"] = best(
        lambda: st.FORMATS[".parquet"].write(tmp / "a.parquet", [st.record(r, r.label) for r in rs]))
    out["Ray actor: its Arrow table"] = best(lambda: st.records_to_arrow([st.record(r, r.label) for r in rs]))
    out["Ray driver: a shard written + its rows"] = best(
        lambda: st.FORMATS[".parquet"].write(tmp / "b.parquet", st.records_from_arrow(table)))
    out["JSON-lines shard read"] = best(lambda: st.FORMATS[".jsonl"].read(tmp / "a.jsonl"))
print(json.dumps(out))
'''


def measure(root: Path, rows: int, repeats: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", _CHILD, str(rows), str(repeats)], cwd=root, env=env,
                         capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        raise SystemExit(f"{root}: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode}")
    return json.loads(out.stdout)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", required=True, metavar="DIR", help="an older checkout (engine/, systems/, policies/)")
    ap.add_argument("--rows", type=int, default=2000, help="Results per step (default 2000)")
    ap.add_argument("--repeats", type=int, default=7, help="best of this many (default 7)")
    ap.add_argument("--rounds", type=int, default=2, help="old, new, old, new...: rounds (default 2)")
    args = ap.parse_args(argv)
    runs: dict[str, list[dict[str, float]]] = {"old": [], "new": []}
    for _ in range(args.rounds):  # alternate, so that a change in the machine's load falls on both
        runs["old"].append(measure(Path(args.before), args.rows, args.repeats))
        runs["new"].append(measure(REPO, args.rows, args.repeats))
    print(f"{args.rows} Results, best of {args.repeats} x {args.rounds} rounds, process CPU time, "
          f"load average {os.getloadavg()[0]:.2f}")
    print("| step | old ms / 1000 rows | new ms / 1000 rows | new/old |\n|---|---|---|---|")
    for step in runs["new"][0]:
        old = min(r[step] for r in runs["old"])
        new = min(r[step] for r in runs["new"])
        print(f"| {step} | {old:.1f} | {new:.1f} | {new / old:.2f}× |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Mutation testing of the core's maths with mutmut (slow; not part of CI).

    pip install -e '.[mutation]'
    python -m bench.mutation                 # every mutant; prints the score per file and in total
    python -m bench.mutation --score-only    # the score of the last run, from mutants/
    python -m bench.mutation NAME ...        # re-test these mutants (e.g. the survivors), then the score

What is mutated and which tests run are set in pyproject.toml, ``[tool.mutmut]``: the files
engine/core/scoring.py, engine/core/adaptive.py, engine/core/channel_fit.py and policies/, against the
fast core tests only, with the ``mutation`` hypothesis profile (tests/conftest.py: no shrinking,
derandomised). mutmut copies the tree to ``mutants/`` and runs there. The surviving mutants, and why
the ones left are equivalent, are in docs/mutation.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KILLED = {"killed", "caught by type check"}


def _mutmut() -> list[str]:
    exe = shutil.which("mutmut") or str(Path(sys.executable).with_name("mutmut"))
    if not Path(exe).exists():
        raise SystemExit("mutmut is not installed: pip install -e '.[mutation]'")
    return [exe]


def statuses() -> dict[str, str]:
    """{mutant name: status} of every mutant, from ``mutmut results --all true``."""
    out = subprocess.run(_mutmut() + ["results", "--all", "true"], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    res = {}
    for line in out.splitlines():
        name, sep, status = line.strip().rpartition(": ")
        if sep and "__mutmut_" in name:
            res[name] = status
    return res


def score(st: dict[str, str]) -> dict:
    """Killed / total per file and overall; 'no tests' and 'survived' both count as not killed."""
    per_file: dict[str, Counter] = {}
    for name, status in st.items():
        module = name.split(".x_")[0].split(".xǁ")[0]
        per_file.setdefault(module, Counter())[status] += 1
    total = Counter()
    for c in per_file.values():
        total.update(c)
    killed = sum(n for s, n in total.items() if s in KILLED)
    return {"killed": killed, "total": sum(total.values()), "statuses": dict(total),
            "per_file": {f: dict(c) for f, c in sorted(per_file.items())}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mutants", nargs="*", help="re-test only these mutants")
    ap.add_argument("--score-only", action="store_true", help="print the score of the last run")
    ap.add_argument("--max-children", type=int, default=None, help="parallel test processes (mutmut's default: CPUs)")
    ap.add_argument("--survivors", metavar="FILE", help="also write the surviving mutants' names here")
    args = ap.parse_args(argv)
    if not args.score_only:
        cmd = _mutmut() + ["run"] + (["--max-children", str(args.max_children)] if args.max_children else [])
        subprocess.run(cmd + list(args.mutants), cwd=ROOT, check=False)
    st = statuses()
    if not st:
        print("no mutation results under mutants/; run python -m bench.mutation first")
        return 1
    s = score(st)
    for f, c in s["per_file"].items():
        k = sum(n for st_, n in c.items() if st_ in KILLED)
        print(f"{f:<32} {k:>4}/{sum(c.values()):<4} killed  {c}")
    pct = 100.0 * s["killed"] / s["total"]
    print(f"mutation score: {s['killed']}/{s['total']} killed = {pct:.1f}%  {s['statuses']}")
    if args.survivors:
        Path(args.survivors).write_text("\n".join(n for n, x in sorted(st.items()) if x not in KILLED) + "\n")
    print(json.dumps({"killed": s["killed"], "total": s["total"], "score": round(pct, 2)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

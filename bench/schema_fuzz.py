"""Schemathesis against a real ``twentyq serve`` on 127.0.0.1 (issue 27): a longer run than the test's.

    python -m bench.schema_fuzz                          # offline model, 100 examples per operation
    python -m bench.schema_fuzz --max-examples 500 --model /path/to/model

Starts the server (with an API key, so the document declares its security schemes), loads
``/openapi.json`` over HTTP, and runs every operation's generated cases with every schemathesis check
but "schema-valid request accepted" (ST202: the document cannot say that image bytes must decode or that
``shortlist`` needs a class-name group, so those are 400s by design). Prints the cases run and the
failures, one line each; exit 1 if any. Bounded: ``--max-examples`` per operation, then the server is
stopped with SIGTERM.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.lib.server import free_port, wait_until_healthy

REPO = Path(__file__).resolve().parents[1]
KEY = "bench-fuzz-key"


def _checker(operation, url: str, max_examples: int, counts: dict, excluded):
    from hypothesis import HealthCheck, given, settings

    @given(case=operation.as_strategy())
    @settings(max_examples=max_examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def check(case):
        counts[operation.label] += 1
        case.call_and_validate(base_url=url, headers={"X-API-Key": KEY}, excluded_checks=[excluded])

    return check


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.schema_fuzz", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="offline")
    ap.add_argument("--max-examples", type=int, default=100, help="per operation (default: %(default)s)")
    args = ap.parse_args(argv)

    import schemathesis
    from schemathesis.specs.openapi.checks import positive_data_acceptance

    tmp = Path(tempfile.mkdtemp(prefix="twentyq-schema-fuzz-"))
    (tmp / "key").write_text(KEY + "\n", encoding="utf-8")
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "engine.cli", "serve", "--model", args.model, "--device", "cpu",
                             "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
                             "--api-key-file", str(tmp / "key")], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=open(tmp / "server.log", "w"))
    url = f"http://127.0.0.1:{port}"
    failures: list[str] = []
    counts: dict[str, int] = {}
    t0 = time.perf_counter()
    try:
        wait_until_healthy(proc, url, tmp / "server.log")
        schema = schemathesis.openapi.from_url(f"{url}/openapi.json", headers={"X-API-Key": KEY})
        for result in schema.get_all_operations():
            operation = result.ok()
            counts[operation.label] = 0

            check = _checker(operation, url, args.max_examples, counts, positive_data_acceptance)
            try:
                check()
            except Exception as e:  # noqa: BLE001  (report every operation's failure, then exit 1)
                failures.append(f"{operation.label}: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
    for label, n in counts.items():
        print(f"{label}: {n} cases")
    for f in failures:
        print(f"FAILED {f}")
    print(f"{sum(counts.values())} cases in {time.perf_counter() - t0:.0f} s, {len(failures)} operations failed; "
          f"load average {os.getloadavg()[0]:.2f}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

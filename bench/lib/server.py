"""A real ``twentyq serve`` subprocess on a free loopback port, for the load and fuzz benchmarks."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str, max_batch: int, max_wait_ms: float, log_path: Path):
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "engine.cli", "serve", "--model", model, "--device", "cpu", "--host", "127.0.0.1",
           "--port", str(port), "--max-batch", str(max_batch), "--max-wait-ms", str(max_wait_ms),
           "--log-level", "warning"]
    log = open(log_path, "w", encoding="utf-8")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    return proc, url, wait_until_healthy(proc, url, log_path), log


def wait_until_healthy(proc: subprocess.Popen, url: str, log_path: Path, limit_s: float = 180.0) -> float:
    """Seconds until the server at ``url`` answers /v1/health with 200 (polled every 0.1 s); a RuntimeError
    naming ``log_path`` when it exits first, or (killed) when it does not answer within ``limit_s``."""
    import httpx

    t0 = time.perf_counter()
    while time.perf_counter() - t0 < limit_s:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited {proc.returncode}; see {log_path}")
        try:
            if httpx.get(f"{url}/v1/health", timeout=2).status_code == 200:
                return time.perf_counter() - t0
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"the server did not answer within {limit_s:g} s; see {log_path}")

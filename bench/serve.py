"""Load test of ``twentyq serve`` on 127.0.0.1: throughput and latency with dynamic batching on and off.

    python -m bench.serve                       # offline stand-in and tiny CLIP, 8 clients, 128 requests each
    python -m bench.serve --models tiny-clip --requests 32 --clients 4   # quick

For every model (the offline stand-in, weak and NOT CLIP; a tiny random CLIP,
``save_random_model``, width 32: labels meaningless, speed only) and for batching on
(``--max-batch``, ``--max-wait-ms``) and off (``--max-batch 1``), a real server is
started as a subprocess on a free loopback port; ``--clients`` threads, each with its
own HTTP connection, send ``--requests`` multipart requests in all (one image each,
budgets 10/20/30 in turn, images from the shared jina15 set or random noise). Each
answer is checked: status 200, one record per image sent, the record naming that
request's own file, ``q_spent`` within that request's budget. Failed (an error status
or an answer that does not check out) and lost (no answer at all: a connection error
or timeout) requests are counted; the server is then stopped with SIGTERM and must
exit 0. Peak memory is the server process's peak resident set (``VmHWM``).

Writes ``bench/out/serve.json`` and prints a markdown table. Start-up (model load) is
outside the timings; a few warm-up requests are sent first and not counted.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
BUDGETS = (10, 20, 30)
SERVER_TIMINGS = ("decode_ms", "queue_ms", "embed_ms", "classify_ms", "total_ms")  # from each answer's timings


def pick_images(n: int, seed: int = 0) -> tuple[list[bytes], str]:
    """n encoded images (JPEG/PNG bytes): real ones from the shared jina15 set if present, else noise PNGs."""
    from PIL import Image

    from systems.files import shared_data_root

    csv_path = shared_data_root() / "pokemon" / "jina15.csv"
    rng = np.random.default_rng(seed)
    if csv_path.is_file():
        with open(csv_path, encoding="utf-8", newline="") as f:
            paths = [csv_path.parent / r["path"] for r in csv.DictReader(f)]
        idx = rng.choice(len(paths), size=n, replace=n > len(paths))
        return [paths[i].read_bytes() for i in idx], f"{n} images from {csv_path}"
    out = []
    for _ in range(n):
        b = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)).save(b, "PNG")
        out.append(b.getvalue())
    return out, f"{n} random-noise 128x128 PNGs (shared data not found at {csv_path})"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str, max_batch: int, max_wait_ms: float, log_path: Path):
    import httpx

    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "engine.cli", "serve", "--model", model, "--device", "cpu", "--host", "127.0.0.1",
           "--port", str(port), "--max-batch", str(max_batch), "--max-wait-ms", str(max_wait_ms),
           "--log-level", "warning"]
    log = open(log_path, "w", encoding="utf-8")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    t0 = time.perf_counter()
    for _ in range(1800):  # up to 180 s
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited {proc.returncode}; see {log_path}")
        try:
            if httpx.get(f"{url}/v1/health", timeout=2).status_code == 200:
                return proc, url, time.perf_counter() - t0, log
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"the server did not answer within 180 s; see {log_path}")


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident set size (VmHWM, Linux), in MiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def load(url: str, images: list[bytes], n_requests: int, n_clients: int, timeout: float = 120.0) -> dict:
    """n_requests requests from n_clients threads; latencies and a count of failed and lost requests."""
    import httpx

    lock = threading.Lock()
    next_i = [0]
    lat, failed, lost, batch_images, q_spent = [], [], [], [], []
    server_ms: dict[str, list[float]] = {k: [] for k in SERVER_TIMINGS}

    def client():
        with httpx.Client(timeout=timeout) as c:
            while True:
                with lock:
                    i = next_i[0]
                    if i >= n_requests:
                        return
                    next_i[0] += 1
                name, budget = f"req{i}.jpg", BUDGETS[i % len(BUDGETS)]
                t0 = time.perf_counter()
                try:
                    r = c.post(f"{url}/v1/classify", params={"budget": budget},
                               files=[("image", (name, images[i % len(images)], "application/octet-stream"))])
                except httpx.HTTPError as e:
                    with lock:
                        lost.append(f"{name}: {type(e).__name__}: {e}")
                    continue
                dt = time.perf_counter() - t0
                ok = r.status_code == 200
                if ok:
                    body = r.json()
                    recs = body.get("results", [])
                    ok = (len(recs) == 1 and recs[0].get("image") == name and recs[0].get("error") is None
                          and recs[0]["q_spent"] <= budget)
                with lock:
                    if ok:
                        lat.append(dt)
                        batch_images.append(body["timings"]["batch_images"])
                        q_spent.append(recs[0]["q_spent"])
                        for k in SERVER_TIMINGS:
                            server_ms[k].append(body["timings"][k])
                    else:
                        failed.append(f"{name}: HTTP {r.status_code} {r.text[:200]}")

    threads = [threading.Thread(target=client) for _ in range(n_clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ms = np.array(lat) * 1e3
    return {
        "requests": n_requests, "ok": len(lat), "failed": len(failed), "lost": len(lost),
        "unaccounted": n_requests - len(lat) - len(failed) - len(lost),
        "wall_s": wall, "throughput_rps": len(lat) / wall if wall > 0 else float("nan"),
        "p50_ms": float(np.percentile(ms, 50)) if len(ms) else None,
        "p95_ms": float(np.percentile(ms, 95)) if len(ms) else None,
        "p99_ms": float(np.percentile(ms, 99)) if len(ms) else None,
        "mean_batch_images": float(np.mean(batch_images)) if batch_images else None,
        "mean_q_spent": float(np.mean(q_spent)) if q_spent else None,
        "server_mean_ms": {k: float(np.mean(v)) if v else None for k, v in server_ms.items()},
        "errors": (failed + lost)[:5],
    }


def run_scenario(model_label: str, model: str, batching: bool, args, images, tmp: Path) -> dict:
    import httpx

    max_batch = args.max_batch if batching else 1
    log_path = tmp / f"server-{model_label}-{'on' if batching else 'off'}.log"
    proc, url, start_s, log = start_server(model, max_batch, args.max_wait_ms, log_path)
    try:
        note = httpx.get(f"{url}/v1/models").json()["models"][0]["note"]
        load(url, images, n_requests=args.clients, n_clients=args.clients)  # warm-up, not counted
        res = load(url, images, n_requests=args.requests, n_clients=args.clients)
        res["peak_rss_mb"] = peak_rss_mb(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
        log.close()
    return {"model": model_label, "model_string": model, "model_note": note, "batching": batching,
            "max_batch": max_batch, "max_wait_ms": args.max_wait_ms if batching else None,
            "clients": args.clients, "start_s": start_s, "exit_code_after_sigterm": code, **res}


def table(rows: list[dict]) -> str:
    head = ("| model | batching | requests | ok | failed | lost | req/s | p50 ms | p95 ms | p99 ms | mean batch "
            "| server embed / queue ms | peak RSS MiB |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        f = lambda v: "–" if v is None else f"{v:.0f}"  # noqa: E731
        sv = r["server_mean_ms"]
        batching = f"on (≤{r['max_batch']}, {r['max_wait_ms']:g} ms)" if r["batching"] else "off (--max-batch 1)"
        lines.append(f"| {r['model']} | {batching} | {r['requests']} | {r['ok']} | {r['failed']} | {r['lost']} | "
                     f"{r['throughput_rps']:.1f} | {f(r['p50_ms'])} | {f(r['p95_ms'])} | {f(r['p99_ms'])} | "
                     f"{r['mean_batch_images']:.1f} | {f(sv['embed_ms'])} / {f(sv['queue_ms'])} | "
                     f"{r['peak_rss_mb']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.serve", description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="offline,tiny-clip", help="comma list of: offline, tiny-clip")
    ap.add_argument("--requests", type=int, default=128, help="requests per scenario (one image each)")
    ap.add_argument("--clients", type=int, default=8, help="concurrent client threads")
    ap.add_argument("--max-batch", type=int, default=32, help="--max-batch of the batching-on server")
    ap.add_argument("--max-wait-ms", type=float, default=10.0, help="--max-wait-ms of the batching-on server")
    ap.add_argument("--out", default=str(REPO / "bench" / "out" / "serve.json"))
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.requests < 1 or args.clients < 1:
        ap.error("--requests and --clients must be >= 1")

    images, source = pick_images(max(args.requests, 64))
    tmp = Path(tempfile.mkdtemp(prefix="twentyq-bench-serve-"))
    models = {}
    for m in [s.strip() for s in args.models.split(",") if s.strip()]:
        if m == "offline":
            models[m] = "offline"
        elif m == "tiny-clip":
            from bench.tiny_models import save_random_model

            models[m] = str(save_random_model(tmp / "tiny-clip", "clip", logit_scale=42.0))
        else:
            ap.error(f"--models: unknown {m!r}; use offline and/or tiny-clip")
    rows = []
    t0 = time.perf_counter()
    for label, model in models.items():
        for batching in (True, False):
            r = run_scenario(label, model, batching, args, images, tmp)
            rows.append(r)
            print(f"  {label} batching {'on' if batching else 'off'}: {r['ok']}/{r['requests']} ok, "
                  f"{r['throughput_rps']:.1f} req/s, p50 {r['p50_ms'] or 0:.0f} ms, "
                  f"exit {r['exit_code_after_sigterm']}",
                  file=sys.stderr, flush=True)
    machine = {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
               "processor": platform.processor() or platform.machine()}
    try:
        import torch

        machine["torch"] = torch.__version__
        machine["torch_threads"] = torch.get_num_threads()
    except ImportError:
        pass
    out = {"command": "python -m bench.serve " + " ".join(argv if argv is not None else sys.argv[1:]),
           "images": source, "budgets": list(BUDGETS), "machine": machine, "total_s": time.perf_counter() - t0,
           "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2), encoding="utf-8")
    print(f"\n{source}; {args.clients} clients; budgets {list(BUDGETS)} in turn; machine: {os.cpu_count()} CPU "
          f"cores ({machine['platform']})\n")
    print(table(rows))
    print(f"\nwrote {args.out}")
    bad = sum(r["failed"] + r["lost"] + r["unaccounted"] for r in rows) + sum(r["exit_code_after_sigterm"] != 0
                                                                              for r in rows)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

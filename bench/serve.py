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

``--memory`` runs the memory load of issue 27 instead (loopback only; bounded: ``--mem-requests``
requests, one burst, a client timeout, then the server is stopped):

    python -m bench.serve --memory                       # offline model, 20 requests x 4 PNGs of 6000x6000
    python -m bench.serve --memory --server-flags="--max-decode-memory 268435456"

It starts the offline model's server, sends two small requests (warm-up) and reads its resident set
(``VmRSS``) as the baseline; then ``--mem-requests`` requests at once, each with ``--mem-images``
highly compressible PNGs (``--mem-side`` squared, one flat colour each: ~105 KB for 36 MP, ~144 MB
each once decoded), sampling the server's RSS every 50 ms; it waits ``--settle-s`` after the last
answer and reads the after-load RSS; then one more request must succeed (recovery). It counts the
answers by status: 200 (every image classified), 503 (no decode memory within ``--decode-wait-s``,
with Retry-After), and anything else, which is a failure, as is any image refused for memory. Writes
``bench/out/serve_memory.json``; exit 1 if the peak is over ``--peak-bound-mb``, the after-load RSS is
more than 20% over the baseline, or an answer failed.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from engine.common.files import shared_data_root

from .lib.server import free_port, start_server, wait_until_healthy

REPO = Path(__file__).resolve().parents[1]
BUDGETS = (10, 20, 30)
SERVER_TIMINGS = ("decode_ms", "queue_ms", "embed_ms", "classify_ms", "total_ms")  # from each answer's timings


def pick_images(n: int, seed: int = 0) -> tuple[list[bytes], str]:
    """n encoded images (JPEG/PNG bytes): real ones from the shared jina15 set if present, else noise PNGs."""
    from PIL import Image

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


def _proc_status_mb(pid: int, field: str) -> float:
    """A memory field of /proc/PID/status (Linux; "VmRSS", "VmHWM"), in MiB; NaN where it cannot be read."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident set size (VmHWM, Linux), in MiB."""
    return _proc_status_mb(pid, "VmHWM")


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


def rss_mb(pid: int) -> float:
    """The process's resident set size now (VmRSS), in MiB."""
    return _proc_status_mb(pid, "VmRSS")


def flat_pngs(n: int, side: int) -> list[bytes]:
    """n PNGs of side x side pixels, one flat colour each: tiny files that decode to side*side*4 bytes."""
    from PIL import Image

    out = []
    for i in range(n):
        b = io.BytesIO()
        Image.new("RGB", (side, side), (40 * i % 256, 90, 200 - 30 * i % 200)).save(b, "PNG", optimize=False)
        out.append(b.getvalue())
    return out


def memory_load(args) -> int:
    """The compressible-PNG memory load (see the module docstring); 0 if every bound held."""
    import httpx

    tmp = Path(tempfile.mkdtemp(prefix="twentyq-bench-serve-mem-"))
    pngs = flat_pngs(args.mem_images, args.mem_side)
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "engine.cli", "serve", "--model", "offline", "--device", "cpu",
           "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", *shlex.split(args.server_flags)]
    log_path = tmp / "server.log"
    log = open(log_path, "w", encoding="utf-8")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    statuses: dict[str, int] = {}
    problems: list[str] = []
    samples: list[float] = []
    try:
        wait_until_healthy(proc, url, log_path)
        small = [("image", ("small.png", pick_images(1)[0][0], "application/octet-stream"))]
        for _ in range(2):
            httpx.post(f"{url}/v1/classify", files=small, timeout=60).raise_for_status()
        time.sleep(args.settle_s)
        baseline = rss_mb(proc.pid)
        load_avg_before = os.getloadavg()
        stop = threading.Event()

        def sampler():
            while not stop.is_set():
                samples.append(rss_mb(proc.pid))
                time.sleep(0.05)

        lock = threading.Lock()
        latencies: list[float] = []
        barrier = threading.Barrier(args.mem_requests)

        def client(k: int):
            files = [("image", (f"r{k}_{i}.png", data, "image/png")) for i, data in enumerate(pngs)]
            barrier.wait(timeout=30)
            t0 = time.perf_counter()
            try:
                r = httpx.post(f"{url}/v1/classify", params={"budget": 10}, files=files, timeout=args.client_timeout_s)
            except httpx.HTTPError as e:
                with lock:
                    statuses["lost"] = statuses.get("lost", 0) + 1
                    problems.append(f"request {k}: {type(e).__name__}: {e}")
                return
            with lock:
                latencies.append(time.perf_counter() - t0)
                key = str(r.status_code)
                if r.status_code == 200:
                    errs = [x["error"] for x in r.json()["results"] if x["error"]]
                    if errs:
                        key = "200 with image errors"
                        problems.append(f"request {k}: {errs[0]}")
                elif r.status_code == 503:
                    if not r.headers.get("retry-after", "").isdigit():
                        problems.append(f"request {k}: 503 without a Retry-After")
                else:
                    problems.append(f"request {k}: HTTP {r.status_code} {r.text[:200]}")
                statuses[key] = statuses.get(key, 0) + 1

        t_sampler = threading.Thread(target=sampler, daemon=True)
        t_sampler.start()
        threads = [threading.Thread(target=client, args=(k,)) for k in range(args.mem_requests)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        if args.sigterm_after_s is not None:  # stop the server in the middle of the load, time its exit
            time.sleep(args.sigterm_after_s)
            t_term = time.perf_counter()
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=300)
            shutdown_s = time.perf_counter() - t_term
            for t in threads:
                t.join(timeout=60)
            stop.set()
            out = {"command": "python -m bench.serve " + " ".join(sys.argv[1:]),
                   "sigterm_after_s": args.sigterm_after_s,
                   "shutdown_s": shutdown_s, "exit_code_after_sigterm": code, "statuses": statuses,
                   "peak_rss_mb": max(samples, default=0.0), "baseline_rss_mb": baseline,
                   "problems": problems[:10], "load_average": os.getloadavg()}
            print(json.dumps(out, indent=2))
            return 0 if code == 0 else 1
        for t in threads:
            t.join(timeout=args.client_timeout_s + 60)
        load_wall = time.perf_counter() - t0
        load_avg_after = os.getloadavg()
        time.sleep(args.settle_s)
        stop.set()
        t_sampler.join()
        after = rss_mb(proc.pid)
        peak = max(peak_rss_mb(proc.pid), max(samples, default=0.0))
        health = httpx.get(f"{url}/v1/health", timeout=10).json()
        r = httpx.post(f"{url}/v1/classify", files=small, timeout=60)
        recovered = r.status_code == 200 and r.json()["results"][0]["error"] is None
        after_recovery = rss_mb(proc.pid)
    finally:
        t_term = time.perf_counter()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
        shutdown_s = time.perf_counter() - t_term
        log.close()
    ratio = after / baseline
    ok = (not problems and recovered and peak <= args.peak_bound_mb and ratio <= 1.2 and code == 0
          and statuses.get("200", 0) > 0)
    out = {
        "command": "python -m bench.serve " + " ".join(sys.argv[1:]), "server_command": " ".join(cmd[2:]),
        "load": f"{args.mem_requests} concurrent requests x {args.mem_images} flat-colour PNGs of "
                f"{args.mem_side}x{args.mem_side} ({np.mean([len(p) for p in pngs]) / 1024:.0f} KB each)",
        "baseline_rss_mb": baseline, "peak_rss_mb": peak, "after_load_rss_mb": after,
        "after_over_baseline": ratio, "after_recovery_rss_mb": after_recovery, "statuses": statuses,
        "problems": problems[:10], "recovered": recovered, "load_wall_s": load_wall,
        "latency_s": {"min": min(latencies, default=None), "max": max(latencies, default=None)},
        "decode_budget": {k: health.get(k) for k in ("decode_memory_limit", "decode_memory_in_use",
                                                     "decode_waiting")},
        "load_average_before": load_avg_before, "load_average_after": load_avg_after,
        "shutdown_s": shutdown_s, "exit_code_after_sigterm": code, "peak_bound_mb": args.peak_bound_mb, "ok": ok,
    }
    path = Path(args.out if args.out != str(REPO / "bench" / "out" / "serve.json")
                else REPO / "bench" / "out" / "serve_memory.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2), encoding="utf-8")
    print(json.dumps(out, indent=2))
    print(f"\nbaseline {baseline:.0f} MiB, peak {peak:.0f} MiB (bound {args.peak_bound_mb:.0f}), after load "
          f"{after:.0f} MiB ({ratio:.2f}x baseline), answers {statuses}, recovered {recovered}, load average "
          f"{load_avg_before[0]:.2f} -> {load_avg_after[0]:.2f}; wrote {path}")
    return 0 if ok else 1


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
    m = ap.add_argument_group("--memory: the compressible-PNG memory load (issue 27)")
    m.add_argument("--memory", action="store_true", help="run the memory load instead of the throughput table")
    m.add_argument("--mem-requests", type=int, default=20, help="concurrent requests (default: %(default)s)")
    m.add_argument("--mem-images", type=int, default=4, help="images per request (default: %(default)s)")
    m.add_argument("--mem-side", type=int, default=6000, help="image side in pixels (default: %(default)s)")
    m.add_argument("--server-flags", default="", help="extra flags for twentyq serve (one string)")
    m.add_argument("--settle-s", type=float, default=3.0, help="wait before reading RSS (default: %(default)s)")
    m.add_argument("--client-timeout-s", type=float, default=180.0, help="per request (default: %(default)s)")
    m.add_argument("--peak-bound-mb", type=float, default=1536.0, help="peak RSS bound (default: %(default)s)")
    m.add_argument("--sigterm-after-s", type=float, default=None,
                   help="send SIGTERM this many seconds into the load and report how long the server takes to exit")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.memory:
        return memory_load(args)
    if args.requests < 1 or args.clients < 1:
        ap.error("--requests and --clients must be >= 1")

    images, source = pick_images(max(args.requests, 64))
    tmp = Path(tempfile.mkdtemp(prefix="twentyq-bench-serve-"))
    models = {}
    for m in [s.strip() for s in args.models.split(",") if s.strip()]:
        if m == "offline":
            models[m] = "offline"
        elif m == "tiny-clip":
            from engine.testing.tiny_models import save_random_model

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

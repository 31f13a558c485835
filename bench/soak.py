"""Soak test: many images through the adaptive engine in one process, watching memory and speed.

    python -m bench.soak                         # 10,000 images (~7 min on 2 CPU cores)
    python -m bench.soak --images 2000 --out bench/out/soak_2000.json

The shared sets (``pokemon/jina15.csv``, ``flowers17/labels.csv``,
``pokemon/web150/labels.csv``; 8,824 images) are interleaved and cycled up to
``--images``. Every image goes through :meth:`engine.run.classifier.Classifier.iter_classify`
(adaptive mode, ``--policy``/``--tau``) with the offline model (the packaged
ConSE stand-in, NOT CLIP) and the on-disk text cache on. Labels are not
scored: this measures staying power, not accuracy.

Reported: RSS at start (model loaded), at the middle and at the end, and
every ``--every`` images; throughput (images/s) for each window; errors
(count and the first few messages). Memory bound: after the first chunk the
process holds the model, one chunk of images and their embeddings
(``--chunk-size`` × D floats), and the text cache, which is bounded by the
system (Q prompts × D floats: 56 × 384 × 4 B = 86 KB for pokemon15). No
result is kept, so RSS must stay flat as the image count grows; the check
``rss_growth_mb`` (end − RSS after the first window) says whether it did.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import resource
import tempfile
import time
from pathlib import Path

from engine.common.files import shared_data_root

REPO = Path(__file__).resolve().parents[1]
SHARED = shared_data_root()
SETS = (SHARED / "pokemon" / "jina15.csv", SHARED / "flowers17" / "labels.csv",
        SHARED / "pokemon" / "web150" / "labels.csv")


def rss_mb() -> float:
    """Resident set size of this process in MiB (Linux /proc; ru_maxrss elsewhere)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def image_paths(sets=SETS) -> list[str]:
    """Paths of every image of the shared sets that exist, interleaved set by set."""
    lists = []
    for csv_path in sets:
        if not csv_path.is_file():
            continue
        with csv_path.open(newline="", encoding="utf-8") as f:
            lists.append([str(csv_path.parent / row["path"]) for row in csv.DictReader(f)])
    return [p for group in itertools.zip_longest(*lists) for p in group if p is not None]


def soak(n_images: int, *, system: str = "pokemon15", policy: str = "eig", tau: float = 0.9,
         chunk_size: int = 64, every: int = 1000, cache_dir: str | None = None, model: str = "offline",
         log=print) -> dict:
    """Classify ``n_images`` (the shared sets cycled); returns the figures as a flat-ish dict."""
    from engine.run.classifier import Classifier, RunConfig

    paths = image_paths()
    if not paths:
        raise SystemExit(f"no shared data under {SHARED}; the soak needs the shared image sets")
    tmp = None
    if cache_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="twentyq-soak-")
        cache_dir = tmp.name
    t_load = time.perf_counter()
    clf = Classifier(model=model, system=system, device="cpu", cache_dir=cache_dir)
    config = RunConfig(mode="adaptive", policy=policy, tau=tau)
    load_s = time.perf_counter() - t_load
    rss_start = rss_mb()
    log(f"soak: {n_images} images from {len(paths)} distinct, model {model}, system {system}, "
        f"policy {policy} tau {tau}; RSS at start {rss_start:.0f} MiB (model loaded in {load_s:.1f} s)")

    stream = itertools.islice(itertools.cycle(paths), n_images)
    windows, errors, first_errors = [], 0, []
    done, q_total = 0, 0
    rss_middle = None
    t0 = t_win = time.perf_counter()
    n_win = 0
    for r in clf.iter_classify(stream, config, chunk_size=chunk_size):
        done += 1
        n_win += 1
        if r.error is not None:
            errors += 1
            if len(first_errors) < 5:
                first_errors.append(r.error)
        else:
            q_total += r.q_spent
        if done == n_images // 2:
            rss_middle = rss_mb()
        if done % every == 0 or done == n_images:
            now = time.perf_counter()
            w = {"images": done, "rss_mb": round(rss_mb(), 1), "images_per_s": round(n_win / (now - t_win), 2),
                 "elapsed_s": round(now - t0, 1)}
            windows.append(w)
            log(f"  {done:>6} images  {w['images_per_s']:6.1f} img/s  RSS {w['rss_mb']:.0f} MiB  "
                f"errors {errors}  elapsed {w['elapsed_s']:.0f} s")
            t_win, n_win = now, 0
    total_s = time.perf_counter() - t0
    rss_end = rss_mb()
    after_first = windows[0]["rss_mb"] if windows else rss_start
    out = {
        "command": f"python -m bench.soak --images {n_images}",
        "images": done, "distinct_images": len(paths), "model": model, "system": system,
        "policy": policy, "tau": tau, "chunk_size": chunk_size, "cache_dir": "temporary" if tmp else cache_dir,
        "rss_start_mb": round(rss_start, 1), "rss_middle_mb": round(rss_middle or rss_end, 1),
        "rss_end_mb": round(rss_end, 1), "rss_after_first_window_mb": after_first,
        "rss_growth_mb": round(rss_end - after_first, 1),
        "seconds": round(total_s, 1), "images_per_s": round(done / total_s, 2) if total_s else None,
        "mean_q": round(q_total / max(done - errors, 1), 2),
        "errors": errors, "first_errors": first_errors,
        "text_cache": clf.text_cache.stats(), "windows": windows, "cpu_count": os.cpu_count(),
    }
    if tmp is not None:
        tmp.cleanup()
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=10_000)
    ap.add_argument("--system", default="pokemon15")
    ap.add_argument("--policy", default="eig")
    ap.add_argument("--tau", type=float, default=0.9)
    ap.add_argument("--chunk-size", type=int, default=64)
    ap.add_argument("--every", type=int, default=1000, help="report RSS and throughput every N images")
    ap.add_argument("--cache-dir", default=None, help="disk cache folder (default: a temporary one)")
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    args = ap.parse_args(argv)
    res = soak(args.images, system=args.system, policy=args.policy, tau=args.tau, chunk_size=args.chunk_size,
               every=args.every, cache_dir=args.cache_dir)
    if args.images != 10_000:
        res["command"] = f"python -m bench.soak --images {args.images}"
    print(f"done: {res['images']} images in {res['seconds']:.0f} s ({res['images_per_s']} img/s), "
          f"errors {res['errors']}; RSS start {res['rss_start_mb']:.0f} / middle {res['rss_middle_mb']:.0f} / "
          f"end {res['rss_end_mb']:.0f} MiB (growth after the first window {res['rss_growth_mb']:+.0f} MiB)")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""``twentyq classify|eval --ray [ADDRESS]``: the same runs spread over Ray actors.

The driver (this process) reads the image list, cuts it into shards of
``--shard-size`` rows, and hands the pending shards to
:func:`engine.run.ray_executor.classify_shards`; each finished shard is written to
``--out`` (a folder ending in ``.jsonl`` or ``.parquet``, see :mod:`engine.run.shards`)
as it completes, so a killed run loses at most the shards in flight and
``--resume`` does only the rest. Without ``--out`` the results print (classify, in
input order) or are summarised (eval) as in a single process. Ray is imported only in
``engine.run.ray_executor``, and only when ``--ray`` is given.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import re
import sys
from contextlib import ExitStack
from dataclasses import asdict
from pathlib import Path

LOCAL = "local"
ADDRESS = re.compile(r"^(auto|(ray://)?[\w.\-\[\]:]+:\d+)$")
RAY_ONLY = ("precompute_text", "workers", "gpus_per_worker", "cpus_per_worker", "ray_batch_size", "shard_size")
DEFAULT_SHARD_SIZE = 1000
DEFAULT_RAY_BATCH = 64


def add_ray_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("Ray (needs pip install 'twentyq[ray]')")
    g.add_argument("--ray", nargs="?", const=LOCAL, default=None, metavar="ADDRESS",
                   help="run on Ray actors: alone, start Ray on this machine; with HOST:PORT, ray://HOST:PORT or "
                        "auto, join that cluster (put --ray after the image paths, or write --ray=ADDRESS)")
    g.add_argument("--precompute-text", action="store_true",
                   help="embed every prompt once, in one task, and broadcast it to the actors (default: each "
                        "actor embeds a group's prompts the first time it is asked)")
    g.add_argument("--workers", type=int, default=None,
                   help="actors (one model each); default: the cluster's GPUs / --gpus-per-worker, or its CPUs / "
                        "--cpus-per-worker")
    g.add_argument("--gpus-per-worker", type=float, default=None,
                   help="GPUs per actor (default: 1 when the cluster has GPUs and --device is auto or cuda, else 0)")
    g.add_argument("--cpus-per-worker", type=float, default=None, help="CPUs per actor (default 1)")
    g.add_argument("--ray-batch-size", type=int, default=None,
                   help=f"images per actor call (default {DEFAULT_RAY_BATCH}, as a single process's chunk)")
    g.add_argument("--shard-size", type=int, default=None,
                   help=f"images per output shard, the unit --resume skips (default {DEFAULT_SHARD_SIZE})")


def check_flags(args, usage_error) -> None:
    """Ray-only flags need --ray; ``--ray VALUE`` must look like an address."""
    if args.ray is None:
        given = [f"--{n.replace('_', '-')}" for n in RAY_ONLY if getattr(args, n, None) not in (None, False)]
        if given:
            raise usage_error(f"{', '.join(given)}: only with --ray (add --ray to run on Ray actors)")
        return
    if args.ray != LOCAL and not ADDRESS.match(args.ray):
        raise usage_error(f"--ray {args.ray!r} is not a Ray address (HOST:PORT, ray://HOST:PORT or auto); to start "
                          "Ray on this machine put --ray after the image paths, or write --ray=local")
    for name in ("workers", "ray_batch_size", "shard_size"):
        v = getattr(args, name, None)
        if v is not None and v < 1:
            raise usage_error(f"--{name.replace('_', '-')} {v}: must be >= 1")
    for name in ("gpus_per_worker", "cpus_per_worker"):
        v = getattr(args, name, None)
        if v is not None and (not math.isfinite(v) or v < 0):
            raise usage_error(f"--{name.replace('_', '-')} {v}: must be >= 0")


def _ray_batch(usage_error):
    try:
        from engine import ray_batch
        ray_batch.require_ray()
    except ImportError as e:
        raise usage_error(str(e)) from None
    return ray_batch


def _sizing(ray, args) -> tuple[int, float, float]:
    """(workers, gpus per worker, cpus per worker) from the flags and the cluster's resources."""
    res = ray.cluster_resources()
    cpus = args.cpus_per_worker if args.cpus_per_worker is not None else 1.0
    gpus = args.gpus_per_worker
    if gpus is None:
        gpus = 1.0 if res.get("GPU", 0) >= 1 and args.device in ("auto", "cuda") else 0.0
    if args.workers is not None:
        return args.workers, gpus, cpus
    by_gpu = int(res.get("GPU", 0) // gpus) if gpus > 0 else None
    by_cpu = int(res.get("CPU", 1) // cpus) if cpus > 0 else None
    workers = min(x for x in (by_gpu, by_cpu) if x is not None) if (by_gpu, by_cpu) != (None, None) else 1
    return max(1, workers), gpus, cpus


def settings(args, config, system) -> dict:
    """What changes the results: model, dtype, the system itself and the run configuration."""
    from systems import load_system

    sys_hash = hashlib.sha256(repr(load_system(system)).encode()).hexdigest()
    return {"model": args.model, "dtype": args.dtype, "system": sys_hash, "config": asdict(config)}


def run(args, config, system, names: list[str], labels: list[str] | None, usage_error, *, on_ordered=None,
        desc: str = "images") -> dict:
    """Classify ``names`` on Ray, shard by shard, into ``--out`` (if given).

    on_ordered(records) : called with each shard's records in input order (when there is no --out).
    Returns {"store": ShardStore | None, "n_bad": this run's error rows, "text_encodes": prompts the
    actors (and the precompute task) embedded this run, "text_hits", "shards_done_before": int}.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    from engine.cli.app import _progress
    from engine.run.shards import ShardStore, fingerprint, records_from_arrow

    rb = _ray_batch(usage_error)
    shard_size = args.shard_size or DEFAULT_SHARD_SIZE
    out = getattr(args, "out", None)
    store = None
    if out:
        store = ShardStore.open(out, n_rows=len(names), shard_size=shard_size, resume=args.resume,
                                fingerprint=fingerprint(names, labels, settings(args, config, system)))
        pending = store.pending()
        n_shards = store.n_shards
    else:
        n_shards = -(-len(names) // shard_size)
        pending = list(range(n_shards))
    before = n_shards - len(pending)
    if store and args.resume:
        print(f"twentyq: --resume: {before} of {n_shards} shard(s) already done in {out}, {len(pending)} to go",
              file=sys.stderr)
    stats = {"store": store, "n_bad": 0, "text_encodes": 0, "text_hits": 0, "shards_done_before": before}
    if not pending:
        return stats
    if args.trust_remote_code:
        from engine.encoders.hf import remote_code_origin

        print(f"twentyq: --trust-remote-code: model {args.model!r} may run code from "
              f"{remote_code_origin(args.model)}", file=sys.stderr)
    rows = pa.table({"path": names, **({"label": labels} if labels is not None else {})})
    todo = sum(len(range(k * shard_size, min((k + 1) * shard_size, len(names)))) for k in pending)
    ready, next_k = {}, 0
    with ExitStack() as stack:
        try:
            ray = stack.enter_context(rb.ray_session(None if args.ray == LOCAL else args.ray))
        except rb.RayStartError as e:
            raise usage_error(str(e)) from None
        workers, gpus, cpus = _sizing(ray, args)
        workers = min(workers, len(pending))  # a shard is one block, worked by one actor at a time
        if not args.quiet:
            print(f"twentyq: Ray: {workers} worker(s), {gpus:g} GPU and {cpus:g} CPU each, "
                  f"{len(pending)} shard(s) of up to {shard_size} image(s)", file=sys.stderr)
        if args.precompute_text:
            stats["text_encodes"] += len({p for g in rb.system_prompt_groups(system, config.mode) for p in g})
        update, close = _progress(todo, desc, args.quiet)
        done_here = 0
        try:
            for k, table in rb.classify_shards(
                    rows, pending, shard_size, model=args.model, system=system, config=config, device=args.device,
                    dtype=args.dtype, encoder_batch_size=args.batch_size, cache_dir=args.cache_dir,
                    trust_remote_code=args.trust_remote_code, batch_size=args.ray_batch_size or DEFAULT_RAY_BATCH,
                    workers=workers, num_gpus=gpus, num_cpus=cpus, precompute_text=args.precompute_text,
                    stats=True):
                stats["text_encodes"] += int(pc.sum(table.column(rb.TEXT_ENCODES)).as_py() or 0)
                stats["text_hits"] += int(pc.sum(table.column(rb.TEXT_HITS)).as_py() or 0)
                stats["n_bad"] += table.num_rows - table.column("error").null_count
                if store:
                    store.write(k, table)
                else:
                    ready[k] = records_from_arrow(table)
                    while next_k in ready:
                        on_ordered(ready.pop(next_k))
                        next_k += 1
                done_here += 1
                if update:
                    update(table.num_rows)
        except KeyboardInterrupt:
            close()
            if store:
                print(f"twentyq: interrupted with {before + done_here} of {n_shards} shard(s) done in {out}; rerun "
                      "with --resume to finish", file=sys.stderr)
            raise
        except Exception as e:
            if not rb.is_ray_error(e):
                raise
            kept = f"; the {before + done_here} finished shard(s) are kept in {out}, rerun with --resume" if store else ""
            raise usage_error(f"the Ray run failed: {_root_cause(e)}{kept}") from None
        finally:
            close()
    return stats


def _root_cause(e: BaseException) -> str:
    """The last line of the innermost error message that says something (Ray wraps tracebacks)."""
    while getattr(e, "cause", None) is not None and e.cause is not e:
        e = e.cause
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip() and not ln.strip().startswith(("File ", "^"))]
    return lines[-1][:500] if lines else type(e).__name__


def model_note(model: str) -> str:
    from engine.encoders.registry import MODELS

    spec = MODELS.get(model)
    return f"{model} — {spec.note}" if spec and spec.note else model


# --------------------------------------------------------------------------- the two commands
def classify_cmd(args, config, usage_error, print_result, exit_ok, exit_partial) -> int:
    """``twentyq classify IMAGES --ray``: print in input order, or write shards to --out."""
    names = list(args.images)
    header = [not args.out and not args.json]  # printed with the first results, not before an error

    def on_ordered(records):
        from engine.core.results import Result

        if header[0]:
            print(f"{'image':<40} {'label':<24} {'conf':>6} {'Q':>4}  {'stop':<10} questions")
            header[0] = False
        for rec in records:
            print_result(Result.from_dict(rec))

    stats = run(args, config, args.system, names, None, usage_error, on_ordered=on_ordered)
    store = stats["store"]
    n_bad = store.errors() if store else stats["n_bad"]
    if store:
        print(f"wrote {len(names)} result(s) in {store.n_shards} shard(s) to {store.root}")
    if n_bad:
        print(f"twentyq: {n_bad} of {len(names)} image(s) could not be classified (see 'error')", file=sys.stderr)
    return exit_partial if n_bad else exit_ok


def eval_cmd(args, config, usage_error, print_report, exit_ok, exit_partial) -> int:
    """``twentyq eval --ray``: classify on Ray, then summarise every row (this run's and resumed ones)."""
    from engine.run.classifier import summarise
    from engine.run.datasets import check_labels, load_dataset
    from engine.run.records import atomic_write_json
    from engine.core.results import Result
    from systems import load_system

    if args.resume and not args.out:
        raise usage_error("--resume needs --out OUT.jsonl or OUT.parquet (the folder of finished shards)")
    system = load_system(args.system)
    ds = load_dataset(args.data, split=args.split, limit=args.limit, seed=args.seed)
    ds = check_labels(ds, system.classes, allow_missing=args.allow_missing)[0]
    collected: list[dict] = []
    stats = run(args, config, system, [it.path for it in ds.items], [it.label for it in ds.items], usage_error,
                on_ordered=collected.extend, desc=f"eval {config.mode}")
    store = stats["store"]
    records = store.read_all() if store else collected
    if len(records) != len(ds.items):  # every shard is finished by now
        raise RuntimeError(f"{len(records)} result(s) for {len(ds.items)} image(s)")
    rows = [(Result.from_dict({k: v for k, v in rec.items() if k != "true_label"}), item)
            for rec, item in zip(records, ds.items)]
    report = summarise(rows, config, model=args.model, system=system.name, data=ds.name,
                       text_encodes=stats["text_encodes"], text_hits=stats["text_hits"],
                       seconds_embed=float("nan"), seconds_classify=float("nan"), by=args.by, seed=args.seed)
    print_report(report, model_note(args.model), args,
                 extra=(f"  text encodes: {stats['text_encodes']} this run, summed over the Ray workers"
                        + (" and the precompute task" if args.precompute_text else ""),))
    if store:
        atomic_write_json(Path(store.root) / "_summary.json", report.to_dict())
        print(f"wrote {store.n_shards} shard(s) and _summary.json to {store.root}")
    if report.skipped:
        print(f"twentyq: {len(report.skipped)} image(s) skipped (listed under 'skipped')", file=sys.stderr)
        return exit_partial
    return exit_ok


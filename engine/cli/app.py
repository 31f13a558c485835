"""The ``twentyq`` command line: a thin layer over the Python API.

Exit codes: 0 success; 1 some inputs were bad but the rest were processed;
2 usage or configuration errors; 130 interrupted (Ctrl-C or SIGTERM, which
is handled the same way). Errors are one line unless ``--debug``.
"""

from __future__ import annotations

import argparse
import json
import sys

from engine.cli.ray_flags import add_ray_flags
from engine.cli.system_cmds import add_system_parser

EXIT_OK, EXIT_PARTIAL, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """A configuration error, reported as one line with exit code 2."""


def _progress(total: int | None, desc: str, quiet: bool, text_cache=None):
    """A tqdm bar on stderr (or nothing) counting images and, given a text cache, prompts embedded.

    Returns (update callable, close callable).
    """
    if quiet:
        return None, lambda: None
    from tqdm import tqdm

    bar = tqdm(total=total, desc=desc, unit="img", file=sys.stderr, leave=False, dynamic_ncols=True)

    def update(n: int) -> None:
        if text_cache is not None:
            bar.set_postfix_str(f"prompts embedded {text_cache.text_encodes}", refresh=False)
        bar.update(n)

    return update, bar.close


def _classifier(args, system):
    from transformers.utils import logging as hf_logging

    from engine.run.classifier import Classifier

    hf_logging.disable_progress_bar()  # ours is enough
    if args.trust_remote_code:  # a security notice: printed even with --quiet
        from engine.encoders.hf import remote_code_origin

        print(f"twentyq: --trust-remote-code: model {args.model!r} may run code from "
              f"{remote_code_origin(args.model)}", file=sys.stderr)
    return Classifier(model=args.model, system=system, device=args.device, dtype=args.dtype,
                      batch_size=args.batch_size, cache_dir=args.cache_dir, trust_remote_code=args.trust_remote_code)


def _config(args):
    from engine.run.classifier import RunConfig

    return RunConfig(mode=args.mode, policy=args.policy, tau=args.tau, delta=args.delta, budget=args.budget,
                     scorer=args.scorer, eps=args.eps, logit_scale=args.logit_scale, top_k=args.top_k,
                     shortlist=args.shortlist)


def _print_result(args, r) -> None:
    """One classify result on stdout: a JSON line (--json) or a table row."""
    if args.json:
        print(json.dumps(r.to_dict(), ensure_ascii=False), flush=True)
    elif r.error:
        print(f"{_short(r.image, 40):<40} ERROR {r.error}", flush=True)
    else:
        qs = ", ".join(f"{s.group}={s.answer}" for s in r.steps)
        print(f"{_short(r.image, 40):<40} {r.label:<24} {r.confidence:>6.3f} {r.q_spent:>4}  "
              f"{r.stop:<10} {qs}", flush=True)


def _classify_cmd(args) -> int:
    from engine.cli.ray_flags import check_flags

    check_flags(args, UsageError)
    config = _config(args)
    if args.ray is not None:
        from engine.cli.ray_flags import classify_cmd

        return classify_cmd(args, config, UsageError, lambda r: _print_result(args, r), EXIT_OK, EXIT_PARTIAL)
    if args.out or args.resume:
        raise UsageError("classify --out/--resume need --ray (without it results print to stdout: use --json "
                         "and redirect)")
    clf = _classifier(args, args.system)
    update, close = _progress(len(args.images), "images", args.quiet, clf.text_cache)
    n_bad = 0
    if not args.json:
        print(f"{'image':<40} {'label':<24} {'conf':>6} {'Q':>4}  {'stop':<10} questions")
    try:
        for r in clf.iter_classify(args.images, config, names=args.images, progress=update):
            n_bad += r.error is not None
            _print_result(args, r)
    finally:
        close()
    if n_bad:
        print(f"twentyq: {n_bad} of {len(args.images)} image(s) could not be classified (see 'error')",
              file=sys.stderr)
    return EXIT_PARTIAL if n_bad else EXIT_OK


def _short(text: str, n: int) -> str:
    return text if len(text) <= n else "…" + text[-(n - 1):]


def _warn(msg: str) -> None:
    print(f"twentyq: {msg}", file=sys.stderr)


def _eval_cmd(args) -> int:
    from pathlib import Path

    from engine.run.classifier import summarise
    from engine.cli.ray_flags import check_flags
    from engine.run.records import atomic_write_json, read_streamed, split_done

    check_flags(args, UsageError)
    config = _config(args)
    if args.ray is not None:
        from engine.cli.ray_flags import eval_cmd

        return eval_cmd(args, config, UsageError, _print_report, EXIT_OK, EXIT_PARTIAL)
    out = Path(args.out) if args.out else None
    if out is not None and out.suffix.lower() in (".jsonl", ".parquet"):
        raise UsageError(f"--out {str(out)!r}: without --ray, --out names the JSON summary (e.g. r.json; the "
                         "records stream to r.jsonl beside it); a .jsonl or .parquet folder of shards needs --ray")
    if args.resume and out is None:
        raise UsageError("--resume needs --out OUT.json (it skips the images already in OUT.jsonl)")
    clf = _classifier(args, args.system)
    ds = clf.dataset(args.data, split=args.split, limit=args.limit, seed=args.seed, allow_missing=args.allow_missing)
    rows = []
    if args.resume:
        rows, ds = split_done(ds, read_streamed(out.with_suffix(".jsonl"), warn=_warn))
        print(f"twentyq: --resume: {len(rows)} image(s) already done, {len(ds)} to go", file=sys.stderr)
    stream = out.with_suffix(".jsonl").open("a" if args.resume else "w", encoding="utf-8") if out else None
    n_before = len(rows)

    def on_result(k, r, item):
        rows.append((r, item))
        if stream:
            stream.write(json.dumps({**r.to_dict(), "true_label": item.label}, ensure_ascii=False) + "\n")
            stream.flush()

    def summary(report=None, complete=True):
        """The summary of every row, this run's and the resumed ones."""
        if report is not None and n_before == 0:
            return report
        return summarise(rows, config, model=clf.encoder.name, system=clf.system.name, data=ds.name,
                         text_encodes=clf.text_cache.text_encodes, text_hits=clf.text_cache.hits,
                         seconds_embed=report.seconds_embed if report else float("nan"),
                         seconds_classify=report.seconds_classify if report else float("nan"),
                         by=args.by, seed=args.seed, complete=complete)

    update, close = _progress(len(ds), f"eval {config.mode}", args.quiet, clf.text_cache)
    try:
        report = summary(clf.evaluate_many(ds, [config], by=args.by, seed=args.seed, on_result=on_result,
                                           progress=update)[0])
    except KeyboardInterrupt:
        close()
        _ignore_signals()  # a second Ctrl-C / SIGTERM must not tear the partial summary
        if stream:
            stream.close()
        if out:
            atomic_write_json(out, summary(complete=False).to_dict())
            print(f"twentyq: interrupted after {len(rows) - n_before} image(s) this run ({len(rows)} in all); "
                  f"partial results in {out} (complete: false); rerun with --resume to finish", file=sys.stderr)
        raise
    finally:
        close()
        if stream:
            stream.close()
    if out:
        atomic_write_json(out, report.to_dict())
    _print_report(report, _model_note(clf.encoder), args)
    if out:
        print(f"wrote {out} and {out.with_suffix('.jsonl')}")
    if report.skipped:
        print(f"twentyq: {len(report.skipped)} image(s) skipped (listed under 'skipped')", file=sys.stderr)
        return EXIT_PARTIAL
    return EXIT_OK


def _model_note(encoder) -> str:
    """The model's name with what it is (the offline stand-in says it is not CLIP)."""
    from engine.encoders.registry import MODELS

    spec = MODELS.get(encoder.name)
    if spec and spec.note:
        return f"{encoder.name} — {spec.note}"
    label = encoder.describe().get("label") if hasattr(encoder, "describe") else None
    return f"{encoder.name} — {label}" if label else f"{encoder.name} ({encoder.model_id})"


def _print_report(rep, model_note: str, args, extra: tuple[str, ...] = ()) -> None:
    """An eval summary on stdout: the headline, the model, ``extra`` lines, then (unless --quiet)
    the top confusions and the --by breakdown."""
    print(_report_line(rep))
    print(f"  model: {model_note}")
    for line in extra:
        print(line)
    if not args.quiet:
        for c in rep.confusion[:5]:
            print(f"  confused: {c['label']} -> {c['predicted']} ({c['count']})")
        for k, v in rep.by.get(args.by, {}).items() if args.by else []:
            print(f"  {args.by}={k}: accuracy {v['accuracy']:.3f} (n={v['n']})")


def _report_line(rep) -> str:
    lo, hi = rep.ci95
    what = f"{rep.mode}" + (f" {rep.policy} τ={rep.tau}" if rep.mode == "adaptive" else "")
    return (f"{what}: accuracy {rep.accuracy:.3f} [{lo:.3f}, {hi:.3f}] n={rep.n}  mean Q {rep.mean_q:.1f}  "
            f"median Q {rep.median_q:.0f}  text encodes {rep.text_encodes}  model {rep.model}")


def default_data():
    """The shared jina15 set, looked for beside the working directory and beside this checkout."""
    from systems.files import shared_data_path

    return shared_data_path("pokemon/jina15.csv")


def _compare_cmd(args) -> int:
    from engine.run.classifier import RunConfig
    from engine.run.records import atomic_write_json

    data = args.data or default_data()
    if data is None:
        raise UsageError("no data found: pass --data CSV_OR_DIR (a CSV with path,label columns or an "
                         "ImageFolder directory), e.g. --data ../shared/data/pokemon/jina15.csv")
    clf = _classifier(args, args.system)
    ds = clf.dataset(data, split=args.split, limit=args.limit, seed=args.seed, allow_missing=args.allow_missing)
    configs = [RunConfig(mode="baseline", eps=args.eps), RunConfig(mode="full", eps=args.eps),
               RunConfig(mode="adaptive", policy=args.policy, tau=args.tau, budget=args.budget, eps=args.eps,
                         shortlist=args.shortlist)]
    update, close = _progress(len(ds), "compare", args.quiet)
    try:
        reports = clf.evaluate_many(ds, configs, by=args.by, seed=args.seed, progress=update)
    finally:
        close()
    print(f"model: {_model_note(clf.encoder)}")
    print(f"data: {data} ({reports[0].n} images)  system: {clf.system.name} (N={clf.system.n_classes}, "
          f"Q={clf.system.q_total})")
    print("\n| mode | accuracy | 95% CI | mean Q | text encodes |\n|---|---|---|---|---|")
    for rep in reports:
        what = rep.mode + (f" ({rep.policy}, τ={rep.tau})" if rep.mode == "adaptive" else "")
        print(f"| {what} | {rep.accuracy:.3f} | [{rep.ci95[0]:.3f}, {rep.ci95[1]:.3f}] | {rep.mean_q:.1f} | "
              f"{rep.text_encodes} |")
    if args.by:
        print(f"\nby {args.by}:")
        for rep in reports:
            cells = ", ".join(f"{k} {v['accuracy']:.3f} (n={v['n']})" for k, v in rep.by.get(args.by, {}).items())
            print(f"  {rep.mode}: {cells}")
    if args.out:
        atomic_write_json(args.out, [r.to_dict() for r in reports])
        print(f"wrote {args.out}")
    skipped = reports[0].skipped
    if skipped:
        print(f"twentyq: {len(skipped)} image(s) skipped", file=sys.stderr)
        return EXIT_PARTIAL
    return EXIT_OK


def _models_cmd(args) -> int:
    from engine.encoders import list_models

    rows = list_models()
    print(f"{'model':<36} {'backend':<14} {'offline':<8} {'remote code':<12} note")
    for m in rows:
        print(f"{m['model']:<36} {m['backend']:<14} {'yes' if m['offline'] else 'no':<8} "
              f"{'needs flag' if m['trust_remote_code'] else '-':<12} {m.get('note', '')}")
    return EXIT_OK


def _add_model_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", default="offline",
                   help="model string: 'offline' (the packaged stand-in, not CLIP), a hub id or a local folder")
    g.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    g.add_argument("--dtype", default=None, choices=["fp32", "fp16", "bf16"], help="default: fp16 on GPU, fp32 on CPU")
    g.add_argument("--batch-size", type=int, default=None, help="encoder batch size (default: the model's own)")
    g.add_argument("--cache-dir", default=None, help="folder for the on-disk text-embedding cache")
    g.add_argument("--trust-remote-code", action="store_true",
                   help="allow the model repository's own code to run (jina-clip needs it)")
    g.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_run_flags(p: argparse.ArgumentParser, modes: bool = True) -> None:
    from policies import list_policies

    from engine.core.adaptive import SCORERS
    from engine.run.classifier import DEFAULT_EPS, MODES

    g = p.add_argument_group("questions")
    g.add_argument("--system", default="pokemon15", help="system JSON file or shipped name (default pokemon15)")
    if modes:
        g.add_argument("--mode", default="adaptive", choices=list(MODES))
    g.add_argument("--policy", default="eig", choices=list_policies())
    g.add_argument("--tau", type=float, default=0.9, help="stop once the top class has this probability")
    g.add_argument("--delta", type=float, default=0.0, help="stop once no question gains this many nats")
    g.add_argument("--budget", type=int, default=None, help="at most this many prompts per image")
    g.add_argument("--scorer", default="bayes", choices=list(SCORERS))
    g.add_argument("--eps", type=float, default=DEFAULT_EPS, help="rule noise of the Bayes scorer")
    g.add_argument("--logit-scale", type=float, default=None, help="default: the model's own")
    g.add_argument("--top-k", type=int, default=5)
    g.add_argument("--shortlist", type=int, default=None, metavar="M",
                   help="adaptive: once few classes remain, ask which of the top M class names fits (M prompts); "
                        "needs a system with a class_name group (system build --name-group)")


def _add_data_flags(p: argparse.ArgumentParser, required: bool, resume: bool = False) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data", required=required, help="CSV (path,label[,split]) or ImageFolder directory")
    g.add_argument("--split", default=None)
    g.add_argument("--limit", type=int, default=None, help="a seeded random sample of this many images")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--allow-missing", action="store_true", help="skip rows whose label is not a class of the system")
    g.add_argument("--by", default=None, help="break accuracy down by this data column (e.g. source)")
    g.add_argument("--out", default=None, help="write the JSON summary here" + (
        " (with --ray: a folder of result shards, OUT.jsonl or OUT.parquet, and its _summary.json)" if resume else ""))
    if resume:
        g.add_argument("--resume", action="store_true",
                       help="skip the images already streamed to OUT.jsonl and append the rest (with --ray: skip "
                            "the shards already finished)")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="twentyq", description="Adaptive twenty-questions zero-shot classification.")
    ap.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = ap.add_subparsers(dest="command", required=True)

    cp = sub.add_parser("classify", help="classify images")
    cp.add_argument("images", nargs="+", help="image files")
    cp.add_argument("--json", action="store_true", help="one JSON object per image per line")
    cp.add_argument("--out", default=None,
                    help="with --ray: a folder of result shards, OUT.jsonl or OUT.parquet (the extension picks the "
                         "format)")
    cp.add_argument("--resume", action="store_true", help="with --ray --out: skip the shards already finished")
    _add_run_flags(cp)
    _add_model_flags(cp)
    add_ray_flags(cp)
    cp.set_defaults(func=_classify_cmd)

    ep = sub.add_parser("eval", help="evaluate on a labelled dataset")
    _add_data_flags(ep, required=True, resume=True)
    _add_run_flags(ep)
    _add_model_flags(ep)
    add_ray_flags(ep)
    ep.set_defaults(func=_eval_cmd)

    mp = sub.add_parser("compare", help="baseline vs full system vs adaptive on one dataset (images embedded once)")
    _add_data_flags(mp, required=False)
    _add_run_flags(mp, modes=False)
    _add_model_flags(mp)
    mp.set_defaults(func=_compare_cmd)

    add_system_parser(sub)

    from engine.cli.serve_cmd import add_serve_args  # twentyq serve: engine/serve, pip install 'twentyq[serve]'

    add_serve_args(sub.add_parser("serve", help="serve classification over HTTP (FastAPI on uvicorn; dynamic "
                                                "batching; pip install 'twentyq[serve]')"))

    lp = sub.add_parser("models", help="list model strings and backends")
    lp.set_defaults(func=_models_cmd)
    return ap


def _expected_errors() -> tuple[type[BaseException], ...]:
    """Errors that are the user's to fix: reported in one line, exit 2."""
    errors: tuple[type[BaseException], ...] = (UsageError, ValueError, OSError, KeyError)
    if "engine.encoders.base" in sys.modules:  # only loaded (with torch) when a model was asked for
        base = sys.modules["engine.encoders.base"]
        errors += (base.EncoderLoadError, base.EncoderOutOfMemory)
    return errors


def _raise_interrupt(signum, frame):
    """SIGTERM handler: behave exactly like Ctrl-C (partial results are written, exit 130)."""
    raise KeyboardInterrupt(f"signal {signum}")


def _ignore_signals() -> None:
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


def main(argv: list[str] | None = None) -> int:
    import signal
    import threading

    parser = build_parser()
    args = parser.parse_args(argv)
    handlers = None
    if threading.current_thread() is threading.main_thread():  # signals can only be set there
        handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("twentyq: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if args.debug or not isinstance(e, _expected_errors()):
            raise
        # one line: the cause and the fix (a system's validation adds its problems, one per line)
        msg = str(e).strip("'\"") if isinstance(e, KeyError) else str(e)
        print(f"twentyq: error: {msg}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        for sig, h in (handlers or {}).items():
            signal.signal(sig, h if h is not None else signal.SIG_DFL)


if __name__ == "__main__":
    sys.exit(main())

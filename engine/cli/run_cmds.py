"""``twentyq classify | eval | compare | models``: the classification commands.

classify and eval go through the run pipeline (:func:`engine.run.pipeline.run`) with the
executor the flags name (this process, or Ray with ``--ray``) and, with ``--out``, a result
store; so ``--out`` and ``--resume`` mean the same with and without Ray.
"""

from __future__ import annotations

import argparse
import json
import re
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Any

from engine.cli.options import (
    EXIT_OK, EXIT_PARTIAL, RESULT_HEADER, Interrupted, UsageError, add_data_flags, add_model_flags, add_out_flags,
    add_ray_flags, add_run_flags, calibration_arg, calibration_lines, check_out_flags, check_run_settings, data_spec,
    encoder_spec, executor_for, interrupted_run, load_classifier, log, output_spec, print_report, print_result,
    progress_bar, remote_code_notice, run_config, settings_errors, system_inputs, system_of, settle_line, target_line, user_errors,
    warn,
)
from engine.reports.plots import plot_compare
from engine.reports.tables import row_of

EXAMPLES_CLASSIFY = """examples:
  twentyq classify a.png b.png --system pokemon15 --policy eig --tau 0.9 --budget 30
  twentyq classify a.png --labels "cat,dog,bird" --templates photo   # plain zero-shot, 5-template ensemble
  twentyq classify imgs/*.jpg --json > results.jsonl
  twentyq classify imgs/*.jpg --out run.jsonl          # resumable with --resume
  twentyq classify imgs/*.jpg --out run.parquet --ray  # on Ray actors
"""
EXAMPLES_EVAL = """examples:
  twentyq eval --data labels.csv --system pokemon15 --out run.jsonl   # pd.read_json("run.jsonl", lines=True)
  twentyq eval --data labels.csv --system pokemon15 --out run.jsonl --resume
  twentyq eval --data a.csv b.csv --model offline probe --out runs/    # 4 runs: runs/a_offline.jsonl, ...
  twentyq eval --sweep sweep.json --out runs/ --run-name "{data}_{model}.csv" && twentyq report runs/
  twentyq eval --data labels.csv --mode baseline --by source
  twentyq eval --data labels.csv --labels-file classes.txt --templates clip8
"""
EXAMPLES_COMPARE = """examples:
  twentyq compare --by source                  # the shared jina15 images, offline stand-in
  twentyq compare --data labels.csv --system flowers17 --out compare.json
  twentyq compare --data labels.csv --system flowers17 --plot curve.png   # accuracy against mean Q
"""
CURVE_POINTS = 8  # budgets in compare --plot's adaptive curve


def curve_budgets(system, n: int = CURVE_POINTS) -> list[int]:
    """Budgets for the accuracy-vs-Q curve: ``n`` evenly spaced from the cheapest question to Q (distinct)."""
    import numpy as np

    lo = min(g.n_options for g in system.groups)
    return sorted({int(b) for b in np.linspace(lo, system.q_total, n).round()})


def _items_of(paths: list[str]):
    from engine.run.datasets import Item

    return [Item(p) for p in paths]


def classify_cmd(args) -> int:
    from engine.run.pipeline import DEFAULT_CHUNK, Job, open_store, run
    from engine.run.prompts import spec_for_run

    check_out_flags(args)
    executor = executor_for(args)
    spec, config = encoder_spec(args), run_config(args)
    system = system_of(args)
    cal = calibration_arg(args, system)
    check_run_settings(system, config)
    job = Job(spec, system, config, cal)
    _announce_target(cal, config, warn, system)
    items = _items_of(list(args.images))
    output = output_spec(args)  # its cheap checks ran above; the folder is created once the model has loaded
    cache = _prepare(executor, spec_for_run(spec, config), system, cal)
    store = open_store(output, job.settings(), items, [*args.images, *system_inputs(args)], warn) if output else None
    update, close = progress_bar(len(items), "images", args.quiet, cache)
    n_bad = 0
    printed_header = False
    try:
        with store if store is not None else nullcontext():
            for result in run(items, job, executor=executor, store=store, shard_size=DEFAULT_CHUNK, progress=update):
                n_bad += result.error is not None
                if store is None or args.json:
                    if not args.json and not printed_header:
                        print(RESULT_HEADER)
                        printed_header = True
                    print_result(result, args.json)
    except KeyboardInterrupt as e:
        close()
        if store is not None and not isinstance(e, Interrupted):
            raise interrupted_run(args.out) from None
        raise
    finally:
        close()
    if store is not None:
        print(f"wrote {len(items)} result(s) to {store.table} ({store.n_shards} shard(s) kept in {store.root} for "
              "--resume)")
    if n_bad:
        warn(f"{n_bad} of {len(items)} image(s) could not be classified (see 'error')")
    return EXIT_PARTIAL if n_bad else EXIT_OK


def _announce_target(cal, config, say, system=None) -> None:
    """Say what --policy auto / dev-order runs and which τ --target-accuracy chose (before any image is
    classified); refuse --policy dev-order without a calibration."""
    from engine.run.calibration_file import policy_line, resolve_policy, target_choice

    if config.mode == "adaptive":
        with settings_errors():
            resolve_policy(cal, config)
        line = policy_line(cal, config)
        if line:
            say(line)
    if config.target_accuracy is not None:
        with settings_errors():  # a plug-in policy or a calibration without its paths: the user's to fix
            say(target_line(target_choice(cal, config, system), config))
    if config.mode == "adaptive" and config.settle == "auto":
        from engine.run.calibrated import CalibrationUse

        say(settle_line(CalibrationUse(cal, system).settle_choice(config), config))  # a CalibrationError: exit 2


def _prepare(executor, spec, system, calibration=None):
    """Load the model here when the work runs in this process (once, after the cheap checks);
    return its text cache for the progress bar (None when actors hold the model)."""
    from engine.run.pipeline import LocalExecutor

    if isinstance(executor, LocalExecutor):
        executor.classifier = load_classifier(spec, system, calibration)
        return executor.classifier.text_cache
    remote_code_notice(spec)
    return None


def eval_cmd(args) -> int:
    """One run, or a sweep (several --data / --model values, or --sweep FILE): every model × data pair,
    each model loaded once, each run written as its own --out table under the --out folder."""
    check_out_flags(args, sweep=_is_sweep(args))
    if _is_sweep(args):
        return _sweep(args)
    data = _datas(args)[0]
    args.model = _models(args)[0]
    executor = executor_for(args)
    system = system_of(args)
    cal = calibration_arg(args, system)
    spec, config = encoder_spec(args), run_config(args)
    dataspec = data_spec(args, data)
    with settings_errors():
        dataset = dataspec.load(system.classes)  # checked before the model loads, and read once
    check_run_settings(system, config)
    _announce_target(cal, config, print, system)
    cache = _prepare(executor, spec_for_run_of(spec, config), system, cal)
    report = _eval_one(args, executor, spec, system, config, cal, dataspec, dataset, output_spec(args), cache)
    return _report_exit(report)


def spec_for_run_of(spec, config):
    from engine.run.prompts import spec_for_run

    return spec_for_run(spec, config)


def _eval_one(args, executor, spec, system, config, cal, dataspec, dataset, output, cache):
    """Evaluate one (model, data) pair and print its report; an interrupt says what was kept."""
    from engine.run.evaluation import evaluate
    from engine.run.pipeline import Job

    log.info("data %s: %d image(s); system %s; mode %s", dataspec.source, len(dataset), system.name, config.mode)
    update, close = progress_bar(len(dataset), f"eval {config.mode}", args.quiet, cache)
    try:
        report = evaluate(Job(spec, system, config, cal), dataspec, executor=executor, output=output,
                          progress=update, announce=warn, dataset=dataset, sources=_sources(args),
                          planned=getattr(update, "set_total", None))  # dev images and resumed rows not counted
    except KeyboardInterrupt as e:
        close()
        if output is not None and not isinstance(e, Interrupted):
            raise interrupted_run(output.path) from None
        raise
    finally:
        close()
    print_report(report, args.by, args.quiet)
    if args.ray is not None:
        print(f"  text encodes: {report.text_encodes} this run, summed over the Ray workers"
              + (" and the precompute task" if args.precompute_text else ""))
    if output is not None:
        from engine.run.store import run_dir

        print(f"wrote {output.path} (shards and _summary.json in {run_dir(output.path)})")
    if report.skipped:
        warn(f"{len(report.skipped)} image(s) skipped (listed under 'skipped')")
    return report


def _report_exit(report) -> int:
    return EXIT_PARTIAL if report.skipped else EXIT_OK


def _sources(args) -> dict[str, Any]:
    """The files and names the run's settings came from, for the summary (report shows them)."""
    src = {"system": args.system, "labels_file": args.labels_file, "templates": args.templates,
           "descriptors": getattr(args, "descriptors", None), "calibration": getattr(args, "calibration", None)}
    return {k: v for k, v in src.items() if v is not None}


# --------------------------------------------------------------------------- sweeps
DEFAULT_RUN_NAME = "{data}_{model}.jsonl"
SWEEP_KEYS = ("data", "model")


def _datas(args) -> list[str]:
    return list(args.data or [])


def _models(args) -> list[str]:
    return list(args.model or ["offline"])


def _is_sweep(args) -> bool:
    return bool(getattr(args, "sweep", None)) or len(_datas(args)) > 1 or len(_models(args)) > 1


def read_sweep(path: str) -> list[tuple[str, str]]:
    """The (data, model) pairs of a sweep file: JSON ``{"data": [...], "model": [...]}`` (every model on
    every data; "model" may be left out for --model's) or ``[{"data": D, "model": M}, ...]`` (these pairs).
    Relative data paths are relative to the file's folder. UsageError naming the problem."""
    from engine.common.files import read_text_capped

    try:
        spec = json.loads(read_text_capped(path, what="sweep file"))
    except json.JSONDecodeError as e:
        raise UsageError(f"--sweep {path}: not JSON ({e.msg} at line {e.lineno})") from None
    here = Path(path).parent

    def where(d: Any, at: str) -> str:
        if not isinstance(d, str) or not d:
            raise UsageError(f"--sweep {path}: {at} must be a non-empty string (a --data value), not {d!r}")
        return d if d.startswith("hf:") or Path(d).is_absolute() else str(here / d)

    def model(m: Any, at: str) -> str:
        if not isinstance(m, str) or not m:
            raise UsageError(f"--sweep {path}: {at} must be a non-empty string (a --model value), not {m!r}")
        return m

    if isinstance(spec, dict):
        unknown = sorted(set(spec) - set(SWEEP_KEYS))
        if unknown or not isinstance(spec.get("data"), list) or not spec["data"]:
            raise UsageError(f"--sweep {path}: expected {{\"data\": [...], \"model\": [...]}} with a non-empty "
                             f"data list" + (f" (unknown keys {unknown})" if unknown else ""))
        models = spec.get("model")
        if models is not None and (not isinstance(models, list) or not models):
            raise UsageError(f"--sweep {path}: \"model\" must be a non-empty list of --model values")
        datas = [where(d, f"data[{i}]") for i, d in enumerate(spec["data"])]
        return [(d, model(m, f"model[{j}]")) for j, m in enumerate(models or [None]) for d in datas] \
            if models else [(d, None) for d in datas]
    if isinstance(spec, list) and spec and all(isinstance(r, dict) for r in spec):
        return [(where(r.get("data"), f"[{i}].data"), model(r.get("model", "offline"), f"[{i}].model"))
                for i, r in enumerate(spec)]
    raise UsageError(f"--sweep {path}: expected {{\"data\": [...], \"model\": [...]}} or a list of "
                     "{\"data\": ..., \"model\": ...} objects")


def _slug(text: str) -> str:
    """``text`` as a file-name part: letters, digits, '.', '_' and '-' kept, runs of anything else one '-'."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "x"


def model_slug(model: str) -> str:
    """{model} in a run name: a local folder's name, or the model string with '/' and ':' as '-'."""
    p = Path(model)
    return _slug(p.name if p.is_dir() else model)


def _pairs(args) -> list[tuple[str, str]]:
    if args.sweep:
        if args.data:
            raise UsageError("--sweep and --data: the sweep file names the data; drop one of them")
        return [(d, m or mm) for d, m in read_sweep(args.sweep) for mm in ([None] if m else _models(args))]
    return [(d, m) for m in _models(args) for d in _datas(args)]


def _run_names(args, pairs, datasets, system, config) -> list[str]:
    """The --run-name of every pair (distinct; a clash is a UsageError naming it)."""
    template = args.run_name or DEFAULT_RUN_NAME
    names = []
    for d, m in pairs:
        try:
            names.append(template.format(data=_slug(datasets[d].name), model=model_slug(m), mode=config.mode,
                                         system=_slug(system.name)))
        except (KeyError, IndexError, ValueError) as e:
            raise UsageError(f"--run-name {template!r}: {type(e).__name__} {e}; use the fields {{data}}, {{model}}, "
                             "{mode}, {system}") from None
    seen: dict[str, tuple[str, str]] = {}
    for name, pair in zip(names, pairs):
        if name in seen:
            raise UsageError(f"--run-name {template!r} gives {name!r} for both {seen[name]} and {pair}; the data "
                             "names clash: rename one, or list pairs in a --sweep file and write a --run-name per "
                             "sweep")
        seen[name] = pair
    return names


def _sweep(args) -> int:
    """eval over every (data, model) pair, each model loaded once; one run (and table) per pair under --out."""
    from engine.run.pipeline import LocalExecutor, OutputSpec

    pairs = _pairs(args)
    system = system_of(args)
    cal = calibration_arg(args, system)
    config = run_config(args)
    check_run_settings(system, config)
    datasets = {}
    for d, _ in pairs:  # every data checked (and read once) before any model loads
        if d not in datasets:
            with settings_errors():
                datasets[d] = data_spec(args, d).load(system.classes)
    names = _run_names(args, pairs, datasets, system, config)
    outs: list[str | None] = [None] * len(pairs)
    if args.out:
        folder = Path(args.out)
        if folder.exists() and not folder.is_dir():
            raise UsageError(f"--out {args.out!r}: a sweep writes one run per data × model into a folder; this is "
                             "a file: pass a folder name")
        if not folder.parent.is_dir():
            raise UsageError(f"--out {args.out!r}: the folder {str(folder.parent)!r} does not exist; create it first")
        from engine.run.store import MANIFEST, check_out, format_of, run_dir

        outs = [str(folder / n) for n in names]
        for o in outs:
            format_of(o)
            if Path(o).parent != folder and not Path(o).parent.is_relative_to(folder):
                raise UsageError(f"--run-name {args.run_name!r} puts {o!r} outside --out {args.out!r}")
            if Path(o).parent.is_dir():
                check_out(o)  # a StoreError (exit 2) before any model loads
                if not args.resume and (run_dir(o) / MANIFEST).is_file():
                    raise UsageError(f"{o} already holds a run; pass --resume to finish the sweep, or choose a new "
                                     "--out")
        for o in outs:
            Path(o).parent.mkdir(parents=True, exist_ok=True)
            check_out(o)
    _announce_target(cal, config, print, system)
    failed, partial, done = [], 0, 0
    by_model: dict[str, list[int]] = {}
    for k, (_, m) in enumerate(pairs):
        by_model.setdefault(m, []).append(k)
    total = len(pairs)
    try:
        for m, ks in by_model.items():
            args.model = m
            spec = encoder_spec(args)
            executor = executor_for(args)
            try:
                cache = _prepare(executor, spec_for_run_of(spec, config), system, cal)  # this model, once
            except user_errors() as e:
                failed += [f"{names[k]}: {e}" for k in ks]
                warn(f"model {m!r} could not be loaded ({e}); skipping its {len(ks)} run(s)")
                continue
            for k in ks:
                d = pairs[k][0]
                print(f"== {names[k]}: data {d}, model {m} ({k + 1} of {total})")
                if isinstance(executor, LocalExecutor):
                    executor = LocalExecutor(executor.classifier)  # the loaded model; this run's own counts
                output = OutputSpec(outs[k], resume=args.resume, shard_size=args.shard_size) if outs[k] else None
                try:
                    rep = _eval_one(args, executor, spec, system, config, cal, data_spec(args, d), datasets[d],
                                    output, cache)
                except user_errors() as e:
                    failed.append(f"{names[k]}: {e}")
                    warn(f"{names[k]} failed: {e}")
                    continue
                done += 1
                partial += bool(rep.skipped)
    except KeyboardInterrupt as e:
        detail = e.detail if isinstance(e, Interrupted) else ""
        raise Interrupted(f"during run {done + len(failed) + 1} of {total}" + (f": {detail}" if detail else "")
                          + (f"; the {done} finished run(s) are kept" if done else "")) from None
    if args.out:
        print(f"wrote {done} of {total} run(s) to {args.out}; merge them with: twentyq report {args.out}")
    if failed:
        warn(f"{len(failed)} of {total} run(s) failed: " + "; ".join(failed))
    return EXIT_PARTIAL if failed or partial else EXIT_OK


def default_data():
    """The shared jina15 set (see :func:`engine.common.files.shared_data_path`)."""
    from engine.common.files import shared_data_path

    return shared_data_path("pokemon/jina15.csv")


def compare_cmd(args) -> int:
    from engine.common.files import atomic_write_json
    from engine.encoders.registry import model_label
    from engine.run.evaluation import evaluate_configs

    data = args.data or default_data()
    if data is None:
        raise UsageError("no data found: pass --data CSV_OR_DIR (a CSV with path,label columns or an "
                         "ImageFolder directory), e.g. --data ../shared/data/pokemon/jina15.csv")
    if args.out and Path(args.out).suffix.lower() != ".json":
        raise UsageError(f"--out {args.out!r}: compare writes one JSON file of reports; name it *.json")
    spec = encoder_spec(args)
    system = system_of(args)
    cal = calibration_arg(args, system)
    data_sp = data_spec(args, data)
    with settings_errors():
        dataset = data_sp.load(system.classes)  # checked before the model loads, and read once
    if not len(dataset):
        raise UsageError(f"--data {data!r} has no rows: compare needs labelled images (a CSV of path,label rows, or "
                         "DIR/label/*.jpg)")
    if args.descriptors:
        raise UsageError("compare runs baseline, full and adaptive; evaluate --descriptors with 'twentyq eval'")
    if args.plot and Path(args.plot).suffix.lower() != ".png":
        raise UsageError(f"--plot {args.plot!r}: the curve is a PNG; name it *.png")
    if args.plot and not Path(args.plot).absolute().parent.is_dir():
        raise UsageError(f"--plot {args.plot!r}: the folder {str(Path(args.plot).parent)!r} does not exist; "
                         "create it first")
    if args.plot:
        from engine.reports.plots import pyplot as _pyplot

        _pyplot("--plot")  # matplotlib is there, before the model loads
    configs = [run_config(args, mode="baseline", target_accuracy=None),
               run_config(args, mode="full", templates=None, target_accuracy=None),
               run_config(args, mode="adaptive", templates=None)]
    check_run_settings(system, configs[2])
    _announce_target(cal, configs[2], print, system)
    # --plot: the adaptive configuration again at increasing budgets (images are still embedded once)
    curve_configs = [replace(configs[2], budget=b) for b in curve_budgets(system)
                     if configs[2].budget is None or b < configs[2].budget] if args.plot else []
    clf = load_classifier(spec, system, cal)
    update, close = progress_bar(None, "compare", args.quiet)
    try:
        reports = evaluate_configs(clf, data_sp, configs + curve_configs, progress=update, dataset=dataset)
    finally:
        close()
    reports, curve = reports[:len(configs)], reports[len(configs):]
    print(f"model: {model_label(spec.model)}")
    print(f"data: {data} ({reports[0].n} images)  system: {clf.system.name} (N={clf.system.n_classes}, "
          f"Q={clf.system.q_total})")
    if cal is not None:
        moved = f"; moved zero-shot from the classes {cal.source.get('classes')} of {cal.system_name}" if cal.moved_to else ""
        print(f"calibration: {cal.path} (full and adaptive; baseline scores the class names uncalibrated{moved}); "
              f"{reports[0].calibration['excluded_dev_images']} of its dev image(s) left out of this data")
    print("\n| mode | accuracy | 95% CI | mean Q | text encodes |\n|---|---|---|---|---|")
    for rep in reports:
        what = _label(rep)
        print(f"| {what} | {rep.accuracy:.3f} | [{rep.ci95[0]:.3f}, {rep.ci95[1]:.3f}] | {rep.mean_q:.1f} | "
              f"{rep.text_encodes} |")
    if cal is not None:
        print("\n".join(calibration_lines(reports[2])[1:]))
    if args.by:
        from engine.common.printable import printable

        print(f"\nby {printable(args.by)}:")
        for rep in reports:
            cells = ", ".join(f"{printable(k)} {v['accuracy']:.3f} (n={v['n']})"
                              for k, v in rep.by.get(args.by, {}).items())
            print(f"  {rep.mode}: {cells}")
    if args.out:
        atomic_write_json(args.out, [r.to_dict() for r in reports])
        print(f"wrote {args.out}")
    if args.plot:
        _plot(reports, curve, args.plot, model_label(spec.model), data, clf.system)
        print(f"wrote {args.plot} (accuracy against mean Q; the line is {reports[2].policy} at budgets "
              f"{', '.join(str(r.budget) for r in curve)} and Q)")
    skipped = reports[0].skipped
    if skipped:
        warn(f"{len(skipped)} image(s) skipped")
        return EXIT_PARTIAL
    return EXIT_OK


def _label(rep) -> str:
    settle = f", settle={rep.settle:g}" if getattr(rep, "settle", None) is not None else ""
    return rep.mode + (f" ({rep.policy}, τ={rep.tau}{settle})" if rep.mode == "adaptive" else "")


def _plot(reports, curve, path, model, data, system) -> None:
    """compare --plot: the three modes as points, and the adaptive config's budget sweep as a line
    that ends at the adaptive run itself when it had no budget."""
    adaptive = reports[2]
    # with --target-accuracy each budget gets its own τ (chosen on the calibration's select paths replayed under that budget)
    stop = (f"τ for target {adaptive.target['target_accuracy']:g} at each budget" if adaptive.target
            else f"τ={adaptive.tau:g}")
    if adaptive.settle is not None:  # "auto" is chosen again for each budget, like a target's τ
        auto = adaptive.settings.get("config", {}).get("settle") == "auto"
        stop += ", settle auto at each budget" if auto else f", settle={adaptive.settle:g}"
    name = f"{adaptive.policy}, {stop}, budget swept"
    line = [row_of(name, r.to_dict()) for r in curve + ([adaptive] if adaptive.budget is None else [])]
    line.sort(key=lambda r: r["mean_q"])
    where = Path(str(data))
    title = (f"{model}\n{where.parent.name}/{where.name}: {system.name} (N={system.n_classes}, "
             f"Q={system.q_total}), n={reports[0].n}")
    plot_compare([row_of(_label(r), r.to_dict()) for r in reports], line, path, title=title)


def models_cmd(args) -> int:
    from engine.encoders import list_models

    rows = list_models()
    print(f"{'model':<36} {'backend':<14} {'offline':<8} {'remote code':<12} note")
    for m in rows:
        print(f"{m['model']:<36} {m['backend']:<14} {'yes' if m['offline'] else 'no':<8} "
              f"{'needs flag' if m['trust_remote_code'] else '-':<12} {m.get('note', '')}")
    return EXIT_OK


def add_run_parsers(sub) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    cp = sub.add_parser("classify", help="classify images", epilog=EXAMPLES_CLASSIFY, formatter_class=fmt)
    cp.add_argument("images", nargs="+", help="image files")
    cp.add_argument("--json", action="store_true", help="print one JSON object per image per line")
    add_out_flags(cp)
    add_run_flags(cp)
    add_model_flags(cp)
    add_ray_flags(cp)
    cp.set_defaults(func=classify_cmd)

    ep = sub.add_parser("eval", help="evaluate on a labelled dataset (or sweep data × models)", epilog=EXAMPLES_EVAL,
                        formatter_class=fmt)
    add_data_flags(ep, required=False, multi=True)
    add_out_flags(ep, sweep=True)
    add_run_flags(ep)
    add_model_flags(ep, multi=True)
    add_ray_flags(ep)
    ep.set_defaults(func=eval_cmd)

    mp = sub.add_parser("compare", help="baseline vs full system vs adaptive on one dataset (images embedded once)",
                        epilog=EXAMPLES_COMPARE, formatter_class=fmt)
    add_data_flags(mp, required=False)
    mp.add_argument("--out", default=None, help="write the three reports as one JSON file here")
    mp.add_argument("--plot", default=None, metavar="PNG",
                    help="draw accuracy (95%% CI) against mean Q here: the three modes, and the adaptive policy at "
                         f"{CURVE_POINTS} budgets up to Q (needs pip install 'twentyq[report]')")
    add_run_flags(mp, modes=False)
    add_model_flags(mp)
    mp.set_defaults(func=compare_cmd)

    lp = sub.add_parser("models", help="list model strings and backends (plug-ins included)", formatter_class=fmt,
                        epilog="examples:\n  twentyq models\n  twentyq classify a.png --model openai/clip-vit-base-patch32\n")
    lp.set_defaults(func=models_cmd)

"""``twentyq classify | eval | compare | models``: the classification commands.

classify and eval go through the run pipeline (:func:`engine.run.pipeline.run`) with the
executor the flags name (this process, or Ray with ``--ray``) and, with ``--out``, a result
store; so ``--out`` and ``--resume`` mean the same with and without Ray.
"""

from __future__ import annotations

import argparse
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path

from engine.cli.options import (
    EXIT_OK, EXIT_PARTIAL, RESULT_HEADER, UsageError, add_data_flags, add_model_flags, add_out_flags, add_ray_flags,
    add_run_flags, calibration_arg, calibration_lines, check_budget, check_out_flags, data_spec, encoder_spec, executor_for, load_classifier,
    log, output_spec, system_inputs, system_of, print_report, print_result, progress_bar, remote_code_notice, run_config, settings_errors, target_line, warn,
)

EXAMPLES_CLASSIFY = """examples:
  twentyq classify a.png b.png --system pokemon15 --policy eig --tau 0.9 --budget 30
  twentyq classify a.png --labels "cat,dog,bird" --templates photo   # plain zero-shot, 5-template ensemble
  twentyq classify imgs/*.jpg --json > results.jsonl
  twentyq classify imgs/*.jpg --out run.jsonl          # resumable with --resume
  twentyq classify imgs/*.jpg --out run.parquet --ray  # on Ray actors
"""
EXAMPLES_EVAL = """examples:
  twentyq eval --data labels.csv --system pokemon15 --out run.jsonl
  twentyq eval --data labels.csv --system pokemon15 --out run.jsonl --resume
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
    from engine.run.classifier import spec_for_run
    from engine.run.pipeline import DEFAULT_CHUNK, Job, open_store, run
    from engine.run.store import result_from_record

    check_out_flags(args)
    executor = executor_for(args)
    spec, config = encoder_spec(args), run_config(args)
    system = system_of(args)
    cal = calibration_arg(args, system)
    check_budget(system, config)
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
            for rec in run(items, job, executor=executor, store=store, shard_size=DEFAULT_CHUNK, progress=update):
                n_bad += rec["error"] is not None
                if store is None or args.json:
                    if not args.json and not printed_header:
                        print(RESULT_HEADER)
                        printed_header = True
                    print_result(result_from_record(rec), args.json)
    except KeyboardInterrupt:
        close()
        if store is not None:
            warn(f"interrupted with {len(store.done())} of {store.n_shards} shard(s) done in {args.out}; rerun "
                 "with --resume to finish")
        raise
    finally:
        close()
    if store is not None:
        print(f"wrote {len(items)} result(s) in {store.n_shards} shard(s) to {store.root}")
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
    from engine.run.classifier import spec_for_run
    from engine.run.evaluation import evaluate
    from engine.run.pipeline import Job

    check_out_flags(args)
    executor = executor_for(args)
    spec, config = encoder_spec(args), run_config(args)
    system = system_of(args)
    cal = calibration_arg(args, system)
    data = data_spec(args, args.data)
    with settings_errors():
        dataset = data.load(system.classes)  # checked before the model loads, and read once
    n = len(dataset)
    log.info("data %s: %d image(s); system %s; mode %s", data.source, n, system.name, config.mode)
    check_budget(system, config)
    _announce_target(cal, config, print, system)
    cache = _prepare(executor, spec_for_run(spec, config), system, cal)
    update, close = progress_bar(n, f"eval {config.mode}", args.quiet, cache)
    try:
        report = evaluate(Job(spec, system, config, cal), data, executor=executor, output=output_spec(args),
                          progress=update, announce=warn, dataset=dataset)
    except KeyboardInterrupt:
        close()
        if args.out:
            warn(f"interrupted; the finished shards are kept in {args.out} (its _summary.json says complete: "
                 "false); rerun with --resume to finish")
        raise
    finally:
        close()
    print_report(report, args.by, args.quiet)
    if args.ray is not None:
        print(f"  text encodes: {report.text_encodes} this run, summed over the Ray workers"
              + (" and the precompute task" if args.precompute_text else ""))
    if args.out:
        print(f"wrote {args.out} (result shards and _summary.json)")
    if report.skipped:
        warn(f"{len(report.skipped)} image(s) skipped (listed under 'skipped')")
        return EXIT_PARTIAL
    return EXIT_OK


def default_data():
    """The shared jina15 set (see :func:`systems.files.shared_data_path`)."""
    from systems.files import shared_data_path

    return shared_data_path("pokemon/jina15.csv")


def compare_cmd(args) -> int:
    from engine.encoders.registry import model_label
    from engine.run.evaluation import evaluate_configs
    from systems.files import atomic_write_json

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
    if args.descriptors:
        raise UsageError("compare runs baseline, full and adaptive; evaluate --descriptors with 'twentyq eval'")
    if args.plot and Path(args.plot).suffix.lower() != ".png":
        raise UsageError(f"--plot {args.plot!r}: the curve is a PNG; name it *.png")
    if args.plot:
        from engine.cli.report_cmd import _pyplot

        _pyplot("--plot")  # matplotlib is there, before the model loads
    configs = [run_config(args, mode="baseline", target_accuracy=None),
               run_config(args, mode="full", templates=None, target_accuracy=None),
               run_config(args, mode="adaptive", templates=None)]
    check_budget(system, configs[2])
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
        print(f"calibration: {cal.path} (full and adaptive; baseline scores the class names uncalibrated); "
              f"{reports[0].calibration['excluded_dev_images']} of its dev image(s) left out of this data")
    print("\n| mode | accuracy | 95% CI | mean Q | text encodes |\n|---|---|---|---|---|")
    for rep in reports:
        what = _label(rep)
        print(f"| {what} | {rep.accuracy:.3f} | [{rep.ci95[0]:.3f}, {rep.ci95[1]:.3f}] | {rep.mean_q:.1f} | "
              f"{rep.text_encodes} |")
    if cal is not None:
        print("\n".join(calibration_lines(reports[2])[1:]))
    if args.by:
        print(f"\nby {args.by}:")
        for rep in reports:
            cells = ", ".join(f"{k} {v['accuracy']:.3f} (n={v['n']})" for k, v in rep.by.get(args.by, {}).items())
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
    return rep.mode + (f" ({rep.policy}, τ={rep.tau})" if rep.mode == "adaptive" else "")


def _plot(reports, curve, path, model, data, system) -> None:
    """compare --plot: the three modes as points, and the adaptive config's budget sweep as a line
    that ends at the adaptive run itself when it had no budget."""
    from engine.cli.report_cmd import plot_compare, row_of

    adaptive = reports[2]
    # with --target-accuracy each budget gets its own τ (chosen on the calibration's select paths replayed under that budget)
    stop = (f"τ for target {adaptive.target['target_accuracy']:g} at each budget" if adaptive.target
            else f"τ={adaptive.tau:g}")
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

    ep = sub.add_parser("eval", help="evaluate on a labelled dataset", epilog=EXAMPLES_EVAL, formatter_class=fmt)
    add_data_flags(ep, required=True)
    add_out_flags(ep)
    add_run_flags(ep)
    add_model_flags(ep)
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

"""``twentyq calibrate``: fit per-question answer channels on dev images and write a calibration file.

The images of ``--data`` are split by image (stratified by class, seeded); only the dev part is
embedded and fitted on (:func:`engine.run.calibration_file.calibrate`). The rest, the test split,
is never read; ``eval --calibration`` leaves the dev images out of whatever it scores.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from engine.cli.options import (
    DEFAULT_SYSTEM, EXIT_OK, UsageError, add_data_flags, add_model_flags, data_spec, encoder_spec, load_classifier,
    load_system_arg, progress_bar, settings_errors, warn,
)
from engine.common.printable import printable

EXAMPLES = """examples:
  twentyq calibrate --data dev.csv --system pokemon15 --model openai/clip-vit-base-patch32 --out cal.json
  twentyq calibrate --data labels.csv --system S.json --model probe:DIR --dev-fraction 0.5 --seed 0 --out cal.json
  twentyq eval --data labels.csv --system S.json --model probe:DIR --calibration cal.json --target-accuracy 0.8
"""


def calibrate_cmd(args) -> int:
    from engine.core.scoring import check_eps
    from engine.encoders.registry import model_label
    from engine.run.calibration_file import calibrate, save_calibration

    if not args.out.lower().endswith(".json"):
        raise UsageError(f"--out {args.out!r}: a calibration is one JSON file; name it *.json")
    if not 0.0 < args.dev_fraction < 1.0:
        raise UsageError(f"--dev-fraction {args.dev_fraction}: must be strictly between 0 and 1 (e.g. 0.5)")
    if args.fit_fraction is not None:
        from engine.run.calibration_file import FIT_FRACTION_DEPRECATED

        warn(FIT_FRACTION_DEPRECATED.replace("fit_fraction (--fit-fraction)", "--fit-fraction"))
    with settings_errors():
        check_eps(args.eps)
    check_out(args.out)  # before the fit: a fit of minutes must not end in "cannot write"
    spec = encoder_spec(args)
    system = load_system_arg(args.system or DEFAULT_SYSTEM)
    data = data_spec(args, args.data)
    with settings_errors():
        dataset = data.load(system.classes)  # checked before the model loads, and read once
    clf = load_classifier(spec, system)
    update, close = progress_bar(None, "calibrate (dev images)", args.quiet)
    try:
        cal = calibrate(clf, data, dev_fraction=args.dev_fraction, seed=args.seed, eps=args.eps, dataset=dataset,
                        progress=update, setting=args.setting, posterior=args.posterior)
    finally:
        close()
    cal = save_calibration(cal, args.out)
    if args.posterior != "auto" and (cal.few_shot is None or cal.few_shot.posterior is None):
        warn(f"--posterior {args.posterior} was not used: it picks the few-shot posterior, and this calibration "
             f"has none ({cal.decision.get('posterior', cal.setting)})")
    dev = cal.dev
    print(f"model: {model_label(spec.model)} (id {cal.model_id})")
    print(f"system: {system.name} (N={system.n_classes}, G={system.n_groups}, Q={system.q_total}; sha256 "
          f"{cal.system_sha256[:12]})")
    print(f"dev: {dev['n_images']} of {dev['rows']} image(s) of {dev['data']} (fraction {dev['fraction']:g} of each "
          f"class, seed {dev['seed']}); the other {dev['rows'] - dev['n_images'] - dev['bad_images']} were not read")
    if dev["bad_images"]:
        warn(f"{dev['bad_images']} dev image(s) could not be read and were left out")
        for msg in dev.get("skipped", []):
            warn(f"  {msg}")
    cf = dev["crossfit"]
    print(f"fitted on all {dev['n_images']} dev image(s); τ tables and the auto policy from {cf['folds']} cross-fitted "
          f"folds (each fold's images run on the model fitted on the others; seed {dev['seed']})" if cf["folds"] else
          f"fitted on all {dev['n_images']} dev image(s); {cf['why']}")
    ch = cal.channels
    print(f"\nλ of the model {cal.lam0:g}, ε {ch.eps:g}\n\n| group | K | λ_g | reliability | dev images |\n|---|---|---|---|---|")
    for g, name in enumerate(cal.groups):
        rel = "-" if ch.confusions[g] is None else f"{ch.reliability[g]:.2f}"
        print(f"| {printable(name)} | {cal.sizes[g]} | {ch.lams[g]:.3g} | {rel} | {ch.n_dev[g]} |")
    m = cal.metrics
    f, a = m["full"], m["adaptive"]
    dec = cal.decision
    print(f"\nsetting: {cal.setting} (asked: {dec['requested']}; {dec['classes_with_dev_images']} of {dec['classes']} "
          f"classes have dev images); posterior: {dec['posterior']}; rule channel: {dec['rule_channel']}")
    print("\ndev metrics, held out (3 folds: each fold scored by the fit on the others; a fitted part is kept only "
          "when its NLL is no higher than what it replaces and its accuracy higher by a paired standard error):\n\n"
          "| candidate | full accuracy | full NLL |\n|---|---|---|")
    for name, sc in dec["heldout"].items():
        print(f"| {name} | {sc['accuracy']:.3f} | {sc['nll']:.3f} |")
    if dec.get("gaussian", {}).get("heldout_any_asked_set"):
        print("\nfew-shot posteriors over the sets of questions the loop asks (held-out full rows and 8 random "
              "prefixes per image; the Gaussian replaces the LR only when better here and no less accurate on "
              "full rows):\n\n"
              "| posterior | accuracy | NLL |\n|---|---|---|")
        for name, sc in dec["gaussian"]["heldout_any_asked_set"].items():
            print(f"| {name} | {sc['accuracy']:.3f} | {sc['nll']:.3f} |")
    print(f"\ndev metrics, in sample (fitted on these images; optimistic):\n\n"
          f"| | full accuracy | full NLL | full ECE | adaptive {a['policy']} τ={a['tau']} accuracy | mean Q |\n"
          f"|---|---|---|---|---|---|")
    for when in ("before", "after"):
        print(f"| {when} | {f[when]['accuracy']:.3f} | {f[when]['nll']:.3f} | {f[when]['ece']:.3f} | "
              f"{a[when]['accuracy']:.3f} | {a[when]['mean_q']:.1f} |")
    print(f"\ndev order (--policy dev-order): {' > '.join(cal.groups[g] for g in cal.dev_order)}")
    if cal.auto:
        from engine.run.calibration_file import policy_line
        from engine.run.config import RunConfig

        print(policy_line(cal, RunConfig(policy="auto")))
    print(f"τ tables for --target-accuracy (cross-fitted dev paths): {', '.join(sorted(cal.paths))}, auto")
    line = settle_summary(cal, system)
    if line:
        print(line)
    if cal.few_shot is None:
        print(f"zero-shot: usable on another system with the same questions (groups sha256 {cal.groups_sha256[:12]}) "
              f"and other classes; there only λ_g, confusions and reliabilities apply (fitted on "
              f"{len(cal.source['classes'])} class(es) of {cal.system_name}); check it there with 'twentyq eval' with and "
              "without --calibration on labelled images")
    print(f"wrote {args.out} (sha256 {cal.sha256[:12]})")
    return EXIT_OK


def settle_summary(cal, system) -> str | None:
    """What ``--settle auto`` will choose with ``--policy auto`` (fixed for a file without the auto choice), τ 0.9
    and no budget, or None when it cannot (no Gaussian posterior, or no cross-fitted select part)."""
    if not (hasattr(cal.answer_model(system), "settled_probability") and cal.crossfit):
        return None
    from engine.cli.options import settle_line
    from engine.run.config import RunConfig

    config = RunConfig(policy="auto" if cal.auto else "fixed", settle="auto")
    return (settle_line(cal.settle_for(config.policy, None, system, config.tau), config)
            + " (chosen again for each run's policy, τ and budget)")


def check_out(out: str) -> None:
    """Refuse (UsageError, exit 2) an ``--out`` that cannot be written, before any work: its folder must
    exist and take a new file (probed with a temp file, so a read-only file system or a folder this user
    cannot write is caught, root included), and an existing file there must be a calibration (so the
    data, a system or any other file is never overwritten)."""
    from engine.common.files import read_json_capped

    path = Path(out)
    folder = path.parent
    if not folder.is_dir():
        raise UsageError(f"--out {out!r}: the folder {str(folder)!r} does not exist; create it or write elsewhere")
    if path.exists() or path.is_symlink():
        try:
            old = read_json_capped(path, what="--out", shape="a calibration")
        except (OSError, ValueError):
            old = None
        if not (isinstance(old, dict) and str(old.get("format", "")).startswith("twentyq-calibration")):
            raise UsageError(f"--out {out!r} exists and is not a twentyq calibration; refusing to overwrite it, "
                             "choose another file name")
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=folder)
    except OSError as e:
        raise UsageError(f"--out {out!r}: cannot write in the folder {str(folder)!r} ({e.strerror or e}); "
                         "choose a folder you can write to") from None
    os.close(fd)
    os.unlink(probe)


def add_calibrate_parser(sub) -> None:
    from engine.run.config import DEFAULT_EPS

    p = sub.add_parser("calibrate", help="fit per-question answer channels on dev images; write a calibration file",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_flags(p, required=True)
    p.add_argument("--system", default=None, help=f"system JSON file or shipped name (default: {DEFAULT_SYSTEM})")
    p.add_argument("--out", required=True, help="the calibration file to write (JSON)")
    p.add_argument("--dev-fraction", type=float, default=0.5,
                   help="share of each class's images fitted on (the dev split); the rest are not read "
                        "(default: %(default)s)")
    p.add_argument("--fit-fraction", type=float, default=None,
                   help="deprecated and ignored: the answer model is fitted on every dev image, and τ for "
                        "--target-accuracy and the auto policy come from cross-fitted folds")
    p.add_argument("--eps", type=float, default=DEFAULT_EPS,
                   help="ε of the prior answer channel a group with few dev images falls back to (default: %(default)s)")
    p.add_argument("--setting", choices=("auto", "few-shot", "zero-shot"), default="auto",
                   help="few-shot: the dev images are of the classes being classified; fit a posterior on them (see "
                        "--posterior) and per-class answer distributions. zero-shot: fit only "
                        "what transfers to other classes (λ per question, option confusions, reliabilities). auto: "
                        "few-shot when every class has 2+ dev images, else zero-shot. Each fitted part is kept only "
                        "if not worse than the uncalibrated one on held-out dev images (default: %(default)s)")
    p.add_argument("--posterior", choices=("auto", "lr", "gaussian"), default="auto",  # calibration_file.POSTERIORS
                   help="few-shot only: the posterior fitted on the dev images. lr: a group-masked logistic "
                        "regression; gaussian: one Gaussian per class over the similarities with a shared covariance "
                        "(LDA), exact for any set of questions asked; auto: the Gaussian when it beats the LR on "
                        "held-out dev images over sets of questions and is no less accurate with all of them "
                        "(default: %(default)s)")
    add_model_flags(p)
    p.set_defaults(func=calibrate_cmd)

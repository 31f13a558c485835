"""``twentyq system ...``: validate, show, analyze, build, import and refine attribute systems.

Each subcommand is one small function over the ``systems`` API; ``add_system_parser``
wires them into the main parser. Kept apart from the classification commands
(:mod:`engine.cli.run_cmds`); both share :mod:`engine.cli.options`.
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from pathlib import Path

from engine.cli.options import (
    EXIT_OK, UsageError, add_model_flags, data_spec, encoder_spec, load_classifier, load_system_arg, log, progress_bar,
    remote_code_notice, settings_errors, warn,
)
from engine.common.printable import printable


def _reads_user_files(cmd):
    """System commands read tables, drafts, class lists and systems the user names: a ValueError
    raised while doing so is about that input (exit 2), not a bug."""
    @functools.wraps(cmd)
    def wrapped(args) -> int:
        with settings_errors():
            return cmd(args)
    return wrapped


def _header(system) -> str:
    return f"{printable(system.name)}: {system.n_classes} classes, {system.n_groups} groups, Q={system.q_total}"


@_reads_user_files
def _validate_cmd(args) -> int:
    from systems import load_system

    descriptors = _descriptor_file(args.system)
    if descriptors is not None:  # a DCLIP/WaffleCLIP/CuPL file: read as --descriptors reads it
        for notice in descriptors.notices:
            warn(notice)
        print(f"ok: descriptor file {args.system}: {descriptors.summary()}")
        return EXIT_OK
    print(f"ok: {_header(load_system(args.system))}")
    return EXIT_OK


def _descriptor_file(path: str):
    """The DescriptorFile at ``path`` when it is shaped as a descriptor file (a JSON object of lists,
    not a system), else None; a descriptor file with problems raises DescriptorError listing them all."""
    from engine.common.files import read_json_capped
    from systems.descriptors import looks_like_descriptors, read_descriptors

    if not Path(path).is_file():
        return None  # a shipped system's name, or missing: load_system says which
    try:
        data = read_json_capped(path, what="file", shape="JSON")
    except ValueError:
        return None  # not JSON: load_system reports it as a system file
    if not looks_like_descriptors(data):
        return None
    return read_descriptors(data, f"descriptor file {path!r}")


@_reads_user_files
def _show_cmd(args) -> int:
    from systems import load_system

    system = load_system(args.system)
    print(_header(system))
    if system.description:  # every name printed through printable(): no control character reaches the terminal
        print("\n".join(printable(line) for line in system.description.splitlines()))
    for gi, g in enumerate(system.groups):
        print(f"\n[{printable(g.name)}] {printable(g.template)}")
        for k, opt in enumerate(g.options):
            users = [printable(c) for c, row in zip(system.classes, system.rules) if k in row[gi]]
            print(f"  {k:>2}  {printable(opt):<40} {', '.join(users)}")
    for gi, g in enumerate(system.groups):
        classes = [printable(c) for c, row in zip(system.classes, system.rules) if not row[gi]]
        if classes:
            print(f"\nnot applicable in {printable(g.name)}: {', '.join(classes)}")
    return EXIT_OK


@_reads_user_files
def _analyze_cmd(args) -> int:
    from systems import analyze, load_system

    a = analyze(load_system(args.system))
    if args.json:
        print(json.dumps(a.to_dict(), ensure_ascii=False, indent=2))
        return EXIT_OK
    print(f"{printable(a.system)}: {a.n_classes} classes, {a.n_groups} groups, Q={a.q_total}")
    print(f"identical rule signatures: {a.identical_signatures or 'none'}")  # lists print as repr: escaped
    print(f"classes no group can tell apart: {a.indistinguishable or 'none'}")
    if a.pairwise_skipped:
        warn(a.pairwise_skipped)
    else:
        print(f"pairs told apart only weakly (no group rules one out): {a.weakly_distinguishable or 'none'}")
    print(f"\n{'group':<24}{'K':>4}{'pairs separated':>18}{'info (bits)':>13}  not applicable")
    for sp in a.splits:
        print(f"{printable(sp.group):<24}{sp.n_options:>4}{sp.pairs_separated:>18}{sp.info_bits:>13.2f}  "
              f"{len(sp.not_applicable)}")
    if not a.pairwise_skipped:
        print(f"\nminimal separating set (greedy): {a.minimal_separating_set} (Q={a.minimal_set_q})")
    return EXIT_OK


def _parse_pairs(items, flag: str) -> dict[str, str]:
    """``["a=x", "b=y"]`` -> {"a": "x", "b": "y"}, with a one-line error for a malformed item."""
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"{flag} {item!r}: expected NAME=VALUE")
        out[key.strip()] = value.strip()
    return out


def _labels_of(path: str) -> list[str]:
    from engine.run.datasets import load_dataset

    return load_dataset(path).labels


@_reads_user_files
def _build_cmd(args) -> int:
    from engine.authoring.pokeapi import align_classes, pokeapi_system
    from engine.authoring.table import BuildReport, from_table
    from systems import save_system
    from systems.build import with_name_group
    from systems.io import read_json

    report = BuildReport()
    if args.pokeapi:
        gens = [int(g) for g in args.pokeapi.split(",")]
        system = pokeapi_system(args.table, generations=gens, bins=args.bins, report=report)
    else:
        if not args.table:
            raise UsageError("system build needs --table T.csv (or --pokeapi GENERATIONS for the PokeAPI table)")
        value_text = read_json(Path(args.value_text)) if args.value_text else None
        if value_text is not None and not isinstance(value_text, dict):
            raise UsageError(f"--value-text {args.value_text}: expected a JSON object of value -> text")
        where = {k: v.split(",") for k, v in _parse_pairs(args.where, "--where").items()}
        system = from_table(
            args.table, args.class_column, args.group or None, templates=_parse_pairs(args.template, "--template"),
            value_text=value_text, numeric=args.numeric, bins=args.bins, where=where or None,
            name=args.name or "table", report=report,
        )
    if args.labels:
        system, renamed = align_classes(system, _labels_of(args.labels))
        for old, new in renamed.items():
            print(f"renamed {old!r} -> {new!r} to match {args.labels}")
    if args.name_group:
        system = with_name_group(system)
    if args.name:
        system = type(system)(name=args.name, classes=system.classes, groups=system.groups, rules=system.rules,
                              baseline_template=system.baseline_template, description=system.description)
    for line in report.lines():
        print(line)
    save_system(system, args.out)
    print(f"wrote {args.out}: {_header(system)}")
    return EXIT_OK


def _classes_of(args, required: bool) -> list[str] | None:
    """The class list from --classes and/or --classes-file (None when neither is given and not required)."""
    from engine.authoring.draft import check_classes, parse_class_list, read_classes_file

    classes: list[str] = []
    if args.classes:
        classes += parse_class_list(args.classes)
    if args.classes_file:
        classes += read_classes_file(args.classes_file)
    if not classes:
        if required:
            raise UsageError("system prompt needs the classes: --classes 'A,B,C' or --classes-file FILE")
        return None
    return check_classes(classes, "--classes/--classes-file")


def _print_import(result, out: str | None) -> None:
    """Print every repair and note of an imported draft, then save it (when --out is given)."""
    from systems import save_system

    for r in result.repairs:
        print(r)
    for note in result.notes:
        print(note)
    s, n = result.system, len(result.repairs)
    repairs = f"{n} repair{'s' if n != 1 else ''}"
    if out:
        save_system(s, out)
        print(f"wrote {out}: {_header(s)} ({repairs})")
    else:
        print(f"ok: {_header(s)} ({repairs}; pass --out FILE to write the system)")


def _import_text(text: str, source: str, classes, name: str | None, out: str | None) -> int:
    """Import a draft's text; on refusal print the repairs made so far, then raise (exit 2)."""
    from engine.authoring.draft import DraftRejected, import_draft

    try:
        result = import_draft(text, source=source, classes=classes, name=name)
    except DraftRejected as e:
        for r in e.repairs:
            print(r)
        raise
    _print_import(result, out)
    return EXIT_OK


@_reads_user_files
def _import_cmd(args) -> int:
    from engine.authoring.draft import read_draft

    text, source, stem = read_draft(args.draft)  # capped; a FIFO or device is refused, never read
    return _import_text(text, source, _classes_of(args, required=False), args.name or stem, args.out)


@_reads_user_files
def _prompt_cmd(args) -> int:
    from engine.authoring.draft import build_prompt

    classes = _classes_of(args, required=True)
    groups = [g.strip() for g in args.groups.split(",") if g.strip()] if args.groups else None
    prompt = build_prompt(classes, groups)
    if not args.llm:
        if args.out or args.system_out:
            raise UsageError("--out and --system-out need --llm (without it, redirect the prompt: > prompt.txt)")
        print(prompt, end="")
        return EXIT_OK
    return _llm_draft(args, prompt, classes)


def _llm_draft(args, prompt: str, classes: list[str]) -> int:
    """Send the prompt to the LLM, keep its reply (--out), and import it (--system-out to write it)."""
    from engine.authoring.draft import DraftRejected
    from engine.authoring.llm import api_key_from_env, complete, endpoint
    from systems.io import atomic_write_text

    if not args.llm_url or not args.llm_model:
        raise UsageError("--llm needs --llm-url URL and --llm-model MODEL "
                         "(an OpenAI-compatible server, e.g. --llm-url http://localhost:8000/v1)")
    url = endpoint(args.llm_url)
    reply = complete(prompt, url, args.llm_model, api_key=api_key_from_env(args.llm_key_env),
                     timeout=args.llm_timeout)
    if args.out:
        atomic_write_text(args.out, reply.text if reply.text.endswith("\n") else reply.text + "\n")
        print(f"wrote the LLM's draft to {args.out}")
    if reply.finish_reason == "length":
        print("warning: the LLM's reply was cut off (finish_reason 'length'); it may be incomplete")
    try:
        return _import_text(reply.text, args.out or f"LLM reply from {url}", classes, "llm_draft", args.system_out)
    except DraftRejected:
        if not args.out:
            print("the LLM's reply, which was not saved (pass --out draft.json to keep it):\n" + reply.text)
        raise


def _add_class_flags(p, extra: str = "") -> None:
    p.add_argument("--classes", metavar="A,B,C", help="comma-separated class names" + (f"; {extra}" if extra else ""))
    p.add_argument("--classes-file", metavar="FILE", help="class names, one per line (# starts a comment line)")


def _refine_cmd(args) -> int:
    from engine.authoring.refine import RefineConfig
    from engine.authoring.refine_images import embed_dataset, refine_embedded
    from engine.common.files import atomic_write_json, json_safe
    from engine.run.config import DEFAULT_EPS
    from systems import save_system

    if Path(args.out).resolve() == Path(args.system).resolve():
        raise UsageError(f"--out {args.out} would overwrite the system being refined; choose another file")
    args.by = None
    system = load_system_arg(args.system)
    with settings_errors():
        ds = data_spec(args, args.data).load(system.classes)
    clf = load_classifier(encoder_spec(args), system)  # prints the --trust-remote-code notice, like classify
    update, close = progress_bar(len(ds), "images", args.quiet)
    try:
        emb, good, bad = embed_dataset(clf, ds.items, progress=update)
    finally:
        close()
    for j, msg in sorted(bad.items()):
        warn(f"skipped bad image {ds.items[j].path}: {msg}")
    truth = [system.class_index(ds.items[j].label) for j in good]
    extra = {}
    if args.llm_url:
        from engine.authoring.llm import propose_templates

        for g in system.groups:
            extra[g.name] = propose_templates(g, list(system.classes), args.llm_url, args.llm_model)
    lam = clf.encoder.logit_scale if args.logit_scale is None else args.logit_scale
    config = RefineConfig(calibrate=not args.no_calibrate, rules=not args.no_rules, templates=not args.no_templates,
                          prune=not args.no_prune, rule_prior=args.rule_prior, min_images=args.min_images,
                          min_gain=args.min_gain, lam=lam, eps=args.eps if args.eps is not None else DEFAULT_EPS,
                          extra_templates=extra)
    run = refine_embedded(system, clf.text_cache, emb, truth, config=config, dev_frac=args.dev_frac,
                          seed=args.seed, tau=args.tau, policy=args.policy)
    print(f"model: {clf.encoder.name}; data: {ds.name}; system: {system.name}")
    for line in run.lines():
        print(line)
    save_system(run.refined, args.out)
    print(f"wrote {args.out}: {_header(run.refined)}")
    if config.calibrate:
        print(f"use it with: --system {args.out} --logit-scale {run.report.lam:.4g} --eps {run.report.eps:.4g}")
    if args.report:
        atomic_write_json(args.report, json_safe({**run.to_dict(), "model": clf.encoder.name, "data": ds.name,
                                                  "bad_images": {ds.items[j].path: m for j, m in bad.items()}}))
    return 1 if bad else EXIT_OK


@_reads_user_files
def _from_descriptors_cmd(args) -> int:
    from engine.encoders.text_shapes import encode_texts_by_length
    from systems import save_system
    from systems.descriptors import descriptor_system, load_descriptor_file

    descs = load_descriptor_file(args.descriptors, args.descriptor_style)  # checked before the model loads
    for notice in descs.notices:
        warn(notice)
    if args.max_options < 2:
        raise UsageError(f"--max-options {args.max_options}: must be >= 2")
    from transformers.utils import logging as hf_logging

    spec = encoder_spec(args)
    remote_code_notice(spec)
    hf_logging.disable_progress_bar()  # as classify: no weight-loading bars
    t0 = time.perf_counter()
    with settings_errors():
        encoder = spec.load()
    seconds = {"load": time.perf_counter() - t0}
    def embed(texts):  # a bar on a terminal, or with --progress (progress_bar decides)
        t = time.perf_counter()
        update, close = progress_bar(len(texts), "descriptors embedded", args.quiet, unit="text")
        try:
            return encode_texts_by_length(encoder, texts, progress=update)
        finally:
            close()
            seconds["embed"] = time.perf_counter() - t

    system = descriptor_system(descs, embed, max_options=args.max_options, n_groups=args.groups, seed=args.seed,
                               name=args.name or Path(args.descriptors).stem, source=args.descriptors,
                               timings=seconds)
    t = time.perf_counter()
    save_system(system, args.out)
    seconds["write"] = time.perf_counter() - t
    print(f"wrote {args.out}: {_header(system)} ({descs.summary()}; clustered with {encoder.name})")
    log.info("from-descriptors seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in seconds.items()))
    return EXIT_OK


def _add_model_args(p) -> None:
    add_model_flags(p)


def add_system_parser(sub) -> argparse.ArgumentParser:
    """Add ``system`` and its subcommands to the main parser's subparsers ``sub``."""
    sp = sub.add_parser("system", help="validate, show, analyze, build, import or refine an attribute system")
    ssub = sp.add_subparsers(dest="action", required=True)

    def system_arg(p):
        p.add_argument("system", help="a system JSON file or a shipped name (e.g. pokemon15)")

    p = ssub.add_parser("validate", help="check a system file (or a descriptor file) and list every problem",
                        epilog="examples:\n  twentyq system validate my_system.json\n  twentyq system validate pokemon15\n"
                               "  twentyq system validate descriptors_food101.json\n", formatter_class=argparse.RawDescriptionHelpFormatter)
    system_arg(p)
    p.set_defaults(func=_validate_cmd)

    p = ssub.add_parser("show", help="print groups, options and which classes use each",
                        epilog="examples:\n  twentyq system show flowers17\n", formatter_class=argparse.RawDescriptionHelpFormatter)
    system_arg(p)
    p.set_defaults(func=_show_cmd)

    p = ssub.add_parser("analyze", help="which classes the rules can tell apart, and what each group is worth",
                        epilog="examples:\n  twentyq system analyze pokemon15\n  twentyq system analyze my_system.json --json > analysis.json\n", formatter_class=argparse.RawDescriptionHelpFormatter)
    system_arg(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_analyze_cmd)
    p = ssub.add_parser("build", help="build a system from an attribute table (one row per class)",
                        epilog="examples:\n  twentyq system build --table traits.csv --class-column name --out traits.json\n  twentyq system build --pokeapi 1 --name-group --out gen1.json\n", formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--table", help="CSV with a header row and one row per class")
    p.add_argument("--class-column", default="name", help="the column with class names (default: name)")
    p.add_argument("--group", action="append", metavar="[NAME=]COLUMN",
                   help="a column that becomes a group (repeat; default: every other column)")
    p.add_argument("--template", action="append", metavar="GROUP=TEMPLATE", help="prompt template with one {}")
    p.add_argument("--value-text", metavar="JSON", help="a JSON object: value (or column.value) -> option text")
    p.add_argument("--numeric", action="append", metavar="COLUMN",
                   help="bin this column by quantiles (default: every column whose values are all numbers)")
    p.add_argument("--bins", type=int, default=3, help="quantile bins per numeric column (default 3)")
    p.add_argument("--where", action="append", metavar="COLUMN=V1,V2", help="keep only rows with these values")
    p.add_argument("--pokeapi", metavar="GENERATIONS",
                   help="preset: the PokeAPI species table for these generations (e.g. 1 or 1,2,3)")
    p.add_argument("--labels", metavar="DATA", help="rename classes to this dataset's spelling (CSV or folder)")
    p.add_argument("--name-group", action="store_true", help="add the class names as one more optional question")
    p.add_argument("--name", help="the system's name")
    p.add_argument("--out", required=True, help="where to write the system JSON")
    p.set_defaults(func=_build_cmd)

    p = ssub.add_parser("prompt", help="print a prompt asking an LLM to draft a system (or send it: --llm)",
                        epilog="examples:\n  twentyq system prompt --classes cat,dog,fox --groups colour,size\n  twentyq system prompt --classes-file classes.txt --llm --llm-url http://localhost:8000/v1 --system-out s.json\n", formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_class_flags(p)
    p.add_argument("--groups", metavar="G1,G2", help="the attribute groups wanted (e.g. colour,shape,key_trait)")
    p.add_argument("--llm", action="store_true",
                   help="send the prompt to an OpenAI-compatible /v1/chat/completions endpoint and import the reply")
    p.add_argument("--llm-url", metavar="URL", help="the server (e.g. http://localhost:8000/v1)")
    p.add_argument("--llm-model", metavar="MODEL", help="the model name the server expects")
    p.add_argument("--llm-key-env", metavar="NAME", help="environment variable holding the API key (sent as Bearer)")
    p.add_argument("--llm-timeout", type=float, default=120.0, metavar="S", help="seconds to wait (default 120)")
    p.add_argument("--out", metavar="DRAFT", help="with --llm: where to keep the LLM's raw reply")
    p.add_argument("--system-out", metavar="FILE", help="with --llm: where to write the imported system")
    p.set_defaults(func=_prompt_cmd)

    p = ssub.add_parser("import", help="validate an LLM's draft system, repairing only unambiguous slips",
                        epilog="examples:\n  twentyq system import draft.txt --classes cat,dog,fox --out system.json\n  cat draft.txt | twentyq system import - --out system.json\n", formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("draft", help="the draft (JSON, possibly fenced or commented); - reads stdin")
    _add_class_flags(p, "the asked-for classes: near-miss class names are renamed, missing or extra ones refused")
    p.add_argument("--name", help="the system's name when the draft gives none (default: the file's stem)")
    p.add_argument("--out", metavar="FILE", help="where to write the repaired system (canonical JSON)")
    p.set_defaults(func=_import_cmd)
    p = ssub.add_parser(
        "from-descriptors", help="turn a DCLIP/WaffleCLIP/CuPL descriptor file into an attribute system the engine "
                                 "can ask",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Descriptors are embedded once with the frozen text encoder (--model) and clustered by "
                    "cosine (spherical k-means, seeded); each cluster is a group whose options are its "
                    "descriptors, and a class accepts the options among its own descriptors (others: not "
                    "applicable). A descriptor shared by classes is one option.",
        epilog="examples:\n  twentyq system from-descriptors dclip_flowers.json --out flowers_desc.json\n"
               "  twentyq system from-descriptors d.json --out s.json --max-options 6 --model openai/clip-vit-base-patch32\n")
    p.add_argument("descriptors", help='a JSON file {"class": ["description", ...]} (DCLIP, WaffleCLIP or CuPL)')
    p.add_argument("--descriptor-style", default=None, choices=["dclip", "waffle", "cupl"],
                   help="the options' wording: dclip/waffle 'which is/has {d}', cupl the caption as it is "
                        "(default: detected from the file)")
    p.add_argument("--out", required=True, help="where to write the system JSON")
    p.add_argument("--max-options", type=int, default=8, help="options per group at most (default: %(default)s)")
    p.add_argument("--groups", type=int, default=None,
                   help="clusters to start from (default: distinct descriptors / --max-options, rounded up)")
    p.add_argument("--seed", type=int, default=0, help="seed of the clustering (default: %(default)s)")
    p.add_argument("--name", default=None, help="the system's name (default: the file's stem)")
    _add_model_args(p)
    p.set_defaults(func=_from_descriptors_cmd)

    p = ssub.add_parser("refine", help="improve a system on labelled dev images with the model frozen",
                        epilog="examples:\n  twentyq system refine --data labels.csv --system pokemon15 --out refined.json\n  twentyq system refine --data labels.csv --system s.json --out r.json --no-prune --report refine.json\n", formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="labelled images (CSV path,label or ImageFolder); split by image")
    p.add_argument("--system", required=True, help="the system to refine (file or shipped name)")
    p.add_argument("--out", required=True, help="where to write the refined system JSON")
    p.add_argument("--report", help="also write everything measured as JSON here")
    p.add_argument("--dev-frac", type=float, default=0.5, help="share of each class's images used to refine (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the dev/test split (and --limit sample)")
    p.add_argument("--split", default=None, help="only the data rows with this split value")
    p.add_argument("--limit", type=int, default=None, help="a seeded random sample of this many images")
    p.add_argument("--allow-missing", action="store_true", help="skip rows whose label is not a class")
    for step in ("calibrate", "rules", "templates", "prune"):
        p.add_argument(f"--no-{step}", action="store_true", help=f"skip the {step} step")
    p.add_argument("--rule-prior", type=float, default=0.5, help="nats a new option must gain over the given rule (default: %(default)s)")
    p.add_argument("--min-images", type=int, default=3, help="classes with fewer dev images keep their rules (default: %(default)s)")
    p.add_argument("--min-gain", type=float, default=0.0,
                   help="drop groups whose dev information gain (nats) is not above this")
    p.add_argument("--eps", type=float, default=None, help="starting rule noise ε")
    p.add_argument("--logit-scale", type=float, default=None, help="starting λ (default: the model's own)")
    p.add_argument("--tau", type=float, default=0.9, help="τ of the adaptive rows measured on test (default: %(default)s)")
    p.add_argument("--policy", default="eig", help="policy of the adaptive rows measured on test (default: %(default)s)")
    p.add_argument("--llm-url", help="OpenAI-compatible endpoint proposing extra candidate templates (optional)")
    p.add_argument("--llm-model", help="model name for --llm-url")
    _add_model_args(p)
    p.set_defaults(func=_refine_cmd)
    return sp

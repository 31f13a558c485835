"""The command line's shared pieces: flag groups, the settings objects built from them,
progress bars and printing. Every command module imports from here; none imports another's.

Flags map onto the library's settings objects one to one: the model flags build an
:class:`EncoderSpec`, the question flags a :class:`RunConfig`, the data flags a
:class:`DataSpec`, the Ray flags a :class:`RayOptions`. Nothing else carries a setting.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import logging
import os
import re
import sys
import time
import warnings
from typing import Any

from engine.common.errors import UserInputError
from engine.common.printable import printable

EXIT_OK, EXIT_PARTIAL, EXIT_USAGE, EXIT_BUG = 0, 1, 2, 3
LOCAL = "local"
ADDRESS = re.compile(r"^(auto|(ray://)?[\w.\-\[\]:]+:\d+)$")
RAY_ONLY = ("precompute_text", "workers", "gpus_per_worker", "cpus_per_worker", "ray_batch_size")


class UsageError(Exception):
    """A command-line mistake, reported as one line with exit code 2."""


def user_errors() -> tuple[type[BaseException], ...]:
    """Errors that are the user's to fix: reported in one line, exit 2 (an OSError only as
    :func:`os_error_line` says)."""
    errors: tuple[type[BaseException], ...] = (UsageError, UserInputError, OSError)
    if "engine.encoders.base" in sys.modules:  # only loaded (with torch) when a model was asked for
        base = sys.modules["engine.encoders.base"]
        errors += (base.EncoderLoadError, base.EncoderOutOfMemory)
    return errors


#: errors of the machine or the file system, not of a path: the user's to fix whichever file they hit
MACHINE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.EMFILE, errno.ENFILE,
                  errno.ENAMETOOLONG, errno.ELOOP, errno.EIO, errno.ESTALE, errno.EBUSY}
OS_FIXES = {errno.ENOSPC: "free some disk space or write elsewhere", errno.EDQUOT: "free some disk space or write elsewhere",
            errno.EACCES: "check its permissions or use another path", errno.EPERM: "check its permissions or use another path",
            errno.EROFS: "the file system is read-only: write elsewhere", errno.ENAMETOOLONG: "use a shorter name",
            errno.EMFILE: "too many files are open: raise the limit (ulimit -n) or use fewer workers",
            errno.ENFILE: "too many files are open: raise the limit (ulimit -n) or use fewer workers",
            errno.ENOENT: "check the path (its folder must exist)"}


def named_paths(argv: list[str]) -> list[str]:
    """The paths the user typed: every command-line token that is not a flag (and the value of ``--flag=value``),
    as absolute paths; defaults and choices the user did not type are not among them."""
    out: list[str] = []
    for tok in argv:
        if tok.startswith("-"):
            tok = tok.partition("=")[2] if "=" in tok else ""
        if tok and "\0" not in tok:
            out.append(os.path.abspath(os.path.expanduser(tok)))
    return out


def _related(f: str, n: str) -> bool:
    """Whether the file ``f`` is the named path ``n``, inside it, a folder above it, or made from its name
    (``x.csv`` -> ``x.csv.d/...``, ``x.csv.tmp``); whole path parts, so ``auto`` does not own ``auto_cache``."""
    root = os.path.abspath(os.sep)
    if f == n:
        return True
    if n != root and os.path.commonpath([f, n]) == n:  # inside a folder the user named (not '/')
        return True
    if os.path.commonpath([f, n]) == f and f != root:  # a folder above the path the user named
        return True
    return f.startswith(n + ".")  # made from the name: a sibling such as x.csv.tmp, or inside x.csv.d


def os_error_line(e: OSError, named: list[str]) -> str | None:
    """The one line for an OSError that is the user's to fix, or None when it is a bug (exit 3).

    The user's: an error of the machine or file system (:data:`MACHINE_ERRNOS`: disk full, permissions,
    read-only, I/O...), one without a file name (a model hub's "not found", or a refusal of the guarded opener,
    whose message names the file and the fix), or one on a path the user typed (:func:`named_paths`), inside
    it, above it or made from its name. Any other error on a file the user did not name, such as a missing
    file the project chose itself, is a bug.
    """
    files = [f for f in (e.filename, e.filename2) if isinstance(f, (str, bytes, os.PathLike))]
    if not files:
        return str(e)
    paths = [os.path.abspath(os.fsdecode(f)) for f in files]
    if e.errno not in MACHINE_ERRNOS and not any(_related(f, n) for f in paths for n in named):
        return None
    fix = OS_FIXES.get(e.errno, "check the path")
    return f"{os.fsdecode(files[0])!r}: {e.strerror or type(e).__name__}; {fix}"


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM, with what was kept (``detail``): the CLI prints one line, exit 130."""

    def __init__(self, detail: str = ""):
        super().__init__(detail)
        self.detail = detail


def interrupted_run(out) -> Interrupted:
    """The truth about an interrupted run's shards: how many finished (and are kept), or none."""
    from engine.run.store import shard_progress

    done, total, where = shard_progress(out)
    if total is None:
        return Interrupted("nothing was written")
    if done:
        return Interrupted(f"{done} of {total} shard(s) finished and kept in {where}; rerun with --resume to finish")
    return Interrupted(f"no shard had finished ({total} to do), so no results were kept; rerun with --resume to "
                       "start it again")


@contextlib.contextmanager
def settings_errors():
    """Inside: a ValueError or KeyError comes from checking what the user gave (flags, files
    named by flags), so it is reported as a usage error. Outside, they are bugs (exit 3)."""
    try:
        yield
    except (ValueError, KeyError) as e:
        msg = str(e).strip("'\"") if isinstance(e, KeyError) else str(e)
        raise UsageError(_as_flag(msg)) from e


def _as_flag(msg: str) -> str:
    """A settings object's "budget == -3, ..." as the flag the user typed: "--budget == -3, ..." (the run and
    model settings map one to one onto flags; other messages are kept)."""
    import dataclasses

    from engine.run.config import EncoderSpec, RunConfig

    m = re.match(r"([a-z][a-z0-9_]*) == ", msg)
    fields = {f.name for cls in (RunConfig, EncoderSpec) for f in dataclasses.fields(cls)}
    if m and m.group(1) in fields:
        return "--" + m.group(1).replace("_", "-") + msg[len(m.group(1)):]
    return msg


log = logging.getLogger("twentyq")


def warn(msg: str) -> None:
    """A warning on stderr (logger ``twentyq``; -q hides it, the CLI prefixes ``twentyq:``)."""
    log.warning(msg)


class PrintableFormatter(logging.Formatter):
    """``twentyq: message`` with control characters escaped line by line (:func:`engine.common.printable.printable`):
    a name quoted in a diagnostic cannot drive the terminal."""

    def format(self, record: logging.LogRecord) -> str:
        return "\n".join(printable(line) for line in super().format(record).split("\n"))


class StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (tests swap it)."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


@contextlib.contextmanager
def cli_logging():
    """Diagnostics of the ``twentyq`` loggers on stderr as ``twentyq: message`` for the command's
    duration (warnings until :func:`set_verbosity`); results go to stdout, never through here."""
    handler = StderrHandler()
    handler.setFormatter(PrintableFormatter("twentyq: %(message)s"))
    before = log.level, log.propagate
    log.addHandler(handler)
    log.setLevel(logging.WARNING)
    log.propagate = False
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(before[0])
        log.propagate = before[1]


def set_verbosity(verbose: int, quiet: int) -> None:
    """-v: info, -vv: debug; -q: errors only (warnings hidden). Errors themselves are always printed."""
    log.setLevel(min(max(logging.WARNING - 10 * verbose + 20 * quiet, logging.DEBUG), logging.CRITICAL))


def document_defaults(parser: argparse.ArgumentParser) -> None:
    """Every option that takes a value says its default in its help: '(default: none)' where a
    flag left out means 'not used' and the help does not already say it. Recurses into subcommands."""
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            for sub in a.choices.values():
                document_defaults(sub)
        elif (a.option_strings and a.nargs != 0 and not a.required and a.help and a.help != argparse.SUPPRESS
              and "default" not in a.help and (a.default is None or a.default == [])):
            a.help += " (default: none)"


_PROGRESS = {"always": False}


def set_progress(always: bool) -> None:
    """--progress: draw progress bars even when stderr is not a terminal."""
    _PROGRESS["always"] = bool(always)


def progress_bar(total: int | None, desc: str, quiet: bool, text_cache=None, unit: str = "img"):
    """A tqdm bar on stderr counting images (or ``unit``) and, given a text cache, prompts embedded; nothing when
    ``quiet``, or when stderr is not a terminal (a log file, a pipe) unless --progress asked for it.

    Returns (update callable or None, close callable).
    """
    tty = getattr(sys.stderr, "isatty", lambda: False)()
    if quiet or not (tty or _PROGRESS["always"]):
        return None, lambda: None
    from tqdm import tqdm

    bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, leave=False, dynamic_ncols=True)

    def update(n: int) -> None:
        if text_cache is not None:
            bar.set_postfix_str(f"prompts embedded {text_cache.text_encodes}", refresh=False)
        bar.update(n)

    def set_total(n: int) -> None:  # once the run knows what it will classify (evaluate's ``planned``)
        bar.total = n
        bar.refresh()

    update.set_total = set_total
    return update, bar.close


# --------------------------------------------------------------------------- model flags -> EncoderSpec
def add_model_flags(p: argparse.ArgumentParser, multi: bool = False) -> None:
    """The model flags; ``multi``: --model takes several values (an eval sweep), default ['offline']."""
    from engine.run.config import DEVICES, DTYPES, PROMPT_MODES, SWITCHES

    g = p.add_argument_group("model")
    what = ("model string: 'offline' (the packaged stand-in, not CLIP), 'probe' (the attribute probe trained here, "
            "shipped with the package, not CLIP), 'probe:DIR', a hub id or a local folder; `twentyq models` lists them")
    if multi:
        g.add_argument("--model", nargs="+", action="extend", default=None, metavar="MODEL",
                       help=what + "; several (--model a b, or --model a --model b) sweep them, each loaded once "
                                   "(default: offline)")
    else:
        g.add_argument("--model", default="offline", help=what + " (default: %(default)s)")
    g.add_argument("--revision", default=None, help="hub branch, tag or commit of --model (default: the main branch)")
    g.add_argument("--device", default="auto", choices=list(DEVICES),
                   help="where the model runs: auto picks CUDA, then MPS, then the CPU (default: %(default)s)")
    g.add_argument("--dtype", default=None, choices=list(DTYPES), help="default: fp16 on a GPU, fp32 on the CPU")
    g.add_argument("--batch-size", type=int, default=None,
                   help="images per forward pass of the model (default: the model's own)")
    g.add_argument("--cache-dir", default=None, help="folder for the on-disk text-embedding cache (default: none)")
    g.add_argument("--decode-workers", type=int, default=None, metavar="N",
                   help="processes that decode and resize images while the model works (0: in this process; "
                        "default: one per CPU core, at most 8; 0 on one core)")
    g.add_argument("--preprocess", default="fast", choices=["fast", "processor"],
                   help="fast: the model's resize/crop/normalise as array operations (decode workers, GPU decode); "
                        "processor: the model's own image processor, the reference (default: %(default)s)")
    g.add_argument("--trust-remote-code", action="store_true",
                   help="allow the model repository's own code to run (jina-clip needs it; never implied)")
    g.add_argument("--text-buckets", default="auto", choices=list(SWITCHES),
                   help="pad prompts to a few fixed token lengths and batch sizes so text batch shapes repeat "
                        "(auto: on CUDA only; default: %(default)s)")
    g.add_argument("--warm-up", default="auto", choices=list(SWITCHES),
                   help="run the text model once on every padded shape when it loads, so the first question pays "
                        "no first-call cost (auto: on CUDA only; default: %(default)s)")
    g.add_argument("--eager-prompts", default="auto", choices=list(PROMPT_MODES),
                   help="embed every question's prompts when the model loads (eager) or each question's when first "
                        "asked (lazy); auto: eager on CUDA for a system that fits in two text batches "
                        "(default: %(default)s)")
    g.add_argument("--compile-text", action="store_true",
                   help="compile the text model with torch.compile (CUDA graphs on CUDA; slow to start)")
    g.add_argument("--quiet", action="store_true", help="no progress bars")


def encoder_spec(args) -> Any:
    from engine.run.config import EncoderSpec

    if args.cache_dir and os.path.exists(args.cache_dir) and not os.path.isdir(args.cache_dir):
        raise UsageError(f"--cache-dir {args.cache_dir!r} is a file, not a folder; pass a folder (it is made if "
                         "missing)")
    with settings_errors():
        return EncoderSpec(model=args.model, revision=args.revision, device=args.device, dtype=args.dtype,
                           batch_size=args.batch_size, cache_dir=args.cache_dir,
                           trust_remote_code=args.trust_remote_code, text_buckets=args.text_buckets,
                           warm_up=args.warm_up, eager_prompts=args.eager_prompts,
                           compile_text=args.compile_text, decode_workers=getattr(args, "decode_workers", None),
                           preprocess=getattr(args, "preprocess", "fast"))


def remote_code_notice(spec) -> None:
    """The --trust-remote-code security notice, printed even with --quiet."""
    if spec.trust_remote_code:
        from engine.encoders.hf import remote_code_origin

        warn(f"--trust-remote-code: model {spec.model!r} may run code from {remote_code_origin(spec.model)}")


def calibration_arg(args, system) -> Any:
    """The --calibration file (None without it), read and checked against the system before any model loads;
    --target-accuracy without it, or with --logit-scale or another --eps, is a usage error."""
    from engine.run.calibration_file import load_calibration
    from engine.run.config import DEFAULT_EPS

    path = getattr(args, "calibration", None)
    if getattr(args, "target_accuracy", None) is not None and not path:
        raise UsageError("--target-accuracy needs --calibration CAL.json (made by 'twentyq calibrate' on labelled dev "
                         "images); or stop at a fixed --tau")
    if not path:
        return None
    if getattr(args, "logit_scale", None) is not None:
        raise UsageError("--logit-scale and --calibration: the calibration sets λ per question; drop one of them")
    cal = load_calibration(path).for_system(system)  # checked; moved when the system has other classes
    eps = getattr(args, "eps", DEFAULT_EPS)
    if eps != DEFAULT_EPS and eps != cal.channels.eps:
        raise UsageError(f"--eps {eps:g} and --calibration: the calibration's fitted answer channels replace ε (its "
                         f"own ε is {cal.channels.eps:g}); drop --eps")
    return cal


def load_classifier(spec, system, calibration=None) -> Any:
    """A Classifier for the flags (the encoder loaded once, the calibration checked against it), after the
    remote-code notice."""
    from transformers.utils import logging as hf_logging

    from engine.encoders.registry import model_label
    from engine.run.classifier import Classifier

    hf_logging.disable_progress_bar()  # ours is enough
    remote_code_notice(spec)
    t0 = time.perf_counter()
    with settings_errors():  # a bad device or option is the user's to fix
        clf = Classifier(spec, system, calibration=calibration)
    log.info("loaded model %s on %s (%s) in %.1f s; system %s: %d classes, %d groups, Q=%d",
             model_label(spec.model), getattr(clf.encoder, "device", "?"), getattr(clf.encoder, "dtype", "?"),
             time.perf_counter() - t0, system.name, system.n_classes, system.n_groups, system.q_total)
    return clf


# --------------------------------------------------------------------------- question flags -> RunConfig
def add_run_flags(p: argparse.ArgumentParser, modes: bool = True) -> None:
    from engine.core.adaptive import SCORERS
    from engine.run.config import DEFAULT_EPS, MODES
    from engine.run.engines import ENGINES
    from policies import list_policies
    from systems.templates import list_template_sets

    g = p.add_argument_group("questions")
    which = g.add_mutually_exclusive_group()
    which.add_argument("--system", default=None,
                       help="system JSON file or shipped name (default: pokemon15; `twentyq system` lists tools)")
    which.add_argument("--labels", default=None, metavar="A,B,C",
                       help="plain zero-shot over these comma-separated class names instead of a system (prompt "
                            "'a photo of a {}.'; mode baseline unless --mode says otherwise) (default: none)")
    which.add_argument("--labels-file", default=None, metavar="FILE",
                       help="as --labels, one class name per line (default: none)")
    g.add_argument("--descriptors", default=None, metavar="FILE",
                   help="classify by description: a DCLIP, WaffleCLIP or CuPL JSON {class: [descriptions]}, read as "
                        "their code reads it (empty lists and blank entries dropped with a notice); mode descriptors; "
                        "the classes come from the file unless --system/--labels (default: none)")
    g.add_argument("--descriptor-style", default=None, choices=["dclip", "waffle", "cupl"],
                   help="how --descriptors become prompts and a score: dclip '{class}, which is/has {d}' and "
                        "waffle 'A photo of a {class}, which is/has {d}.' (mean similarity), cupl: each caption as "
                        "it is (mean embedding) (default: detected from the file: cupl when its entries are "
                        "sentences ending in '.', else dclip)")
    g.add_argument("--templates", default=None, action="append", metavar="TEMPLATE|NAME|FILE",
                   help="baseline mode: score each class name with an ensemble of prompt templates (mean of the "
                        "normalised prompt embeddings); repeat it to add more: a value with '{}' is a template "
                        f"(\"a photo of a {{}}.\"), else a shipped set ({', '.join(list_template_sets())}) or a "
                        "JSON list of templates; costs N·T prompts (default: none, one template)")
    if modes:
        g.add_argument("--mode", default=None, choices=list(MODES),
                       help="adaptive: questions chosen by --policy, stopping early; full: every group (the "
                            "write-up's method); baseline: the class names; descriptors: --descriptors (default: "
                            "adaptive; baseline with --labels/--labels-file; descriptors with --descriptors)")
    g.add_argument("--policy", default="eig", choices=list_policies(),
                   help="how the next question is chosen in adaptive mode (default: %(default)s)")
    g.add_argument("--tau", type=float, default=0.9,
                   help="stop once the top class has this probability (default: %(default)s)")
    g.add_argument("--delta", type=float, default=0.0,
                   help="stop once no unasked question the budget can still pay for gains this many nats "
                        "(default: %(default)s, never)")
    g.add_argument("--budget", type=int, default=None, help="at most this many prompts per image (default: no limit)")
    g.add_argument("--settle", type=settle_arg, default=None, metavar="P|auto",
                   help="adaptive, with a Gaussian few-shot calibration: also stop once the label would stay put, with "
                        "probability >= P under the calibration's model, if every question left were asked; auto: the "
                        "P chosen on the calibration's cross-fitted dev images (default: never)")
    g.add_argument("--scorer", default="bayes", choices=list(SCORERS),
                   help="bayes: the posterior; sum: the write-up's sum of option probabilities (default: %(default)s)")
    g.add_argument("--eps", type=float, default=DEFAULT_EPS,
                   help="rule noise ε of the Bayes scorer (default: %(default)s)")
    g.add_argument("--logit-scale", type=float, default=None, help="λ of the per-question softmax (default: the model's own)")
    g.add_argument("--top-k", type=int, default=5, help="classes listed per result (default: %(default)s)")
    g.add_argument("--shortlist", type=int, default=None, metavar="M",
                   help="adaptive: once few classes remain, ask which of the top M class names fits (M prompts); "
                        "needs a system with a class_name group (system build --name-group)")
    g.add_argument("--calibration", default=None, metavar="CAL.json|NAME",
                   help="a calibration made by 'twentyq calibrate' for this model and system: per-question λ and "
                        "answer channels for the Bayes update, EIG and stopping; eval/compare leave out its dev "
                        "images. A NAME that is not a file is one shipped with twentyq: pokemon15_gen1.sprites "
                        "(the probe's, for --model probe --system pokemon15_gen1) (default: none, the model's λ "
                        "and --eps)")
    g.add_argument("--target-accuracy", type=float, default=None, metavar="A",
                   help="adaptive, with --calibration: stop at the τ chosen on the calibration's dev images so that "
                        "accuracy among images stopping on confidence is >= A with 90%% confidence (replaces --tau)")
    g.add_argument("--engine", default="auto", choices=list(ENGINES),
                   help="the adaptive loop's backend: numpy (the reference, on the host), torch (its state on the "
                        "model's device, similarities never leave it) or auto (torch on CUDA, numpy otherwise); the "
                        "results agree within float rounding (default: %(default)s)")


def settle_arg(text: str) -> float | str:
    """--settle's value: "auto" or a number (RunConfig checks its range)."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return float(text)
    except ValueError:
        shown = repr(text) if len(text) <= 24 else repr(text[:20]) + "..."
        raise argparse.ArgumentTypeError(f"{shown} is neither a number in (0, 1] nor 'auto'") from None


def default_mode(args) -> str:
    """--mode, else baseline for plain labels and adaptive for a system."""
    mode = getattr(args, "mode", None)
    if mode:
        return mode
    if getattr(args, "descriptors", None):
        return "descriptors"
    return "baseline" if (args.labels or args.labels_file) else "adaptive"


def descriptors_arg(args) -> Any:
    """The --descriptors file read (a :class:`systems.descriptors.DescriptorFile`; None without the flag),
    once; its notices (what was dropped or changed) are printed as warnings then."""
    from systems.descriptors import load_descriptor_file

    if not getattr(args, "descriptors", None):
        return None
    if getattr(args, "_descriptors", None) is None:
        args._descriptors = load_descriptor_file(args.descriptors, getattr(args, "descriptor_style", None))
        for notice in args._descriptors.notices:
            warn(notice)
    return args._descriptors


def templates_arg(args) -> Any:
    """The --templates ensemble (None without the flag): each value a template with '{}', a shipped set
    or a JSON file, joined in order; a TemplateError (exit 2) names what is wrong."""
    from systems.templates import resolve_templates

    return resolve_templates(args.templates) if args.templates else None


def run_config(args, **override) -> Any:
    from engine.run.config import RunConfig

    descs = descriptors_arg(args)
    fields = dict(mode=default_mode(args), templates=templates_arg(args),
                  descriptors=tuple(descs.descriptors.items()) if descs else None,
                  descriptor_style=descs.style if descs else None, policy=args.policy, tau=args.tau, delta=args.delta,
                  budget=args.budget, scorer=args.scorer, eps=args.eps, logit_scale=args.logit_scale,
                  top_k=args.top_k, shortlist=args.shortlist, seed=getattr(args, "seed", 0),
                  engine=getattr(args, "engine", "auto"))
    if getattr(args, "target_accuracy", None) is not None:
        fields["target_accuracy"] = args.target_accuracy
    if getattr(args, "settle", None) is not None:
        fields["settle"] = args.settle
    if "mode" not in override and fields["mode"] != "adaptive" and args.budget is not None:
        why = "" if getattr(args, "mode", None) else \
            " (the default with --descriptors)" if getattr(args, "descriptors", None) else " (the default with --labels)"
        raise UsageError(f"--budget {args.budget}: the {fields['mode']} mode{why} scores every prompt of every image; "
                         "a budget applies to --mode adaptive: add it, or drop --budget")
    if "mode" not in override and fields["mode"] != "adaptive" and getattr(args, "settle", None) is not None:
        raise UsageError(f"--settle {args.settle}: the {fields['mode']} mode scores every prompt of every image and "
                         "never stops early; --settle applies to --mode adaptive: add it, or drop --settle")
    with settings_errors(), warnings.catch_warnings():
        from systems.descriptors import DescriptorNotice

        warnings.simplefilter("ignore", DescriptorNotice)  # descriptors_arg printed them when it read the file
        return RunConfig(**{**fields, **override})


def load_system_arg(system: str) -> Any:
    from systems import load_system

    with settings_errors():
        return load_system(system)


DEFAULT_SYSTEM = "pokemon15"


def system_of(args) -> Any:
    """The system the flags name: --labels / --labels-file (a class-name system), else --system."""
    from engine.common.files import read_text_capped
    from systems.build import labels_system

    if args.labels is not None:
        return labels_system(args.labels.split(","), source="--labels")
    if args.labels_file is not None:
        text = read_text_capped(args.labels_file, what="labels file")
        return labels_system(text.splitlines(), source=f"--labels-file {args.labels_file}")
    if args.system is None and descriptors_arg(args):
        return labels_system(list(descriptors_arg(args).descriptors), source=f"--descriptors {args.descriptors}")
    return load_system_arg(args.system or DEFAULT_SYSTEM)


def system_inputs(args) -> list[str]:
    """The files the system flags read (a result folder may be none of them)."""
    return [f for f in (args.labels_file, args.system, getattr(args, "descriptors", None)) if f]


def check_run_settings(system, config) -> None:
    """Before the model loads: the descriptors cover the system's classes and the shortlist has a class-name
    group to ask (else exit 2), and a warning when the budget is below the cheapest question (the prior's
    first class would answer)."""
    if config.mode == "adaptive" and config.shortlist is not None:
        from engine.core.adaptive import NAME_GROUP

        if NAME_GROUP not in {g.name for g in system.groups}:
            raise UsageError(f"--shortlist: system {system.name!r} has no {NAME_GROUP!r} group to ask class names "
                             "with; drop --shortlist, or add the class-name group (twentyq system build --name-group)")
    if config.mode == "descriptors":
        from engine.run.prompts import descriptor_pool
        from systems.build import baseline_system

        descriptor_pool(baseline_system(system), config.descriptors, config.descriptor_style)
    if config.mode == "adaptive" and config.budget is not None:
        cheapest = min(g.n_options for g in system.groups)
        if config.budget < cheapest:
            warn(f"--budget {config.budget} is below the cheapest question ({cheapest} prompts): no question can be "
                 "asked and every image gets the prior's top class; raise --budget")


# --------------------------------------------------------------------------- data flags -> DataSpec
def add_data_flags(p: argparse.ArgumentParser, required: bool, multi: bool = False) -> None:
    """The data flags; ``multi``: --data takes several values (an eval sweep) or a --sweep file."""
    g = p.add_argument_group("data")
    what = ("labelled images: a CSV with path,label[,split,...] columns (paths relative to it), an ImageFolder "
            "directory DIR/label/*.jpg, or a Hugging Face image dataset (a save_to_disk folder, or "
            "hf:NAME[:CONFIG][:SPLIT] from the local cache; pip install 'twentyq[datasets]')")
    if multi:
        g.add_argument("--data", nargs="+", action="extend", default=None, metavar="DATA",
                       help=what + "; several (--data a.csv b.csv) sweep them (needed unless --sweep)")
        g.add_argument("--sweep", default=None, metavar="FILE",
                       help='a sweep as JSON: {"data": [...], "model": [...]} runs every model on every data, '
                            '[{"data": D, "model": M}, ...] these pairs; data paths relative to the file '
                            "(default: none)")
    else:
        g.add_argument("--data", required=required, help=what)
    g.add_argument("--image-column", default=None,
                   help="Hugging Face dataset: the image column (default: the first Image feature)")
    g.add_argument("--label-column", default=None,
                   help="Hugging Face dataset: the label column (default: 'label', else the first ClassLabel)")
    g.add_argument("--split", default=None,
                   help="keep only the rows whose split column equals this; for a Hugging Face dataset, the split "
                        "to read (default: all rows; the only split)")
    g.add_argument("--limit", type=int, default=None, help="a seeded random sample of this many images (default: all)")
    g.add_argument("--seed", type=int, default=0,
                   help="seed of the --limit sample and the random policy (default: %(default)s)")
    g.add_argument("--allow-missing", action="store_true", help="skip rows whose label is not a class of the system")
    g.add_argument("--by", default=None, help="break accuracy down by this data column (e.g. source)")


def data_spec(args, source: str) -> Any:
    from engine.run.datasets import DataSpec

    with settings_errors():
        return DataSpec(source=str(source), split=args.split, limit=args.limit, seed=args.seed,
                        allow_missing=args.allow_missing, by=args.by,
                        image_column=getattr(args, "image_column", None),
                        label_column=getattr(args, "label_column", None))


def add_out_flags(p: argparse.ArgumentParser, sweep: bool = False) -> None:
    from engine.run.pipeline import DEFAULT_SHARD_SIZE
    from engine.run.store import FORMATS, RUN_DIR_SUFFIX

    g = p.add_argument_group("output")
    g.add_argument("--out", default=None, metavar="RUN" + "|RUN".join(FORMATS),
                   help="the result table, one row per image, written when the run completes (pandas reads it in one "
                        "call); the extension picks the format. Its shards (for --resume) and eval's _summary.json "
                        f"go in the folder RUN{RUN_DIR_SUFFIX} beside it. The same with and without --ray"
                        + ("; a sweep's --out is a folder holding one run per data × model (see --run-name)"
                           if sweep else ""))
    g.add_argument("--resume", action="store_true",
                   help="finish the run in --out: skip its finished shards (refused if its settings differ)")
    g.add_argument("--shard-size", type=int, default=None,
                   help=f"images per result shard, the unit --resume skips (default {DEFAULT_SHARD_SIZE})")
    if sweep:
        g.add_argument("--run-name", default=None, metavar="TEMPLATE",
                       help="a sweep's run names under the --out folder, with the fields {data} (the data's "
                            "name), {model}, {mode} and {system}; the extension picks the format (default: "
                            "'{data}_{model}.jsonl')")


def check_out_flags(args, sweep: bool = False) -> None:
    """The output flags, before anything loads. A sweep's --out is a folder of runs (checked by the sweep)."""
    if getattr(args, "run_name", None) and not sweep:
        raise UsageError("--run-name names the runs of a sweep (several --data / --model, or --sweep); for one run "
                         "name it with --out")
    if sweep and getattr(args, "run_name", None) and not args.out:
        raise UsageError("--run-name applies to --out; add --out FOLDER")
    if hasattr(args, "sweep") and not args.sweep and not args.data:
        raise UsageError("eval needs --data CSV_OR_DIR (or several, or --sweep FILE)")
    if args.resume and not args.out:
        from engine.run.store import FORMATS

        raise UsageError(f"--resume needs --out {' or '.join('RUN' + f for f in FORMATS)} (the --out of the run to finish)")
    if args.shard_size is not None and not args.out:
        raise UsageError("--shard-size applies to --out; add --out RUN.jsonl")
    if args.shard_size is not None and args.shard_size < 1:
        raise UsageError(f"--shard-size {args.shard_size}: must be >= 1")
    if args.out and not sweep:
        from engine.run.store import check_out

        check_out(args.out)  # a StoreError (exit 2) before any model is loaded


def output_spec(args) -> Any:
    """The OutputSpec of --out/--resume/--shard-size (None without --out)."""
    from engine.run.pipeline import OutputSpec

    return OutputSpec(args.out, resume=args.resume, shard_size=args.shard_size) if args.out else None


# --------------------------------------------------------------------------- Ray flags -> RayOptions
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
                   help="images per actor call (default 64, as a single process's chunk)")


def executor_for(args) -> Any:
    """The executor the flags ask for: this process, or Ray actors (--ray)."""
    from engine.run.pipeline import LocalExecutor

    if args.ray is None:
        given = [f"--{n.replace('_', '-')}" for n in RAY_ONLY if getattr(args, n, None) not in (None, False)]
        if given:
            raise UsageError(f"{', '.join(given)}: only with --ray (add --ray to run on Ray actors)")
        return LocalExecutor()
    if args.ray != LOCAL and not ADDRESS.match(args.ray):
        raise UsageError(f"--ray {args.ray!r} is not a Ray address (HOST:PORT, ray://HOST:PORT or auto); to start "
                         "Ray on this machine put --ray after the image paths, or write --ray=local")
    from engine.run.ray_executor import RayExecutor, RayOptions, require_ray

    with settings_errors():
        options = RayOptions(address=None if args.ray == LOCAL else args.ray, workers=args.workers,
                             gpus_per_worker=args.gpus_per_worker, cpus_per_worker=args.cpus_per_worker,
                             batch_size=args.ray_batch_size or RayOptions.batch_size,
                             precompute_text=args.precompute_text)
    require_ray()  # RayMissing (exit 2, naming the extra) before any work
    return RayExecutor(options, announce=None if args.quiet else warn)


# --------------------------------------------------------------------------- printing
def short(text: str, n: int) -> str:
    """``text`` on one line, at most n characters (the start elided), control characters escaped
    (:func:`engine.common.printable.printable`)."""
    text = printable(text)
    return text if len(text) <= n else "…" + text[-(n - 1):]


def print_result(r, as_json: bool) -> None:
    """One classify result on stdout: a JSON line, or a table row."""
    if as_json:
        print(json.dumps(r.to_dict(), ensure_ascii=False), flush=True)
    elif r.error:
        print(f"{short(r.image, 40):<40} ERROR {short(r.error, 200)}", flush=True)
    else:
        from engine.common.printable import printable

        qs = ", ".join(f"{printable(s.group)}={printable(s.answer)}" for s in r.steps)
        print(f"{short(r.image, 40):<40} {printable(r.label):<24} {r.confidence:>6.3f} {r.q_spent:>4}  "
              f"{r.stop:<10} {qs}", flush=True)


RESULT_HEADER = f"{'image':<40} {'label':<24} {'conf':>6} {'Q':>4}  {'stop':<10} questions"


def report_line(rep) -> str:
    lo, hi = rep.ci95
    what = rep.mode
    if rep.mode == "adaptive":  # τ is recorded for adaptive runs only
        what += f" {rep.policy} τ={rep.tau:g}" + (f" (target {rep.target['target_accuracy']:g})" if rep.target else "")
        what += f" settle={rep.settle:g}" if getattr(rep, "settle", None) is not None else ""
    if not rep.n:  # an empty dataset (a CSV of its header only): no figure to show, not "nan"
        return f"{what}: no images were scored (the data has no rows), nothing to report  model {rep.model}"
    acc5 = f"  acc@5 {rep.acc5:.3f}" if rep.acc5 is not None else ""
    return (f"{what}: accuracy {rep.accuracy:.3f} [{lo:.3f}, {hi:.3f}] n={rep.n}{acc5}  mean per-class recall "
            f"{rep.mean_per_class_recall:.3f}  mean Q {rep.mean_q:.1f}  median Q {rep.median_q:.0f}  "
            f"text encodes {rep.text_encodes}  model {rep.model}")


def print_report(rep, by: str | None, quiet: bool) -> None:
    """An eval summary on stdout: the headline, the model, then (unless quiet) the top confusions and
    the --by breakdown."""
    from engine.encoders.registry import model_label

    print(report_line(rep))
    print(f"  model: {model_label(rep.model)}")
    for line in calibration_lines(rep):
        print(line)
    if not quiet:
        for c in rep.confusion[:5]:
            print(f"  confused: {printable(c['label'])} -> {printable(c['predicted'])} ({c['count']})")
        for k, v in rep.by.get(by, {}).items() if by else []:
            print(f"  {printable(by)}={printable(k)}: accuracy {v['accuracy']:.3f} (n={v['n']})")


def target_line(choice, config) -> str:
    """The τ chosen for --target-accuracy, with its dev evidence."""
    if choice.reached:
        return (f"target accuracy {choice.target:g} ({config.policy}, budget {config.budget or 'none'}): τ={choice.tau:g} "
                f"chosen on the calibration's dev images: {choice.n_right}/{choice.n_stopped} right among those "
                f"stopping on confidence, {(1 - choice.alpha) * 100:g}% lower bound {choice.lower_bound:.3f} (Clopper–Pearson)")
    return (f"target accuracy {choice.target:g} ({config.policy}): not reachable on the calibration's dev images (no "
            "τ passed its test); τ=1, so no image stops on confidence and each runs to its budget or its last question")


def settle_line(choice, config) -> str:
    """The threshold chosen for --settle auto, with its dev evidence."""
    where = f"({config.policy}, τ={config.tau:g}, budget {config.budget or 'none'})"
    if choice.threshold < 1.0:
        return (f"settle auto {where}: {choice.threshold:g} chosen on the calibration's {choice.n_images} cross-fitted "
                f"dev images: {100 * choice.agreement:.1f}% of them end on the label they end on without it, at mean Q "
                f"{choice.mean_q:.1f} instead of {choice.mean_q_without:.1f}")
    if choice.saves_nothing:
        return (f"settle auto {where}: the smallest threshold from which on every one keeps the labels saves no "
                f"prompt on the calibration's {choice.n_images} cross-fitted dev images (mean Q "
                f"{choice.mean_q_without:.1f} without it); settle=1, so no image stops settled")
    return (f"settle auto {where}: no threshold kept {100 * (1 - choice.margin):g}% of the calibration's dev images on "
            "the label they end on without it; settle=1, so no image stops settled")


def calibration_lines(rep) -> list[str]:
    """The calibration, the dev images left out and, for adaptive runs with a calibration, accuracy among the
    images that stopped on confidence apart from the others."""
    cal = rep.calibration
    if not cal:
        return []
    out = [f"  calibration: {cal['path']} (sha256 {str(cal['sha256'])[:12]}; model {cal['model']}; system "
           f"{cal['system']} {cal['system_sha256'][:12]}"
           f"{'; moved here zero-shot from ' + str(cal['source'].get('classes')) if cal.get('moved_to') else ''})"
           f"{'' if cal['applied'] else ' not applied: ' + cal['note']}; "
           f"{cal['excluded_dev_images']} of its dev image(s) left out of this data"]
    if rep.confident is not None:
        c, o = rep.confident, rep.not_confident
        if c["n"]:
            out.append(f"  stopped on confidence: {c['n']} image(s), accuracy {c['accuracy']:.3f} "
                       f"[{c['ci95'][0]:.3f}, {c['ci95'][1]:.3f}] (95% Clopper–Pearson)")
        else:
            out.append("  stopped on confidence: none")
        stops = ", ".join(f"{k} {v}" for k, v in o["stops"].items()) or "none"
        others = (f"the others: {o['n']} image(s) ({stops}), accuracy {o['accuracy']:.3f}" if o["n"] else
                  "no other image")  # every one stopped on confidence: no accuracy of none to print (was "nan")
        out.append(f"  {others}; overall accuracy {rep.accuracy:.3f}, mean Q {rep.mean_q:.1f}")
    return out

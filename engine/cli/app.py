"""The ``twentyq`` command line: the parser, exit codes and error reporting.

Exit codes: 0 success; 1 some inputs were bad but the rest were processed; 2 usage or
configuration errors (one line naming the cause and the fix; an installed package that fails
to import is one: the environment's to fix); 3 an unexpected error, a bug (its type and where
it came from; ``--debug`` shows the traceback); 130 interrupted (Ctrl-C or SIGTERM, which is
handled the same way; one line saying what was kept).

``-v``, ``-q``, ``--debug`` and ``--progress`` are accepted before or after the subcommand.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import traceback

from engine.cli.calibrate_cmd import add_calibrate_parser
from engine.cli.options import (
    EXIT_BUG, EXIT_USAGE, Interrupted, cli_logging, document_defaults, named_paths, os_error_line, set_progress,
    set_verbosity, user_errors,
)
from engine.cli.report_cmd import add_report_parser
from engine.cli.run_cmds import add_run_parsers
from engine.cli.serve_cmd import add_serve_args
from engine.cli.system_cmds import add_system_parser

#: exit status when stdout's reader has gone (`| head`): 128 + SIGPIPE, as a shell reports a tool killed by it
EXIT_BROKEN_PIPE = 141


SERVE_EXAMPLES = """examples:
  twentyq serve --system pokemon15 --port 8000
  twentyq serve --model openai/clip-vit-base-patch32 --system pokemon15,flowers17 --max-batch 32
"""


def add_global_flags(p: argparse.ArgumentParser, *, top: bool) -> None:
    """-v/-q/--debug/--progress: on the top parser with their defaults, and on every subcommand with
    no default (argparse.SUPPRESS), so given after the subcommand they count and left out they do not
    reset what was given before it."""
    keep = {} if top else {"default": argparse.SUPPRESS}
    p.add_argument("--debug", action="store_true", help="show tracebacks", **keep)
    p.add_argument("-v", "--verbose", action="count", **({"default": 0} if top else keep),
                   help="more diagnostics on stderr: -v what was loaded and done, -vv debug (default: warnings only)")
    p.add_argument("-q", dest="log_quiet", action="count", **({"default": 0} if top else keep),
                   help="no warnings and no progress bars on stderr; errors are still printed, results still go "
                        "to stdout (default: warnings shown)")
    p.add_argument("--progress", action="store_true", **keep,
                   help="show progress bars even when stderr is not a terminal (default: only on a terminal)")


def _subparsers(parser: argparse.ArgumentParser):
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            for sub in a.choices.values():
                yield sub
                yield from _subparsers(sub)


def build_parser() -> argparse.ArgumentParser:
    from engine.run.provenance import package_version

    ap = argparse.ArgumentParser(prog="twentyq", description="Adaptive twenty-questions zero-shot classification.")
    ap.add_argument("--version", action="version", version=f"twentyq {package_version()}")
    add_global_flags(ap, top=True)
    sub = ap.add_subparsers(dest="command", required=True)
    add_run_parsers(sub)
    add_calibrate_parser(sub)
    add_report_parser(sub)
    add_system_parser(sub)
    add_serve_args(sub.add_parser("serve", help="serve classification over HTTP (FastAPI on uvicorn; dynamic "
                                                "batching; pip install 'twentyq[serve]')",
                                  epilog=SERVE_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter))
    for p in _subparsers(ap):
        add_global_flags(p, top=False)
    document_defaults(ap)
    return ap


OUR_PACKAGES = ("engine", "systems", "policies", "bench", "tests")


def broken_package(e: BaseException) -> str | None:
    """The installed third-party package whose import failed, when that is what ``e`` is; else None.

    Any error raised while the module-level code of a file under site-packages ran (its import
    failed: a broken torchvision raises RuntimeError or AttributeError there; the innermost such
    module is named), or else an ImportError naming a module that is not ours (missing, or too old
    to have the name). Errors of our own modules are bugs and stay bugs.
    """
    for f in reversed(traceback.extract_tb(e.__traceback__)):  # the innermost module being imported
        if f.name != "<module>":
            continue
        parts = f.filename.replace("\\", "/").split("/")
        for marker in ("site-packages", "dist-packages"):
            if marker in parts and parts.index(marker) + 1 < len(parts):
                name = parts[parts.index(marker) + 1]
                name = name[:-3] if name.endswith(".py") else name
                if name not in OUR_PACKAGES:
                    return name
    if isinstance(e, ImportError) and e.name and e.name.split(".")[0] not in OUR_PACKAGES:
        return e.name.split(".")[0]
    return None


def _where(e: BaseException) -> str:
    """file:line of the innermost frame of the project that raised ``e`` (or the innermost frame)."""
    frames = traceback.extract_tb(e.__traceback__)
    ours = [f for f in frames if "/site-packages/" not in f.filename and "/lib/python" not in f.filename]
    f = (ours or frames or [None])[-1]
    return f"{f.filename}:{f.lineno} in {f.name}" if f else "?"


def _raise_interrupt(signum, frame):
    """SIGTERM handler: behave exactly like Ctrl-C (partial results are written, exit 130)."""
    raise KeyboardInterrupt(f"signal {signum}")


def _ignore_signals() -> None:
    """After an interrupt: a second Ctrl-C or SIGTERM must not tear what is being written."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


def main(argv: list[str] | None = None) -> int:
    with cli_logging():  # plug-in warnings while the parser is built already go through it
        return _main(argv)


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    set_verbosity(args.verbose, args.log_quiet)
    set_progress(args.progress)
    if args.log_quiet and hasattr(args, "quiet"):
        args.quiet = True  # -q also hides progress bars
    handlers = None
    if threading.current_thread() is threading.main_thread():  # signals can only be set there
        handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        return args.func(args)
    except BrokenPipeError:  # the reader went away (`twentyq … | head`): stop quietly, as Unix tools do
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's final flush cannot raise again
        except (OSError, ValueError):
            pass
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt as e:
        _ignore_signals()
        detail = e.detail if isinstance(e, Interrupted) else ""
        print(f"twentyq: interrupted{'; ' + detail if detail else ''}", file=sys.stderr)
        return 130
    except Exception as e:
        if args.debug:
            raise
        package = broken_package(e)
        if package is not None:
            first = str(e).splitlines()[0][:300] if str(e) else ""
            print(f"twentyq: error: the installed package {package!r} failed to import ({type(e).__name__}: {first}); "
                  f"this is the Python environment, not your input: reinstall it (pip install --force-reinstall "
                  f"{package}), or remove it if nothing needs it", file=sys.stderr)
            return EXIT_USAGE
        from engine.common.printable import printable

        if isinstance(e, OSError):  # the user's or a bug, by its file (no other user error is an OSError)
            line = os_error_line(e, named_paths(sys.argv[1:] if argv is None else argv))  # None: a bug
            if line is not None:
                print("twentyq: error: " + printable(line), file=sys.stderr)
                return EXIT_USAGE
        elif isinstance(e, user_errors()):
            # one line: the cause and the fix (a system's validation adds its problems, one per line)
            # control characters escaped line by line (a name in the message cannot drive the terminal)
            print("twentyq: error: " + "\n".join(printable(ln) for ln in str(e).split("\n")), file=sys.stderr)
            return EXIT_USAGE
        first = printable(str(e).splitlines()[0][:300]) if str(e) else ""
        print(f"twentyq: internal error (a bug, not your input): {type(e).__name__}: {first} [at {_where(e)}]; "
              "rerun with --debug for the traceback", file=sys.stderr)
        return EXIT_BUG
    finally:
        for sig, h in (handlers or {}).items():
            signal.signal(sig, h if h is not None else signal.SIG_DFL)


if __name__ == "__main__":
    sys.exit(main())

"""The ``twentyq`` command line: the parser, exit codes and error reporting.

Exit codes: 0 success; 1 some inputs were bad but the rest were processed; 2 usage or
configuration errors (one line naming the cause and the fix); 3 an unexpected error, a
bug (its type and where it came from; ``--debug`` shows the traceback); 130 interrupted
(Ctrl-C or SIGTERM, which is handled the same way).
"""

from __future__ import annotations

import argparse
import sys
import traceback

from engine.cli.calibrate_cmd import add_calibrate_parser
from engine.cli.options import EXIT_BUG, EXIT_USAGE, UsageError, cli_logging, document_defaults, set_verbosity
from engine.cli.report_cmd import add_report_parser
from engine.cli.run_cmds import add_run_parsers
from engine.cli.serve_cmd import add_serve_args
from engine.cli.system_cmds import add_system_parser


SERVE_EXAMPLES = """examples:
  twentyq serve --system pokemon15 --port 8000
  twentyq serve --model openai/clip-vit-base-patch32 --system pokemon15,flowers17 --max-batch 32
"""


def build_parser() -> argparse.ArgumentParser:
    from engine.run.provenance import package_version

    ap = argparse.ArgumentParser(prog="twentyq", description="Adaptive twenty-questions zero-shot classification.")
    ap.add_argument("--version", action="version", version=f"twentyq {package_version()}")
    ap.add_argument("--debug", action="store_true", help="show tracebacks")
    ap.add_argument("-v", "--verbose", action="count", default=0,
                    help="more diagnostics on stderr: -v what was loaded and done, -vv debug (default: warnings only)")
    ap.add_argument("-q", dest="log_quiet", action="count", default=0,
                    help="no warnings and no progress bars on stderr; errors are still printed, results still go "
                         "to stdout (default: warnings and progress bars shown)")
    sub = ap.add_subparsers(dest="command", required=True)
    add_run_parsers(sub)
    add_calibrate_parser(sub)
    add_report_parser(sub)
    add_system_parser(sub)
    add_serve_args(sub.add_parser("serve", help="serve classification over HTTP (FastAPI on uvicorn; dynamic "
                                                "batching; pip install 'twentyq[serve]')",
                                  epilog=SERVE_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter))
    document_defaults(ap)
    return ap


def user_errors() -> tuple[type[BaseException], ...]:
    """Errors that are the user's to fix: reported in one line, exit 2."""
    from systems.errors import UserInputError

    errors: tuple[type[BaseException], ...] = (UsageError, UserInputError, OSError)
    if "engine.encoders.base" in sys.modules:  # only loaded (with torch) when a model was asked for
        base = sys.modules["engine.encoders.base"]
        errors += (base.EncoderLoadError, base.EncoderOutOfMemory)
    return errors


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
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


def main(argv: list[str] | None = None) -> int:
    with cli_logging():  # plug-in warnings while the parser is built already go through it
        return _main(argv)


def _main(argv: list[str] | None) -> int:
    import signal
    import threading

    parser = build_parser()
    args = parser.parse_args(argv)
    set_verbosity(args.verbose, args.log_quiet)
    if args.log_quiet and hasattr(args, "quiet"):
        args.quiet = True  # -q also hides progress bars
    handlers = None
    if threading.current_thread() is threading.main_thread():  # signals can only be set there
        handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        _ignore_signals()
        print("twentyq: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if args.debug:
            raise
        if isinstance(e, user_errors()):
            # one line: the cause and the fix (a system's validation adds its problems, one per line)
            from systems.printable import printable

            # control characters escaped line by line (a name in the message cannot drive the terminal)
            print("twentyq: error: " + "\n".join(printable(ln) for ln in str(e).split("\n")), file=sys.stderr)
            return EXIT_USAGE
        from systems.printable import printable

        first = printable(str(e).splitlines()[0][:300]) if str(e) else ""
        print(f"twentyq: internal error (a bug, not your input): {type(e).__name__}: {first} [at {_where(e)}]; "
              "rerun with --debug for the traceback", file=sys.stderr)
        return EXIT_BUG
    finally:
        for sig, h in (handlers or {}).items():
            signal.signal(sig, h if h is not None else signal.SIG_DFL)


if __name__ == "__main__":
    sys.exit(main())

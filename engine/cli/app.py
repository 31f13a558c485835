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

from engine.cli.options import EXIT_BUG, EXIT_USAGE, UsageError
from engine.cli.report_cmd import add_report_parser
from engine.cli.run_cmds import add_run_parsers
from engine.cli.serve_cmd import add_serve_args
from engine.cli.system_cmds import add_system_parser


def build_parser() -> argparse.ArgumentParser:
    from engine.run.provenance import package_version

    ap = argparse.ArgumentParser(prog="twentyq", description="Adaptive twenty-questions zero-shot classification.")
    ap.add_argument("--version", action="version", version=f"twentyq {package_version()}")
    ap.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = ap.add_subparsers(dest="command", required=True)
    add_run_parsers(sub)
    add_report_parser(sub)
    add_system_parser(sub)
    add_serve_args(sub.add_parser("serve", help="serve classification over HTTP (FastAPI on uvicorn; dynamic "
                                                "batching; pip install 'twentyq[serve]')"))
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
        _ignore_signals()
        print("twentyq: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if args.debug:
            raise
        if isinstance(e, user_errors()):
            # one line: the cause and the fix (a system's validation adds its problems, one per line)
            print(f"twentyq: error: {e}", file=sys.stderr)
            return EXIT_USAGE
        first = str(e).splitlines()[0][:300] if str(e) else ""
        print(f"twentyq: internal error (a bug, not your input): {type(e).__name__}: {first} [at {_where(e)}]; "
              "rerun with --debug for the traceback", file=sys.stderr)
        return EXIT_BUG
    finally:
        for sig, h in (handlers or {}).items():
            signal.signal(sig, h if h is not None else signal.SIG_DFL)


if __name__ == "__main__":
    sys.exit(main())

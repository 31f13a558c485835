"""``twentyq serve``: the classifier over HTTP (engine/serve; needs ``pip install 'twentyq[serve]'``).

The model and every system are loaded before the port opens (a bad flag, model or
system is a one-line error, exit 2). SIGTERM or Ctrl-C: uvicorn stops accepting
connections, lets every in-flight request finish, then the batcher stops; exit 0.
"""

from __future__ import annotations

import argparse
import importlib.util
import ipaddress
import signal
import socket
import sys

from engine.cli.options import UsageError, add_model_flags, encoder_spec, remote_code_notice, settings_errors

SERVE_MODULES = ("fastapi", "uvicorn", "multipart", "fastapi_offline")


def add_serve_args(p: argparse.ArgumentParser) -> None:
    from engine.serve.settings import (
        DEFAULT_DECODE_WAIT_S, DEFAULT_MAX_BATCH, DEFAULT_MAX_BYTES, DEFAULT_MAX_DECODE_MEMORY, DEFAULT_MAX_IMAGES,
        DEFAULT_MAX_PIXELS, DEFAULT_MAX_WAIT_MS, DEFAULT_READ_TIMEOUT_S, DEFAULT_TIMEOUT_S,
    )

    add_model_flags(p)
    p.add_argument("--system", action="append", default=None, metavar="SYSTEM",
                   help="system name or JSON file to serve; repeat it or give a comma list (requests choose by "
                        "name; the first is the default; default pokemon15)")
    p.add_argument("--calibration", action="append", default=None, metavar="CAL.json|NAME",
                   help="a calibration made by 'twentyq calibrate' (or a shipped name) for this model and one of the "
                        "served systems; that system's requests then use it (per-question λ, few-shot posterior, "
                        "policy auto, settle and target_accuracy); repeat it for more systems")
    s = p.add_argument_group("server")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    s.add_argument("--port", type=int, default=8000, help="port to listen on (default: %(default)s)")
    s.add_argument("--max-batch", type=int, default=DEFAULT_MAX_BATCH,
                   help=f"images per model batch, gathered across requests (1: no batching; default "
                        f"{DEFAULT_MAX_BATCH})")
    s.add_argument("--max-wait-ms", type=float, default=DEFAULT_MAX_WAIT_MS,
                   help=f"how long a batch waits for more requests (default {DEFAULT_MAX_WAIT_MS:g})")
    s.add_argument("--max-images", type=int, default=DEFAULT_MAX_IMAGES,
                   help=f"images per request (default {DEFAULT_MAX_IMAGES})")
    s.add_argument("--max-bytes", type=int, default=DEFAULT_MAX_BYTES,
                   help=f"request body size in bytes (default {DEFAULT_MAX_BYTES:,})")
    s.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help=f"pixels per image, read from its header before decoding (default {DEFAULT_MAX_PIXELS:,})")
    s.add_argument("--timeout-s", type=float, default=DEFAULT_TIMEOUT_S,
                   help=f"per request, from upload to answer (default {DEFAULT_TIMEOUT_S:g})")
    s.add_argument("--max-decode-memory", type=int, default=DEFAULT_MAX_DECODE_MEMORY, metavar="BYTES",
                   help=f"bytes all requests together may use to decode images at once, estimated from each "
                        f"image's header; a request waits for its share (default {DEFAULT_MAX_DECODE_MEMORY:,}: "
                        "768 MiB)")
    s.add_argument("--decode-wait-s", type=float, default=DEFAULT_DECODE_WAIT_S,
                   help=f"how long a request waits for decode memory before it is answered 503 with "
                        f"Retry-After (default {DEFAULT_DECODE_WAIT_S:g})")
    s.add_argument("--read-timeout-s", type=float, default=DEFAULT_READ_TIMEOUT_S,
                   help=f"a request's headers, then its body, must arrive within this (default "
                        f"{DEFAULT_READ_TIMEOUT_S:g}); a half-sent request is dropped")
    s.add_argument("--api-key-file", default=None,
                   help="file holding an API key (UTF-8); then everything but /v1/health (status and version "
                        "only) and the page needs 'Authorization: Bearer KEY' or 'X-API-Key: KEY'")
    s.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"],
                   help="uvicorn's log level (info logs each request) (default: %(default)s)")
    p.set_defaults(func=serve_cmd)


def _systems(values: list[str] | None) -> tuple[str, ...]:
    names = [s.strip() for v in (values or ["pokemon15"]) for s in v.split(",")]
    return tuple(n for n in names if n)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _bind(host: str, port: int):
    """A socket bound to (host, port), not yet listening; ValueError naming the fix if it cannot be."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise UsageError(f"cannot listen on {host}:{port} ({e.strerror or e}); pick another --port or --host, "
                         "or stop what holds it") from None
    sock.set_inheritable(True)
    return sock


def serve_cmd(args) -> int:
    missing = [m for m in SERVE_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        raise UsageError(f"twentyq serve needs the 'serve' extra ({', '.join(missing)} missing): "
                         "pip install 'twentyq[serve]'")

    import uvicorn

    from engine.encoders.registry import model_label
    from engine.serve.app import create_app
    from engine.serve.connections import uvicorn_options
    from engine.serve.settings import ServeSettings, read_api_key

    if not 0 < args.port < 65536:
        raise UsageError(f"--port {args.port}: must be 1..65535")
    with settings_errors():
        settings = ServeSettings(
            encoder=encoder_spec(args), systems=_systems(args.system),
            calibrations=tuple(args.calibration or ()), max_batch=args.max_batch,
            max_wait_ms=args.max_wait_ms, max_images=args.max_images, max_bytes=args.max_bytes,
            max_pixels=args.max_pixels, timeout_s=args.timeout_s, max_decode_memory=args.max_decode_memory,
            decode_wait_s=args.decode_wait_s, read_timeout_s=args.read_timeout_s,
            api_key=read_api_key(args.api_key_file) if args.api_key_file else None)
    remote_code_notice(settings.encoder)
    if not _is_loopback(args.host) and settings.api_key is None:
        print(f"twentyq: warning: listening on {args.host} without --api-key-file: anyone who can reach this "
              "port can use the model", file=sys.stderr)
    sock = _bind(args.host, args.port)  # before the model loads: a taken port fails in a second, not after it
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        with settings_errors():  # a bad system file or device is the user's to fix
            app = create_app(settings)  # loads the model and the systems, embeds their prompts
        encoder = next(iter(app.state.classifiers.values())).encoder
        print(f"twentyq: serving model {model_label(settings.encoder.model)} on {encoder.device}, systems "
              f"{list(app.state.classifiers)}, at http://{args.host}:{args.port} (API docs at /docs)",
              file=sys.stderr, flush=True)
        config = uvicorn.Config(app, log_level=args.log_level, lifespan="on",
                                timeout_graceful_shutdown=settings.timeout_s + 10,
                                **uvicorn_options(settings.read_timeout_s))
        server = uvicorn.Server(config)
        # uvicorn handles SIGTERM/SIGINT itself (stop accepting, drain, shut down) and re-raises the
        # signal afterwards; this handler takes that re-raise, so a drained shutdown exits 0.
        stopped_by: list[int] = []
        previous = {s: signal.signal(s, lambda signum, frame: stopped_by.append(signum))
                    for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            server.run(sockets=[sock])
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
    finally:
        sock.close()
    if stopped_by:
        print(f"twentyq: stopped by {signal.Signals(stopped_by[0]).name} after draining the requests in flight",
              file=sys.stderr)
    return 0

"""The server under test: the in-process app over the fake encoder, and a real ``twentyq serve`` subprocess."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from .data import COLOUR_SYSTEM, png, solid
from .encoders import FakeEncoder, tiny_model_dir

REPO = Path(__file__).resolve().parents[2]
COLOUR_2 = {**COLOUR_SYSTEM, "name": "colours2"}  # a second system on the same encoder

RED = png(solid("red"))


def parts(*named: tuple[str, bytes]) -> list:
    """Multipart ``image`` fields from (file name, bytes) pairs."""
    return [("image", (name, data, "image/png")) for name, data in named]


def make_client(encoder=None, systems=(COLOUR_SYSTEM, COLOUR_2), **kw):
    """A ``TestClient`` of the app over ``encoder`` (a FakeEncoder) and ``systems``; ``kw`` go to ServeSettings."""
    from fastapi.testclient import TestClient

    from engine.run.classifier import Classifier
    from engine.serve.app import create_app
    from engine.serve.settings import ServeSettings

    encoder = encoder or FakeEncoder()
    classifiers = {}
    for s in systems:
        clf = Classifier(system=s, encoder=encoder)
        classifiers[clf.system.name] = clf
    settings = ServeSettings(systems=tuple(classifiers), **kw)
    return TestClient(create_app(settings, classifiers), raise_server_exceptions=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(*flags: str):
    """(process, url) of a real ``twentyq serve`` over the tiny random CLIP on a free loopback port, once healthy."""
    import httpx

    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "engine.cli", "serve", "--model", str(tiny_model_dir("clip")), "--device", "cpu",
           "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", *flags]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):  # up to 60 s
        if proc.poll() is not None:
            raise AssertionError(f"the server exited {proc.returncode}: {proc.stderr.read()}")
        try:
            if httpx.get(f"{url}/v1/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise AssertionError("the server did not answer /v1/health within 60 s")


def stop_server(proc) -> tuple[int, str]:
    """SIGTERM (kill after 30 s); (exit code, stderr)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    return proc.returncode, err

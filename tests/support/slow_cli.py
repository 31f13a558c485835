"""``python -m tests.support.slow_cli ARGS``: the real ``twentyq`` CLI with a slow fake encoder (for signal tests).

The fake encoder (:class:`tests.support.encoders.SlowEncoder`) sleeps ``TWENTYQ_TEST_DELAY`` seconds
per image, so a test can signal the process while it is in the middle of an
``eval``. Everything else (argument parsing, signal handling, streaming,
``--resume``) is the real code.
"""

from __future__ import annotations

import os
import sys

import engine.encoders

from .encoders import SlowEncoder

engine.encoders.load_encoder = lambda *a, **k: SlowEncoder(per_image_s=float(os.environ.get("TWENTYQ_TEST_DELAY", "0.01")))

if __name__ == "__main__":
    from engine.cli.app import main

    sys.exit(main(sys.argv[1:]))

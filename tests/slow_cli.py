"""``python -m tests.slow_cli ARGS``: the real ``twentyq`` CLI with a slow fake encoder (for signal tests).

The fake encoder (tests.fakes.FakeEncoder) sleeps ``TWENTYQ_TEST_DELAY`` seconds
per image, so a test can signal the process while it is in the middle of an
``eval``. Everything else (argument parsing, signal handling, streaming,
``--resume``) is the real code.
"""

from __future__ import annotations

import os
import sys
import time

import engine.encoders

from .fakes import FakeEncoder


class SlowFakeEncoder(FakeEncoder):
    def encode_images(self, images):
        time.sleep(float(os.environ.get("TWENTYQ_TEST_DELAY", "0.01")) * len(images))
        return super().encode_images(images)


engine.encoders.load_encoder = lambda *a, **k: SlowFakeEncoder()

if __name__ == "__main__":
    from engine.cli.app import main

    sys.exit(main(sys.argv[1:]))

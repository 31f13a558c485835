"""``python -m bench.probe ...``: :func:`bench.probe.cli.main`."""

import sys

from .cli import main

sys.exit(main())

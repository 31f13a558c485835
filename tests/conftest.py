"""Tests never touch the network: the hub is offline before anything imports it."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# `pytest --hypothesis-profile=mutation` (bench/mutation.py): a failing example is enough to kill a
# mutant, so skip shrinking it, and draw the same examples on every run.
from hypothesis import Phase, settings  # noqa: E402

settings.register_profile("mutation", phases=[Phase.explicit, Phase.generate], database=None, derandomize=True,
                          print_blob=False)

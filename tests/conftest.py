"""Tests never touch the network: the hub is offline before anything imports it."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# `pytest --hypothesis-profile=mutation` (bench/mutation.py): a failing example is enough to kill a
# mutant, so skip shrinking it, and draw the same examples on every run.
from hypothesis import Phase, settings  # noqa: E402

settings.register_profile("mutation", phases=[Phase.explicit, Phase.generate], database=None, derandomize=True,
                          print_blob=False)


# --------------------------------------------------------------------------- the loop's backends
import pytest  # noqa: E402

#: every test that takes the ``classify`` fixture runs once per backend of the adaptive loop: the numpy
#: reference (engine.core.adaptive.classify_batch) and the torch loop (engine.torch_engine), which runs a
#: numpy source through its HostSource on the CPU
LOOP_BACKENDS = ("numpy", "torch")


@pytest.fixture(params=LOOP_BACKENDS, scope="session")
def classify(request):
    """The adaptive loop of one backend, called as ``classify_batch``."""
    if request.param == "numpy":
        from engine.core.adaptive import classify_batch

        return classify_batch
    from engine.torch_engine.loop import classify_batch_torch

    return classify_batch_torch


def pytest_collection_modifyitems(config, items):
    """The torch runs of hypothesis properties go to the full suite (``slow``): the quick loop keeps
    the numpy runs, the torch runs of the example tests, and tests/test_torch_engine.py's agreement
    properties, so it stays about a minute."""
    for item in items:
        spec = getattr(item, "callspec", None)
        if spec is not None and spec.params.get("classify") == "torch" and \
                getattr(getattr(item, "function", None), "is_hypothesis_test", False):
            item.add_marker(pytest.mark.slow)

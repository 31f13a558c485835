"""Tests never touch the network: the hub is offline before anything imports it.

Also: the Hypothesis profiles, the fixtures used by more than one test module (``classify`` per loop backend,
``p15``, ``colour_run``, ``world``) and the ``slow`` marker for the torch runs of properties. Fakes and other
shared helpers are in tests/support/ (its docstring lists them); a test module never imports another.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# Hypothesis profiles. `ci` (chosen when the CI environment variable is set, as CI services and .ci/run
# do): the same examples on every run, so CI goes red only on a change, never by chance; no deadline
# (a loaded runner is slow, not wrong) and no example database (nothing carried between runs); a failure
# prints the blob that replays it (@reproduce_failure). `explore` (local runs): Hypothesis's defaults,
# new random examples each run and failures kept in .hypothesis/ to be replayed first.
# `pytest --hypothesis-profile=NAME` overrides both. `mutation` (bench/mutation.py): a failing example
# is enough to kill a mutant, so skip shrinking it, and draw the same examples on every run.
# Each profile names its parent: without one a profile inherits whatever is loaded when it is registered,
# and Hypothesis loads its own `ci` profile on import wherever CI is set.
from hypothesis import HealthCheck, Phase, settings  # noqa: E402

from tests.support.profiles import hypothesis_profile  # noqa: E402

_HYPOTHESIS_DEFAULTS = settings.get_profile("default")
settings.register_profile("ci", _HYPOTHESIS_DEFAULTS, derandomize=True, print_blob=True, deadline=None,
                          database=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("explore", _HYPOTHESIS_DEFAULTS, print_blob=True)
settings.register_profile("mutation", _HYPOTHESIS_DEFAULTS, phases=[Phase.explicit, Phase.generate], database=None,
                          derandomize=True, print_blob=False)


settings.load_profile(hypothesis_profile(os.environ))


# --------------------------------------------------------------------------- the loop's backends
import pytest  # noqa: E402

#: every test that takes the ``classify`` fixture runs once per backend of the adaptive loop
#: (engine.core.adaptive.classify_batch): numpy, the reference, and torch (engine.torch_backend's
#: TorchArrays), which runs a numpy source through its HostSource on the CPU
LOOP_BACKENDS = ("numpy", "torch")


@pytest.fixture(params=LOOP_BACKENDS, scope="session")
def classify(request):
    """The adaptive loop on one backend, called as ``classify_batch``."""
    from functools import partial

    from engine.run.engines import classify

    return partial(classify, engine=request.param)


def pytest_collection_modifyitems(config, items):
    """The torch runs of hypothesis properties go to the full suite (``slow``): the quick loop keeps
    the numpy runs, the torch runs of the example tests, and tests/test_torch_engine.py's agreement
    properties, so it stays about a minute."""
    for item in items:
        spec = getattr(item, "callspec", None)
        if spec is not None and spec.params.get("classify") == "torch" and \
                getattr(getattr(item, "function", None), "is_hypothesis_test", False):
            item.add_marker(pytest.mark.slow)


# --------------------------------------------------------------------------- fixtures shared by test modules
@pytest.fixture(scope="module")
def p15():
    """The shipped pokemon15 system."""
    from systems import load_system

    return load_system("pokemon15")


@pytest.fixture
def colour_run(tmp_path, monkeypatch):
    """Twelve solid-colour images (d.csv) and the colour system (sys.json) in ``tmp_path``; every model string
    loads the fake encoder."""
    import engine.encoders

    from tests.support.data import write_colour_data
    from tests.support.encoders import FakeEncoder

    monkeypatch.setattr(engine.encoders, "load_encoder", lambda *a, **k: FakeEncoder())
    return write_colour_data(tmp_path, 12)


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    """The simulated calibration world (tests/support/calibration.py): pokemon15, 360 noise PNGs answered by a
    SimEncoder, calibrated on half of them. Built once per session (about 4 s; several modules read it and none
    changes it)."""
    from tests.support.calibration import build_world

    return build_world(tmp_path_factory)

"""CI is reproducible: under CI the hypothesis profile draws the same examples on every run (tests/conftest.py)."""

from __future__ import annotations

import os

from hypothesis import settings

from .support.profiles import hypothesis_profile


def test_the_ci_variable_picks_the_reproducible_profile():
    assert hypothesis_profile({"CI": "true"}) == hypothesis_profile({"CI": "1"}) == "ci"
    for env in ({}, {"CI": ""}, {"CI": "false"}, {"CI": "0"}):
        assert hypothesis_profile(env) == "explore"
    ci = settings.get_profile("ci")
    assert ci.derandomize and ci.print_blob and ci.database is None and ci.deadline is None
    assert not settings.get_profile("explore").derandomize


def test_this_run_uses_the_profile_its_environment_picks(request):
    want = request.config.getoption("hypothesis_profile", None) or hypothesis_profile(os.environ)
    assert settings.default.derandomize == settings.get_profile(want).derandomize
    assert settings.default.database == settings.get_profile(want).database

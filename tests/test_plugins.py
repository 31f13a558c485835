"""Plug-ins (issue 18, part 3): policies and encoder backends from Python entry points.

The subprocess test builds tests/plugin_demo with pip (offline: --no-deps --no-build-isolation,
setuptools from this venv) into a temporary --target folder put on the subprocess's PYTHONPATH,
where importlib.metadata finds its .dist-info; the shared venv is never changed.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

import engine.common.plugins as plugins
from engine.encoders import registry
from policies import base as policy_base

REPO = Path(__file__).resolve().parents[1]
DEMO = Path(__file__).resolve().parent / "plugin_demo"


@pytest.fixture
def fake_entry_points(monkeypatch):
    """Entry points served from tests/plugin_demo (on sys.path), registries restored afterwards."""
    monkeypatch.syspath_prepend(str(DEMO))
    eps = {
        plugins.POLICY_GROUP: [EntryPoint("first_group", "tq_plugin_demo:FirstGroup", plugins.POLICY_GROUP),
                               EntryPoint("not_a_policy", "tq_plugin_demo:load", plugins.POLICY_GROUP),
                               EntryPoint("broken_policy", "tq_plugin_demo_missing:Nope", plugins.POLICY_GROUP),
                               EntryPoint("eig", "tq_plugin_demo:FirstGroup", plugins.POLICY_GROUP)],
        plugins.ENCODER_GROUP: [EntryPoint("demo-hash", "tq_plugin_demo:load", plugins.ENCODER_GROUP),
                                EntryPoint("clip", "tq_plugin_demo:load", plugins.ENCODER_GROUP)],
    }
    monkeypatch.setattr(plugins, "entry_points", lambda group: eps.get(group, []))
    saved = [(d, dict(d)) for d in (policy_base.POLICIES, registry.BACKENDS, registry.MODELS)]
    plugins.reset()
    yield
    plugins.reset()
    for d, before in saved:  # the registries are shared objects: restore them in place
        d.clear()
        d.update(before)


def test_plugins_register_once_and_bad_ones_warn_in_one_line(fake_entry_points, caplog):
    from policies import get_policy, list_policies

    with caplog.at_level(logging.WARNING, logger="twentyq.plugins"):
        names = list_policies()
        list_policies()
        models = [m["model"] for m in registry.list_models()]
    assert "first_group" in names and "broken_policy" not in names and "not_a_policy" not in names
    assert type(get_policy("eig")).__module__ == "policies.builtin"  # a plug-in never replaces a built-in
    assert "demo-hash" in models and registry.BACKENDS["clip"] is not registry.BACKENDS["demo-hash"]
    msgs = [r.getMessage() for r in caplog.records]
    assert len(msgs) == 4, msgs  # loaded once: each bad plug-in warned about once
    assert any("'broken_policy'" in m and "failed to load" in m and "ModuleNotFoundError" in m for m in msgs)
    assert any("'not_a_policy'" in m and "not a policies.Policy subclass" in m for m in msgs)
    assert any("'eig'" in m and "taken by a built-in" in m for m in msgs)
    assert any("'clip'" in m and "taken by a built-in" in m for m in msgs)
    assert all("\n" not in m for m in msgs)


def test_plugin_policy_and_encoder_classify(fake_entry_points):
    from engine.run.classifier import Classifier

    from .support.data import COLOUR_SYSTEM, solid

    clf = Classifier("demo-hash:v1", system=COLOUR_SYSTEM)
    assert clf.encoder.model_id == "demo-hash:v1@1"
    res = clf.classify([solid("red"), solid("blue")], policy="first_group", tau=1.0)
    assert [[s.group for s in r.steps] for r in res] == [["color", "texture", "glow"]] * 2
    assert registry.model_label("demo-hash:v1").endswith("demo plug-in: seeded hash vectors, not a real model")


@pytest.mark.slow
def test_pip_installed_plugin_is_used_by_the_cli(tmp_path):
    target = tmp_path / "site"
    build = tmp_path / "src"
    shutil.copytree(DEMO, build, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build"))
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                          "--quiet", "--disable-pip-version-check", "--target", str(target), str(build)],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert pip.returncode == 0, pip.stderr
    assert list(target.glob("tq_plugin_demo-0.1.0.dist-info/entry_points.txt"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), str(REPO)]), "HF_HUB_OFFLINE": "1"}

    def twentyq(*args):
        return subprocess.run([sys.executable, "-m", "engine.cli", *map(str, args)], capture_output=True, text=True,
                              env=env, timeout=300, cwd=tmp_path)

    from .support.data import solid

    solid("red").save(tmp_path / "a.png")
    r = twentyq("models")
    assert r.returncode == 0 and "demo-hash" in r.stdout and "demo plug-in" in r.stdout
    warned = [line for line in r.stderr.splitlines() if "plugin" in line]
    assert len(warned) == 2 and any("'broken_policy'" in w for w in warned), r.stderr  # one line each
    r = twentyq("classify", "--help")
    assert "first_group" in r.stdout
    r = twentyq("classify", tmp_path / "a.png", "--model", "demo-hash", "--policy", "first_group", "--system",
                "flowers17", "--tau", "1", "--json", "--quiet")
    assert r.returncode == 0, r.stderr
    assert '"stop": "exhausted"' in r.stdout and "Traceback" not in r.stderr
    # the target folder is a temporary directory: removing it uninstalls the plug-in

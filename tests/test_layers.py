"""The architecture, checked: imports run only downwards between layers, no package cycles,
the core stays free of torch (and so do the backend choice, ``engine.run.engines``, and the settings;
only the torch backend, ``engine.torch_backend``, loads torch), and the public names import."""

from __future__ import annotations

import pytest

import subprocess
import sys
from pathlib import Path

from engine.testing.layers import LAYERS, graph, imports_of, modules, package_cycles, package_of

REPO = Path(__file__).resolve().parents[1]


def test_no_import_goes_up_a_layer():
    _, upward = graph()
    assert upward == []


def test_no_cycle_between_packages():
    edges, _ = graph()
    assert package_cycles(edges) == []


def test_a_cycle_is_found():
    assert package_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_type_only_and_function_level_imports_count(tmp_path):
    """An import under ``if TYPE_CHECKING:`` or inside a function is an arrow in the design all the same:
    the checker sees both (policies once imported the core's Channel under TYPE_CHECKING)."""
    mod = tmp_path / "fake.py"
    mod.write_text("from typing import TYPE_CHECKING\n"
                   "if TYPE_CHECKING:\n    from engine.core.scoring import Channel\n"
                   "def f():\n    from engine.run import config\n    return config\n")
    found = imports_of("policies.fake", mod, set(modules()))
    assert {"engine.core.scoring", "engine.run.config"} <= found
    mods = modules()
    assert LAYERS[package_of("engine.core.scoring", mods)] > LAYERS[package_of("policies.base", mods)]


def test_every_package_has_a_layer():
    mods = modules()
    assert {package_of(m, mods) for m in mods} <= set(LAYERS)


@pytest.mark.slow
def test_the_core_needs_no_torch_and_the_public_names_import():
    code = ("import sys, engine.core.adaptive, engine.core.scoring, policies, systems; "
            "assert 'torch' not in sys.modules, 'torch imported by the core'; "
            "import engine.run.engines, engine.run.config; "
            "assert 'torch' not in sys.modules, 'torch imported by the engine choice or the settings'; "
            "from engine import Classifier, EncoderSpec, RunConfig, load_encoder, load_system; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_the_adaptive_loop_is_written_once():
    """No second loop: in the engine's core and its torch backend, only the loop (engine/core/adaptive.py)
    spells the stop reasons (besides their vocabulary, results.STOP_REASONS), and the torch package defines no
    loop of its own (no classify function), only array operations, policies and sources. (The run layer
    reads the reasons off Results; it does not decide them.)"""
    import ast

    reasons = {"confident", "exhausted", "budget", "no_gain", "settled"}
    spelled = set()
    for pkg in ("engine/core", "engine/torch_backend"):
        for path in sorted((REPO / pkg).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            if any(isinstance(n, ast.Constant) and n.value in reasons for n in ast.walk(tree)):
                spelled.add(path.relative_to(REPO).as_posix())
            if pkg == "engine/torch_backend":
                assert not [n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and "classify" in n.name]
    assert spelled == {"engine/core/adaptive.py", "engine/core/results.py"}

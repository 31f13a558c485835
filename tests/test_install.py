"""The package as users install it: the wheel holds every sub-package and every data file the code loads,
and the shipped calibration is reachable by name from wherever twentyq is installed.

The wheel is built once per session, from a copy of the sources (a build writes build/ and *.egg-info
beside the sources; the checkout stays clean). Installing it in a fresh venv and running the CLI from
outside the checkout is .ci/run's wheel step (tests/wheel_smoke.sh), too slow for a test.
"""

from __future__ import annotations

import fnmatch
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from engine.cli.app import main
from engine.run.calibration_file import (
    SHIPPED_SUFFIX, CalibrationError, as_calibration, load_calibration, shipped_calibrations,
)

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("engine", "policies", "systems", "bench")  # the top-level packages of the wheel
# files under the packages that are for a checkout, not an install (shell scripts run from the repo root)
CHECKOUT_ONLY = ("bench/*.sh", "bench/README.md")  # scripts and docs for a checkout; the wheel runs without them
MAIN_CALIBRATION = "pokemon15_gen1.sprites"  # the README's main job's, for the shipped probe


def _source_files() -> list[str]:
    """Every file under the packages, relative to the root, as git tracks them (a walk without .git)."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--", *PACKAGES], cwd=ROOT, capture_output=True,
                             check=True, timeout=60).stdout.decode()
        files = [f for f in out.split("\0") if f]
        if files:
            return files
    except (OSError, subprocess.SubprocessError):
        pass
    return [str(p.relative_to(ROOT)) for pkg in PACKAGES for p in (ROOT / pkg).rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and not str(p.relative_to(ROOT)).startswith("bench/out/")]


@pytest.fixture(scope="session")
def wheel_files(tmp_path_factory) -> set[str]:
    """The names in a wheel built from a copy of the sources (pip wheel, no dependencies, no build isolation)."""
    src, out = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("wheel")
    for f in ("pyproject.toml", "README.md", *_source_files()):
        (src / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, src / f)
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                        "-w", str(out), str(src)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"pip wheel failed:\n{r.stdout}\n{r.stderr}"
    (whl,) = out.glob("twentyq-*.whl")
    with zipfile.ZipFile(whl) as z:
        return set(z.namelist())


@pytest.mark.slow
def test_the_wheel_holds_every_package_of_the_sources(wheel_files):
    packages = sorted({str(Path(f).parent) for f in _source_files() if Path(f).name == "__init__.py"})
    assert "engine/torch_backend" in packages  # the one a hand-written list once forgot
    missing = [p for p in packages if f"{p}/__init__.py" not in wheel_files]
    assert not missing, f"packages missing from the wheel: {missing}; see [tool.setuptools.packages.find]"
    modules = [f for f in _source_files() if f.endswith(".py")]
    assert not [m for m in modules if m not in wheel_files]
    assert not [f for f in wheel_files if f.startswith("tests/")]


@pytest.mark.slow
def test_the_wheel_holds_every_data_file_the_code_loads(wheel_files):
    data = [f for f in _source_files() if not f.endswith(".py")
            and not any(fnmatch.fnmatch(f, pat) for pat in CHECKOUT_ONLY)]
    # the ones the code loads by name: systems, template sets, the stand-in's class list, the probe, the page
    for must in ("systems/pokemon15_gen1.json", "systems/template_sets/clip8.json",
                 "engine/encoders/data/imagenet1k_classes.tsv", "engine/encoders/data/probe/probe.safetensors",
                 "engine/encoders/data/probe/manifest.json",
                 f"engine/encoders/data/probe/{MAIN_CALIBRATION}{SHIPPED_SUFFIX}", "engine/serve/static/index.html"):
        assert must in data
    missing = [f for f in data if f not in wheel_files]
    assert not missing, f"data files missing from the wheel: {missing}; see [tool.setuptools.package-data]"
    entry = next(f for f in wheel_files if f.endswith(".dist-info/entry_points.txt"))
    assert entry  # the twentyq command is declared (its target is checked by the wheel smoke in .ci/run)


# --------------------------------------------------------------------------- shipped calibrations by name
def test_a_shipped_calibration_loads_by_name_as_by_its_file():
    assert MAIN_CALIBRATION in shipped_calibrations()
    file = ROOT / "engine" / "encoders" / "data" / "probe" / f"{MAIN_CALIBRATION}{SHIPPED_SUFFIX}"
    by_file = load_calibration(str(file))
    for name in (MAIN_CALIBRATION, MAIN_CALIBRATION + SHIPPED_SUFFIX):
        cal = load_calibration(name)
        assert cal.sha256 == by_file.sha256 and Path(cal.path).resolve() == file.resolve()
        assert cal.system_name == "pokemon15_gen1"
    assert as_calibration(MAIN_CALIBRATION).sha256 == by_file.sha256  # Classifier(calibration=NAME)


def test_an_existing_path_wins_over_a_shipped_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path(MAIN_CALIBRATION).write_text("[]", encoding="utf-8")
    with pytest.raises(CalibrationError, match="is not a twentyq calibration"):
        load_calibration(MAIN_CALIBRATION)


@pytest.mark.parametrize("arg", ["pokemon15", "no/such/cal.json"])
def test_an_unknown_calibration_names_the_shipped_ones(arg, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CalibrationError, match=f"no such file.*shipped: .*{MAIN_CALIBRATION}"):
        load_calibration(arg)


def test_the_cli_refuses_an_unknown_calibration_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["classify", "x.png", "--model", "probe", "--system", "pokemon15_gen1", "--calibration",
                 "pokemon15_gen1", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and MAIN_CALIBRATION in err and "no such file" in err


def test_the_calibration_option_help_names_every_shipped_calibration(capsys):
    with pytest.raises(SystemExit):
        main(["classify", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for name in shipped_calibrations():
        assert name in text

"""Issue 14, security: remote code runs only with the flag, through every door.

A model folder can name Python code in four files transformers reads:
``config.json``, ``tokenizer_config.json``, ``preprocessor_config.json`` and
``processor_config.json`` (an ``auto_map``, or a class that is not in
transformers). Each fixture below is a real tiny CLIP folder plus an ``evil.py``
that writes a marker file when it is imported. Without ``trust_remote_code``
the marker is never written, loading stops with one line naming the file and
the key, and nothing ever prompts on stdin/stdout.
"""

from __future__ import annotations

import builtins
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from engine.encoders import RemoteCodeRefused, load_encoder
from engine.encoders.hf import load_clip_family, remote_code_origin

from .support.encoders import tiny_model_dir
from .support.data import solid

REPO = Path(__file__).resolve().parents[1]

EVIL = '''
import pathlib
pathlib.Path({marker!r}).write_text("evil.py ran")
from transformers import CLIPImageProcessorPil, BertTokenizer, CLIPProcessor


class EvilProc(CLIPImageProcessorPil):
    pass


class EvilTokenizer(BertTokenizer):
    pass


class EvilProcessor(CLIPProcessor):
    pass


class EvilConfig:
    pass
'''

# file -> (what to merge into it, the key the refusal must name)
DOORS = {
    "config.json": ({"auto_map": {"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilConfig"}}, "auto_map"),
    "tokenizer_config.json": ({"tokenizer_class": "EvilTokenizer",
                               "auto_map": {"AutoTokenizer": ["evil.EvilTokenizer", None]}}, "auto_map"),
    "preprocessor_config.json": ({"image_processor_type": "EvilProc",
                                  "auto_map": {"AutoImageProcessor": "evil.EvilProc"}}, "auto_map"),
    "processor_config.json": ({"processor_class": "EvilProcessor",
                               "auto_map": {"AutoProcessor": "evil.EvilProcessor"}}, "auto_map"),
}


def evil_folder(tmp_path: Path, door: str, patch: dict | None = None) -> tuple[Path, Path]:
    """A tiny CLIP folder whose ``door`` file names evil.py; returns (folder, marker path)."""
    folder = tmp_path / f"evil-{door.split('.')[0]}"
    shutil.copytree(tiny_model_dir("clip"), folder)
    marker = tmp_path / f"MARKER-{door}"
    (folder / "evil.py").write_text(EVIL.format(marker=str(marker)))
    path = folder / door
    cfg = json.loads(path.read_text()) if path.exists() else {}
    cfg.update(DOORS[door][0] if patch is None else patch)
    path.write_text(json.dumps(cfg))
    return folder, marker


@pytest.fixture
def no_stdin(monkeypatch):
    """Any attempt to prompt (input()) or read stdin fails the test."""
    asked = []

    def refuse_input(prompt=""):
        asked.append(prompt)
        raise AssertionError(f"a library prompted on stdin: {prompt[:80]!r}")

    class NoStdin:
        def __getattr__(self, name):
            asked.append(name)
            raise AssertionError("stdin was read")

    monkeypatch.setattr(builtins, "input", refuse_input)
    monkeypatch.setattr(sys, "stdin", NoStdin())
    return asked


@pytest.mark.parametrize("door", sorted(DOORS))
def test_remote_code_is_refused_through_every_door(tmp_path, door, no_stdin):
    folder, marker = evil_folder(tmp_path, door)
    for load in (lambda: load_encoder(str(folder), device="cpu"),
                 lambda: load_clip_family(str(folder), device="cpu")):
        with pytest.raises(RemoteCodeRefused) as e:
            load()
        msg = str(e.value)
        assert "\n" not in msg
        assert door in msg and DOORS[door][1] in msg and "--trust-remote-code" in msg
        assert "jina" not in msg  # names what is really there, not jina-clip
    assert not marker.exists() and not no_stdin


@pytest.mark.parametrize("door,key,value", [
    ("tokenizer_config.json", "tokenizer_class", "EvilTokenizer"),
    ("preprocessor_config.json", "image_processor_type", "EvilProc"),
    ("processor_config.json", "processor_class", "EvilProcessor"),
])
def test_a_class_transformers_does_not_have_is_refused_too(tmp_path, door, key, value, no_stdin):
    folder, marker = evil_folder(tmp_path, door, {key: value})
    with pytest.raises(RemoteCodeRefused, match=f"{door}.*{key}.*{value}"):
        load_encoder(str(folder), device="cpu")
    assert not marker.exists() and not no_stdin


def test_standard_folders_have_no_triggers():
    from engine.encoders.hf import remote_code_triggers

    for kind in ("clip", "siglip"):
        assert remote_code_triggers(str(tiny_model_dir(kind))) == []


def test_origin_names_the_code_of_every_file(tmp_path):
    folder, _ = evil_folder(tmp_path, "preprocessor_config.json")
    where = remote_code_origin(str(folder))
    assert str(folder) in where and "preprocessor_config.json" in where


def _cli(args, tmp_path, stdin=b"y\ny\ny\n", timeout=240):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(REPO),
           "HF_MODULES_CACHE": str(tmp_path / "hf_modules")}
    return subprocess.run([sys.executable, "-m", "engine.cli", *args], input=stdin, capture_output=True,
                          env=env, cwd=tmp_path, timeout=timeout)


@pytest.mark.slow
def test_cli_answering_y_on_stdin_runs_nothing(tmp_path):
    """The reproducer: `echo y | twentyq classify a.jpg --model FOLDER --json` ran evil.py."""
    folder, marker = evil_folder(tmp_path, "preprocessor_config.json")
    solid("red").save(tmp_path / "a.jpg")
    r = _cli(["classify", "a.jpg", "--model", str(folder), "--json"], tmp_path)
    out, err = r.stdout.decode(), r.stderr.decode()
    assert not marker.exists()
    assert r.returncode == 2, err
    assert "[y/N]" not in out + err and "Do you wish" not in out + err
    assert out == ""  # nothing on stdout: --json output stays clean
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "preprocessor_config.json" in lines[0] and "--trust-remote-code" in lines[0]


@pytest.mark.slow
def test_cli_with_the_flag_runs_the_named_code_and_says_where_it_comes_from(tmp_path):
    """Documented: --trust-remote-code lets the folder's code run, after a notice naming it."""
    folder, marker = evil_folder(tmp_path, "preprocessor_config.json")
    solid("red").save(tmp_path / "a.jpg")
    r = _cli(["classify", "a.jpg", "--model", str(folder), "--json", "--trust-remote-code"], tmp_path, stdin=b"")
    err = r.stderr.decode()
    assert r.returncode == 0, err
    assert marker.exists()  # the flag means: run it
    assert "--trust-remote-code" in err and str(folder) in err
    assert json.loads(r.stdout.decode().splitlines()[-1])["error"] is None

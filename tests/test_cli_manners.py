"""CLI manners (issue 18, part 6): help for every flag with its default, examples for every
subcommand, -v/-q logging on stderr and results alone on stdout."""

from __future__ import annotations

import argparse
import json
import os

import pytest

from engine.cli.app import build_parser, main

from .support.data import COLOUR_SYSTEM, solid


def _commands(parser, path=()):
    """(command path, parser) for every subcommand, depth first."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*path, name), sub
                yield from _commands(sub, (*path, name))


def _leaves():
    return [(path, p) for path, p in _commands(build_parser())
            if not any(isinstance(a, argparse._SubParsersAction) for a in p._actions)]


@pytest.mark.parametrize("path, parser", _leaves(), ids=lambda x: " ".join(x) if isinstance(x, tuple) else "")
def test_every_flag_has_help_with_its_default_and_every_command_examples(path, parser):
    assert parser.epilog and "examples:" in parser.epilog and "twentyq " + path[0] in parser.epilog, path
    for a in parser._actions:
        if isinstance(a, (argparse._HelpAction, argparse._VersionAction)):
            continue
        assert a.help and a.help != argparse.SUPPRESS, (path, a.dest)
        if a.option_strings and a.default not in (None, False, argparse.SUPPRESS) and not isinstance(a.default, list):
            assert "default" in a.help, (path, a.option_strings, a.default)


def test_results_on_stdout_messages_on_stderr_and_v_q(tmp_path, capsys, monkeypatch):
    import engine.encoders

    from .support.encoders import FakeEncoder

    monkeypatch.setattr(engine.encoders, "load_encoder", lambda *a, **k: FakeEncoder())
    (tmp_path / "s.json").write_text(json.dumps(COLOUR_SYSTEM))
    solid("red").save(tmp_path / "a.png")
    args = ["classify", str(tmp_path / "a.png"), "--system", str(tmp_path / "s.json"), "--json", "--quiet",
            "--budget", "1"]
    assert main(args) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["label"] == "cherry"
    assert "below the cheapest question" in err and err.startswith("twentyq: ")  # a warning, on stderr
    assert main(["-v", *args]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["label"] == "cherry" and "loaded model" in err
    assert main(["-q", *args]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["label"] == "cherry" and err == ""  # -q: warnings off, results unchanged
    assert main(["-q", "classify", str(tmp_path / "a.png"), "--tau", "3"]) == 2
    assert "tau == 3.0" in capsys.readouterr().err  # errors are never silenced


@pytest.mark.parametrize("mode", ["baseline", "full", "adaptive"])
def test_eval_report_line_for_every_mode(mode):
    """The eval headline formats for every mode: τ (None outside adaptive) is printed for adaptive runs only."""
    from engine.cli.options import report_line
    from engine.run.evaluation import EvalReport

    adaptive = mode == "adaptive"
    rep = EvalReport(n=4, accuracy=0.5, ci95=(0.1, 0.9), acc5=None, mean_per_class_recall=0.5, mean_q=3.0,
                     median_q=3.0, text_encodes=5, text_hits=0, model="offline", system="s", data="d", mode=mode,
                     policy="eig" if adaptive else None, tau=0.9 if adaptive else None, delta=None, budget=None,
                     shortlist=None, scorer="bayes", eps=0.05, per_class={}, confusion=[], skipped=[], stops={},
                     seconds_embed=0.0, seconds_classify=0.0)
    line = report_line(rep)
    assert line.startswith(f"{mode}") and ("τ=0.9" in line) == adaptive and "accuracy 0.500 [0.100, 0.900]" in line


# --------------------------------------------------------------------------- issue 25 item 7
def _colour_eval(tmp_path, monkeypatch):
    import engine.encoders

    from .support.encoders import FakeEncoder

    monkeypatch.setattr(engine.encoders, "load_encoder", lambda *a, **k: FakeEncoder())
    (tmp_path / "s.json").write_text(json.dumps(COLOUR_SYSTEM))
    solid("red").save(tmp_path / "a.png")
    (tmp_path / "d.csv").write_text("path,label\na.png,cherry\n")
    return ["eval", "--data", str(tmp_path / "d.csv"), "--system", str(tmp_path / "s.json"), "--budget", "1"]


def test_v_and_q_work_after_the_subcommand_too(tmp_path, capsys, monkeypatch):
    args = _colour_eval(tmp_path, monkeypatch)
    assert main(args) == 0
    assert "below the cheapest question" in capsys.readouterr().err  # a warning by default
    assert main([*args, "-q"]) == 0
    out, err = capsys.readouterr()
    assert err == "" and "accuracy" in out  # -q after the subcommand: warnings off, results unchanged
    assert main([*args, "-v"]) == 0
    assert "loaded model" in capsys.readouterr().err
    assert main(["-v", *args]) == 0  # given before, not reset by the subcommand's own (absent) -v
    assert "loaded model" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "nope.json"), "-q"]) == 2  # parsed, not "unrecognized arguments"
    err = capsys.readouterr().err
    assert "not found" in err and "unrecognized" not in err
    with pytest.raises(FileNotFoundError):  # --debug after the subcommand: the traceback
        main(["report", str(tmp_path / "nope.json"), "--debug"])


def test_progress_bars_only_on_a_terminal_or_with_progress(tmp_path, capsys, monkeypatch):
    args = _colour_eval(tmp_path, monkeypatch)
    assert main(args) == 0
    assert "eval adaptive" not in capsys.readouterr().err  # stderr is not a terminal here: no bar
    assert main([*args, "--progress"]) == 0
    assert "eval adaptive" in capsys.readouterr().err  # asked for: drawn anyway
    assert main(["--progress", *args, "-q"]) == 0
    assert "eval adaptive" not in capsys.readouterr().err  # -q still wins


def _site_package(tmp_path, monkeypatch, name, body):
    site = tmp_path / "venv" / "lib" / "python3" / "site-packages"
    (site / name).mkdir(parents=True)
    (site / name / "__init__.py").write_text(body)
    monkeypatch.syspath_prepend(str(site))
    return site


@pytest.mark.parametrize("body, kind", [
    ('raise RuntimeError("operator torchvision::nms does not exist")\n', "RuntimeError"),
    ("import torch\ntorch.this_attribute_is_not_there\n", "AttributeError"),
    ("from json import no_such_name\n", "ImportError"),
])
def test_a_broken_installed_package_is_a_configuration_error_naming_it(tmp_path, capsys, monkeypatch, body, kind):
    import importlib

    import engine.encoders

    _site_package(tmp_path, monkeypatch, "brokenvision", body)
    monkeypatch.setattr(engine.encoders, "list_models", lambda: importlib.import_module("brokenvision"))
    assert main(["models"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'brokenvision' failed to import" in err[0] and kind in err[0], err
    assert "pip install --force-reinstall brokenvision" in err[0] and "a bug" not in err[0]


def test_a_missing_package_is_exit_2_and_a_bug_of_ours_stays_exit_3(tmp_path, capsys, monkeypatch):
    import importlib

    import engine.encoders

    monkeypatch.setattr(engine.encoders, "list_models", lambda: importlib.import_module("not_installed_pkg_xyz"))
    assert main(["models"]) == 2
    assert "'not_installed_pkg_xyz' failed to import" in capsys.readouterr().err

    def ours():
        raise RuntimeError("a bug of ours")

    monkeypatch.setattr(engine.encoders, "list_models", ours)
    assert main(["models"]) == 3
    assert "internal error (a bug" in capsys.readouterr().err
    monkeypatch.setattr(engine.encoders, "list_models", lambda: importlib.import_module("engine.no_such_module"))
    assert main(["models"]) == 3  # an import of our own that fails is a bug, not the environment
    capsys.readouterr()


def sigint_disposition() -> str:
    import signal

    return "ignored" if signal.getsignal(signal.SIGINT) is signal.SIG_IGN else "handled"


@pytest.mark.slow
def test_decode_workers_ignore_ctrl_c_so_only_the_main_process_reports_it():
    from engine.encoders.worker_pool import WorkerPool

    pool = WorkerPool(1)
    try:
        assert pool.submit(sigint_disposition).result(timeout=60) == "ignored"
    finally:
        pool.shutdown()


def _interrupt_after(n_shards: int, real):
    """LocalExecutor.map_shards (``real``) that yields ``n_shards`` finished shards, then gets Ctrl-C."""

    def map_shards(self, job, shards, progress=None):
        if n_shards == 0:
            raise KeyboardInterrupt
        for i, got in enumerate(real(self, job, shards, progress)):
            yield got
            if i + 1 == n_shards:
                raise KeyboardInterrupt

    return map_shards


@pytest.mark.parametrize("command", ["eval", "classify"])
def test_ctrl_c_prints_one_line_with_the_truth_about_shards(tmp_path, capsys, monkeypatch, command):
    from engine.run.pipeline import LocalExecutor

    args = _colour_eval(tmp_path, monkeypatch)
    for i in range(1, 3):
        solid("red").save(tmp_path / f"b{i}.png")
    (tmp_path / "d.csv").write_text("path,label\na.png,cherry\nb1.png,cherry\nb2.png,cherry\n")
    if command == "classify":
        args = ["classify", *(str(tmp_path / f) for f in ("a.png", "b1.png", "b2.png")), *args[3:]]
    real = LocalExecutor.map_shards
    for n, out, expect in ((0, "none.jsonl", "no shard had finished (3 to do), so no results were kept"),
                           (1, "one.jsonl", "1 of 3 shard(s) finished and kept in")):
        monkeypatch.setattr(LocalExecutor, "map_shards", _interrupt_after(n, real))
        assert main([*args, "--out", str(tmp_path / out), "--shard-size", "1", "-q"]) == 130
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("twentyq: interrupted; ") and expect in err[0], err
        assert not (tmp_path / out).exists()  # no table for an unfinished run


@pytest.mark.slow
def test_a_reader_that_goes_away_ends_the_output_quietly(tmp_path):
    """`twentyq … | head`: a closed pipe stops the command with no error line (was 'error: Broken pipe')."""
    import subprocess
    import sys

    classes = [f"class{i:05d}" for i in range(20000)]  # its listing is far over a pipe's 64 KiB buffer
    system = {"name": "big", "groups": [{"name": "g", "template": "a photo of something {}.", "options": ["red", "blue"]}],
              "rules": {c: {"g": i % 2} for i, c in enumerate(classes)}}
    (tmp_path / "big.json").write_text(json.dumps(system))
    p = subprocess.Popen([sys.executable, "-m", "engine.cli", "system", "show", str(tmp_path / "big.json")],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.read(100)
    p.stdout.close()  # what head does after its lines
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 141 and err == "", err


def test_a_shortlist_on_a_system_without_class_names_is_a_usage_error(capsys):
    """--shortlist asks class names; a system without that group is the user's to fix (exit 2, one line, before
    the model loads), not 'internal error (a bug)'."""
    assert main(["classify", "no-such-image.png", "--system", "pokemon15_gen1", "--shortlist", "4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--shortlist" in err[0] and "class_name" in err[0]


def test_an_os_error_is_the_users_only_on_a_path_they_named_or_the_machines(tmp_path, capsys, monkeypatch):
    """A missing file the project chose itself is a bug (exit 3), not a usage error; the same error on a path
    the command line named, or a full disk anywhere, is one line naming the path and the fix (exit 2)."""
    import errno

    import engine.encoders

    def missing(path):
        def raise_it():
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)
        return raise_it

    monkeypatch.setattr(engine.encoders, "list_models", missing("/nowhere/ours/index.json"))
    assert main(["models"]) == 3
    assert "internal error (a bug" in capsys.readouterr().err
    monkeypatch.setattr(engine.encoders, "list_models",
                        lambda: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device", "/cache/x")))
    assert main(["models"]) == 2
    err = capsys.readouterr().err
    assert "'/cache/x': No space left on device; free some disk space" in err and err.count("\n") == 1
    monkeypatch.setattr(engine.encoders, "list_models", lambda: (_ for _ in ()).throw(OSError("hub: no such model")))
    assert main(["models"]) == 2  # no file name (a model hub's refusal): the user's, as before
    capsys.readouterr()


def test_os_error_line_relates_the_error_to_the_paths_named(tmp_path):
    import errno

    from engine.cli.options import os_error_line

    named = [str(tmp_path / "out" / "x.csv")]
    enoent = lambda f: FileNotFoundError(errno.ENOENT, "No such file or directory", f)  # noqa: E731
    assert os_error_line(enoent(str(tmp_path / "out" / "x.csv.d")), named).endswith("check the path (its folder "
                                                                                      "must exist)")
    assert os_error_line(enoent(str(tmp_path / "out")), named) is not None  # the folder above it
    assert os_error_line(enoent(str(tmp_path / "other.csv")), named) is None
    assert os_error_line(PermissionError(errno.EACCES, "Permission denied", "/etc/x"), named).endswith(
        "check its permissions or use another path")
    # whole path parts, and only what the user typed: a default such as "auto" or a root "/" owns nothing
    from engine.cli.options import named_paths

    typed = named_paths(["classify", "a.png", "--engine=auto", "--out", "/"])
    assert os.path.abspath("a.png") in typed and os.path.abspath("auto") in typed and len(typed) == 4
    assert os_error_line(enoent(os.path.abspath("auto_cache/x")), typed) is None
    assert os_error_line(enoent("/srv/ours/index.json"), typed) is None
    assert os_error_line(OSError(errno.EIO, "Input/output error", "/srv/ours/x"), typed).endswith("check the path")


def test_budget_outside_the_adaptive_mode_is_refused_not_ignored(tmp_path, capsys):
    solid("red").save(tmp_path / "r.png")
    assert main(["classify", str(tmp_path / "r.png"), "--labels", "a,b,c", "--budget", "1"]) == 2
    err = capsys.readouterr().err
    assert "--budget 1: the baseline mode (the default with --labels)" in err and err.count("\n") == 1
    assert main(["classify", str(tmp_path / "r.png"), "--mode", "full", "--budget", "3"]) == 2
    assert "--mode adaptive" in capsys.readouterr().err


def test_compare_checks_the_plot_folder_before_the_run(tmp_path, capsys):
    solid("red").save(tmp_path / "r.png")
    (tmp_path / "d.csv").write_text("path,label\nr.png,a\n", encoding="utf-8")
    assert main(["compare", "--data", str(tmp_path / "d.csv"), "--labels", "a,b",
                 "--plot", str(tmp_path / "nodir" / "p.png")]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "nodir" in err


def test_small_user_mistakes_get_their_own_words(tmp_path, capsys):
    """From the fresh-user pass: a file as --cache-dir was ignored silently; a file as --out's folder was "does
    not exist"; an empty image file was an "unknown format"."""
    solid("red").save(tmp_path / "r.png")
    (tmp_path / "notes.txt").write_text("x")
    assert main(["classify", str(tmp_path / "r.png"), "--cache-dir", str(tmp_path / "notes.txt")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert main(["classify", str(tmp_path / "r.png"), "--out", str(tmp_path / "r.png" / "x.csv")]) == 2
    assert "is a file, not a folder; write elsewhere" in capsys.readouterr().err
    (tmp_path / "empty.png").write_bytes(b"")
    assert main(["classify", str(tmp_path / "empty.png"), "--model", "offline"]) == 1
    seen = capsys.readouterr()
    assert "an empty file (0 bytes)" in seen.out + seen.err


def test_compare_on_data_without_rows_is_refused_not_a_table_of_nan(tmp_path, capsys):
    (tmp_path / "h.csv").write_text("path,label\n", encoding="utf-8")
    assert main(["compare", "--data", str(tmp_path / "h.csv"), "--labels", "a,b"]) == 2
    err = capsys.readouterr().err
    assert "has no rows" in err and err.count("\n") == 1


def test_when_every_image_stopped_on_confidence_the_summary_prints_no_accuracy_of_none():
    """It printed "the others: 0 image(s) (none), accuracy nan"."""
    from types import SimpleNamespace

    from engine.cli.options import calibration_lines

    cal = {"path": "cal.json", "sha256": "ab" * 32, "model": "m", "system": "s", "system_sha256": "cd" * 32,
           "applied": True, "excluded_dev_images": 0}
    rep = SimpleNamespace(calibration=cal, accuracy=0.75, mean_q=12.0,
                          confident={"n": 4, "accuracy": 0.75, "ci95": [0.19, 0.99]},
                          not_confident={"n": 0, "accuracy": float("nan"), "stops": {}})
    text = "\n".join(calibration_lines(rep))
    assert "nan" not in text and "no other image; overall accuracy 0.750, mean Q 12.0" in text
    rep.not_confident = {"n": 2, "accuracy": 0.5, "stops": {"exhausted": 2}}
    assert "the others: 2 image(s) (exhausted 2), accuracy 0.500; overall" in "\n".join(calibration_lines(rep))

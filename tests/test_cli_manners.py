"""CLI manners (issue 18, part 6): help for every flag with its default, examples for every
subcommand, -v/-q logging on stderr and results alone on stdout."""

from __future__ import annotations

import argparse
import json

import pytest

from engine.cli.app import build_parser, main

from .fakes import COLOUR_SYSTEM, solid


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

    from .fakes import FakeEncoder

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

"""Hostile inputs, round three (issue 27): decoders that shell out, the one guarded reader, calibration
files, terminals, ``system analyze`` at 100,000 classes and ``calibrate --out``.

Cases that could hang run under an alarm (in-process) or in a subprocess with a timeout, so a
regression fails the test instead of hanging the suite. See docs/reliability.md, "Hostile inputs,
round three".
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from PIL import Image

from engine.encoders.images import IMAGE_FORMATS, ImageLoadError, load_image, load_image_bytes
from engine.common.files import (
    TEXT_INPUT_LIMIT, InputTooLarge, UnreadableInput, hash_file, open_guarded, read_bytes_capped, read_text_capped,
)
from engine.common.printable import control_characters, printable

from .strategies import systems as gen_systems
from .support.data import png_header_only

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}
EPS = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n0 0 moveto 10 10 lineto stroke\nshowpage\n%%EOF\n")


@contextlib.contextmanager
def no_hang(seconds: float = 10):
    """Fail (TimeoutError) instead of blocking forever: a blocked open() or read() is interrupted by SIGALRM."""
    def fire(signum, frame):
        raise TimeoutError(f"blocked for more than {seconds} s")

    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def cli(args, cwd, timeout=120, env=None) -> subprocess.CompletedProcess:
    """``twentyq ARGS`` in a process limited to 3 GB (a regression fails instead of eating the machine)."""
    import resource

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))

    try:
        return subprocess.run([sys.executable, "-m", "engine.cli", *args], capture_output=True, text=True,
                              env=env or ENV, cwd=cwd, timeout=timeout, preexec_fn=limit)
    except subprocess.TimeoutExpired:
        pytest.fail(f"twentyq {' '.join(args)} ran for more than {timeout} s")


def hostile(tmp: Path, kind: str, size: int = TEXT_INPUT_LIMIT) -> str:
    """A path to a hostile input: a FIFO, /dev/zero, a symlink to /dev/zero, or a sparse file over ``size``."""
    if kind == "fifo":
        os.mkfifo(tmp / "fifo")
        return str(tmp / "fifo")
    if kind == "dev_zero":
        return "/dev/zero"
    if kind == "link_to_dev_zero":
        os.symlink("/dev/zero", tmp / "link.json")
        return str(tmp / "link.json")
    p = tmp / "huge.json"
    with open(p, "wb") as f:
        f.truncate(size + 1)  # sparse: costs no disk
    return str(p)


KINDS = ["fifo", "dev_zero", "link_to_dev_zero", "over_size"]


# --------------------------------------------------------------------------- the one guarded reader
@pytest.mark.parametrize("kind", KINDS)
def test_the_guarded_reader_refuses_fast(tmp_path, kind):
    path = hostile(tmp_path, kind)
    with no_hang(10):
        for read in (lambda: read_bytes_capped(path, what="calibration"),
                     lambda: read_text_capped(path, what="calibration"),
                     lambda: hash_file(path, TEXT_INPUT_LIMIT, what="image"),
                     lambda: open_guarded(path, TEXT_INPUT_LIMIT, what="calibration")):
            with pytest.raises(UnreadableInput) as e:
                read()
            msg = str(e.value)
            assert path in msg and "\n" not in msg
            assert ("not a regular file" in msg) if kind != "over_size" else isinstance(e.value, InputTooLarge)


def test_the_guarded_reader_checks_what_it_opened_not_only_what_it_stat_ed(tmp_path, monkeypatch):
    """A file swapped for a FIFO between the stat and the open is refused by the fstat, without blocking."""
    import engine.common.files as files

    os.mkfifo(tmp_path / "swapped")
    monkeypatch.setattr(files, "check_regular_file", lambda path, what="file": None)  # the stat saw a file
    with no_hang(10), pytest.raises(UnreadableInput, match="not a regular file"):
        files.read_bytes_capped(tmp_path / "swapped", what="system file")


def test_the_guarded_reader_reads_regular_files_and_folders_are_refused(tmp_path):
    (tmp_path / "a.txt").write_text("hello\n")
    assert read_text_capped(tmp_path / "a.txt") == "hello\n"
    import hashlib

    assert hash_file(tmp_path / "a.txt") == hashlib.sha256(b"hello\n").hexdigest()
    with pytest.raises(IsADirectoryError):
        read_bytes_capped(tmp_path)
    with pytest.raises(FileNotFoundError):
        read_bytes_capped(tmp_path / "missing")


@pytest.mark.parametrize("kind", KINDS)
def test_dev_image_hashing_never_waits_on_a_data_row(tmp_path, kind):
    """eval/compare/calibrate --calibration hash the data rows to leave the dev images out: a FIFO or a symlink
    to /dev/zero hung them. Now such a row is no dev image (None), and later its own per-item error."""
    from engine.run.calibration_file import exclude_dev, image_sha256
    from engine.run.datasets import Item

    path = hostile(tmp_path, kind, size=2 << 30)  # over the 1 GiB image cap
    with no_hang(10):
        assert image_sha256(path) is None
        assert image_sha256(Item(path, "x")) is None
    with no_hang(10), pytest.raises(ImageLoadError):
        load_image(path)
    with no_hang(10), pytest.raises(ImageLoadError):
        from engine.encoders.image_cache import content_hash
        content_hash(path)

    class Cal:
        dev = {"image_sha256": ["0" * 64]}

    with no_hang(10):
        assert exclude_dev([Item(path, "x")], Cal()) == ([Item(path, "x")], 0)


# each file kind the CLI reads, with the command that reads it before any model loads
FILE_KINDS = {
    "calibration": lambda p: ["eval", "--data", "d.csv", "--system", "s.json", "--calibration", p],
    "descriptors": lambda p: ["classify", "img.png", "--mode", "descriptors", "--descriptors", p],
    "labels_file": lambda p: ["classify", "img.png", "--labels-file", p],
    "system": lambda p: ["system", "validate", p],
    "templates": lambda p: ["classify", "img.png", "--system", "s.json", "--templates", p],
    "data": lambda p: ["eval", "--data", p, "--system", "s.json"],
    "api_key_file": lambda p: ["serve", "--api-key-file", p, "--model", "offline"],
}


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("what", sorted(FILE_KINDS))
def test_every_input_file_is_refused_fast_with_exit_2_and_one_line(tmp_path, what, kind):
    from .support.data import COLOUR_SYSTEM

    (tmp_path / "s.json").write_text(json.dumps(COLOUR_SYSTEM))
    Image.new("RGB", (8, 8)).save(tmp_path / "img.png")
    (tmp_path / "d.csv").write_text("path,label\nimg.png,cherry\n")
    if what == "api_key_file":
        pytest.importorskip("fastapi", reason="serve needs the twentyq[serve] extra")
    size = {"system": 256 << 20, "data": 256 << 20, "api_key_file": 64 << 10}.get(what, TEXT_INPUT_LIMIT)
    path = hostile(tmp_path, kind, size=size)
    r = cli(FILE_KINDS[what](path), tmp_path, timeout=120)
    assert r.returncode == 2, r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert path in lines[0] and ("not a regular file" in lines[0] or "larger than" in lines[0]), lines[0]


@pytest.mark.parametrize("kind", KINDS)
def test_the_api_key_file_is_read_through_the_guarded_reader(tmp_path, kind):
    from engine.serve.settings import read_api_key

    path = hostile(tmp_path, kind, size=64 * 1024)
    with no_hang(10), pytest.raises(ValueError) as e:
        read_api_key(path)
    assert path in str(e.value) and "\n" not in str(e.value)
    (tmp_path / "key").write_text("s3cret\n")
    assert read_api_key(str(tmp_path / "key")) == "s3cret"


# --------------------------------------------------------------------------- one image-format policy
def _gs_stub(tmp: Path) -> tuple[dict, Path]:
    """PATH with a stub ``gs`` first that writes a marker file when run (Pillow's EPS plugin calls gs)."""
    (tmp / "bin").mkdir()
    gs = tmp / "bin" / "gs"
    gs.write_text('#!/bin/sh\necho "$@" > "$GS_MARKER"\nexit 1\n')
    gs.chmod(0o755)
    marker = tmp / "gs_ran"
    return {**ENV, "PATH": f"{tmp / 'bin'}:{os.environ.get('PATH', '')}", "GS_MARKER": str(marker)}, marker


@pytest.mark.slow
def test_an_eps_named_jpg_never_reaches_ghostscript(tmp_path):
    """Files, bytes, report thumbnails and the server: one list (IMAGE_FORMATS), one message naming EPS."""
    (tmp_path / "evil.jpg").write_bytes(EPS)
    env, marker = _gs_stub(tmp_path)
    code = textwrap.dedent("""
        from pathlib import Path
        from engine.encoders.images import ImageLoadError, load_image, load_image_bytes
        from engine.reports.html import _thumb
        data = Path("evil.jpg").read_bytes()
        for f in (lambda: load_image("evil.jpg"), lambda: load_image_bytes("evil.jpg", data), lambda: load_image(data)):
            try:
                f()
            except ImageLoadError as e:
                print("ERR", e.cause)
        print("THUMB", _thumb("evil.jpg", []))
        try:
            from engine.serve.uploads import decode_image
            from engine.serve.schemas import ApiError
            try:
                decode_image(data, "image[0]", 10_000_000)
            except ApiError as e:
                print("API", e.status, e.message if hasattr(e, "message") else e)
        except ImportError:
            print("API skipped")
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert not marker.exists(), f"gs ran: {marker.read_text()}"
    errs = [ln for ln in r.stdout.splitlines() if ln.startswith("ERR")]
    assert len(errs) == 3 and all("EPS is not an image format twentyq reads" in e for e in errs), r.stdout
    assert all(", ".join(IMAGE_FORMATS) in e for e in errs)
    assert "THUMB None" in r.stdout
    assert "API skipped" in r.stdout or ("API 400" in r.stdout and "EPS" in r.stdout), r.stdout


@pytest.mark.slow
def test_cli_classify_of_an_eps_is_a_per_item_error_and_gs_never_runs(tmp_path):
    from .support.data import COLOUR_SYSTEM

    (tmp_path / "evil.jpg").write_bytes(EPS)
    Image.new("RGB", (8, 8), (250, 5, 5)).save(tmp_path / "good.png")
    (tmp_path / "s.json").write_text(json.dumps(COLOUR_SYSTEM))
    env, marker = _gs_stub(tmp_path)
    r = cli(["classify", "good.png", "evil.jpg", "--system", "s.json", "--model", "offline", "--json"], tmp_path,
            timeout=300, env=env)
    rows = [json.loads(ln) for ln in r.stdout.splitlines() if ln.startswith("{")]
    assert len(rows) == 2, r.stderr[-2000:]
    assert rows[0]["error"] is None and "EPS is not an image format" in rows[1]["error"]
    assert "gs" not in rows[1]["error"].split(":")[-1].split() and not marker.exists()


def test_every_allowed_format_loads_and_others_are_named(tmp_path):
    for fmt in IMAGE_FORMATS:
        p = tmp_path / f"x.{fmt.lower()}"
        Image.new("RGB", (9, 7), (10, 200, 30)).save(p, fmt)
        assert load_image(p).size == (9, 7)
    Image.new("RGB", (9, 7)).save(tmp_path / "x.ico", "ICO")
    with pytest.raises(ImageLoadError, match=r"ICO is not an image format twentyq reads; it reads PNG, JPEG"):
        load_image(tmp_path / "x.ico")
    with pytest.raises(ImageLoadError, match="PDF is not an image format .* Ghostscript"):
        load_image_bytes("doc.png", b"%PDF-1.4\n" + b"0" * 64)
    with pytest.raises(ImageLoadError, match="not an image twentyq reads"):
        load_image_bytes("notes.png", b"hello, this is text")


@pytest.mark.slow
def test_report_html_shows_a_placeholder_for_a_bomb_and_exits_0(tmp_path, monkeypatch):
    """A run whose recorded image is now a decompression bomb (or an EPS): the thumbnail is a placeholder."""
    from engine.cli.app import main

    from .support.runs import two_eval_runs

    runs = two_eval_runs(tmp_path, monkeypatch)
    for p in tmp_path.glob("*.png"):
        p.write_bytes(png_header_only(100_000, 100_000) if p.name[0] in "rgb" else EPS)
    out = tmp_path / "r.html"
    assert main(["report", *map(str, runs), "--html", str(out)]) == 0
    doc = out.read_text(encoding="utf-8")
    assert "(image not readable here)" in doc and "data:image/jpeg;base64," not in doc


# --------------------------------------------------------------------------- calibration files
@pytest.fixture(scope="module")
def cal_json(tmp_path_factory):
    """A real calibration file (pokemon15, 30 simulated dev images), as parsed JSON."""
    from engine.run.calibration_file import fit_calibration, save_calibration
    from systems import load_system

    s = load_system("pokemon15")
    rng = np.random.default_rng(0)
    cal = fit_calibration(rng.standard_normal((30, s.q_total)), np.arange(30) % s.n_classes, s, lam0=100.0,
                          eps=0.05, model="m", model_id="m@1", dev={"image_sha256": ["ab" * 32]})
    p = tmp_path_factory.mktemp("cal") / "cal.json"
    save_calibration(cal, p)
    return json.loads(p.read_text())


def _set(path: str, value):
    def edit(d):
        *head, last = path.split(".")
        for k in head:
            d = d[int(k)] if isinstance(d, list) else d[k]
        if isinstance(d, list):
            d[int(last)] = value
        else:
            d[last] = value
    return edit


BAD_FIELDS = [
    ("policies", "abc", "field policies is 'abc'"),
    ("dev.image_sha256", 5, "field dev.image_sha256 is 5"),
    ("dev.image_sha256", ["xyz"], "field dev.image_sha256[0]"),
    ("channels.groups.0.reliability", float("nan"), "field channels.groups[0].reliability is nan"),
    ("channels.groups.0.reliability", -0.5, "field channels.groups[0].reliability is -0.5"),
    ("channels.groups.0.reliability", 1.5, "channels.groups[0].reliability"),
    ("channels.lam0", -1, "field channels.lam0 is -1"),
    ("channels.lam0", float("nan"), "field channels.lam0 is nan"),
    ("channels.lam0", "100", "field channels.lam0"),
    ("channels.groups.1.n_dev", -3, "field channels.groups[1].n_dev is -3"),
    ("channels.groups.1.n_dev", 2.5, "field channels.groups[1].n_dev"),
    ("channels.groups.1.lam", 0, "field channels.groups[1].lam"),
    ("channels.eps", 1.0, "field channels.eps"),
    ("channels.groups.0.options", True, "field channels.groups[0].options"),
    ("policies.eig.conf.0.0", 1.5, "field policies.eig.conf[0][0] is 1.5"),
    ("policies.eig.q.0.0", -2, "field policies.eig.q[0][0]"),
    ("policies.eig.correct.0.0", 2, "field policies.eig.correct[0][0]"),
    ("model.model_id", 7, "field model.model_id"),
    ("system", [], "field system"),
    ("channels.groups", {}, "field channels.groups"),
    ("setting", "many-shot", "field setting is 'many-shot'"),
    ("few_shot", 5, "field few_shot is 5"),
    ("decision", [], "field decision"),
]


@pytest.mark.parametrize("path, value, needle", BAD_FIELDS, ids=[f"{p}={v!r}" for p, v, _ in BAD_FIELDS])
def test_a_calibration_field_out_of_range_is_refused_naming_file_and_field(cal_json, tmp_path, path, value, needle):
    from engine.run.calibration_file import CalibrationError, load_calibration

    d = copy.deepcopy(cal_json)
    _set(path, value)(d)
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(d))  # NaN is written as the NaN token, which Python's json reads back
    with pytest.raises(CalibrationError) as e:
        load_calibration(p)
    msg = str(e.value)
    assert needle in msg and "bad.json" in msg and "\n" not in msg and "twentyq calibrate" in msg


def test_the_untouched_calibration_loads(cal_json, tmp_path):
    from engine.run.calibration_file import load_calibration

    p = tmp_path / "ok.json"
    p.write_text(json.dumps(cal_json))
    assert load_calibration(p).model_id == "m@1"


@pytest.mark.slow
@pytest.mark.parametrize("content", ["[" * 100_000, '{"format": "twentyq-calibration-v1", "policies": "abc"}',
                                     "CAL"])
def test_cli_malformed_calibration_is_exit_2_not_a_bug(tmp_path, cal_json, content):
    from .support.data import COLOUR_SYSTEM

    if content == "CAL":
        d = copy.deepcopy(cal_json)
        d["dev"]["image_sha256"] = 5
        content = json.dumps(d)
    (tmp_path / "cal.json").write_text(content)
    (tmp_path / "s.json").write_text(json.dumps(COLOUR_SYSTEM))
    (tmp_path / "d.csv").write_text("path,label\nimg.png,cherry\n")
    r = cli(["eval", "--data", "d.csv", "--system", "s.json", "--calibration", "cal.json"], tmp_path)
    assert r.returncode == 2, r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "cal.json" in lines[0] and "internal error" not in lines[0], r.stderr


# --------------------------------------------------------------------------- terminals
NASTY = ["\x1b[2J", "\x1b]0;pwned\x07", "\x07", "\x00", "a\nforged row", "\r", "\x9b31m", "\x7f", "\u202eevil"]


@pytest.mark.parametrize("text", NASTY)
def test_printable_escapes_every_control_character(text):
    out = printable(text)
    assert out.isprintable() and control_characters(out) == []
    assert control_characters(text)
    assert printable("Pokémon 🐍 plain") == "Pokémon 🐍 plain"  # other text unchanged


def test_the_results_table_and_eval_lines_escape_names(capsys):
    from engine.cli.options import print_report, print_result, short

    class Step:
        group, answer = "col\x1b[2Jour", "r\x07ed"

    class R:
        image, error, label, confidence, q_spent, stop, steps = "a\x1b]0;x\x07.jpg", None, "cat\nforged", 0.9, 3, \
            "confident", [Step()]

    print_result(R(), as_json=False)
    R.error = "cannot load image 'x\x1b[2J'"
    print_result(R(), as_json=False)
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and out.count("\n") == 2
    assert "\\x1b[2J" in out and "cat\\nforged" in out
    assert short("evil\x1b[31m.jpg", 40) == "evil\\x1b[31m.jpg"

    class Rep:
        ci95, mode, accuracy, n, acc5, mean_per_class_recall, mean_q, median_q = (0.1, 0.9), "full", 0.5, 2, None, \
            0.5, 1.0, 1.0
        text_encodes, model, calibration, confident, target = 0, "fake", None, None, None
        confusion = [{"label": "a\x1b[2J", "predicted": "b\nforged: x -> y (9)", "count": 1}]
        by = {"site": {"x\x07": {"accuracy": 1.0, "n": 1}}}

    print_report(Rep(), "site", quiet=False)
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out
    assert [ln for ln in out.splitlines() if ln.startswith("  confused:")] == \
        ["  confused: a\\x1b[2J -> b\\nforged: x -> y (9) (1)"]


def test_error_lines_escape_control_characters(capsys):
    from engine.cli.app import main

    assert main(["system", "validate", "no\x1b[2Jsuch.json"]) == 2
    err = capsys.readouterr().err
    assert "\x1b" not in err and err.count("\n") == 1


@pytest.mark.parametrize("where, edit", [
    ("rules['c\\x1b[2J']", lambda s: s["rules"].update({"c\x1b[2J": s["rules"].pop("cherry")})),
    ("groups[0].name", lambda s: s["groups"][0].update(name="col\x00our")),
    ("groups[0].options[0]", lambda s: s["groups"][0]["options"].__setitem__(0, "r\x07ed")),
    ("groups[0].template", lambda s: s["groups"][0].update(template="a \x1b]0;t\x07 {}")),
    ("baseline_template", lambda s: s.update(baseline_template="a photo of\n{}")),
    ("name", lambda s: s.update(name="sys\x9b")),
])
def test_the_validator_refuses_control_characters_in_names_with_the_path(where, edit):
    from systems import SystemValidationError, parse_system

    from .support.data import COLOUR_SYSTEM

    s = copy.deepcopy(COLOUR_SYSTEM)
    if isinstance(s["groups"], dict):
        pytest.skip("COLOUR_SYSTEM changed shape")
    edit(s)
    with pytest.raises(SystemValidationError) as e:
        parse_system(s)
    hits = [p for p in e.value.problems if "control character" in p]
    assert len(hits) == 1 and hits[0].startswith(where), e.value.problems
    assert "\x1b" not in str(e.value) and "\x07" not in str(e.value) and "\x00" not in str(e.value)


# --------------------------------------------------------------------------- system analyze at scale
@settings(max_examples=150, deadline=None)
@given(system=gen_systems(max_classes=12, max_groups=4, max_k=4))
def test_analysis_by_signature_equals_the_pairwise_definition(system):
    """The grouped computation against the (G, C, C) definition, on systems with nulls and multi-option rules."""
    from systems.analysis import (
        analyze, distinction_tensor, identical_signatures, indistinguishable_classes, separation_tensor,
    )

    s = system
    sep, dist = separation_tensor(s), distinction_tensor(s)
    C = s.n_classes
    iu = np.triu_indices(C, k=1)
    a = analyze(s)
    assert a.pairwise_skipped is None
    weak = [[s.classes[x], s.classes[y]] for x, y in zip(*iu) if dist[:, x, y].any() and not sep[:, x, y].any()]
    assert a.weakly_distinguishable == weak
    same = ~dist.any(axis=0)
    indist = {frozenset(s.classes[y] for y in range(C) if same[x, y]) for x in range(C)}
    assert {frozenset(g) for g in indistinguishable_classes(s)} == {g for g in indist if len(g) > 1}
    assert {frozenset(g) for g in a.indistinguishable} == {g for g in indist if len(g) > 1}
    ident = {frozenset(c for c, r in zip(s.classes, s.rules) if r == row) for row in s.rules}
    assert {frozenset(g) for g in identical_signatures(s)} == {g for g in ident if len(g) > 1}
    for g, sp in enumerate(a.splits):
        assert sp.pairs_separated == int(np.triu(sep[g], k=1).sum())
    # the greedy set cover over class pairs, as the definition states it
    covers = sep[:, iu[0], iu[1]]
    todo, chosen = covers.any(axis=0), []
    while todo.any():
        gain = (covers & todo).sum(axis=1)
        best = max(range(s.n_groups), key=lambda g: (gain[g], -s.option_counts[g], -g))
        chosen.append(best)
        todo &= ~covers[best]
    assert a.minimal_separating_set == [s.groups[g].name for g in chosen]


def _random_system(rng, n_classes, n_groups):
    from systems import parse_system

    sizes = rng.integers(2, 5, size=n_groups)
    groups = [{"name": f"g{g}", "template": "a {}", "options": [f"o{k}" for k in range(k_)]}
              for g, k_ in enumerate(sizes)]
    rules = {}
    for c in range(n_classes):
        r = {}
        for g, k_ in enumerate(sizes):
            u = rng.random()
            r[f"g{g}"] = None if u < 0.2 else sorted(int(x) for x in rng.choice(k_, 2, replace=False)) if u < 0.4 \
                else int(rng.integers(k_))
        rules[f"c{c}"] = r
    return parse_system({"name": "rnd", "groups": groups, "rules": rules})


def test_analysis_above_the_pairwise_limit_skips_only_the_pairwise_answers(monkeypatch, capsys):
    import systems.analysis as analysis
    from engine.cli.app import main

    monkeypatch.setattr(analysis, "PAIRWISE_LIMIT", 10)
    a = analysis.analyze(analysis_system := _random_system(np.random.default_rng(1), 40, 3))
    assert a.weakly_distinguishable is None and a.minimal_separating_set is None and a.minimal_set_q is None
    assert "PAIRWISE_LIMIT" in a.pairwise_skipped
    assert f"{analysis.pairwise_size(analysis_system):,}" in a.pairwise_skipped
    assert len(a.splits) == 3 and all(sp.pairs_separated >= 0 for sp in a.splits)
    assert main(["system", "analyze", "pokemon15"]) == 0
    out = capsys.readouterr()
    assert "not computed" in out.err and "minimal separating set" not in out.out


# --------------------------------------------------------------------------- calibrate --out
@pytest.mark.parametrize("out, needle", [
    ("/proc/cal.json", "cannot write in the folder"),  # a folder no one, root included, can create files in
    ("missing/cal.json", "does not exist"),
    ("d.csv.json", "is not a twentyq calibration"),
])
def test_calibrate_checks_out_before_loading_anything(tmp_path, monkeypatch, capsys, out, needle):
    from engine.cli.app import main
    from engine.run.config import EncoderSpec

    def never(self):
        raise AssertionError("the model was loaded before --out was checked")

    monkeypatch.setattr(EncoderSpec, "load", never)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d.csv.json").write_text('{"precious": true}')
    assert main(["calibrate", "--data", "d.csv", "--out", out]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1
    assert (tmp_path / "d.csv.json").read_text() == '{"precious": true}'


def test_log_lines_and_one_line_warnings_escape_control_characters(capsys):
    import warnings

    from engine.cli.options import cli_logging, warn
    from engine.encoders.base import OneLineWarning

    with cli_logging():
        warn("bad name 'a\x1b[2J'\nsecond line \x07")
    err = capsys.readouterr().err
    assert err == "twentyq: bad name 'a\\x1b[2J'\nsecond line \\x07\n"
    text = warnings.formatwarning(OneLineWarning("file 'x\x1b]0;t\x07'"), OneLineWarning, "f.py", 1)
    assert "\x1b" not in text and "\x07" not in text and "\\x1b]0;t\\x07" in text


def test_report_escapes_names_from_a_summary_and_refuses_deep_json(tmp_path, capsys):
    from engine.cli.app import main

    summary = {"mode": "adaptive\x1b[2J", "policy": "eig\nforged | row", "tau": 0.9, "accuracy": 0.5, "mean_q": 2.0,
               "n": 2, "model": "m\x07"}
    (tmp_path / "s.json").write_text(json.dumps(summary))
    assert main(["report", str(tmp_path / "s.json")]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "adaptive\\x1b[2J" in out
    assert len([ln for ln in out.splitlines() if ln.startswith("|")]) == 3  # header, rule, one row
    (tmp_path / "deep.json").write_text("[" * 100_000)
    assert main(["report", str(tmp_path / "deep.json")]) == 2
    err = capsys.readouterr().err
    assert "nested too deeply" in err and err.count("\n") == 1

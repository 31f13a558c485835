"""LLM drafts: the prompt, the importer's repairs and refusals, and the --llm path against a fake server."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.cli.app import main
from systems import load_system
from engine.authoring.draft import EXAMPLE, DraftRejected, build_prompt, import_draft
from systems.format import AttributeSystem, Group
from engine.authoring.llm import LLMError, parse_templates, propose_templates

from .strategies import systems

# ----- helpers ----------------------------------------------------------------------------------

BASE = {
    "name": "toy",
    "groups": [
        {"name": "color", "template": "It is mainly {} in color.", "options": ["red", "light blue", "green"]},
        {"name": "body_shape", "template": "Its shape is {}.", "options": ["a ball", "flat and wide"]},
    ],
    "rules": {
        "Apple": {"color": 0, "body_shape": 0},
        "Sky": {"color": 1, "body_shape": 1},
        "Rock": {"color": None, "body_shape": [0, 1]},
    },
}
EXPECTED = import_draft(json.dumps(BASE)).system


def draft_with(**rules) -> dict:
    """BASE with some classes' rules replaced."""
    return {**BASE, "rules": {**BASE["rules"], **rules}}


def run(capsys, *argv):
    """engine.cli.main in-process: (exit code, stdout lines, stderr)."""
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out.splitlines(), err


def import_file(tmp_path, capsys, text, *extra):
    draft = tmp_path / "draft.json"
    draft.write_text(text, encoding="utf-8")
    out = tmp_path / "S.json"
    rc, lines, err = run(capsys, "system", "import", draft, "--out", out, *extra)
    return rc, lines, err, out


# ----- the prompt -------------------------------------------------------------------------------

def test_prompt_has_classes_groups_schema_and_a_loadable_example(capsys):
    rc, lines, err = run(capsys, "system", "prompt", "--classes", "Absol, Aggron,Beedrill δ",
                         "--groups", "colour,primary_form")
    assert rc == 0 and err == ""
    text = "\n".join(lines)
    for c in ("- Absol", "- Aggron", "- Beedrill δ"):
        assert c in lines
    assert '"colour", "primary_form"' in text
    assert '"groups": [' in text and '"rules": {' in text and "exactly one \"{}\"" in text
    assert "null when the group does not apply" in text and "mutually exclusive" in text
    # the tiny example at the end is a draft the importer takes as is
    example = text[text.index("A tiny example"):].split("\n", 1)[1]
    result = import_draft(example)
    assert result.repairs == [] and result.system.classes == ("Apple", "Sky", "Rock")
    assert result.system == import_draft(json.dumps(EXAMPLE)).system


def test_prompt_without_groups_asks_for_the_writeups_kinds_of_question():
    text = build_prompt(["A", "B"])
    assert "dominant colour" in text and "primary form" in text and "background" in text


def test_prompt_reads_a_classes_file_and_refuses_duplicates(tmp_path, capsys):
    f = tmp_path / "classes.txt"
    f.write_text("# my classes\nAbsol\n\nCelebi & Venusaur-GX\n", encoding="utf-8")
    rc, lines, _ = run(capsys, "system", "prompt", "--classes-file", f)
    assert rc == 0 and "- Celebi & Venusaur-GX" in lines and "- # my classes" not in lines
    rc, lines, err = run(capsys, "system", "prompt", "--classes", "A,B,A")
    assert rc == 2 and "duplicate class names ['A']" in err and lines == []
    rc, _, err = run(capsys, "system", "prompt")
    assert rc == 2 and "--classes" in err and len(err.strip().splitlines()) == 1


# ----- repairs ----------------------------------------------------------------------------------

CANON = json.dumps(BASE, indent=2)

TEXT_REPAIRS = [
    ("```json\n" + CANON + "\n```\n", "repaired line 1 column 1: markdown code fence removed"),
    ("Sure! Here it is:\n" + CANON, "repaired line 1 column 1: text before the JSON removed ('Sure! Here it is:')"),
    (CANON.replace('"name": "toy",', '"name": "toy", // the name'),
     "repaired line 2 column 18: // comment removed ('// the name')"),
    (CANON.replace('"name": "toy",', '"name": "toy", # the name'),
     "repaired line 2 column 18: # comment removed ('# the name')"),
    (CANON.replace('"name": "toy",', '"name": /* x */ "toy",'),
     "repaired line 2 column 11: /* */ comment removed ('/* x */')"),
    (CANON.replace('"body_shape": [\n        0,\n        1\n      ]', '"body_shape": [0, 1,]'),
     "repaired line 33 column 26: trailing comma removed"),
    (CANON.replace("null", "None"), "repaired line 32 column 16: Python None replaced by null"),
]


@pytest.mark.parametrize("text,line", TEXT_REPAIRS, ids=["fence", "prose", "slash", "hash", "block", "comma", "None"])
def test_text_repairs_are_reported_with_their_place(tmp_path, capsys, text, line):
    rc, lines, err, out = import_file(tmp_path, capsys, text)
    assert rc == 0, err
    assert line in lines
    assert lines[-1].startswith(f"wrote {out}: toy: 3 classes, 2 groups, Q=5")
    assert load_system(out) == EXPECTED


def test_comment_markers_inside_strings_are_left_alone():
    data = json.loads(CANON)
    data["groups"][0]["template"] = "It is # mainly // {} /* in */ color,]"
    result = import_draft(json.dumps(data, indent=1) + "  // end")
    assert result.system.groups[0].template == "It is # mainly // {} /* in */ color,]"
    assert [str(r) for r in result.repairs] == ["repaired line 39 column 4: // comment removed ('// end')"]


STRUCT_REPAIRS = [
    (draft_with(Apple={"Colour": 0, "body_shape": 0}),
     "repaired rules['Apple']['Colour']: group 'Colour' renamed to the declared group 'color' "
     "(close spelling: difflib ratio 0.91 >= 0.85)"),
    (draft_with(Sky={"color": 1, "Body-Shape": 1}),
     "repaired rules['Sky']['Body-Shape']: group 'Body-Shape' renamed to the declared group 'body_shape' "
     "(differs only in case/whitespace/punctuation)"),
    (draft_with(Apple={"color": " RED.", "body_shape": 0}),
     "repaired rules['Apple']['color']: near-miss option text ' RED.' matched to option 0 'red' "
     "(differs only in case/whitespace/punctuation/article)"),
    (draft_with(Sky={"color": "Light-Blue", "body_shape": "flat and wide"}),
     "repaired rules['Sky']['color']: near-miss option text 'Light-Blue' matched to option 1 'light blue' "
     "(differs only in case/whitespace/punctuation/article)"),
    (draft_with(Rock={"color": None, "body_shape": ["ball", 1]}),
     "repaired rules['Rock']['body_shape']: near-miss option text 'ball' matched to option 0 'a ball' "
     "(differs only in case/whitespace/punctuation/article)"),
]


@pytest.mark.parametrize("data,line", STRUCT_REPAIRS, ids=["group-spelling", "group-case", "option-case",
                                                           "option-punct", "option-article"])
def test_near_miss_names_are_repaired_and_reported(tmp_path, capsys, data, line):
    rc, lines, err, out = import_file(tmp_path, capsys, json.dumps(data))
    assert rc == 0, err
    assert line in lines
    assert load_system(out) == EXPECTED


def test_near_miss_class_names_are_renamed_to_the_asked_for_classes(tmp_path, capsys):
    rules = dict(BASE["rules"])
    data = {**BASE, "rules": {"apple": rules["Apple"], "Skyy": rules["Sky"], "Rock": rules["Rock"]}}
    rc, lines, err, out = import_file(tmp_path, capsys, json.dumps(data), "--classes", "Apple,Sky,Rock")
    assert rc == 0, err
    assert ("repaired rules['apple']: class 'apple' renamed to the asked-for class 'Apple' "
            "(differs only in case/whitespace/punctuation)") in lines
    assert ("repaired rules['Skyy']: class 'Skyy' renamed to the asked-for class 'Sky' "
            "(close spelling: difflib ratio 0.86 >= 0.85)") in lines
    assert load_system(out) == EXPECTED


def test_exact_option_text_is_accepted_and_noted_not_repaired(tmp_path, capsys):
    data = draft_with(Sky={"color": "light blue", "body_shape": "flat and wide"})
    rc, lines, err, out = import_file(tmp_path, capsys, json.dumps(data))
    assert rc == 0, err
    assert not any(ln.startswith("repaired") for ln in lines)
    assert ("note: 2 rule values give option text instead of an index; accepted as is "
            "(the loader matches exact option text)") in lines
    assert load_system(out) == EXPECTED


def test_a_canonical_system_imports_with_no_repairs(capsys, tmp_path):
    rc, lines, _, _ = import_file(tmp_path, capsys, CANON)
    assert rc == 0 and len(lines) == 1 and "(0 repairs)" in lines[0]


def test_import_without_out_writes_nothing_and_says_how(tmp_path, capsys):
    draft = tmp_path / "d.json"
    draft.write_text(CANON, encoding="utf-8")
    rc, lines, _ = run(capsys, "system", "import", draft)
    assert rc == 0 and lines == ["ok: toy: 3 classes, 2 groups, Q=5 (0 repairs; pass --out FILE to write the system)"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.json"]


# ----- refusals ---------------------------------------------------------------------------------

REFUSALS = [
    (json.dumps(BASE), ["--classes", "Apple,Sky,Rock,Moon"],
     "rules['Moon']: missing class: asked for, but the draft gives it no rules"),
    (json.dumps(BASE), ["--classes", "Apple,Sky"],
     "rules['Rock']: class not asked for (remove it, or add it to --classes)"),
    (json.dumps(draft_with(Apple={"color": "grey", "body_shape": 0})), [],
     "rules['Apple']['color']: unknown option 'grey', not in ['red', 'light blue', 'green']"),
    (json.dumps(draft_with(Apple={"color": 7, "body_shape": 0})), [],
     "rules['Apple']['color']: option index 7 out of range 0..2"),
    ("I cannot help with that.", [],
     "text: no JSON object found; the reply must be one JSON object (see `twentyq system prompt` for the schema)"),
    (CANON[:-30], [], "line 34 column 11: not JSON: Expecting value (fix the draft by hand, or ask the LLM again)"),
    ("```json\n{}\n```\n```json\n{}\n```", [],
     "text: 2 markdown code blocks; the reply must hold exactly one JSON object"),
]


@pytest.mark.parametrize("text,extra,problem", REFUSALS, ids=["missing-class", "extra-class", "unknown-option",
                                                             "bad-index", "no-json", "cut-off", "two-blocks"])
def test_refusals_exit_2_with_every_problem_and_its_path(tmp_path, capsys, text, extra, problem):
    rc, _, err, out = import_file(tmp_path, capsys, text, *extra)
    assert rc == 2
    assert err.startswith("twentyq: error: invalid system ")
    assert f"  - {problem}" in err
    assert not out.exists()


def test_ambiguous_near_misses_are_refused_never_guessed(tmp_path, capsys):
    data = {
        "groups": [
            {"name": "colour", "template": "It is {}.", "options": ["blue", "Blue!", "red"]},
            {"name": "colors", "template": "Its colours are {}.", "options": ["warm", "cool"]},
        ],
        "rules": {
            "A": {"colour": "BLUE", "colors": 0},   # two options normalise to 'blue'
            "B": {"color": 2, "colors": 1},          # 'color' is as close to 'colour' as to 'colors'
            "moltres": {"colour": 2, "colors": 0},   # both are near misses of 'Moltres'
            "Moltres!": {"colour": 2, "colors": 0},
        },
    }
    rc, _, err, _ = import_file(tmp_path, capsys, json.dumps(data), "--classes", "A,B,Moltres")
    assert rc == 2
    problems = [ln[4:] for ln in err.splitlines()[1:]]
    assert ("rules['A']['colour']: unknown option 'BLUE', a near miss of several options ['blue', 'Blue!']: "
            "ambiguous, not matched (use an index or the exact text)") in problems
    assert ("rules['B']['color']: unknown group, a near miss of several groups ['colour', 'colors']: "
            "ambiguous, not renamed (use the exact group name)") in problems
    assert ("rules['moltres']: class not asked for; it and ['Moltres!'] are near misses of 'Moltres': ambiguous, "
            "not renamed (rename one by hand)") in problems
    assert "rules['Moltres']: missing class: asked for, but the draft gives it no rules" in problems
    assert "rules['B']['colour']: missing rule (use null if the group does not apply)" in problems
    # the loader's own 'unknown group' / 'unknown option' lines for the same places are not repeated
    assert not any("['color']: unknown group, groups are" in p or "'BLUE', not in" in p for p in problems)


def test_a_near_miss_of_a_group_the_class_also_gives_is_refused():
    data = draft_with(Apple={"color": 0, "colour": 1, "body_shape": 0})
    with pytest.raises(DraftRejected) as exc:
        import_draft(json.dumps(data))
    assert exc.value.problems == ["rules['Apple']['colour']: unknown group, a near miss of 'color', "
                                  "which is given too (keep one)"]


def test_refusal_still_prints_the_repairs_made(tmp_path, capsys):
    text = "```json\n" + json.dumps(draft_with(Apple={"color": "grey", "body_shape": 0})) + "\n```"
    rc, lines, err, _ = import_file(tmp_path, capsys, text)
    assert rc == 2 and lines == ["repaired line 1 column 1: markdown code fence removed"]
    assert "unknown option 'grey'" in err


# ----- property: noise that can be repaired round-trips ------------------------------------------

TRICKY = st.text(alphabet="ab #/,}]*\"'\\é", max_size=6)


def noisy_json(value, rnd) -> str:
    """JSON with comments after commas, trailing commas and odd spacing, drawn from ``rnd``."""
    comment = lambda: rnd.choice(["", " // note, }", " # x ] ,", " /* , */ "])  # noqa: E731
    if isinstance(value, dict):
        items = [f"{json.dumps(k)} : {noisy_json(v, rnd)}" for k, v in value.items()]
    elif isinstance(value, list):
        items = [noisy_json(v, rnd) for v in value]
    else:
        return json.dumps(value, ensure_ascii=rnd.random() < 0.5)
    inner = "".join(f"{it},{comment()}\n" for it in items)
    if items and rnd.random() < 0.5:  # sometimes no trailing comma
        inner = inner[:inner.rindex(",")] + inner[inner.rindex(",") + 1:]
    o, c = "{}" if isinstance(value, dict) else "[]"
    return f"{o}\n{inner}{c}"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(system=systems(max_classes=5, max_groups=3), texts=st.lists(TRICKY, min_size=25, max_size=25),
       rnd=st.randoms(use_true_random=False), fence=st.booleans())
def test_canonical_system_with_comments_commas_and_fences_round_trips(system, texts, rnd, fence):
    groups = tuple(Group(g.name, g.template, tuple(f"{o} {texts[(i + k) % 25]}".strip()
                                                 for k, o in enumerate(g.options)))
                   for i, g in enumerate(system.groups))
    system = AttributeSystem(system.name, system.classes, groups, system.rules)
    text = noisy_json(system.to_dict(), rnd)
    if fence:
        text = "Here you go:\n```json\n" + text + "\n```\n"
    result = import_draft(text)
    assert result.system == system
    assert all(r.path.startswith("line ") for r in result.repairs)  # only text-level repairs were needed


# ----- the --llm path, against a fake OpenAI-compatible server ----------------------------------

class FakeLLM(BaseHTTPRequestHandler):
    """Answers POSTs with the server's ``reply`` (status, body, delay) and records each request."""

    def do_POST(self):  # noqa: N802
        n = int(self.headers.get("Content-Length", 0))
        self.server.requests.append({"path": self.path, "auth": self.headers.get("Authorization"),
                                     "body": json.loads(self.rfile.read(n))})
        status, body, delay = self.server.reply
        time.sleep(delay)
        data = body.encode("utf-8")
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
            pass

    def log_message(self, *args):
        pass


def completion(text: str, finish_reason: str = "stop") -> str:
    return json.dumps({"id": "x", "object": "chat.completion", "model": "fake",
                       "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                    "finish_reason": finish_reason}]})


@pytest.fixture()
def llm(monkeypatch):
    """A fake server on loopback (port 0); set ``llm.reply = (status, body, delay)``."""
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeLLM)
    server.requests, server.reply = [], (200, completion(CANON), 0.0)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    server.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    yield server
    server.shutdown()
    server.server_close()


def llm_args(url, *extra):
    return ["system", "prompt", "--classes", "Apple,Sky,Rock", "--llm", "--llm-url", url, "--llm-model", "m",
            *extra]


def test_llm_reply_is_saved_imported_and_repaired(llm, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TQ_TEST_KEY", "sekrit")
    reply = "```json\n" + json.dumps(draft_with(Apple={"colour": "Red", "body_shape": 0})) + "\n```"
    llm.reply = (200, completion(reply), 0.0)
    draft, out = tmp_path / "draft.json", tmp_path / "S.json"
    rc, lines, err = run(capsys, *llm_args(llm.url, "--llm-key-env", "TQ_TEST_KEY", "--out", draft,
                                           "--system-out", out))
    assert rc == 0, err
    (req,) = llm.requests
    assert req["path"] == "/v1/chat/completions" and req["auth"] == "Bearer sekrit"
    assert req["body"]["model"] == "m"
    assert req["body"]["messages"][-1] == {"role": "user", "content": build_prompt(["Apple", "Sky", "Rock"])}
    assert draft.read_text(encoding="utf-8") == reply + "\n"
    assert lines[0] == f"wrote the LLM's draft to {draft}"
    assert "repaired line 1 column 1: markdown code fence removed" in lines
    assert any(ln.startswith("repaired rules['Apple']['colour']: group 'colour' renamed") for ln in lines)
    assert any(ln.startswith("repaired rules['Apple']['color']: near-miss option text 'Red'") for ln in lines)
    assert load_system(out) == EXPECTED


@pytest.mark.parametrize("reply,message", [
    ((500, '{"error": "model crashed"}', 0.0), "answered HTTP 500 Internal Server Error: '{\"error\": \"model crashed\"}'"),
    ((200, "<html>hello</html>", 0.0), "is not JSON ('<html>hello</html>'); is it an OpenAI-compatible"),
    ((200, '{"choices": []}', 0.0), "has no choices[0].message.content"),
    ((200, completion("  "), 0.0), "sent an empty message"),
    ((200, completion(CANON), 1.0), "within 0.2 s; raise --llm-timeout"),
], ids=["http-500", "not-json", "no-choices", "empty", "timeout"])
def test_llm_failures_are_one_line_errors(llm, capsys, reply, message):
    llm.reply = reply
    rc, lines, err = run(capsys, *llm_args(llm.url, "--llm-timeout", "0.2"))
    assert rc == 2 and lines == []
    assert message in err and len(err.strip().splitlines()) == 1


def test_llm_connection_refused_is_a_one_line_error(capsys):
    with socket.socket() as s:  # bound but not listening: connections are refused
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
        rc, _, err = run(capsys, *llm_args(url))
    assert rc == 2
    assert err.strip() == (f"twentyq: error: cannot reach the LLM at {url}/v1/chat/completions: connection "
                           "refused; is the server running? check --llm-url")


def test_llm_flags_are_checked_before_any_request(llm, capsys, monkeypatch):
    monkeypatch.delenv("TQ_TEST_UNSET", raising=False)
    rc, _, err = run(capsys, *llm_args(llm.url, "--llm-key-env", "TQ_TEST_UNSET"))
    assert rc == 2 and "TQ_TEST_UNSET is not set" in err
    rc, _, err = run(capsys, "system", "prompt", "--classes", "A,B", "--llm", "--llm-url", llm.url)
    assert rc == 2 and "--llm needs --llm-url URL and --llm-model MODEL" in err
    rc, _, err = run(capsys, "system", "prompt", "--classes", "A,B", "--out", "x.json")
    assert rc == 2 and "need --llm" in err
    assert llm.requests == []


def test_a_refused_llm_draft_is_shown_when_it_was_not_saved(llm, capsys):
    llm.reply = (200, completion(json.dumps(BASE), finish_reason="length"), 0.0)
    root = llm.url[:-len("/v1")]  # the server root works too
    rc, lines, err = run(capsys, "system", "prompt", "--classes", "Apple,Sky", "--llm", "--llm-url", root,
                         "--llm-model", "m")
    assert rc == 2 and llm.requests[0]["path"] == "/v1/chat/completions"
    assert "  - rules['Rock']: class not asked for (remove it, or add it to --classes)" in err
    assert lines[0].startswith("warning: the LLM's reply was cut off (finish_reason 'length')")
    header = "the LLM's reply, which was not saved (pass --out draft.json to keep it):"
    assert json.loads("\n".join(lines[lines.index(header) + 1:])) == BASE


# ----- propose_templates ------------------------------------------------------------------------

GROUP = Group("color", "It is mainly {} in color.", ("red", "blue"))


def test_propose_templates_keeps_only_valid_new_ones(llm):
    reply = ('```json\n["A photo of a {} thing.", "no placeholder", "two {} {}", "It is mainly {} in color.",\n'
             ' "A photo of a {} thing.", "braces {x} {}", 3, "A {} object.", "Mostly {}.", // more\n]\n```')
    llm.reply = (200, completion(reply), 0.0)
    got = propose_templates(GROUP, ["Apple", "Sky"], llm.url, "m", n=3)
    assert got == ["A photo of a {} thing.", "A {} object.", "Mostly {}."]
    prompt = llm.requests[0]["body"]["messages"][-1]["content"]
    assert '"It is mainly {} in color."' in prompt and '["red", "blue"]' in prompt and "Apple, Sky" in prompt
    assert "Propose 3 alternative templates" in prompt
    assert propose_templates(GROUP, ["Apple"], llm.url, "m", n=1) == ["A photo of a {} thing."]


def test_propose_templates_refuses_a_reply_that_is_not_a_list(llm):
    llm.reply = (200, completion("Here are some ideas: use colour words."), 0.0)
    with pytest.raises(LLMError, match="not a JSON array of templates"):
        propose_templates(GROUP, ["Apple"], llm.url, "m")
    assert parse_templates('{"templates": ["It is {}."]}') == ["It is {}."]
    with pytest.raises(ValueError, match="n must be at least 1"):
        propose_templates(GROUP, ["Apple"], llm.url, "m", n=0)

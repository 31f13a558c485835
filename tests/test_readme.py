"""The README as a newcomer meets it (issue 24): short enough to read to the end, links that lead
somewhere, and a Python snippet that behaves as a plain script (no ``if __name__ == "__main__":``).
"""

from __future__ import annotations

import ast
import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
MAX_README_CHARS = 15_000


def _markdown_files() -> list[Path]:
    return [README, *sorted((REPO / "docs").glob("*.md"))]


def test_readme_is_short_enough_to_read_to_the_end():
    n = len(README.read_text(encoding="utf-8"))
    assert n <= MAX_README_CHARS, f"README.md has {n} characters; move detail into docs/ (limit {MAX_README_CHARS})"


LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")


def relative_links(text: str) -> list[str]:
    """The link targets in markdown ``text`` that are files of this checkout (no URLs, no pure anchors)."""
    out = []
    for m in LINK.finditer(text):
        target = (m.group(1) or m.group(2)).split("#")[0]
        if target and not re.match(r"^[a-z][a-z0-9+.-]*:", target):
            out.append(target)
    return out


def test_relative_links_finds_files_not_urls():
    text = "[a](docs/x.md) [b](https://x.org/y.md) [c](#top) ![d](img/p.png) [e](../z.md#sec) [f](mailto:a@b)"
    assert relative_links(text) == ["docs/x.md", "img/p.png", "../z.md"]


@pytest.mark.parametrize("page", _markdown_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_points_to_a_file(page):
    missing = [t for t in relative_links(page.read_text(encoding="utf-8")) if not (page.parent / t).exists()]
    assert not missing, f"{page.relative_to(REPO)} links to missing files: {missing}"


# --------------------------------------------------------------------------- the snippet as a plain script
def readme_snippet() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    assert blocks, "README.md has no ```python snippet"
    return blocks[0]


#: what the test swaps in the README's snippet: a tiny random CLIP for the offline model, made-up images
#: for ../shared/data (the run still decodes 16 files through the worker processes)
SWAPS = ('"offline"', '"../shared/data/pokemon/sprites386/images/Bulbasaur/official-artwork.png"',
         '"../shared/data/pokemon/jina15.csv"')

#: runs first in the script: counts executions of the file in any process, gives it decode workers even
#: on one core, and counts the tasks the worker processes are sent
PROLOGUE = '''import os
with open(os.environ["SNIPPET_RUNS"], "a") as _f:
    _f.write("run\\n")
import engine.encoders.image_pool as _image_pool, engine.encoders.worker_pool as _worker_pool
_image_pool.default_workers = lambda cpus=None: 2
_submit = _worker_pool.WorkerPool.submit
def _counted_submit(self, *args):
    with open(os.environ["SNIPPET_TASKS"], "a") as f:
        f.write("task\\n")
    return _submit(self, *args)
_worker_pool.WorkerPool.submit = _counted_submit
'''


@pytest.mark.slow
def test_the_readme_snippet_runs_once_as_a_plain_script(tmp_path):
    """The snippet saved as a script without a ``__main__`` guard: one execution of the file (the decode
    workers never re-run it, so one model load and one run), exit 0, its line printed once, no traceback."""
    from PIL import Image

    from tests.support.encoders import tiny_model_dir

    snippet = readme_snippet()
    for s in SWAPS:
        assert s in snippet, f"the README's snippet no longer contains {s}; update SWAPS"
    assert "__main__" not in snippet
    labels = ["Bulbasaur", "Weedle", "Moltres", "Dratini"]
    rows = []
    for i in range(16):
        p = tmp_path / f"img{i}.png"
        Image.new("RGB", (40, 30), ((37 * i) % 256, (91 * i) % 256, (53 * i) % 256)).save(p)
        rows.append([str(p), labels[i % 4]])
    data = tmp_path / "labels.csv"
    with open(data, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([["path", "label"], *rows])
    script = PROLOGUE + snippet.replace(SWAPS[0], repr(str(tiny_model_dir("clip")))) \
        .replace(SWAPS[1], repr(rows[0][0])).replace(SWAPS[2], repr(str(data)))
    (tmp_path / "snippet.py").write_text(script, encoding="utf-8")
    runs, tasks = tmp_path / "runs.txt", tmp_path / "tasks.txt"
    env = {**os.environ, "SNIPPET_RUNS": str(runs), "SNIPPET_TASKS": str(tasks),
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "snippet.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr and "DecodeWorkersUnavailable" not in done.stderr, done.stderr[-3000:]
    assert runs.read_text().count("run") == 1, "the script ran more than once (a worker re-ran it)"
    assert tasks.is_file() and tasks.read_text().count("task") >= 1, "no image went to a decode worker"
    printed = [ln for ln in done.stdout.splitlines() if ln.strip()]
    assert len(printed) == 2, done.stdout  # the classify line, then zero_shot's ranking
    from systems import load_system

    assert printed[0].split()[0] in load_system("pokemon15").classes
    ranking = ast.literal_eval(printed[1])
    assert sorted(d["label"] for d in ranking) == ["Bulbasaur", "Weedle"]
    assert ranking[0]["score"] >= ranking[1]["score"] and abs(sum(d["score"] for d in ranking) - 1) < 1e-6

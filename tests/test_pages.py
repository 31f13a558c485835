"""The page at ``/`` and the static HTML report (issue 20), checked in a real headless Chromium.

- the report (no browser): ``write_html_report`` over run folders made in the test by ``twentyq eval
  --out RUN.jsonl`` (the fake encoder, so some images are right and some wrong): every section, the
  model's honest label, thumbnails embedded, nothing fetched from outside;
- the page in-process: ``GET /`` and its assets are served, no CDN;
- Chromium (Selenium driving the Debian ``chromium`` + ``chromium-driver``): a real ``twentyq serve``
  on a 127.0.0.1 port, a real image from ``shared/data`` uploaded, the questions stepped through and
  checked against the JSON answer, a server error shown as the page's message, the report opened;
  screenshots go to ``bench/out/page.png`` and ``bench/out/report.png``.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from engine.common.files import shared_data_path

from .support.runs import two_eval_runs
from .support.serving import start_server, stop_server

REPO = Path(__file__).resolve().parents[1]
SHOTS = REPO / "bench" / "out"
JINA = shared_data_path("pokemon/jina15.csv")


def _chrome_paths() -> tuple[str | None, str | None]:
    browser = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
    return browser, shutil.which("chromedriver")


# --------------------------------------------------------------------------- run folders for the report
@pytest.fixture
def report(tmp_path, monkeypatch):
    from engine.reports.html import write_html_report

    runs = two_eval_runs(tmp_path, monkeypatch)
    return write_html_report(runs, tmp_path / "out" / "report.html", samples=4), runs


def test_report_has_every_section_and_is_self_contained(report):
    path, runs = report
    doc = path.read_text(encoding="utf-8")
    summaries = [json.loads((Path(f"{r}.d") / "_summary.json").read_text()) for r in runs]
    for heading in ("Accuracy against mean Q", "Per-class accuracy", "Confusion matrix", "Stop reasons",
                    "Sample question paths"):
        assert heading in doc
    assert doc.count("<svg") == 1 and "<script" not in doc
    assert not re.search(r'(src|href)="(https?:)?//', doc), "nothing is fetched from outside"
    for r, s in zip(runs, summaries):
        assert r.name in doc and f"{s['accuracy']:.3f}" in doc and f"{s['mean_q']:.1f}" in doc
    assert "fake" in doc and "CLIP" not in doc  # the fake encoder is not called CLIP
    # thumbnails embedded, correct and wrong side by side, each marked in text
    assert doc.count("data:image/jpeg;base64,") >= 4
    assert "✓ correct" in doc and "✗ wrong" in doc
    assert summaries[0]["accuracy"] < 1 and summaries[0]["accuracy"] > 0.5


def test_report_names_the_offline_stand_in_honestly(report, tmp_path):
    from engine.reports.html import write_html_report

    _, runs = report
    s = json.loads((Path(f"{runs[0]}.d") / "_summary.json").read_text())
    s["model"], s["settings"]["model_label"] = "offline", None  # as if made with the stand-in
    (Path(f"{runs[0]}.d") / "_summary.json").write_text(json.dumps(s))
    doc = write_html_report(runs[:1], tmp_path / "o.html").read_text()
    assert "NOT CLIP" in doc


def test_cli_report_writes_the_html_page(tmp_path, monkeypatch, capsys):
    from engine.cli.app import main

    runs = two_eval_runs(tmp_path, monkeypatch)
    capsys.readouterr()
    assert main(["report", *map(str, runs), "--html", str(tmp_path / "r.html"), "--samples", "2"]) == 0
    assert f"wrote {tmp_path / 'r.html'}" in capsys.readouterr().out
    doc = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert "Sample question paths" in doc and all(r.name in doc for r in runs)
    summary = tmp_path / "s.json"
    summary.write_text((Path(f"{runs[0]}.d") / "_summary.json").read_text())
    assert main(["report", str(summary), "--html", str(tmp_path / "x.html")]) == 2  # a summary alone has no paths
    assert "needs eval runs" in capsys.readouterr().err


def test_report_refuses_a_folder_without_a_summary(tmp_path):
    from engine.reports.html import write_html_report

    with pytest.raises(ValueError, match="_summary.json"):
        write_html_report([tmp_path], tmp_path / "r.html")


def test_page_is_served_without_a_cdn():
    pytest.importorskip("fastapi", reason="twentyq serve needs the serve extra: pip install -e '.[serve,test]'")
    from .support.serving import make_client

    with make_client(max_wait_ms=1) as c:
        page = c.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        for asset in re.findall(r'(?:src|href)="(static/[^"]+)"', page.text):
            assert c.get("/" + asset).status_code == 200, asset
        assert not re.search(r'(src|href)="(https?:)?//', page.text)
        assert "aria-live" in page.text and 'role="alert"' in page.text
        m = c.get("/v1/models").json()["models"][0]
        assert m["label"].startswith("fake")
        assert c.get("/static/nope.js").status_code == 404


# --------------------------------------------------------------------------- the browser
@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="browser tests need selenium: pip install -e '.[test]'")
    from selenium.webdriver.chrome.service import Service

    exe, driver = _chrome_paths()
    if not (exe and driver):
        pytest.skip("headless Chromium is absent: run .ci/browser-deps (apt-get install chromium chromium-driver)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = exe
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1200",
              "--disable-gpu", "--force-prefers-reduced-motion"):
        opts.add_argument(a)
    d = webdriver.Chrome(service=Service(driver), options=opts)
    d.set_page_load_timeout(60)
    yield d
    d.quit()


@pytest.fixture(scope="module")
def live():
    pytest.importorskip("fastapi", reason="twentyq serve needs the serve extra: pip install -e '.[serve,test]'")
    proc, url = start_server("--system", "pokemon15", "--system", "flowers17", "--max-wait-ms", "1")
    yield url
    code, err = stop_server(proc)
    assert code == 0, err


def _wait(d, cond, timeout=60):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(d, timeout).until(lambda _: cond())


def _images(n: int) -> list[Path]:
    if JINA is None:
        pytest.skip("shared/data/pokemon/jina15.csv is absent: the browser test uploads real images from it")
    rows = [r.split(",") for r in JINA.read_text().splitlines()[1:]]
    picked = [JINA.parent / r[0] for r in rows if r[2] == "sprites386"][:n]
    if len(picked) < n or not all(p.is_file() for p in picked):
        pytest.skip("the jina15 images are absent from shared/data")
    return picked


def _fill(panel, budget: str, tau: str, policy: str | None = None):
    from selenium.webdriver.support.ui import Select

    for sel, val in ((".budget", budget), (".tau", tau)):
        box = panel.find_element("css selector", sel)
        box.clear()
        box.send_keys(val)
    if policy:
        Select(panel.find_element("css selector", ".policy")).select_by_value(policy)


@pytest.mark.slow
def test_page_steps_through_the_questions_as_the_api_answered(browser, live):
    import httpx
    from selenium.webdriver.common.keys import Keys

    img, img2 = _images(2)
    d = browser
    d.get(live + "/")
    # the page runs under its Content-Security-Policy (issue 27): nothing it does may be refused by it
    assert "script-src 'self'" in httpx.get(f"{live}/").headers["content-security-policy"]
    d.execute_script("window.cspViolations = []; document.addEventListener('securitypolicyviolation', "
                     "e => window.cspViolations.push(e.violatedDirective + ' ' + e.blockedURI));")
    label = httpx.get(f"{live}/v1/models").json()["models"][0]["label"]
    _wait(d, lambda: d.find_element("id", "model-label").text == label)
    assert "CLIP" not in d.find_element("id", "model-label").text or "tiny-clip" in label
    a = d.find_element("id", "panel-1")
    _wait(d, lambda: len(a.find_elements("css selector", ".policy option")) > 1)
    a.find_element("css selector", ".file").send_keys(str(img))
    _fill(a, "40", "0.95")
    a.find_element("css selector", ".tau").send_keys(Keys.ENTER)  # the keyboard submits the form
    result = a.find_element("css selector", ".result")
    _wait(d, result.is_displayed)

    with open(img, "rb") as f:
        body = httpx.post(f"{live}/v1/classify", params={"trace": 1, "top_k": 5, "system": "pokemon15",
                                                          "policy": "eig", "budget": 40, "tau": 0.95},
                          files=[("image", (img.name, f.read(), "image/png"))]).json()
    rec = body["results"][0]
    steps = a.find_elements("css selector", ".steps li")
    assert len(steps) == len(rec["asked"]) >= 2
    for li, s in zip(steps, rec["asked"]):
        assert f"“{s['group']}”" in li.text and f"“{s['answer']}”" in li.text and f"{s['eig']:.3f}" in li.text
    assert rec["label"] in a.find_element("css selector", ".summary").text
    assert rec["stop"] in a.find_element("css selector", ".stop").text.replace(" ", "_") or \
        rec["stop"].replace("_", " ") in a.find_element("css selector", ".stop").text
    assert label in a.find_element("css selector", ".model-line").text
    assert body["stop_rule"]["tau"] == 0.95  # what it ran with, from the answer (τ, policy, budget)
    assert a.find_element("css selector", ".rule").text == "Ran with: policy eig, τ 0.95, budget 40."

    # step through from the start with the keyboard-operable buttons
    a.find_element("css selector", ".first").click()
    assert "Step 0" in a.find_element("css selector", ".step-status").text
    assert "Q spent: 0 prompts of a budget of 40" in a.find_element("css selector", ".qtext").text
    nxt = a.find_element("css selector", ".next")
    for k, s in enumerate(rec["asked"], 1):
        nxt.send_keys(Keys.ENTER) if k % 2 else nxt.click()
        bars = a.find_elements("css selector", ".bars li")
        shown = [(b.find_element("css selector", ".cls").text.lstrip("★ "), b.find_element("css selector", ".pct").text)
                 for b in bars]
        assert shown == [(lab, f"{100 * p:.1f}%") for lab, p in s["top"]]
        widths = [b.find_element("css selector", ".bar span").value_of_css_property("width") for b in bars]
        assert float(widths[0].rstrip("px")) > 0  # the bar's width is set (a style="" attribute would be refused)
        assert f"Q spent: {s['q_spent']} prompts of a budget of 40" in a.find_element("css selector", ".qtext").text
        assert a.find_element("css selector", f'.steps li[data-step="{k}"]').get_attribute("aria-current") == "step"
    assert not nxt.is_enabled() and rec["asked"][-1]["q_spent"] == rec["q_spent"] <= 40
    assert rec["asked"][-1]["top"] == rec["top"]

    # a second image beside it, with another policy
    d.find_element("id", "compare").click()
    b = _wait(d, lambda: d.find_element("id", "panel-2"))
    b.find_element("css selector", ".file").send_keys(str(img2))
    _fill(b, "8", "0.9", "random")
    b.find_element("css selector", ".classify").click()
    _wait(d, b.find_element("css selector", ".result").is_displayed)
    assert b.find_elements("css selector", ".steps li")
    assert d.execute_script("return window.cspViolations") == []
    SHOTS.mkdir(parents=True, exist_ok=True)
    d.set_window_size(1400, 1700)
    d.execute_script("window.scrollTo(0, 0)")
    d.save_screenshot(str(SHOTS / "page.png"))
    d.set_window_size(1400, 1200)


@pytest.mark.slow
def test_page_shows_server_errors_as_its_own_message(browser, live, tmp_path):
    import httpx

    d = browser
    d.get(live + "/")
    a = d.find_element("id", "panel-1")
    _wait(d, lambda: len(a.find_elements("css selector", ".policy option")) > 1)
    err = a.find_element("css selector", ".panel-error")
    a.find_element("css selector", ".classify").click()  # no image chosen: the page says so itself
    _wait(d, err.is_displayed)
    assert "choose an image first" in err.text

    bad = tmp_path / "not-an-image.png"
    bad.write_text("this is text, not a picture")
    a.find_element("css selector", ".file").send_keys(str(bad))
    a.find_element("css selector", ".classify").click()
    expect = httpx.post(f"{live}/v1/classify", params={"trace": 1},
                        files=[("image", (bad.name, bad.read_bytes(), "image/png"))]).json()["error"]
    _wait(d, lambda: expect["message"] in err.text)
    assert err.get_attribute("role") == "alert" and expect["code"] in err.text
    assert not a.find_element("css selector", ".result").is_displayed()

    img = _images(1)[0]
    a.find_element("css selector", ".file").send_keys(str(img))
    _fill(a, "5", "0")
    a.find_element("css selector", ".classify").click()
    _wait(d, lambda: "tau" in err.text)
    assert "(0, 1]" in err.text and "HTTP 400" in err.text
    # settle and a target accuracy reach the server; this one has no calibration, so it says what is needed
    _fill(a, "5", "0.9")
    a.find_element("css selector", ".settle").send_keys("auto")
    a.find_element("css selector", ".classify").click()
    _wait(d, lambda: "[settle]" in err.text)
    assert "Gaussian few-shot calibration" in err.text
    a.find_element("css selector", ".settle").clear()
    a.find_element("css selector", ".target").send_keys("0.8")
    a.find_element("css selector", ".classify").click()
    _wait(d, lambda: "[target_accuracy]" in err.text)
    assert "needs a calibration" in err.text


@pytest.mark.slow
def test_report_opens_in_the_browser(browser, report):
    path, runs = report
    d = browser
    d.get(path.as_uri())
    assert d.title.startswith("twentyq report")
    h2 = [e.text for e in d.find_elements("css selector", "h2")]
    assert h2 == ["Runs", "Accuracy against mean Q", "Per-class accuracy", "Confusion matrix", "Stop reasons",
                  "Sample question paths"]
    assert len(d.find_elements("css selector", "svg.chart g.run")) == len(runs)
    imgs = d.find_elements("css selector", ".card img")
    assert imgs and all(d.execute_script("return arguments[0].naturalWidth", i) > 0 for i in imgs)
    assert d.find_elements("css selector", ".card.right") and d.find_elements("css selector", ".card.wrong")
    SHOTS.mkdir(parents=True, exist_ok=True)
    d.set_window_size(1300, 2400)
    d.save_screenshot(str(SHOTS / "report.png"))
    d.set_window_size(1400, 1200)

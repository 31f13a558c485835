"""One self-contained HTML report over result folders (``twentyq eval --out RUN.jsonl``).

:func:`write_html_report` reads each folder's ``_summary.json`` (``EvalReport.to_dict()``) and its
record shards, and writes one HTML file with no external asset: accuracy against mean Q per run
(inline SVG, each run a labelled point with its own marker shape), per-class accuracy, the
confusion matrix, the stop reasons, and a sample of per-image question paths with their images
embedded as small base64 thumbnails (Pillow), correct and wrong side by side.

Every number is written as text next to its bar or cell, so nothing is told by colour alone; the
model is named as :func:`engine.encoders.registry.model_label` names it (the offline stand-in and
the probe say they are not CLIP).
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
from pathlib import Path
from typing import Any, Sequence

from engine.common.files import atomic_write_text, read_json_capped
from engine.encoders.images import ImageLoadError, load_image
from engine.encoders.registry import model_label
from engine.run.store import read_run as read_records, summary_path

MARKERS = ("circle", "square", "triangle", "diamond", "cross", "star")
STOP_WORDS = {"confident": "confident (reached τ)", "no_gain": "no gain (every EIG < δ)",
              "budget": "budget (next question too costly)", "exhausted": "exhausted (all asked)",
              "settled": "settled (the rest could not move the label)"}
THUMB = 96  # px, the long side of each embedded thumbnail


def esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def read_run(run: str | os.PathLike) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(summary, records) of one finished eval run, its table or run folder
    (:func:`engine.run.store.read_run`); a ValueError naming the fix when it has no summary."""
    summary_file = summary_path(run)
    if not summary_file.is_file():
        raise ValueError(f"{str(run)!r} is not a finished eval run (no {summary_file}); make one with "
                         "'twentyq eval --data D.csv --out RUN.jsonl'")

    return read_json_capped(summary_file, what="run summary", shape="a summary written by 'twentyq eval'"), \
        read_records(run)


def _label_of(summary: dict[str, Any]) -> str:
    return (summary.get("settings") or {}).get("model_label") or model_label(str(summary.get("model", "?")))


def _thumb(path: str | None, roots: Sequence[Path]) -> str | None:
    """A data: URI of a small JPEG of the image, or None (the page shows a placeholder) when it cannot be read.

    Decoded by :func:`engine.encoders.images.load_image`, the same rules as a run: the guarded reader, the
    allowed formats only (an EPS never reaches Ghostscript) and the decompression-bomb guard (a bomb is
    refused from its header, never decoded).
    """
    if not path:
        return None

    p = Path(path)
    cands = [p] if p.is_absolute() else [p] + [r / p for r in roots]
    for c in cands:
        try:
            if not c.is_file():
                continue
            im = load_image(c)
            im.thumbnail((THUMB, THUMB))
            b = io.BytesIO()
            im.save(b, "JPEG", quality=80)
            return "data:image/jpeg;base64," + base64.b64encode(b.getvalue()).decode()
        except (ImageLoadError, OSError, ValueError):
            continue
    return None


# --------------------------------------------------------------------------- the chart
def _marker(kind: str, x: float, y: float, r: float = 6) -> str:
    if kind == "circle":
        return f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{r}" />'
    if kind == "square":
        return f'<rect x="{x - r:.1f}" y="{y - r:.1f}" width="{2 * r}" height="{2 * r}" />'
    if kind == "triangle":
        return f'<polygon points="{x:.1f},{y - r:.1f} {x - r:.1f},{y + r:.1f} {x + r:.1f},{y + r:.1f}" />'
    if kind == "diamond":
        return f'<polygon points="{x:.1f},{y - r:.1f} {x + r:.1f},{y:.1f} {x:.1f},{y + r:.1f} {x - r:.1f},{y:.1f}" />'
    if kind == "cross":
        return (f'<path d="M{x - r:.1f},{y - r:.1f}L{x + r:.1f},{y + r:.1f}M{x - r:.1f},{y + r:.1f}'
                f'L{x + r:.1f},{y - r:.1f}" stroke-width="3" />')
    pts = []
    for i in range(10):
        rr = r if i % 2 == 0 else r / 2.2
        a = -math.pi / 2 + i * math.pi / 5
        pts.append(f"{x + rr * math.cos(a):.1f},{y + rr * math.sin(a):.1f}")
    return f'<polygon points="{" ".join(pts)}" />'


def _chart(runs: list[tuple[str, dict[str, Any]]]) -> str:
    W, H, L, R, T, B = 640, 360, 60, 170, 20, 50
    max_q = max([float(s.get("mean_q") or 0) for _, s in runs] + [1.0])
    max_q = float(int(max_q * 1.15) + 1)
    sx = lambda q: L + (W - L - R) * q / max_q  # noqa: E731
    sy = lambda a: T + (H - T - B) * (1 - a)  # noqa: E731
    out = [f'<svg class="chart" role="img" aria-labelledby="chart-title chart-desc" viewBox="0 0 {W} {H}" '
           f'width="{W}" height="{H}" xmlns="http://www.w3.org/2000/svg">',
           '<title id="chart-title">Accuracy against mean questions (prompts) per run</title>',
           '<desc id="chart-desc">' + esc("; ".join(
               f"{name}: accuracy {s.get('accuracy', 0):.3f} at mean Q {s.get('mean_q', 0):.1f}"
               for name, s in runs)) + "</desc>",
           f'<g class="axes" stroke="#333" fill="none"><line x1="{L}" y1="{sy(0)}" x2="{W - R}" y2="{sy(0)}" />'
           f'<line x1="{L}" y1="{sy(0)}" x2="{L}" y2="{sy(1)}" /></g>']
    for a in (0, 0.25, 0.5, 0.75, 1.0):
        out.append(f'<line x1="{L}" x2="{W - R}" y1="{sy(a):.1f}" y2="{sy(a):.1f}" stroke="#ddd" />'
                   f'<text x="{L - 8}" y="{sy(a) + 4:.1f}" text-anchor="end" font-size="12">{a:.2f}</text>')
    for k in range(6):
        q = max_q * k / 5
        out.append(f'<text x="{sx(q):.1f}" y="{sy(0) + 18:.1f}" text-anchor="middle" font-size="12">{q:.0f}</text>')
    out.append(f'<text x="{(L + W - R) / 2:.0f}" y="{H - 8}" text-anchor="middle" font-size="13">mean Q '
               '(prompts per image)</text>')
    out.append(f'<text x="14" y="{(T + H - B) / 2:.0f}" text-anchor="middle" font-size="13" '
               f'transform="rotate(-90 14 {(T + H - B) / 2:.0f})">accuracy</text>')
    for i, (name, s) in enumerate(runs):
        x, y = sx(float(s.get("mean_q") or 0)), sy(float(s.get("accuracy") or 0))
        lo, hi = (s.get("ci95") or [s.get("accuracy", 0)] * 2)[:2]
        kind = MARKERS[i % len(MARKERS)]
        out.append(f'<g class="run" fill="#2f5d8a" stroke="#2f5d8a"><title>{esc(name)}: accuracy '
                   f'{s.get("accuracy", 0):.3f} [{lo:.3f}, {hi:.3f}], mean Q {s.get("mean_q", 0):.1f}</title>'
                   f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{sy(lo):.1f}" y2="{sy(hi):.1f}" stroke-width="1.5" />'
                   + _marker(kind, x, y) +
                   f'<text x="{x + 10:.1f}" y="{y - 8:.1f}" font-size="12" stroke="none" fill="#111">'
                   f'{esc(name)}</text></g>')
    # the legend names each run's marker shape
    for i, (name, _) in enumerate(runs):
        y = T + 14 + 22 * i
        out.append(f'<g fill="#2f5d8a" stroke="#2f5d8a">{_marker(MARKERS[i % len(MARKERS)], W - R + 20, y)}'
                   f'<text x="{W - R + 32}" y="{y + 4}" font-size="12" stroke="none" fill="#111">'
                   f'{esc(name)} ({MARKERS[i % len(MARKERS)]})</text></g>')
    out.append("</svg>")
    return "".join(out)


# --------------------------------------------------------------------------- tables
def _bar(frac: float, text: str) -> str:
    w = max(0.0, min(1.0, frac)) * 100
    return (f'<span class="cellbar"><span class="fill" style="width:{w:.1f}%"></span></span>'
            f'<span class="num">{esc(text)}</span>')


def _per_class(runs: list[tuple[str, dict[str, Any]]]) -> str:
    classes = sorted({c for _, s in runs for c in (s.get("per_class") or {})})
    head = "".join(f'<th scope="col">{esc(n)}</th>' for n, _ in runs)
    rows = []
    for c in classes:
        cells = []
        for _, s in runs:
            pc = (s.get("per_class") or {}).get(c)
            if pc is None:
                cells.append("<td>—</td>")
            else:
                text = "{:.2f} (n {})".format(pc["accuracy"], pc["n"])
                cells.append(f"<td>{_bar(pc['accuracy'], text)}</td>")
        rows.append(f'<tr><th scope="row">{esc(c)}</th>{"".join(cells)}</tr>')
    return (f'<table class="per-class"><caption>Per-class accuracy (n = images of that class)</caption>'
            f'<thead><tr><th scope="col">class</th>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>')


def _confusion(name: str, s: dict[str, Any]) -> str:
    per = s.get("per_class") or {}
    counts: dict[tuple[str, str], int] = {}
    for c, pc in per.items():
        right = int(round(pc["n"] * pc["accuracy"]))
        if right:
            counts[(c, c)] = right
    for e in s.get("confusion") or []:
        counts[(e["label"], e["predicted"])] = counts.get((e["label"], e["predicted"]), 0) + int(e["count"])
    truths = sorted({t for t, _ in counts} | set(per))
    preds = sorted({p for _, p in counts} | set(truths))
    top = max(counts.values(), default=1)
    head = "".join(f'<th scope="col" class="pred"><span>{esc(p)}</span></th>' for p in preds)
    rows = []
    for t in truths:
        cells = []
        for p in preds:
            n = counts.get((t, p), 0)
            diag = ' class="diag"' if t == p else ""
            mark = "✓" if t == p and n else ""
            shade = f' style="background:rgba(47,93,138,{0.12 + 0.6 * n / top:.2f})"' if n else ""
            label = f"{n}{mark}" if n else "·"
            cells.append(f'<td{diag}{shade} title="true {esc(t)}, predicted {esc(p)}: {n}">{label}</td>')
        rows.append(f'<tr><th scope="row">{esc(t)}</th>{"".join(cells)}</tr>')
    return (f'<div class="scroll"><table class="confusion"><caption>{esc(name)}: rows are the true class, '
            f'columns the predicted class; ✓ marks the diagonal (correct), · is zero</caption><thead><tr>'
            f'<th scope="col">true \\ predicted</th>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>')


def _stops(runs: list[tuple[str, dict[str, Any]]]) -> str:
    reasons = list(STOP_WORDS) + sorted({k for _, s in runs for k in (s.get("stops") or {})} - set(STOP_WORDS))
    head = "".join(f'<th scope="col">{esc(n)}</th>' for n, _ in runs)
    rows = []
    for r in reasons:
        cells = []
        for _, s in runs:
            n = int((s.get("stops") or {}).get(r, 0))
            tot = max(1, sum((s.get("stops") or {}).values()))
            text = "{} ({:.0f}%)".format(n, 100 * n / tot)
            cells.append(f"<td>{_bar(n / tot, text)}</td>")
        rows.append(f'<tr><th scope="row">{esc(STOP_WORDS.get(r, r))}</th>{"".join(cells)}</tr>')
    return (f'<table class="stops"><caption>Why each image stopped asking</caption><thead><tr>'
            f'<th scope="col">stop reason</th>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>')


def _pick(records: list[dict[str, Any]], k: int) -> list[dict[str, Any]]:
    """k records spread evenly over the run (deterministic)."""
    if len(records) <= k:
        return records
    return [records[int(i * len(records) / k)] for i in range(k)]


def _card(r: dict[str, Any], roots: Sequence[Path]) -> str:
    ok = r.get("label") == r.get("true_label")
    uri = _thumb(r.get("image"), roots)
    img = (f'<img src="{uri}" alt="{esc(Path(str(r.get("image"))).name)}, a {esc(r.get("true_label"))}">'
           if uri else '<p class="noimg">(image not readable here)</p>')
    steps = "".join(
        f'<li>“{esc(s["group"])}” → “{esc(s["answer"])}” (p {s["answer_prob"]:.2f}, EIG {s["eig"]:.2f} nats); '
        f'top class {100 * s["confidence_after"]:.0f}%</li>' for s in r.get("asked") or [])
    verdict = "✓ correct" if ok else "✗ wrong"
    return (f'<article class="card {"right" if ok else "wrong"}">{img}<div>'
            f'<p class="verdict"><strong>{verdict}</strong>: true <strong>{esc(r.get("true_label"))}</strong>, '
            f'answered <strong>{esc(r.get("label"))}</strong> ({100 * float(r.get("confidence") or 0):.0f}%)</p>'
            f'<p class="path-meta">{len(r.get("asked") or [])} questions, Q spent {esc(r.get("q_spent"))}, '
            f'stopped: {esc(STOP_WORDS.get(r.get("stop"), r.get("stop")))}</p>'
            f'<ol class="path">{steps}</ol><p class="file">{esc(Path(str(r.get("image"))).name)}</p></div></article>')


def _samples(name: str, s: dict[str, Any], records: list[dict[str, Any]], k: int) -> str:
    good = [r for r in records if r.get("error") is None and r.get("true_label") is not None]
    right = [r for r in good if r.get("label") == r.get("true_label")]
    wrong = [r for r in good if r.get("label") != r.get("true_label")]
    half = max(1, k // 2)
    pr, pw = _pick(right, half), _pick(wrong, half)
    # fill the other side's share when one side has too few
    pr = _pick(right, k - len(pw)) if len(pr) < half or len(pw) < half else pr
    pw = _pick(wrong, k - len(pr)) if len(pw) < half else pw
    data = (s.get("settings") or {}).get("data") or {}
    roots = [Path(data["source"]).parent] if data.get("source") else []
    col = lambda title, rs: (f'<div class="col"><h4>{title} ({len(rs)} shown)</h4>'  # noqa: E731
                             + ("".join(_card(r, roots) for r in rs) or "<p>none in this run</p>") + "</div>")
    return (f'<section class="samples" aria-label="{esc(name)} sample paths"><h3>{esc(name)}: sample question paths '
            f'({len(right)} correct, {len(wrong)} wrong of {len(good)} scored)</h3><div class="sides">'
            + col("✓ Correct", pr) + col("✗ Wrong", pw) + "</div></section>")


CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1b1b1b;max-width:1200px;
margin:0 auto;padding:1rem 1.5rem}h1{font-size:1.6rem;margin:.2rem 0}h2{margin-top:2rem;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.6rem 0}caption{text-align:left;font-weight:600;padding:.3rem 0}
th,td{border:1px solid #bbb;padding:.2rem .45rem;text-align:left;vertical-align:middle}
td{font-variant-numeric:tabular-nums}.cellbar{display:inline-block;width:70px;height:.8rem;border:1px solid #888;
margin-right:.4rem;vertical-align:middle;background:#fff}.cellbar .fill{display:block;height:100%;
background:repeating-linear-gradient(45deg,#2f5d8a 0 5px,#9bb7d4 5px 8px)}
.confusion td{text-align:center;min-width:2rem}.confusion td.diag{outline:2px solid #111;font-weight:700}
.confusion th.pred span{writing-mode:vertical-rl;transform:rotate(180deg);white-space:nowrap}
.scroll{overflow-x:auto}.sides{display:grid;grid-template-columns:1fr 1fr;gap:1rem}
.card{display:flex;gap:.7rem;border:1px solid #bbb;border-radius:6px;padding:.5rem;margin:.5rem 0}
.card.right{border-left:6px solid #2f5d8a}.card.wrong{border-left:6px dashed #8a1c12}
.card img{width:96px;height:auto;align-self:flex-start;border:1px solid #ccc}.card p{margin:.1rem 0}
.path{margin:.2rem 0;padding-left:1.3rem;font-size:.9rem}.file,.path-meta{color:#555;font-size:.85rem}
.model{font-size:1.05rem}.runs td,.runs th{font-size:.92rem}
"""


def write_html_report(runs: list[str | os.PathLike], out: str | os.PathLike, *, samples: int = 12) -> Path:
    """Write one self-contained HTML report over result folders; returns its path.

    runs : result folders made by ``twentyq eval --out RUN.jsonl`` (or ``.parquet``), each with its
        ``_summary.json``. Named in the report by folder name (the parent's too when two share one).
    out : the HTML file to write (its folder is created).
    samples : question paths shown per run, half correct and half wrong where there are enough.
    """
    if not runs:
        raise ValueError("write_html_report needs at least one result folder")
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 0:
        raise ValueError(f"samples == {samples!r}, must be a whole number >= 0")
    loaded = [(Path(r), *read_run(r)) for r in runs]
    names = [p.name for p, _, _ in loaded]
    names = [f"{p.parent.name}/{p.name}" if names.count(p.name) > 1 else p.name for p, _, _ in loaded]
    pairs = [(n, s) for n, (_, s, _) in zip(names, loaded)]
    models = sorted({_label_of(s) for _, s in pairs})

    run_rows = []
    for (name, s), (_, _, recs) in zip(pairs, loaded):
        lo, hi = (s.get("ci95") or [0, 0])[:2]
        acc5 = "—" if s.get("acc5") is None else f"{s['acc5']:.3f}"
        run_rows.append(
            f'<tr><th scope="row">{esc(name)}</th><td>{esc(_label_of(s))}</td><td>{esc(s.get("system"))}</td>'
            f'<td>{esc(s.get("data"))}</td><td>{esc(s.get("mode"))} {esc(s.get("policy") or "")}</td>'
            f'<td>{esc(s.get("tau"))}</td><td>{esc("none" if s.get("budget") is None else s.get("budget"))}</td>'
            f'<td>{esc(s.get("n"))}</td><td>{s.get("accuracy", 0):.3f} [{lo:.3f}, {hi:.3f}]</td><td>{acc5}</td>'
            f'<td>{s.get("mean_q", 0):.1f}</td><td>{"yes" if s.get("complete", True) else "NO (partial)"}</td></tr>')
    body = [
        '<header><h1>twentyq report</h1>',
        '<p class="model">Model' + ("s" if len(models) > 1 else "") + ": "
        + "; ".join(f"<strong>{esc(m)}</strong>" for m in models) + "</p>",
        f"<p>{len(pairs)} run(s). Every number is written out; bars and shapes repeat it.</p></header><main>",
        '<h2 id="runs">Runs</h2><table class="runs"><caption>Each run: its model, settings and accuracy '
        '(95% bootstrap interval)</caption><thead><tr><th scope="col">run</th><th scope="col">model</th>'
        '<th scope="col">system</th><th scope="col">data</th><th scope="col">mode, policy</th>'
        '<th scope="col">τ</th><th scope="col">budget</th><th scope="col">n</th><th scope="col">accuracy</th>'
        '<th scope="col">acc@5</th><th scope="col">mean Q</th><th scope="col">complete</th></tr></thead><tbody>'
        + "".join(run_rows) + "</tbody></table>",
        '<h2 id="accuracy-q">Accuracy against mean Q</h2>', _chart(pairs),
        '<h2 id="per-class">Per-class accuracy</h2>', _per_class(pairs),
        '<h2 id="confusion">Confusion matrix</h2>', *[_confusion(n, s) for n, s in pairs],
        '<h2 id="stops">Stop reasons</h2>', _stops(pairs),
        '<h2 id="samples">Sample question paths</h2>',
        *[_samples(n, s, recs, samples) for (n, s), (_, _, recs) in zip(pairs, loaded) if samples],
        "</main>",
    ]
    doc = ('<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" '
           'content="width=device-width, initial-scale=1"><title>twentyq report: '
           + esc(", ".join(names)) + f"</title><style>{CSS}</style></head><body>" + "".join(body) + "</body></html>")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(out, doc)


__all__ = ["read_run", "write_html_report"]

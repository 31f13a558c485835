"""Plots of eval results: accuracy (95% CI) against mean Q, and a run's confusion matrix, as PNGs.

matplotlib is the optional extra ``twentyq[report]``, imported only when a plot is drawn.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

from engine.common.errors import UserInputError


def pyplot(flag: str = "--plots"):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserInputError(f"{flag} needs matplotlib: pip install 'twentyq[report]' (or drop {flag})") from None
    return plt


def plot_compare(points: list[dict[str, Any]], curve: list[dict[str, Any]], path: str | Path, *, title: str) -> None:
    """``twentyq compare --plot``: accuracy (95% CI) against mean Q.

    points : one row per compared mode (:func:`row_of` fields, ``run`` the legend text);
    curve : the adaptive policy at increasing budgets (same fields), drawn as a line with its CI band.
    """
    plt = pyplot("--plot")
    fig, ax = plt.subplots(figsize=(7, 4.8))
    if curve:
        qs = [r["mean_q"] for r in curve]
        ax.plot(qs, [r["accuracy"] for r in curve], "-", color="tab:blue", label=curve[0]["run"])
        ax.fill_between(qs, [r["ci95_lo"] for r in curve], [r["ci95_hi"] for r in curve], color="tab:blue",
                        alpha=0.15, linewidth=0)
    style = iter(zip(["s", "D", "^", "o", "v", "P"], ["tab:gray", "tab:orange", "tab:green", "tab:red", "tab:purple",
                                                     "tab:brown"]))
    for r in points:
        err = [[max(r["accuracy"] - r["ci95_lo"], 0)], [max(r["ci95_hi"] - r["accuracy"], 0)]]
        m, c = next(style, ("o", None))
        ax.errorbar([r["mean_q"]], [r["accuracy"]], yerr=err, fmt=m, color=c, capsize=3, label=r["run"])
    ax.set_xlabel("mean Q (prompts per image)")
    ax.set_ylabel("accuracy (95% CI)")

    ax.set_title("\n".join(textwrap.fill(t, 90) for t in title.splitlines()), fontsize=8)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_accuracy_vs_q(rows: list[dict[str, Any]], path: Path) -> None:
    """Accuracy (with its 95% CI) against mean Q, one point per run."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for r in rows:
        if r["accuracy"] is None or r["mean_q"] is None:
            continue
        err = None
        if r["ci95_lo"] is not None and r["ci95_hi"] is not None:
            err = [[max(r["accuracy"] - r["ci95_lo"], 0)], [max(r["ci95_hi"] - r["accuracy"], 0)]]
        ax.errorbar([r["mean_q"]], [r["accuracy"]], yerr=err, fmt="o", capsize=3)
        ax.annotate(r["run"], (r["mean_q"], r["accuracy"]), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.set_xlabel("mean Q (prompts per image)")
    ax.set_ylabel("accuracy")
    ax.set_title("accuracy against mean Q")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def confusion_matrix(records: list[dict[str, Any]]) -> tuple[list[str], Any]:
    """(classes, counts[true, predicted]) over the records that have a label and no error."""
    import numpy as np

    ok = [r for r in records if r.get("error") is None and r.get("true_label") is not None]
    classes = sorted({r["true_label"] for r in ok} | {r["label"] for r in ok})
    pos = {c: i for i, c in enumerate(classes)}
    m = np.zeros((len(classes), len(classes)), dtype=np.int64)
    for r in ok:
        m[pos[r["true_label"]], pos[r["label"]]] += 1
    return classes, m


def plot_confusion(name: str, records: list[dict[str, Any]], path: Path) -> None:
    plt = pyplot()
    classes, m = confusion_matrix(records)
    if not classes:
        raise UserInputError(f"{name}: no labelled records to draw a confusion matrix from; pick an eval run "
                         "with --confusion")
    size = min(4 + 0.35 * len(classes), 20)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(m, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=90, fontsize=7)
    ax.set_yticks(range(len(classes)), classes, fontsize=7)
    if len(classes) <= 30:
        for i in range(len(classes)):
            for j in range(len(classes)):
                if m[i, j]:
                    ax.text(j, i, str(m[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if m[i, j] > m.max() / 2 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"confusion matrix: {name}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

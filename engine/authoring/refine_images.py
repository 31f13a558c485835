"""Refine a system on a labelled dataset with a frozen encoder, and measure it on held-out images.

The glue between :mod:`engine.authoring.refine` (pure, over similarities) and real data:
images are embedded once (image cache), each candidate prompt once (text
cache), the dev/test split is by image with a seed, and the test split is
only ever used to *measure* — before and after, with CIs, plus the
shuffled-rules control on both systems.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from systems.build import BASELINE_GROUP, baseline_system, shuffled_rules
from systems.format import AttributeSystem
from engine.authoring.refine import RefineConfig, RefineReport, refine, split_by_image

from engine.core.adaptive import NO_STOP, StopRule, classify_batch
from engine.core.metrics import accuracy_ci, mcnemar_p
from engine.core.sources import ArraySource


class PromptSims:
    """prompts (P,) -> (n, P) cosine similarities of fixed image embeddings, text embedded lazily.

    image_embeddings : (B, D) unit rows (torch tensor or numpy) from ``text_cache.encoder``.
    rows : optional (n,) image indices; the callable then sees only those images.
    """

    def __init__(self, text_cache: Any, image_embeddings: Any, rows: np.ndarray | None = None):
        import torch

        emb = torch.as_tensor(image_embeddings).to(text_cache.encoder.device, torch.float32)
        self.text_cache = text_cache
        self.image_embeddings = emb if rows is None else emb[torch.as_tensor(np.asarray(rows, dtype=np.int64))]

    def __call__(self, prompts: Sequence[str]) -> np.ndarray:
        import torch

        text = self.text_cache.embed(list(prompts))
        with torch.inference_mode():
            return (self.image_embeddings @ text.T).double().cpu().numpy()


def system_sims(prompt_sims: PromptSims, system: AttributeSystem) -> np.ndarray:
    """(n, Q) similarities to every prompt of ``system``, concatenated by group."""
    return np.concatenate([prompt_sims(g.prompts()) for g in system.groups], axis=1)


@dataclass
class Score:
    """One system's result on the test images: correct (n,) bool and q (n,) prompts spent."""

    correct: np.ndarray
    q: np.ndarray

    def to_dict(self) -> dict:
        lo, hi = accuracy_ci(self.correct)
        return {"accuracy": float(self.correct.mean()) if len(self.correct) else float("nan"),
                "ci95": [lo, hi], "mean_q": float(self.q.mean()) if len(self.q) else float("nan"),
                "n": int(len(self.correct))}


def score(system: AttributeSystem, sims: np.ndarray, truth: np.ndarray, *, lam: float, eps: float,
          policy: str = "fixed", stop: StopRule = NO_STOP, shortlist: int | None = None) -> Score:
    """Classify n images from their (n, Q) similarities; the full system by default."""
    res = classify_batch(ArraySource(sims, system), system, policy, stop=stop, logit_scale=lam, eps=eps, top_k=1,
                         shortlist_size=shortlist)
    pred = np.array([system.class_index(r.label) if r.label is not None else -1 for r in res])
    return Score(correct=pred == np.asarray(truth), q=np.array([r.q_spent for r in res], dtype=np.float64))


@dataclass
class RefineRun:
    """What :func:`refine_dataset` measured. ``test`` maps a row name to Score.to_dict()."""

    system: AttributeSystem
    refined: AttributeSystem
    report: RefineReport
    n_dev: int
    n_test: int
    test: dict[str, dict] = field(default_factory=dict)
    mcnemar_full: float = float("nan")
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"system": self.system.name, "refined": self.refined.name, "n_dev": self.n_dev,
                "n_test": self.n_test, "test": self.test, "mcnemar_p_full": self.mcnemar_full,
                "refine": self.report.to_dict(), "seconds": self.seconds}

    def lines(self) -> list[str]:
        out = [f"dev images: {self.n_dev}, test images: {self.n_test}"]
        out += self.report.lines()
        out.append("test split (never seen by refinement):")
        for name, r in self.test.items():
            out.append(f"  {name:<28} acc {r['accuracy']:.4f} [{r['ci95'][0]:.4f}, {r['ci95'][1]:.4f}]  "
                       f"mean Q {r['mean_q']:.1f}")
        out.append(f"  McNemar p (full before vs after): {self.mcnemar_full:.3g}")
        return out


def refine_embedded(system: AttributeSystem, text_cache: Any, embeddings: Any, truth: np.ndarray, *,
                    config: RefineConfig, dev_frac: float = 0.5, seed: int = 0, tau: float = 0.9,
                    policy: str = "eig", shortlist: int | None = None) -> RefineRun:
    """Split by image, refine on dev, measure before/after on test.

    embeddings : (B, D) image embeddings; truth : (B,) class indices into ``system``.
    Rows measured on test: baseline (class names), full and adaptive before and after,
    and the shuffled-rules control of both systems (full). ``shortlist`` is passed to the
    adaptive rows (the system needs a ``class_name`` group).
    """
    t0 = time.perf_counter()
    truth = np.asarray(truth, dtype=np.int64)
    dev, test = split_by_image(truth, dev_frac, seed)
    refined, report = refine(system, PromptSims(text_cache, embeddings, dev), truth[dev], config)
    on_test = PromptSims(text_cache, embeddings, test)
    y = truth[test]
    lam0, eps0 = config.lam, config.eps
    lam1, eps1 = (report.lam, report.eps) if config.calibrate else (lam0, eps0)
    stop = StopRule(tau=tau)
    rows: dict[str, Score] = {}
    base = baseline_system(system)
    rows["baseline (class names)"] = score(base, system_sims(on_test, base), y, lam=lam0, eps=eps0)
    for tag, s, lam, eps in (("before", system, lam0, eps0), ("after", refined, lam1, eps1)):
        sims = system_sims(on_test, s)
        rows[f"full, {tag}"] = score(s, sims, y, lam=lam, eps=eps)
        sl = shortlist if shortlist and BASELINE_GROUP in {g.name for g in s.groups} else None
        label = f"adaptive {policy} τ={tau:g}" + (f" shortlist {sl}" if sl else "")
        rows[f"{label}, {tag}"] = score(s, sims, y, lam=lam, eps=eps, policy=policy, stop=stop, shortlist=sl)
        rows[f"shuffled rules, {tag}"] = score(shuffled_rules(s, seed), sims, y, lam=lam, eps=eps)
    run = RefineRun(system=system, refined=refined, report=report, n_dev=len(dev), n_test=len(test),
                    test={k: v.to_dict() for k, v in rows.items()},
                    mcnemar_full=mcnemar_p(rows["full, before"].correct, rows["full, after"].correct))
    run.seconds = time.perf_counter() - t0
    return run


def embed_dataset(clf: Any, items: Sequence[Any], *, chunk: int = 256, progress: Any = None
                  ) -> tuple[Any, np.ndarray, dict[int, str]]:
    """Embed a dataset's images in chunks, skipping bad ones.

    Returns ((n_good, D) embeddings, (n_good,) indices into ``items``, {index: error}).
    ``progress(n)`` is called after each chunk with the number of images done in it.
    """
    import torch

    parts, good, bad = [], [], {}
    for start in range(0, len(items), chunk):
        block = [it.path for it in items[start:start + chunk]]
        emb, ok, errs = clf.images.embed(block)
        parts.append(emb)
        good.extend((ok + start).tolist())
        bad.update({start + j: msg for j, msg in errs.items()})
        if progress:
            progress(len(block))
    emb = torch.cat(parts) if parts else torch.zeros(0, clf.encoder.embed_dim)
    return emb, np.asarray(good, dtype=np.int64), bad

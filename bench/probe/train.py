"""Training the attribute probe's heads: a CLIP-style symmetric contrastive loss on frozen features.

Per step, a batch of B training images (a seeded permutation per epoch), each
paired with one of its species' captions (seeded draw). Logits are
``exp(log_scale) · u_i · v_j`` for unit image and caption embeddings (B × B).
Several images in a batch can share a caption, and a caption ("a picture of a
small creature") is true of many species, so the targets are *multi-positive*:
image i's target row spreads uniformly over every caption j of the batch that
is true for i's species (``TrainingData.truth``), and caption j's column over
every image it is true for. The loss is the mean of the two cross-entropies
(image→text and text→image), as in CLIP.

Early stopping: after every epoch the validation loss (the same loss over all
held-out-species images against all their captions, no sampling) is measured,
and the heads of the best epoch are kept (patience ``patience`` epochs).

Then λ for scoring (the encoder's ``logit_scale``) is fitted on the held-out
species: the λ on a log grid that minimises the per-group softmax NLL of the
acceptable options (what the engine computes), see :func:`fit_eval_scale`.

Deterministic: ``torch.manual_seed``, a seeded ``torch.Generator`` for every
draw, ``torch.use_deterministic_algorithms(True)`` and ``threads`` torch threads
(1 by default) while training; the same inputs give bit-identical weights.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from engine.encoders.probe import ProbeHeads

from .data import TrainingData


@dataclass(frozen=True)
class TrainConfig:
    """Heads, optimiser and schedule.

    Defaults were chosen on the held-out Gen 2–3 species only (never on Gen 1;
    docs/probe.md lists the configurations tried): a 256-wide hidden layer into
    128-d, heavy input dropout and weight decay, because linear heads without
    them over-fit the 212 training species within two epochs.
    """

    dim: int = 128
    hidden: int = 256  # 0: linear heads; > 0: one hidden layer (GELU) of this width
    dropout: float = 0.5  # on the standardised input features, training only
    lr: float = 5e-4
    weight_decay: float = 0.05
    batch_size: int = 256
    max_epochs: int = 80
    patience: int = 10
    init_scale: float = 1 / 0.07
    max_scale: float = 100.0
    seed: int = 0
    threads: int = 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def multi_positive_loss(logits: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Symmetric contrastive loss with several positives.

    logits : (n_img, n_txt); pos : (n_img, n_txt) bool, at least one True per
    row and per column. Returns the mean of the image→text and text→image
    cross-entropies against targets uniform over the positives.
    """
    p = pos.float()
    i2t = -(p / p.sum(1, keepdim=True) * F.log_softmax(logits, dim=1)).sum(1).mean()
    t2i = -(p / p.sum(0, keepdim=True) * F.log_softmax(logits, dim=0)).sum(0).mean()
    return 0.5 * (i2t + t2i)


def _unit(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, dim=-1)


def val_loss(heads: ProbeHeads, data: TrainingData, img_feats: torch.Tensor, txt_feats: torch.Tensor,
             idx: np.ndarray) -> float:
    """The loss over images ``idx`` against every caption of their species (no sampling)."""
    if len(idx) == 0:
        return float("nan")
    cls = data.image_cls[idx]
    caps = sorted({m for c in set(cls.tolist()) for m in data.class_captions[c]})
    pos = torch.from_numpy(data.truth[np.ix_(caps, cls)].T.copy())
    with torch.no_grad():
        u = _unit(heads.image(img_feats[idx]))
        v = _unit(heads.text(txt_feats[caps]))
        return float(multi_positive_loss(heads.log_scale.exp() * u @ v.T, pos))


def attribute_scores(heads: ProbeHeads, data: TrainingData, img_feats: torch.Tensor, prompt_feats: list,
                     idx: np.ndarray) -> list[torch.Tensor]:
    """Per group g: (len(idx), K_g) cosine similarities of images ``idx`` to the group's option prompts.

    prompt_feats : per group, (K_g, 384) MiniLM features of ``system.groups[g].prompts()``.
    """
    with torch.no_grad():
        u = _unit(heads.image(img_feats[idx]))
        return [u @ _unit(heads.text(p)).T for p in prompt_feats]


def attribute_metrics(data: TrainingData, sims: list[torch.Tensor], idx: np.ndarray,
                      lam: float | None = None) -> dict[str, Any]:
    """Top-1 option accuracy per group (images whose species the group applies to), their mean, and
    with ``lam`` the mean per-group NLL −log Σ_{k acceptable} softmax(λ·s)_k."""
    s = data.system
    cls = data.image_cls[idx]
    per, nll, n = {}, 0.0, 0
    for g, grp in enumerate(s.groups):
        ok = np.array([bool(s.rules[c][g]) for c in cls])
        if not ok.any():
            continue
        top = sims[g].argmax(1).numpy()
        hit = [top[i] in s.rules[c][g] for i, c in enumerate(cls) if ok[i]]
        per[grp.name] = float(np.mean(hit))
        if lam is not None:
            logp = torch.log_softmax(lam * sims[g].double(), dim=1).numpy()
            for i, c in enumerate(cls):
                if ok[i]:
                    nll -= float(np.logaddexp.reduce(logp[i, sorted(s.rules[c][g])]))
                    n += 1
    out = {"attribute_accuracy": float(np.mean(list(per.values()))) if per else float("nan"),
           "attribute_accuracy_by_group": per}
    if lam is not None:
        out["attribute_nll"] = nll / max(n, 1)
    return out


def fit_eval_scale(data: TrainingData, sims: list[torch.Tensor], idx: np.ndarray,
                   grid: np.ndarray | None = None) -> tuple[float, float]:
    """λ minimising the mean per-group NLL on images ``idx`` over a log grid (1..300); returns (λ, NLL)."""
    grid = np.geomspace(1, 300, 49) if grid is None else grid
    best = min(((attribute_metrics(data, sims, idx, float(l))["attribute_nll"], float(l)) for l in grid))
    return best[1], best[0]


def train(data: TrainingData, img_feats: torch.Tensor, txt_feats: torch.Tensor, prompt_feats: list,
          cfg: TrainConfig = TrainConfig(), log=None) -> tuple[ProbeHeads, dict[str, Any]]:
    """Train the heads; returns (the best epoch's heads in eval mode, metrics).

    img_feats : (N, 1280) features of ``data.images``; txt_feats : (M, 384) of
    ``data.captions``; prompt_feats : per group (K_g, 384) for the attribute
    metrics and the λ fit.
    """
    threads, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(cfg.threads)
    torch.use_deterministic_algorithms(True)
    try:
        return _train(data, img_feats.float().cpu(), txt_feats.float().cpu(), prompt_feats, cfg, log)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(det)


def _train(data, img_feats, txt_feats, prompt_feats, cfg: TrainConfig, log):
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    tr, va = data.image_split()
    heads = ProbeHeads(dim=cfg.dim, hidden=cfg.hidden, dropout=cfg.dropout, init_scale=cfg.init_scale)
    tr_caps = sorted({m for c in data.train_classes for m in data.class_captions[c]})
    heads.set_standardisation(img_feats[tr], txt_feats[tr_caps])
    opt = torch.optim.AdamW(heads.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    n_caps = torch.tensor([len(data.class_captions[c]) for c in range(data.system.n_classes)])
    caps_table = torch.full((data.system.n_classes, int(n_caps.max())), -1, dtype=torch.long)
    for c, ms in enumerate(data.class_captions):
        caps_table[c, :len(ms)] = torch.tensor(ms)
    truth = torch.from_numpy(data.truth)
    cls_tr = torch.from_numpy(data.image_cls[tr])
    feats_tr = img_feats[tr]
    history, best, best_state, bad = [], (math.inf, -1), None, 0
    log_max = math.log(cfg.max_scale)
    for epoch in range(cfg.max_epochs):
        heads.train()
        perm = torch.randperm(len(tr), generator=gen)
        losses = []
        for s in range(0, len(perm), cfg.batch_size):
            b = perm[s:s + cfg.batch_size]
            if len(b) < 2:
                continue
            cls = cls_tr[b]
            pick = (torch.rand(len(b), generator=gen) * n_caps[cls]).long()
            caps = caps_table[cls, pick]  # (B,) caption index per image
            pos = truth[caps][:, cls].T  # (B img, B txt): caption j true for image i's species
            u = _unit(heads.image(feats_tr[b]))
            v = _unit(heads.text(txt_feats[caps]))
            loss = multi_positive_loss(heads.log_scale.exp() * u @ v.T, pos)
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                heads.log_scale.clamp_(0.0, log_max)
            losses.append(float(loss.detach()))
        heads.eval()
        vl = val_loss(heads, data, img_feats, txt_feats, va)
        history.append({"epoch": epoch + 1, "train_loss": float(np.mean(losses)), "val_loss": vl,
                        "scale": float(heads.log_scale.detach().exp())})
        if log:
            log(f"epoch {epoch + 1}: train loss {history[-1]['train_loss']:.4f}, val loss {vl:.4f}, "
                f"scale {history[-1]['scale']:.1f}")
        if vl < best[0] - 1e-6:
            best, bad = (vl, epoch + 1), 0
            best_state = {k: v.detach().clone() for k, v in heads.state_dict().items()}
        else:
            bad += 1
            if bad >= cfg.patience:
                break
    if best_state is not None:
        heads.load_state_dict(best_state)
    heads.eval()
    secs = time.perf_counter() - t0
    sims_va = attribute_scores(heads, data, img_feats, prompt_feats, va)
    sims_tr = attribute_scores(heads, data, img_feats, prompt_feats, tr)
    lam, nll = fit_eval_scale(data, sims_va, va) if len(va) else (float(heads.log_scale.detach().exp()), float("nan"))
    metrics = {
        "epochs_run": len(history), "best_epoch": best[1], "seconds_train": secs,
        "train": {"images": int(len(tr)), "species": int(len(data.train_classes)),
                  "loss_at_best": history[best[1] - 1]["train_loss"] if best[1] > 0 else None,
                  **attribute_metrics(data, sims_tr, tr)},
        "val": {"images": int(len(va)), "species": int(len(data.val_classes)), "loss": best[0],
                **attribute_metrics(data, sims_va, va, lam)},
        "temperature_scale": float(heads.log_scale.detach().exp()),
        "eval_logit_scale": lam, "eval_logit_scale_val_nll": nll,
        "chance_attribute_accuracy": float(np.mean([1 / g.n_options for g in data.system.groups])),
        "history": history,
    }
    return heads, metrics

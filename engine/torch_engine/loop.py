"""The adaptive loop of :func:`engine.core.adaptive.classify_batch`, with its state on the source's device.

Same arguments, same Results (within float64 rounding; tests/test_torch_engine.py). What differs is
where the work happens:

- the state (log posterior (B, C), asked mask (B, G), prompts spent (B,), stop codes (B,), the sum
  scores, the channel's P, H, A) are float64/bool/int64 tensors on ``source.device``;
- similarities come from the source as tensors on that device (``similarities_t``; a numpy source
  runs through :class:`engine.torch_engine.sources.HostSource`) and never go to the host;
- built-in policies are tensor operations (:mod:`engine.torch_engine.policies`), any other policy
  runs on a host copy of its state;
- nothing is done per image in Python while the loop runs: each round's answers, EIG, confidence
  (and traced top-k) are kept as tensors and the trail is assembled once, at the end.

The host still learns a few small things each round: whether any image is left, which groups were
chosen (one Python iteration per group asked, as in numpy), whether the policy chose available
groups, and whether any likelihood underflowed (the exact log-space path, as in numpy). The state is float64 on every device: the property suite compares posteriors
at 1e-9 and breaks ties between groups within 1e-9 relative (policies.base.TIE_RTOL), which float32
(2^-24 ≈ 6e-8) cannot honour, so a float32 engine would take other question paths than the
reference. Similarities arrive in the model's dtype and are upcast on the device, as numpy does.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from engine.core.adaptive import NO_STOP, PERPLEXITY_TOL, StopRule, assemble_results, loop_setup
from engine.core.results import Result
from engine.core.scoring import log_prior
import engine.torch_engine.scoring as ts
from engine.torch_engine.policies import TorchPolicyState, select
from engine.torch_engine.sources import HostSource, is_device_source
from policies import Policy
from systems.format import AttributeSystem

DTYPE = torch.float64
#: stop codes of the state tensor, in the order the reasons are checked; 0 = still going
REASONS = (None, "confident", "exhausted", "budget", "no_gain", "error")
CONFIDENT, EXHAUSTED, BUDGET, NO_GAIN, ERROR = 1, 2, 3, 4, 5


def classify_batch_torch(source, system: AttributeSystem, policy: str | Policy = "eig", *, stop: StopRule = NO_STOP,
                         logit_scale: float = 100.0, eps: float = 0.0, scorer: str = "bayes",
                         prior: np.ndarray | None = None, top_k: int = 5, channel=None,
                         shortlist_size: int | None = None, trace: bool = False) -> list[Result]:
    """:func:`engine.core.adaptive.classify_batch` on torch tensors; the same parameters and Results.

    ``source`` is a device source (``device``, ``similarities_t``) or any numpy source (then the
    loop runs on the CPU and copies each block from it). ``logit_scale`` is a float or a (G,)
    array of per-group λ_g.
    """
    setup = loop_setup(source, system, policy, scorer=scorer, logit_scale=logit_scale, eps=eps, channel=channel,
                       shortlist_size=shortlist_size)
    src = source if is_device_source(source) else HostSource(source)
    dev = src.device
    ch = ts.TorchChannel.of(setup.channel, dev, DTYPE)
    B, C = setup.n_images, system.n_classes
    lam = [float(x) for x in setup.lams]
    budget = setup.budget(stop)
    name_g, m = setup.name_g, setup.m_names
    run = _Run(src, system, setup.policy, ch, lam, stop, budget, scorer, top_k, trace, dev)
    run.log_post = torch.as_tensor(log_prior(C, prior, B), device=dev).to(DTYPE).clone()
    if name_g is not None:
        run.asked[:, name_g] = True  # hidden from the policy; asked as the shortlist instead
        run.names_due[:] = True

    while True:
        idx = torch.nonzero(run.active).squeeze(1)
        if idx.numel() == 0:
            break
        post = torch.exp(run.log_post[idx])
        eig = ts.expected_information_gain(post, ch)
        unasked = ~run.asked[idx]
        left = budget - run.q[idx].to(DTYPE)  # (n,) prompts left (inf without a budget)
        avail = unasked & (ch.sizes[None, :] <= left[:, None])
        r = run.reason[idx]
        fired = ((post.amax(dim=1) >= stop.tau) if stop.tau < 1.0 else None,
                 ~unasked.any(dim=1), ~avail.any(dim=1), ~(avail & (eig >= stop.delta)).any(dim=1))
        for code, f in zip((CONFIDENT, EXHAUSTED, BUDGET, NO_GAIN), fired):
            if f is not None:
                r = torch.where((r == 0) & f, code, r)
        run.reason[idx] = r
        if name_g is not None:
            # candidates few, or nothing else left to ask: the shortlist instead of stopping (as numpy)
            due = run.names_due[idx] & (left >= m) & (r != CONFIDENT)
            few = ts.entropy(post) <= math.log(m) + PERPLEXITY_TOL
            due &= few | (r != 0)
            if bool(due.any()):
                ask = idx[due]
                run.reason[ask] = 0
                run.ask_shortlist(ask, post[due], name_g, m, setup.channel.eps)
                run.names_due[ask] = False
                continue
        go = r == 0
        run.active[idx[~go]] = False
        if not bool(go.any()):
            break
        gi = idx[go]
        state = TorchPolicyState(post=post[go], eig=eig[go], available=avail[go], budget_left=left[go], images=gi,
                                 channel=ch, n_images=B, memo=run.memo)
        choice = select(setup.policy, state).to(dev, torch.int64)
        if choice.shape != gi.shape or not bool(state.available[torch.arange(len(gi), device=dev), choice].all()):
            raise RuntimeError(f"policy {setup.policy!r} chose an unavailable group")
        eig_go = state.eig
        for g in torch.unique(choice).tolist():
            pick = choice == g
            run.ask_group(gi[pick], g, eig_go[pick, g])
    return run.results(scorer)


class _Run:
    """One run's state on the device and the per-round records the trail is built from."""

    def __init__(self, src, system, policy, ch, lam, stop, budget, scorer, top_k, trace, dev):
        B, C, G = int(src.n_images), system.n_classes, system.n_groups
        self.src, self.system, self.policy, self.ch, self.lam = src, system, policy, ch, lam
        self.top_k, self.trace, self.dev = top_k, trace, dev
        self.log_post = torch.empty((B, C), dtype=DTYPE, device=dev)
        self.sum_sc = torch.zeros((B, C), dtype=DTYPE, device=dev) if scorer == "sum" else None
        self.asked = torch.zeros((B, G), dtype=torch.bool, device=dev)
        self.q = torch.zeros(B, dtype=torch.int64, device=dev)
        self.reason = torch.zeros(B, dtype=torch.int64, device=dev)
        self.err_group = torch.full((B,), -1, dtype=torch.int64, device=dev)
        self.active = torch.ones(B, dtype=torch.bool, device=dev)
        self.names_due = torch.zeros(B, dtype=torch.bool, device=dev)
        self.memo: dict = {}
        # one entry per (round, group): images (n,), group, eig, answer, answer p, confidence[, top c, top p, q]
        self.steps: list[tuple] = []

    def _record(self, imgs, g, eig, ans, ans_p, conf):
        top = self._top(imgs) if self.trace else ()
        self.steps.append((imgs, g, eig, ans, ans_p, conf) + top + ((self.q[imgs],) if self.trace else ()))

    def _final(self, imgs=None):
        """The scorer's probabilities (n, C) as they stand: the posterior, or the normalised sum scores."""
        lp = self.log_post if imgs is None else self.log_post[imgs]
        final = torch.exp(lp)
        if self.sum_sc is not None:
            sc = self.sum_sc if imgs is None else self.sum_sc[imgs]
            tot = sc.sum(dim=1, keepdim=True)
            final = torch.where(tot > 0, sc / torch.where(tot > 0, tot, 1.0), final)
        return final

    def _top(self, imgs=None):
        """(order (n, k), probs (n, k)): the top-k as numpy's loop has it (:func:`engine.core.scoring.shortlist`:
        best first, probabilities equal within SHORTLIST_RTOL by class index)."""
        final = self._final(imgs)
        order = ts.shortlist(final, self.top_k)
        return order, torch.gather(final, 1, order)

    def ask_group(self, imgs: torch.Tensor, g: int, eig_g: torch.Tensor) -> None:
        ch, system = self.ch, self.system
        sims = self.src.similarities_t(imgs, g)
        if tuple(sims.shape) != (len(imgs), ch.k[g]):
            raise ValueError(f"similarity source returned shape {tuple(sims.shape)} for group "
                             f"{system.groups[g].name!r}, expected {(len(imgs), ch.k[g])}")
        sims = sims.to(self.dev, DTYPE)
        # an image with a non-finite similarity fails here and stops; it is scored along with the rest
        # (its NaNs touch only its own rows) and its result is the error alone, so the host need not look
        bad = ~torch.isfinite(sims).all(dim=1)
        self.err_group[imgs] = torch.where(bad, g, self.err_group[imgs])
        self.reason[imgs] = torch.where(bad, ERROR, self.reason[imgs])
        self.active[imgs] &= ~bad
        lp = ts.group_log_probs(sims, self.lam[g])
        cols = ch.cols(g)
        self.log_post[imgs] = ts.bayes_update(self.log_post[imgs], ts.bayes_loglik(lp, ch.P[:, cols], ch.logP[:, cols]))
        if self.sum_sc is not None:
            self.sum_sc[imgs] += torch.exp(lp) @ ch.A[:, cols].T
        self.asked[imgs, g] = True
        self.q[imgs] += ch.k[g]
        ans = torch.argmax(lp, dim=1)
        ans_p = torch.exp(torch.gather(lp, 1, ans[:, None])[:, 0])
        conf = torch.exp(self.log_post[imgs].amax(dim=1))
        self._record(imgs, g, eig_g, ans, ans_p, conf)

    def ask_shortlist(self, imgs: torch.Tensor, post: torch.Tensor, name_g: int, m: int, eps: float) -> None:
        """Ask images ``imgs`` (n,) which of their m most probable classes' names fits (numpy's _ask_shortlist)."""
        cand = ts.shortlist(post, m)  # (n, m)
        union = torch.unique(cand)  # sorted
        col = torch.searchsorted(union, cand)
        sims = self.src.similarities_t(imgs, name_g, options=union)
        if tuple(sims.shape) != (len(imgs), len(union)):
            raise ValueError(f"similarity source returned shape {tuple(sims.shape)} for the class-name shortlist, "
                             f"expected {(len(imgs), len(union))}")
        sub = torch.gather(sims.to(self.dev, DTYPE), 1, col)
        ok = torch.isfinite(sub).all(dim=1)
        if not bool(ok.all()):
            if not bool(ok.any()):
                return
            imgs, sub, cand, post = imgs[ok], sub[ok], cand[ok], post[ok]
        eig = ts.shortlist_eig(post, cand, eps)
        lp = ts.group_log_probs(sub, self.lam[name_g])
        self.log_post[imgs] = ts.bayes_update(self.log_post[imgs],
                                              ts.shortlist_loglik(lp, cand, post.shape[1], eps))
        self.q[imgs] += m
        ans = torch.argmax(lp, dim=1)
        ans_p = torch.exp(torch.gather(lp, 1, ans[:, None])[:, 0])
        conf = torch.exp(self.log_post[imgs].amax(dim=1))
        # the name group's options are the classes in order, so option index = class index
        self._record(imgs, name_g, eig, torch.gather(cand, 1, ans[:, None])[:, 0], ans_p, conf)

    def results(self, scorer: str) -> list[Result]:
        """Copy the final state and the per-round records to the host once, and build the Results."""
        B, system = len(self.q), self.system
        order, top_p = (t.cpu().numpy() for t in self._top())
        q = self.q.cpu().numpy()
        reason = np.array(REASONS, dtype=object)[self.reason.cpu().numpy()]
        err = self.err_group.cpu().numpy()
        errors = np.full(B, None, dtype=object)
        for i in np.nonzero(err >= 0)[0]:
            errors[i] = (f"non-finite similarity for group {system.groups[err[i]].name!r}: the encoder "
                         "returned NaN/inf or a zero vector for this image or for one of the group's prompts")
        trail: list[list[tuple]] = [[] for _ in range(B)]
        if self.steps:
            n = [len(s[0]) for s in self.steps]
            cat = [torch.cat([s[j] for s in self.steps]).cpu().numpy() for j in (0, 2, 3, 4, 5)]
            img, eig, ans, ans_p, conf = cat
            grp = np.repeat([s[1] for s in self.steps], n)
            cols = [img.tolist(), grp.tolist(), eig.tolist(), ans.tolist(), ans_p.tolist(), conf.tolist()]
            if self.trace:
                tc, tp, tq = (torch.cat([s[j] for s in self.steps]).cpu().numpy() for j in (6, 7, 8))
                tops = [list(zip(c, p)) for c, p in zip(tc.tolist(), tp.tolist())]
                for i, g, e, a, ap, cf, tt, qq in zip(*cols, tops, tq.tolist()):
                    trail[i].append((g, e, a, ap, cf, tt, qq))
            else:
                for i, g, e, a, ap, cf in zip(*cols):
                    trail[i].append((g, e, a, ap, cf))
        return assemble_results(system, order, top_p, q, reason, errors, trail)

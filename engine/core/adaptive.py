"""The adaptive loop: ask groups one at a time, per image, until a stop rule fires.

"Full system" and "baseline" are this same loop with the ``fixed`` policy and
no stopping (τ=1, δ=0, no budget); the baseline runs it on the one-group
system of class names (:func:`systems.baseline_system`).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from policies import Policy, PolicyState, get_policy
from systems.build import BASELINE_GROUP
from systems.format import AttributeSystem

from engine.core.arrays import NUMPY, Arrays
from engine.core.results import Result, Step
from engine.core.scoring import (
    Channel, bayes_loglik, bayes_update, build_channel, check_logit_scales, entropy, expected_accuracy_gain,
    expected_information_gain, group_log_probs, log_prior, shortlist, shortlist_eig, shortlist_loglik,
)
from engine.core.sources import SimilaritySource

SCORERS = ("bayes", "sum")
NAME_GROUP = BASELINE_GROUP  # the optional class-name group (systems.build.with_name_group)
PERPLEXITY_TOL = 1e-9  # nats: the shortlist's "perplexity ≤ m" trigger absorbs rounding in H
#: stop codes of the loop's state, in the order the stop rules are checked (the first that holds is
#: reported); GOING (0): still asking; ERROR: the image's similarities were not finite
REASONS = (None, "confident", "exhausted", "budget", "no_gain", "settled", "error")
GOING, CONFIDENT, EXHAUSTED, BUDGET, NO_GAIN, SETTLED, ERROR = range(len(REASONS))


MAX_BUDGET = 10**9  # prompts: far above any system's Q; larger ones overflow the loop's float arrays


@dataclass(frozen=True)
class StopRule:
    """When to stop asking.

    tau : stop once max π ≥ τ (exactly τ stops); τ = 1 never stops on confidence. In (0, 1].
    delta : stop once every *available* group — unasked and within the remaining
        budget — has EIG < δ (nats); δ = 0 never. A group the budget cannot pay
        for does not keep an image going: with g0 (K=2, EIG 0.56) and g1 (K=5,
        EIG 1.39), δ = 0.6 and budget 4, the image stops ``no_gain`` at Q=0
        rather than spend 2 prompts on g0, a question worth less than δ, and
        then stop on the budget anyway. This reads method.md's "every unasked
        group" as "every unasked group that can still be asked"; see
        docs/method-notes.md.
    budget : at most this many prompts per image (None: no limit). A budget
        below the cheapest group asks nothing and answers from the prior
        (stop reason ``budget``, ``q_spent`` 0).

    settle : stop once the answer model's lower bound on the probability that asking every
        unasked group would leave the label where it is reaches ``settle`` (the image's answer is
        settled: :meth:`engine.core.gaussian.GaussianPosterior.settled_probability`). In (0, 1];
        1 never. Needs an answer model with ``settled_probability`` (a Gaussian calibration).

    Reasons are checked in the order confident, exhausted, budget, no_gain, settled;
    the first that holds is the one reported.
    """

    tau: float = 1.0
    delta: float = 0.0
    budget: int | None = None
    settle: float = 1.0

    def __post_init__(self):
        if not (isinstance(self.tau, (int, float)) and 0.0 < self.tau <= 1.0):
            raise ValueError(f"tau == {self.tau!r}, must be in (0, 1]")
        if not (isinstance(self.delta, (int, float)) and self.delta >= 0 and math.isfinite(self.delta)):
            raise ValueError(f"delta == {self.delta!r}, must be a finite number >= 0")
        if self.budget is not None and (isinstance(self.budget, bool) or not isinstance(self.budget, (int, np.integer))
                                        or not 0 <= self.budget <= MAX_BUDGET):
            shown = repr(self.budget) if len(repr(self.budget)) <= 24 else repr(self.budget)[:20] + "..."
            raise ValueError(f"budget == {shown}, must be a whole number from 0 to {MAX_BUDGET:,} or None "
                             "(a budget of Q or more is no limit)")
        if isinstance(self.settle, bool) or not (isinstance(self.settle, numbers.Real) and 0.0 < self.settle <= 1.0):
            raise ValueError(f"settle == {self.settle!r}, must be in (0, 1] (1: never stop on a settled label)")


NO_STOP = StopRule()


def classify_batch(
    source: SimilaritySource,
    system: AttributeSystem,
    policy: str | Policy = "eig",
    *,
    stop: StopRule = NO_STOP,
    logit_scale: float | np.ndarray = 100.0,
    eps: float = 0.0,
    scorer: str = "bayes",
    prior: np.ndarray | None = None,
    top_k: int = 5,
    channel: Channel | None = None,
    shortlist_size: int | None = None,
    trace: bool = False,
    answer_model=None,
    xp: Arrays = NUMPY,
) -> list[Result]:
    """Classify the source's B images, each along its own path of questions.

    Parameters
    ----------
    source : SimilaritySource over B images, for ``system``'s groups.
    system : AttributeSystem with C classes and G groups.
    policy : a policy object or a registered name.
    stop : StopRule (τ, δ, budget). The default asks every group.
    logit_scale : λ in p_g = softmax(λ·s_g): one number, or (G,) λ_g per group
        (a calibration's; see :mod:`engine.core.channel_fit`).
    eps : rule noise ε of the Bayes channel.
    scorer : "bayes" (posterior) or "sum" (the write-up's sum of option
        probabilities). The Bayes posterior drives questions and stopping
        either way; the scorer decides the label and ``top``.
    prior : (C,) or (B, C) prior probabilities; uniform when None.
    top_k : how many (label, prob) pairs each result keeps.
    channel : a prebuilt :func:`build_channel` for (system, eps), to reuse, or one with
        fitted per-group confusions (then ``eps`` is not read).
    shortlist_size : m. With a ``class_name`` group in the system (``system build
        --name-group``), that group is never asked whole; instead, once an image's
        candidates are few (posterior perplexity ≤ m) or its attribute questions
        are spent, it is asked "which of these m names is it?" for its m most
        probable classes: m prompts, once. None asks the group like any other.
    trace : also keep, on every step, the top-k and the prompts spent after it.
    answer_model : None, or a few-shot posterior (:class:`engine.core.answer_models.FewShotPosterior`:
        ``log_prior(B)`` (B, C) and ``group_loglik(g, sims)`` (B, C)). Then the posterior starts at its
        prior (times ``prior``, if given) and each asked group adds its ℓ_g instead of the channel's
        soft-evidence term; the channel still gives EIG and the policies' predictions (the generative
        half). Needs the bayes scorer and no shortlist. It is numpy: on the torch backend each group's
        similarities go to the host for it and its ℓ_g comes back. A model with an ``information_gain(log_post,
        xp)`` (n, G) method (:class:`engine.core.predictive.PredictivePosterior`) gives the EIG instead of the
        channel. A model with ``conditional = True`` (:class:`engine.core.gaussian.GaussianPosterior`) is not a
        sum of per-group terms: after each question the image's posterior is its ``log_posterior(sims, asked)``
        on every similarity seen so far (times ``prior``), and ``group_loglik`` is not read.
    xp : the array backend the state lives on (:mod:`engine.core.arrays`): numpy, or the torch
        backend on the similarities' device (``engine.run.engines.classify`` picks it).

    Returns
    -------
    list of B Results. An image whose similarities came back non-finite gets a
    Result with ``error`` set; the others are unaffected. That covers a
    non-finite *prompt* embedding too: every image that asks that group fails
    (with the group named), the images that never ask it are classified.
    """
    setup = loop_setup(source, system, policy, stop=stop, scorer=scorer, logit_scale=logit_scale, eps=eps,
                       channel=channel, shortlist_size=shortlist_size, answer_model=answer_model)
    return _Run(setup, xp.source(source), system, xp, prior, top_k, trace).run()


def reads_own_information(policy: Any, answer_model: Any) -> bool:
    """Whether the loop hands ``policy`` (an object) the answer model's own information as ``state.eig``: a policy
    that asks for it (``reads_model_eig``; auto: as its chosen policy) and a model that has it (``own_information``:
    the Gaussian's, which needs each image's asked set, so it is computed on the host)."""
    return bool(getattr(policy, "reads_model_eig", False)) and hasattr(answer_model, "own_information")


@dataclass(frozen=True)
class LoopSetup:
    """The checked arguments of one adaptive run.

    stop : the StopRule; budget : its budget as a float (inf without one). lams : (G,) λ_g from
    :func:`check_logit_scales` (one λ broadcast). policy : the policy object. channel : the answer
    channel. scorer : "bayes" or "sum". n_images : B. name_g : the class-name group's index when the
    shortlist is on, else None; m_names : its m (min(shortlist_size, C)), else None. answer_model : the
    few-shot posterior, or None.
    """

    stop: StopRule
    budget: float
    lams: np.ndarray
    policy: Policy
    channel: Channel
    scorer: str
    n_images: int
    name_g: int | None
    m_names: int | None
    answer_model: Any = None


def loop_setup(source: SimilaritySource, system: AttributeSystem, policy: str | Policy, *, stop: StopRule,
               scorer: str, logit_scale: float | np.ndarray, eps: float, channel: Channel | None,
               shortlist_size: int | None, answer_model=None) -> LoopSetup:
    """Check :func:`classify_batch`'s arguments (raising its ValueErrors) and resolve the policy and channel."""
    if scorer not in SCORERS:
        raise ValueError(f"scorer == {scorer!r}, must be one of {list(SCORERS)}")
    lams = check_logit_scales(logit_scale, system.n_groups)
    policy = get_policy(policy)
    ch = channel if channel is not None else build_channel(system.rule_matrix, system.option_counts, eps)
    if ch.P.shape != (system.n_classes, system.q_total):
        raise ValueError(f"channel shape {ch.P.shape} does not match system {system.name!r}")
    name_g = m_names = None
    if shortlist_size is not None:
        if isinstance(shortlist_size, bool) or not isinstance(shortlist_size, (int, np.integer)) or shortlist_size < 2:
            raise ValueError(f"shortlist_size == {shortlist_size!r}, must be a whole number >= 2")
        if NAME_GROUP not in {g.name for g in system.groups}:
            raise ValueError(f"the shortlist asks class names, but system {system.name!r} has no {NAME_GROUP!r} "
                             "group; build the system with 'twentyq system build --name-group'")
        if scorer != "bayes":
            raise ValueError("the shortlist question needs the bayes scorer")
        name_g = system.group_index(NAME_GROUP)
        if system.groups[name_g].options != system.classes:
            raise ValueError(f"the {NAME_GROUP!r} group of system {system.name!r} must list the class names in "
                             "class order; rebuild it with 'twentyq system build --name-group'")
        m_names = min(int(shortlist_size), system.n_classes)
    if answer_model is not None and (scorer != "bayes" or name_g is not None):
        raise ValueError("a few-shot answer model needs the bayes scorer and no shortlist")
    if stop.settle < 1.0 and not hasattr(answer_model, "settled_probability"):
        raise ValueError(f"settle == {stop.settle:g} needs an answer model that predicts its unasked similarities "
                         "(a Gaussian few-shot calibration: twentyq calibrate --posterior gaussian); drop settle")
    budget = math.inf if stop.budget is None else float(stop.budget)
    return LoopSetup(stop=stop, budget=budget, lams=lams, policy=policy, channel=ch, scorer=scorer,
                     n_images=int(source.n_images), name_g=name_g, m_names=m_names, answer_model=answer_model)


class Asked(NamedTuple):
    """One group (or the shortlist) asked of n images in one round: the trail, kept as backend arrays
    and turned into :class:`Step` records once, at the end.

    images (n,) int; group : the group's index; eig, answer_prob, confidence (n,) float: the EIG
    when chosen, the answer distribution's top option's probability, max posterior after; answer
    (n,) int: that option's index (for the shortlist, a class index: the name group's options are
    the classes in order). Traced runs also keep top_classes, top_probs (n, k) and q_spent (n,).
    """

    images: Any
    group: int
    eig: Any
    answer: Any
    answer_prob: Any
    confidence: Any
    top_classes: Any = None
    top_probs: Any = None
    q_spent: Any = None


class _Run:
    """One run of the loop: its state on the backend (log posterior (B, C), sum scores, asked (B, G),
    prompts spent (B,), stop codes (B,), the group whose similarities failed (B,), active (B,)) and its
    trail. Nothing is done per image in Python until the Results are built."""

    def __init__(self, setup: LoopSetup, src, system: AttributeSystem, xp: Arrays, prior, top_k: int, trace: bool):
        B, C, G = setup.n_images, system.n_classes, system.n_groups
        self.setup, self.src, self.system, self.xp, self.top_k, self.trace = setup, src, system, xp, top_k, trace
        self.ch = xp.channel(setup.channel)  # P, H, A on the backend; setup.channel stays the host's
        self.k = [int(k) for k in setup.channel.sizes]  # per group, as Python numbers: K_g, columns, λ_g
        self.cols = [setup.channel.cols(g) for g in range(G)]
        self.lams = [float(lam) for lam in setup.lams]
        self.log_post = xp.array(log_prior(C, prior, B))
        # a posterior recomputed from every similarity seen (a conditional model's after each question, a head's
        # after the last) keeps the caller's prior
        self.conditional = bool(getattr(setup.answer_model, "conditional", False))
        recomputed = self.conditional or bool(getattr(setup.answer_model, "has_head", False))
        self.outer_prior = self.log_post if recomputed else None
        if setup.answer_model is not None:
            self.log_post = bayes_update(self.log_post, xp.asarray(setup.answer_model.log_prior(B)), xp)
        # a few-shot posterior with a full-system head: an image's posterior, once every group is asked, is the
        # head's on all its similarities; a conditional model's after every question (the similarities are kept
        # on the host, where the few-shot posteriors run)
        self.seen = np.zeros((B, sum(self.k))) if recomputed else None
        self.sum_sc = xp.zeros((B, C)) if setup.scorer == "sum" else None
        self.asked = xp.zeros((B, G), "bool")
        self.q = xp.zeros(B, "int")
        self.reason = xp.zeros(B, "int")
        self.failed_group = xp.full(B, -1, "int")
        self.active = xp.full(B, True, "bool")
        self.names_due = xp.zeros(B, "bool")
        self.trail: list[Asked] = []
        self.eig_read = bool(getattr(setup.policy, "reads_eig", True)) or setup.stop.delta > 0
        self.gain_read = bool(getattr(setup.policy, "reads_gain", False))
        self.model_eig = reads_own_information(setup.policy, setup.answer_model)
        if setup.name_g is not None:
            self.asked[:, setup.name_g] = True  # hidden from the policy; asked as the shortlist instead
            self.names_due[:] = True

    def run(self) -> list[Result]:
        with self.xp.errstate(invalid="ignore"):  # the NaN rows of images whose similarities failed (ask_group)
            self.ask_until_stopped()
        return self.results()

    def ask_until_stopped(self) -> None:
        """Rounds: stop rules, then the shortlist or one question per image still going, until none is."""
        xp, setup, stop, ch = self.xp, self.setup, self.setup.stop, self.ch
        name_g, m = setup.name_g, setup.m_names
        while True:
            idx = xp.nonzero(self.active)
            if len(idx) == 0:
                break
            post = xp.exp(self.log_post[idx])
            # a policy that asks for the model's own information gets it (reads_own_information); else a
            # few-shot model with a predictive of its own answers (engine.core.predictive) says what an
            # answer will do to *its* posterior; otherwise, or when neither the policy nor δ reads the EIG
            # (``reads_eig = False``: fixed, random, dev-order), the channel's, which costs far less
            if self.model_eig:
                eig = self.own_information(idx)
            else:
                gain = getattr(setup.answer_model, "information_gain", None) if self.eig_read else None
                eig = expected_information_gain(post, ch, xp) if gain is None else gain(self.log_post[idx], xp)
            unasked = ~self.asked[idx]
            left = setup.budget - xp.to_float(self.q[idx])  # (n,) prompts left (inf without a budget)
            avail = unasked & (ch.sizes[None, :] <= left[:, None])
            r = self.reason[idx]
            for code, fired in ((CONFIDENT, (xp.amax(post, axis=1) >= stop.tau) if stop.tau < 1.0 else None),
                                (EXHAUSTED, ~unasked.any(axis=1)),
                                (BUDGET, ~avail.any(axis=1)),
                                (NO_GAIN, ~(avail & (eig >= stop.delta)).any(axis=1))):
                if fired is not None:
                    r = xp.where((r == GOING) & fired, code, r)
            if stop.settle < 1.0:
                r = xp.where(self.settled(idx, r == GOING), SETTLED, r)  # only going images can fire
            self.reason[idx] = r
            if name_g is not None:
                # candidates few, or nothing else left to ask: the shortlist instead of stopping
                due = self.names_due[idx] & (left >= m) & (r != CONFIDENT)
                # perplexity exp(H) ≤ m, compared in log space with a tolerance: exp(H(uniform over m))
                # comes out as m + 1 ulp for some m, and exactly m candidates must count as few
                few = entropy(post, axis=1, xp=xp) <= math.log(m) + PERPLEXITY_TOL
                due &= few | (r != GOING)
                if xp.any(due):
                    ask = idx[due]
                    self.reason[ask] = GOING
                    self.ask_shortlist(ask, post[due])
                    self.names_due[ask] = False
                    continue
            go = r == GOING
            self.active[idx[~go]] = False
            if not xp.any(go):
                break
            gi = idx[go]
            state = PolicyState(post=post[go], eig=eig[go], available=avail[go], budget_left=left[go], images=gi,
                                channel=ch, xp=xp, gain=self.accuracy_gain(gi, post[go]) if self.gain_read else None)
            choice = xp.select(setup.policy, state)
            if tuple(choice.shape) != tuple(gi.shape) or \
                    not bool(state.available[xp.arange(len(gi)), choice].all()):
                raise RuntimeError(f"policy {setup.policy!r} chose an unavailable group")
            for g in xp.unique(choice).tolist():
                pick = choice == g
                self.ask_group(gi[pick], int(g), state.eig[pick, g])

    def settled(self, idx, going):
        """(n,) bool on the backend: whether the answer of each image of ``idx`` (n,) still ``going`` (n,) is
        settled (:attr:`StopRule.settle`), computed on the host by the answer model on every similarity seen,
        with the caller's prior as the full system's offset."""
        xp = self.xp
        going = np.asarray(xp.to_host(going), dtype=bool)
        fired = np.zeros(len(going))
        if going.any():
            rows, seen, asked, log_post = self.on_host(np.asarray(xp.to_host(idx), dtype=np.int64)[going])
            p = self.setup.answer_model.settled_probability(
                seen, asked, log_post, np.asarray(xp.to_host(self.outer_prior[rows]), dtype=np.float64))
            fired[going] = p >= self.setup.stop.settle
        return xp.asarray(fired) > 0.5

    def on_host(self, host: np.ndarray) -> tuple:
        """(rows on the backend, similarities seen (n, Q), asked (n, G) bool, log posterior (n, C)) of the images
        ``host`` (n,) int: what a conditional answer model's settled bound, gain and own information are computed
        from, on the host (``seen`` None for a model that is not conditional)."""
        xp = self.xp
        rows = xp.asindex(host)
        seen = None if self.seen is None else self.seen[host]
        return (rows, seen, np.asarray(xp.to_host(self.asked[rows]), dtype=bool),
                np.asarray(xp.to_host(self.log_post[rows]), dtype=np.float64))

    def accuracy_gain(self, imgs, post):
        """(n, G) on the backend: the expected accuracy gain of each group for the images ``imgs`` (n,) with
        posterior ``post`` (n, C) (:attr:`PolicyState.gain`): the answer model's own when it predicts its unasked
        similarities (computed on the host from every similarity seen), else the answer channel's."""
        xp = self.xp
        if not hasattr(self.setup.answer_model, "expected_accuracy_gain"):
            return expected_accuracy_gain(post, self.ch, xp)
        _, seen, asked, log_post = self.on_host(np.asarray(xp.to_host(imgs), dtype=np.int64))
        return xp.asarray(self.setup.answer_model.expected_accuracy_gain(seen, asked, log_post))

    def own_information(self, imgs):
        """(n, G) on the backend: the answer model's own information of each group for the images ``imgs`` (n,)
        (:attr:`policies.Policy.reads_model_eig`), from their asked sets and posteriors, on the host."""
        _, _, asked, log_post = self.on_host(np.asarray(self.xp.to_host(imgs), dtype=np.int64))
        return self.xp.asarray(self.setup.answer_model.own_information(asked, log_post))

    def ask_group(self, imgs, g: int, eig_g) -> None:
        xp, k, cols = self.xp, self.k[g], self.cols[g]
        sims = self.src.similarities(imgs, g)
        if tuple(sims.shape) != (len(imgs), k):
            raise ValueError(f"similarity source returned shape {tuple(sims.shape)} for group "
                             f"{self.system.groups[g].name!r}, expected {(len(imgs), k)}")
        # an image with a non-finite similarity fails here and stops; it is scored along with the rest
        # (its NaNs touch only its own rows: run() lets them through quietly) and its Result is the error
        # alone. Where looking at the mask costs a device synchronisation, the bookkeeping runs unlooked.
        bad = ~xp.isfinite(sims).all(axis=1)
        if not xp.cheap_sync or xp.any(bad):
            self.failed_group[imgs] = xp.where(bad, g, self.failed_group[imgs])
            self.reason[imgs] = xp.where(bad, ERROR, self.reason[imgs])
            self.active[imgs] &= ~bad
        lp = group_log_probs(sims, self.lams[g], xp)
        if self.setup.answer_model is None:
            ll = bayes_loglik(lp, self.ch.P[:, cols], xp)
        elif not self.conditional:
            ll = xp.asarray(self.setup.answer_model.group_loglik(g, xp.to_host(sims)))
        if not self.conditional:
            self.log_post[imgs] = bayes_update(self.log_post[imgs], ll, xp)
        if self.seen is not None:
            self.from_seen(imgs, g, sims)
        if self.sum_sc is not None:
            self.sum_sc[imgs] += xp.exp(lp) @ self.ch.A[:, cols].T
        self.asked[imgs, g] = True
        self.q[imgs] += k
        # the answer: the top option (its log-probability is the row's max)
        self.record(imgs, g, eig_g, xp.argmax(lp, axis=1), xp.exp(xp.amax(lp, axis=1)))

    def from_seen(self, imgs, g: int, sims) -> None:
        """Keep group g's similarities (n, K_g) of images ``imgs`` (n,), which have not been marked as asking g yet.
        A conditional model's posterior is recomputed on every similarity they have seen; otherwise an image whose
        every group is now asked gets the few-shot posterior's full-system head
        (:meth:`FewShotPosterior.log_posterior` with all asked). Either is multiplied by the caller's prior."""
        xp, host = self.xp, np.asarray(self.xp.to_host(imgs), dtype=np.int64)
        self.seen[host, self.cols[g]] = np.asarray(xp.to_host(sims), dtype=np.float64)
        asked = np.asarray(xp.to_host(self.asked[imgs]), dtype=bool)
        if self.conditional:
            asked[:, g] = True
            lp = xp.asarray(self.setup.answer_model.log_posterior(self.seen[host], asked))
            self.log_post[imgs] = bayes_update(self.outer_prior[imgs], lp, xp)
            return
        done = asked.sum(axis=1) == len(self.k) - 1  # g is the last
        if done.any():
            rows = xp.asindex(host[done])
            lp = xp.asarray(self.setup.answer_model.log_posterior(self.seen[host[done]]))
            self.log_post[rows] = bayes_update(self.outer_prior[rows], lp, xp)

    def ask_shortlist(self, imgs, post) -> None:
        """Ask images ``imgs`` (n,) which of their m most probable classes' names fits; update in place.

        post : (n, C) their posteriors. Only the union of their candidates' name prompts is asked of
        the source; each image is charged m prompts. Images whose similarities come back non-finite
        are left as they were (the names question is simply not answered for them).
        """
        xp, setup = self.xp, self.setup
        name_g, m, eps = setup.name_g, setup.m_names, setup.channel.eps
        cand = shortlist(post, m, xp)  # (n, m)
        union = xp.unique(cand)  # sorted
        col = xp.searchsorted(union, cand)  # (n, m) columns of each image's candidates in the union
        sims = self.src.similarities(imgs, name_g, options=union)
        if tuple(sims.shape) != (len(imgs), len(union)):
            raise ValueError(f"similarity source returned shape {tuple(sims.shape)} for the class-name shortlist, "
                             f"expected {(len(imgs), len(union))}")
        sub = xp.gather(sims, col)  # (n, m)
        ok = xp.isfinite(sub).all(axis=1)
        if not bool(ok.all()):
            if not xp.any(ok):
                return
            imgs, sub, cand, post = imgs[ok], sub[ok], cand[ok], post[ok]
        eig = shortlist_eig(post, cand, eps, xp)
        lp = group_log_probs(sub, self.lams[name_g], xp)
        self.log_post[imgs] = bayes_update(self.log_post[imgs], shortlist_loglik(lp, cand, post.shape[1], eps, xp), xp)
        self.q[imgs] += m
        ans = xp.argmax(lp, axis=1)
        self.record(imgs, name_g, eig, xp.gather(cand, ans[:, None])[:, 0], xp.exp(xp.amax(lp, axis=1)))

    def record(self, imgs, g: int, eig, answer, answer_prob) -> None:
        conf = self.xp.exp(self.xp.amax(self.log_post[imgs], axis=1))
        top = self.top(imgs) + (self.q[imgs],) if self.trace else ()
        self.trail.append(Asked(imgs, g, eig, answer, answer_prob, conf, *top))

    def scores(self, imgs=None):
        """The scorer's probabilities (n, C) as they stand: the posterior, or the normalised sum scores."""
        xp = self.xp
        final = xp.exp(self.log_post if imgs is None else self.log_post[imgs])
        if self.sum_sc is not None:
            sc = self.sum_sc if imgs is None else self.sum_sc[imgs]
            tot = sc.sum(axis=1, keepdims=True)
            final = xp.where(tot > 0, sc / xp.where(tot > 0, tot, 1.0), final)
        return final

    def top(self, imgs=None) -> tuple:
        """(classes (n, k), probs (n, k)): the top-k under the scorer now, best first, probabilities equal
        within SHORTLIST_RTOL by class index; a traced step's ``top`` and the final ``top`` alike."""
        final = self.scores(imgs)
        order = shortlist(final, self.top_k, self.xp)
        return order, self.xp.gather(final, order)

    def results(self) -> list[Result]:
        """Copy the final state and the trail to the host once, and build the B Results."""
        xp, system = self.xp, self.system
        order, top_p = (xp.to_host(a) for a in self.top())
        q, reason, failed = (xp.to_host(a) for a in (self.q, self.reason, self.failed_group))
        steps: list[list[Step]] = [[] for _ in range(len(q))]
        if self.trail:
            cols = {f: xp.to_host(xp.concat([getattr(a, f) for a in self.trail])).tolist()
                    for f in Asked._fields if f != "group" and (self.trace or f not in _TRACED)}
            group = np.repeat([a.group for a in self.trail], [len(a.images) for a in self.trail]).tolist()
            for j, (i, g) in enumerate(zip(cols["images"], group)):
                grp = system.groups[g]
                steps[i].append(Step(
                    group=grp.name, eig=cols["eig"][j], answer=grp.options[cols["answer"][j]],
                    answer_prob=cols["answer_prob"][j], confidence_after=cols["confidence"][j],
                    top=[(system.classes[c], p) for c, p in zip(cols["top_classes"][j], cols["top_probs"][j])]
                    if self.trace else None,
                    q_spent=cols["q_spent"][j] if self.trace else None))
        results = []
        for i in range(len(q)):
            if failed[i] >= 0:
                results.append(Result.failed(
                    f"non-finite similarity for group {system.groups[failed[i]].name!r}: the encoder "
                    "returned NaN/inf or a zero vector for this image or for one of the group's prompts"))
                continue
            results.append(Result(
                label=system.classes[order[i, 0]], confidence=float(top_p[i, 0]),
                top=[(system.classes[c], float(p)) for c, p in zip(order[i], top_p[i])],
                steps=steps[i], q_spent=int(q[i]), stop=REASONS[reason[i]]))
        return results


_TRACED = ("top_classes", "top_probs", "q_spent")

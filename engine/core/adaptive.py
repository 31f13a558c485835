"""The adaptive loop: ask groups one at a time, per image, until a stop rule fires.

"Full system" and "baseline" are this same loop with the ``fixed`` policy and
no stopping (τ=1, δ=0, no budget); the baseline runs it on the one-group
system of class names (:func:`systems.baseline_system`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from policies import Policy, PolicyState, get_policy
from systems.build import BASELINE_GROUP
from systems.format import AttributeSystem

from engine.core.results import Result, Step
from engine.core.scoring import (
    Channel, bayes_loglik, bayes_update, build_channel, check_logit_scales, entropy, expected_information_gain,
    group_log_probs, log_prior, shortlist, shortlist_eig, shortlist_loglik,
)
from engine.core.sources import SimilaritySource

SCORERS = ("bayes", "sum")
NAME_GROUP = BASELINE_GROUP  # the optional class-name group (systems.build.with_name_group)
PERPLEXITY_TOL = 1e-9  # nats: the shortlist's "perplexity ≤ m" trigger absorbs rounding in H


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

    Reasons are checked in the order confident, exhausted, budget, no_gain;
    the first that holds is the one reported.
    """

    tau: float = 1.0
    delta: float = 0.0
    budget: int | None = None

    def __post_init__(self):
        if not (isinstance(self.tau, (int, float)) and 0.0 < self.tau <= 1.0):
            raise ValueError(f"tau == {self.tau!r}, must be in (0, 1]")
        if not (isinstance(self.delta, (int, float)) and self.delta >= 0 and math.isfinite(self.delta)):
            raise ValueError(f"delta == {self.delta!r}, must be a finite number >= 0")
        if self.budget is not None and (isinstance(self.budget, bool) or not isinstance(self.budget, (int, np.integer))
                                        or self.budget < 0):
            raise ValueError(f"budget == {self.budget!r}, must be a whole number >= 0 or None")


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
) -> list[Result]:
    """Classify the source's B images, each along its own path of questions.

    Parameters
    ----------
    source : SimilaritySource over B images, for ``system``'s groups.
    system : AttributeSystem with C classes and G groups.
    policy : a policy object or a registered name.
    stop : StopRule (τ, δ, budget). The default asks every group.
    logit_scale : λ in p_g = softmax(λ·s_g): one number, or (G,) λ_g per group
        (a calibration's; see :mod:`engine.core.calibration`).
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
    answer_model : None, or a few-shot posterior (:class:`engine.core.answer_models.FewShotPosterior`:
        ``log_prior(B)`` (B, C) and ``group_loglik(g, sims)`` (B, C)). Then the posterior starts at its
        prior (times ``prior``, if given) and each asked group adds its ℓ_g instead of the channel's
        soft-evidence term; the channel still gives EIG and the policies' predictions (the generative
        half). Needs the bayes scorer and no shortlist.

    Returns
    -------
    list of B Results. An image whose similarities came back non-finite gets a
    Result with ``error`` set; the others are unaffected. That covers a
    non-finite *prompt* embedding too: every image that asks that group fails
    (with the group named), the images that never ask it are classified.
    """
    setup = loop_setup(source, system, policy, scorer=scorer, logit_scale=logit_scale, eps=eps, channel=channel,
                       shortlist_size=shortlist_size)
    lams, policy, ch, name_g, m_names = setup.lams, setup.policy, setup.channel, setup.name_g, setup.m_names
    B, C, G = setup.n_images, system.n_classes, system.n_groups
    sizes = ch.sizes
    budget = setup.budget(stop)
    log_post = log_prior(C, prior, B).copy()
    if answer_model is not None:
        if scorer != "bayes" or name_g is not None:
            raise ValueError("a few-shot answer model needs the bayes scorer and no shortlist")
        log_post = bayes_update(log_post, answer_model.log_prior(B))
    sum_sc = np.zeros((B, C)) if scorer == "sum" else None
    asked = np.zeros((B, G), dtype=bool)
    q = np.zeros(B, dtype=np.int64)
    reason = np.full(B, None, dtype=object)
    errors = np.full(B, None, dtype=object)
    active = np.ones(B, dtype=bool)
    trail: list[list[tuple]] = [[] for _ in range(B)]  # (g, eig, answer k, answer p, conf after[, top, q])
    tops = (lambda imgs: _top_after(log_post, sum_sc, imgs, top_k)) if trace else None
    names_due = np.zeros(B, dtype=bool)
    if name_g is not None:
        asked[:, name_g] = True  # hidden from the policy; asked as the shortlist instead
        names_due[:] = True

    while active.any():
        idx = np.nonzero(active)[0]
        post = np.exp(log_post[idx])
        eig = expected_information_gain(post, ch)
        unasked = ~asked[idx]
        avail = unasked & (sizes[None, :] <= (budget - q[idx])[:, None])
        for why, fired in (
            ("confident", (post.max(axis=1) >= stop.tau) if stop.tau < 1.0 else np.zeros(len(idx), bool)),
            ("exhausted", ~unasked.any(axis=1)),
            ("budget", ~avail.any(axis=1)),
            ("no_gain", ~(avail & (eig >= stop.delta)).any(axis=1)),
        ):
            hit = idx[fired & (reason[idx] == None)]  # noqa: E711  (object array)
            reason[hit] = why
        if name_g is not None:
            # candidates few, or nothing else left to ask: the shortlist instead of stopping
            due = names_due[idx] & (budget - q[idx] >= m_names) & (reason[idx] != "confident")
            # perplexity exp(H) ≤ m, compared in log space with a tolerance: exp(H(uniform over m))
            # comes out as m + 1 ulp for some m, and exactly m candidates must count as few
            few = entropy(post, axis=1) <= np.log(m_names) + PERPLEXITY_TOL
            due &= few | (reason[idx] != None)  # noqa: E711
            if due.any():
                ask = idx[due]
                reason[ask] = None
                _ask_shortlist(source, ask, post[due], name_g, m_names, lams[name_g], ch.eps, log_post, q, trail, tops)
                names_due[ask] = False
                continue
        go = reason[idx] == None  # noqa: E711
        active[idx[~go]] = False
        if not go.any():
            break
        gi = idx[go]
        state = PolicyState(post=post[go], eig=eig[go], available=avail[go],
                            budget_left=budget - q[gi], images=gi, channel=ch)
        choice = np.asarray(policy.select(state), dtype=np.int64)
        if choice.shape != gi.shape or not state.available[np.arange(len(gi)), choice].all():
            raise RuntimeError(f"policy {policy!r} chose an unavailable group")
        for g in np.unique(choice):
            g = int(g)
            pick = choice == g
            imgs = gi[pick]
            sims = np.asarray(source.similarities(imgs, g), dtype=np.float64)
            if sims.shape != (len(imgs), sizes[g]):
                raise ValueError(f"similarity source returned shape {sims.shape} for group "
                                 f"{system.groups[g].name!r}, expected {(len(imgs), int(sizes[g]))}")
            ok = np.isfinite(sims).all(axis=1)
            for i in imgs[~ok]:
                errors[i] = (f"non-finite similarity for group {system.groups[g].name!r}: the encoder "
                             "returned NaN/inf or a zero vector for this image or for one of the group's prompts")
                reason[i] = "error"
                active[i] = False
            imgs, sims, eig_g = imgs[ok], sims[ok], eig[go][pick][ok, g]
            if not len(imgs):
                continue
            lp = group_log_probs(sims, lams[g])
            cols = ch.cols(g)
            ll = bayes_loglik(lp, ch.P[:, cols]) if answer_model is None else answer_model.group_loglik(g, sims)
            log_post[imgs] = bayes_update(log_post[imgs], ll)
            if sum_sc is not None:
                sum_sc[imgs] += np.exp(lp) @ ch.A[:, cols].T
            asked[imgs, g] = True
            q[imgs] += sizes[g]
            ans = lp.argmax(axis=1)
            ans_p = np.exp(lp[np.arange(len(imgs)), ans])
            conf = np.exp(log_post[imgs].max(axis=1))
            top_now = tops(imgs) if tops else None
            for j, i in enumerate(imgs):
                trail[i].append((g, float(eig_g[j]), int(ans[j]), float(ans_p[j]), float(conf[j]))
                                + ((top_now[j], int(q[i])) if top_now else ()))

    final = np.exp(log_post)
    if sum_sc is not None:
        tot = sum_sc.sum(axis=1, keepdims=True)
        final = np.where(tot > 0, sum_sc / np.where(tot > 0, tot, 1.0), final)
    order = shortlist(final, top_k)  # best first; equal within SHORTLIST_RTOL: by class index
    return assemble_results(system, order, np.take_along_axis(final, order, axis=1), q, reason, errors, trail)


@dataclass(frozen=True)
class LoopSetup:
    """The checked arguments of one adaptive run, shared by every backend of the loop.

    lams : (G,) λ_g from :func:`check_logit_scales` (one λ broadcast). policy : the policy object. channel : the
    answer channel. n_images : B. name_g : the class-name group's index when the shortlist is on,
    else None; m_names : its m (min(shortlist_size, C)), else None.
    """

    lams: np.ndarray
    policy: Policy
    channel: Channel
    n_images: int
    name_g: int | None
    m_names: int | None

    @staticmethod
    def budget(stop: StopRule) -> float:
        """The prompt budget as a float (inf without one)."""
        return math.inf if stop.budget is None else float(stop.budget)


def loop_setup(source: SimilaritySource, system: AttributeSystem, policy: str | Policy, *, scorer: str,
               logit_scale: float | np.ndarray, eps: float, channel: Channel | None,
               shortlist_size: int | None) -> LoopSetup:
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
    return LoopSetup(lams=lams, policy=policy, channel=ch, n_images=int(source.n_images), name_g=name_g,
                     m_names=m_names)


def assemble_results(system: AttributeSystem, order: np.ndarray, top_p: np.ndarray, q: np.ndarray,
                     reason: np.ndarray, errors: np.ndarray, trail: list[list[tuple]]) -> list[Result]:
    """The B Results of a run, from its final state (every backend of the loop ends here).

    order : (B, k) class indices, best first; top_p : (B, k) their probabilities under the scorer.
    q : (B,) prompts spent; reason : (B,) stop reasons; errors : (B,) None or an image's error.
    trail : per image, its steps in order as (g, eig, answer k, answer p, conf after[, top, q]),
    ``top`` a list of (class index, prob).
    """
    results = []
    for i in range(len(order)):
        if errors[i] is not None:
            results.append(Result.failed(errors[i]))
            continue
        steps = [Step(group=system.groups[t[0]].name, eig=t[1], answer=system.groups[t[0]].options[t[2]],
                      answer_prob=t[3], confidence_after=t[4],
                      top=[(system.classes[c], p) for c, p in t[5]] if len(t) > 5 else None,
                      q_spent=t[6] if len(t) > 5 else None)
                 for t in trail[i]]
        results.append(Result(
            label=system.classes[order[i, 0]],
            confidence=float(top_p[i, 0]),
            top=[(system.classes[c], float(p)) for c, p in zip(order[i], top_p[i])],
            steps=steps, q_spent=int(q[i]), stop=reason[i],
        ))
    return results


def _ask_shortlist(source: SimilaritySource, imgs: np.ndarray, post: np.ndarray, name_g: int, m: int, lam: float,
                   eps: float, log_post: np.ndarray, q: np.ndarray, trail: list[list[tuple]],
                   tops=None) -> None:
    """Ask images ``imgs`` (n,) which of their m most probable classes' names fits; update in place.

    post : (n, C) their posteriors. Only the union of their candidates' name prompts is asked of
    the source; each image is charged m prompts. Images whose similarities come back non-finite
    are left as they were (the names question is simply not answered for them).
    """
    cand = shortlist(post, m)  # (n, m)
    union = np.unique(cand)
    col = np.searchsorted(union, cand)  # (n, m) columns of each image's candidates in the union
    sims = np.asarray(source.similarities(imgs, name_g, options=union), dtype=np.float64)
    if sims.shape != (len(imgs), len(union)):
        raise ValueError(f"similarity source returned shape {sims.shape} for the class-name shortlist, "
                         f"expected {(len(imgs), len(union))}")
    sub = np.take_along_axis(sims, col, axis=1)  # (n, m)
    ok = np.isfinite(sub).all(axis=1)
    if not ok.any():
        return
    imgs, sub, cand, post = imgs[ok], sub[ok], cand[ok], post[ok]
    eig = shortlist_eig(post, cand, eps)
    lp = group_log_probs(sub, lam)
    log_post[imgs] = bayes_update(log_post[imgs], shortlist_loglik(lp, cand, post.shape[1], eps))
    q[imgs] += m
    ans = lp.argmax(axis=1)
    conf = np.exp(log_post[imgs].max(axis=1))
    top_now = tops(imgs) if tops else None
    for j, i in enumerate(imgs):
        # the name group's options are the classes in order, so option index = class index
        trail[i].append((name_g, float(eig[j]), int(cand[j, ans[j]]), float(np.exp(lp[j, ans[j]])), float(conf[j]))
                        + ((top_now[j], int(q[i])) if top_now else ()))


def _top_after(log_post: np.ndarray, sum_sc: np.ndarray | None, imgs: np.ndarray, k: int
               ) -> list[list[tuple[int, float]]]:
    """For images ``imgs`` (n,): the top-k (class index, prob) under the scorer as it stands now, computed
    exactly as the final ``top`` is (the posterior, or the normalised sum scores), so a trace's last
    step equals the result's ``top``."""
    final = np.exp(log_post[imgs])
    if sum_sc is not None:
        sc = sum_sc[imgs]
        tot = sc.sum(axis=1, keepdims=True)
        final = np.where(tot > 0, sc / np.where(tot > 0, tot, 1.0), final)
    order = shortlist(final, k)
    return [[(int(c), float(final[j, c])) for c in order[j]] for j in range(len(imgs))]

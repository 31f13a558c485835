"""An independent reference implementation of ../shared/docs/method.md, one image at a time.

Plain Python loops over lists of floats, in log space where products appear. It imports nothing
from ``engine.core.scoring`` or ``policies``: it is written from the contract (and from
docs/method-notes.md where the engine settles a point the contract leaves open), so that tests can
compare the engine's vectorised maths with it.

Notation: ``rules[c][g]`` is a frozenset of acceptable option indices (empty = not applicable),
``sizes[g]`` is K_g, ``sims[g]`` the list of K_g similarities of one image to group g's prompts.

Decisions that compare two computed numbers (ties between groups, τ, δ, the label) are recorded as
*fragile* when the two numbers are so close that the engine's arithmetic could legitimately fall on
the other side; a test then compares nothing after that point.
"""

from __future__ import annotations

import math

# the documented tie rule (docs/method-notes.md): within 1e-9 relative, 1e-12 absolute, of the best
TIE_RTOL = 1e-9
TIE_ATOL = 1e-12
PERPLEXITY_TOL = 1e-9
NEG_INF = float("-inf")


def lse(xs):
    """log Σ exp(x), with -inf terms allowed."""
    m = max(xs)
    if m == NEG_INF:
        return NEG_INF
    return m + math.log(sum(math.exp(x - m) for x in xs))


def xlogx(p):
    return p * math.log(p) if p > 0 else 0.0


def entropy(ps):
    return -sum(xlogx(p) for p in ps)


# --------------------------------------------------------------------------- answers and channel
def log_softmax(sims, lam):
    """log p_g = log softmax(λ·s): computed as λ·(s − max s) so no finite input overflows."""
    m = max(sims)
    z = []
    for s in sims:
        d = s - m  # may overflow to -inf for two huge similarities of opposite sign: probability 0
        z.append(lam * d if d != NEG_INF else NEG_INF)
    t = lse(z)
    return [x - t for x in z]


def answer_prob(rule, k, K, eps):
    """P(k | c) for one group: (1−ε)·1[k∈R]/|R| + ε/K, or 1/K if R is empty."""
    if not rule:
        return 1.0 / K
    return (1.0 - eps) * (1.0 if k in rule else 0.0) / len(rule) + eps / K


def sum_weight(rule, k, K):
    """The sum scorer's weight of option k: 1 if acceptable, 1/K across a not-applicable group."""
    if not rule:
        return 1.0 / K
    return 1.0 if k in rule else 0.0


def sum_scores(log_ps, rules, sizes, groups):
    """score(c) = Σ_{g in groups} Σ_{k∈R_g(c)} p_g[k] (1/K_g per not-applicable group)."""
    out = []
    for row in rules:
        tot = 0.0
        for g in groups:
            for k in range(sizes[g]):
                tot += sum_weight(row[g], k, sizes[g]) * math.exp(log_ps[g][k])
        out.append(tot)
    return out


def group_loglik(log_p, rules, g, K, eps):
    """log Σ_k p_g[k]·P(k | c) for every class c, by logsumexp over the options with P > 0."""
    out = []
    for row in rules:
        terms = []
        for k in range(K):
            pk = answer_prob(row[g], k, K, eps)
            if pk > 0:
                terms.append(log_p[k] + math.log(pk))
        out.append(lse(terms) if terms else NEG_INF)
    return out


def normalise_log(x):
    t = lse(x)
    return [v - t for v in x]


def log_prior(C, prior=None):
    if prior is None:
        return [-math.log(C)] * C
    tot = sum(prior)
    return [math.log(p / tot) if p / tot > 0 else NEG_INF for p in prior]  # a tiny p / tot can underflow to 0


def full_log_posterior(log_ps, rules, sizes, eps, prior=None):
    """Log posterior after every group, updating one group at a time."""
    x = log_prior(len(rules), prior)
    for g, lp in enumerate(log_ps):
        ll = group_loglik(lp, rules, g, sizes[g], eps)
        x = normalise_log([a + b for a, b in zip(x, ll)])
    return x


def eig(post, rules, g, K, eps):
    """I(class; answer) = H(Σ_c π(c) P(·|c)) − Σ_c π(c) H(P(·|c)), clipped at 0."""
    marg = [0.0] * K
    h_cond = 0.0
    for c, row in enumerate(rules):
        if post[c] == 0:
            continue
        pk = [answer_prob(row[g], k, K, eps) for k in range(K)]
        for k in range(K):
            marg[k] += post[c] * pk[k]
        h_cond += post[c] * entropy(pk)
    return max(entropy(marg) - h_cond, 0.0)


# --------------------------------------------------------------------------- shortlist
def shortlist(post, m):
    """The m most probable classes, best first; probabilities tied under the tie rule by class index."""
    left = list(range(len(post)))
    out = []
    for _ in range(min(m, len(post))):
        best = max(post[c] for c in left)
        pick = next(c for c in left if _tied(best, post[c], atol=0.0))
        out.append(pick)
        left.remove(pick)
    return out


def shortlist_loglik(log_p, cand, C, eps):
    """log((1−ε)·p_j + ε/m) for candidate j, log(1/m) for every class not named."""
    m = len(cand)
    out = [-math.log(m)] * C
    for j, c in enumerate(cand):
        terms = [math.log1p(-eps) + log_p[j]]
        if eps / m > 0:  # ε/m underflows to 0 for a denormal ε
            terms.append(math.log(eps / m))
        out[c] = lse(terms)
    return out


def shortlist_eig(post, cand, eps):
    """The shortlist as a group over all C classes: candidate j has rule {j}, the rest not applicable."""
    m = len(cand)
    rules = [(frozenset(),) for _ in post]
    for j, c in enumerate(cand):
        rules[c] = (frozenset([j]),)
    return eig(post, rules, 0, m, eps)


# --------------------------------------------------------------------------- ties and policies
class Fragile(Exception):
    """A decision between two numbers too close to call."""


def _tied(best, s, atol=TIE_ATOL):
    """Is s tied with best under the tie rule? Raises Fragile near the rule's edge."""
    tol = atol + TIE_RTOL * abs(best)
    gap = best - s
    if abs(gap - tol) < 0.1 * tol:
        raise Fragile(f"gap {gap} at the tie tolerance {tol}")
    return gap <= tol


def tol_argmax(scores, allowed):
    """Lowest index among the allowed entries tied with the best (a list of indices if ``allowed``)."""
    best = max(scores[i] for i in allowed)
    for i in sorted(allowed):
        if _tied(best, scores[i]):
            return i
    raise AssertionError("unreachable")


def tol_near_max(scores, allowed):
    best = max(scores[i] for i in allowed)
    return [i for i in sorted(allowed) if _tied(best, scores[i])]


def splitmix_key(seed, image, g):
    """The random policy's key for (seed, image, group), uniform in [0, 1): splitmix64 on Python ints."""
    M = (1 << 64) - 1
    x = (seed * 0x9E3779B97F4A7C15 + image * 0xBF58476D1CE4E5B9 + g * 0x94D049BB133111EB) & M
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & M
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & M
    x ^= x >> 31
    return (x >> 11) / float(1 << 53)


def lookahead_value(post, rules, sizes, eps, g, avail, budget_left):
    """The lookahead policy's V(g): (EIG_g + Σ_k P(k)·EIG_{g'(k)}(π_k)) / (K_g + Σ_k P(k)·K_{g'(k)}), with
    g'(k) the best EIG-per-prompt group after answer k among ``avail`` minus g that fits budget_left − K_g;
    EIG_g / K_g when none fits. Written out class by class, answer by answer."""
    K = sizes[g]
    e1 = eig(post, rules, g, K, eps)
    second = [h for h in avail if h != g and sizes[h] <= budget_left - K]
    if not second:
        return e1 / K
    gain, cost = e1, float(K)
    for k in range(K):
        joint = [post[c] * answer_prob(rules[c][g], k, K, eps) for c in range(len(rules))]
        pk = sum(joint)
        if pk <= 0:
            continue
        post_k = [j / pk for j in joint]
        rates = {h: eig(post_k, rules, h, sizes[h], eps) / sizes[h] for h in second}
        best = tol_argmax(rates, second)  # ties (the tie rule) to the lowest index
        gain += pk * rates[best] * sizes[best]
        cost += pk * sizes[best]
    return gain / cost


# --------------------------------------------------------------------------- the policies
# One chooser per built-in policy, under its registered name (policies/builtin.py). Each takes the image's
# posterior, EIG per group, the available groups (a non-empty list of indices), the rules, K_g, ε, the image's
# index, the random seed and the prompts left, and returns the group the policy asks next.
#
# A new built-in policy is added to the tests HERE and nowhere else: write its chooser from the policy's
# documented rule and add it to CHOOSERS. tests/test_engine.py fails, naming this dict, for a registered
# built-in without a chooser; the contract tests (tests/test_engine.py), the reference agreement properties
# (tests/test_reference.py) and the backend properties (tests/test_torch_engine.py) all take their policies
# from policies.list_policies().
def _fixed(post, eigs, avail, rules, sizes, eps, image, seed, budget_left):
    return min(avail)


def _random(post, eigs, avail, rules, sizes, eps, image, seed, budget_left):
    return max(avail, key=lambda g: (splitmix_key(seed, image, g), -g))


def _eig(post, eigs, avail, rules, sizes, eps, image, seed, budget_left):
    return tol_argmax(eigs, avail)


def _eig_per_prompt(post, eigs, avail, rules, sizes, eps, image, seed, budget_left):
    return tol_argmax([e / k for e, k in zip(eigs, sizes)], avail)


def _top2(post, eigs, avail, rules, sizes, eps, image, seed, budget_left):
    C = len(post)
    if C < 2:
        return tol_argmax(eigs, avail)
    first = tol_argmax(post, range(C))
    second = tol_argmax(post, [c for c in range(C) if c != first])
    tv = [0.5 * sum(abs(answer_prob(rules[first][g], k, sizes[g], eps)
                        - answer_prob(rules[second][g], k, sizes[g], eps)) for k in range(sizes[g]))
          for g in range(len(sizes))]
    return tol_argmax(eigs, tol_near_max(tv, avail))


def _lookahead(post, eigs, avail, rules, sizes, eps, image, seed, budget_left):
    rates = [e / k for e, k in zip(eigs, sizes)]
    cand = sorted(avail, key=lambda h: (-rates[h], h))[:8]
    values = {h: lookahead_value(post, rules, sizes, eps, h, avail, budget_left) for h in cand}
    return tol_argmax(rates, tol_near_max(values, cand))


def _accuracy_per_prompt(post, eigs, avail, rules, sizes, eps, image, seed, budget_left):
    # Σ_k max_c π(c)·P(k|c) − max_c π(c): the expected rise of the top class's probability after a hard answer
    C = len(post)
    gains = [max(sum(max(post[c] * answer_prob(rules[c][g], k, sizes[g], eps) for c in range(C))
                     for k in range(sizes[g])) - max(post), 0.0) for g in range(len(sizes))]
    return tol_argmax([x / k for x, k in zip(gains, sizes)], avail)


CHOOSERS = {
    "fixed": _fixed,
    "dev-order": _fixed,  # without a calibration's order: the system order, as fixed
    "auto": _fixed,  # without a calibration's choice: fixed
    "random": _random,
    "eig": _eig,
    "eig_per_prompt": _eig_per_prompt,
    "model_eig_per_prompt": _eig_per_prompt,  # no answer model of its own here: the channel's EIG, as eig_per_prompt
    "top2": _top2,
    "lookahead": _lookahead,
    "accuracy_per_prompt": _accuracy_per_prompt,
}


def choose(policy, post, eigs, avail, rules, sizes, eps, image, seed=0, budget_left=math.inf):
    """The group the policy asks next, among ``avail`` (a non-empty list of group indices)."""
    try:
        chooser = CHOOSERS[policy]
    except KeyError:
        raise KeyError(f"tests/reference.py has no chooser for the policy {policy!r}: add one to CHOOSERS") from None
    return chooser(post, eigs, avail, rules, sizes, eps, image, seed, budget_left)


# --------------------------------------------------------------------------- the adaptive loop, one image
def _at_least(x, threshold, what):
    if abs(x - threshold) < 1e-9 * max(1.0, abs(threshold)):
        raise Fragile(f"{what} {x} at its threshold {threshold}")
    return x >= threshold


def classify_one(sims, rules, sizes, *, policy, lam, eps, tau=1.0, delta=0.0, budget=None, scorer="bayes",
                 prior=None, image=0, name_group=None, m=None):
    """One image through the adaptive loop of method.md.

    sims : list over groups of lists of K_g similarities.
    name_group, m : the class-name group's index and the shortlist size (None: no shortlist).
    Returns a dict: path (group indices asked, in order), step_eigs, answers, q, stop, scores (final
    per-class scores: the posterior, or the normalised sum scores), label (class index),
    confidence, fragile (None, or why the run stopped being comparable, with the path up to there).
    """
    C, G = len(rules), len(sizes)
    budget = math.inf if budget is None else budget
    x = log_prior(C, prior)
    sums = [0.0] * C
    asked = set()
    names_due = name_group is not None
    if names_due:
        asked.add(name_group)  # asked only as the shortlist
        m = min(m, C)
    path, step_eigs, q, stop = [], [], 0, None
    answers = []  # (answer option, its probability, max posterior after) of each step
    out = dict(fragile=None)
    try:
        while True:
            post = [math.exp(v) for v in x]
            eigs = [eig(post, rules, g, sizes[g], eps) for g in range(G)]
            unasked = [g for g in range(G) if g not in asked]
            avail = [g for g in unasked if sizes[g] <= budget - q]
            stop = None
            if tau < 1.0 and _at_least(max(post), tau, "max posterior"):
                stop = "confident"
            elif not unasked:
                stop = "exhausted"
            elif not avail:
                stop = "budget"
            elif delta > 0 and not any([_at_least(eigs[g], delta, "EIG") for g in avail]):
                stop = "no_gain"
            if names_due and budget - q >= m and stop != "confident":
                h = entropy(post)
                few = h <= math.log(m) + PERPLEXITY_TOL
                if abs(h - math.log(m) - PERPLEXITY_TOL) < 1e-12:
                    raise Fragile("perplexity at m")
                if few or stop is not None:
                    cand = shortlist(post, m)
                    sub = [sims[name_group][c] for c in cand]
                    lp = log_softmax(sub, lam)
                    e = shortlist_eig(post, cand, eps)
                    x = normalise_log([a + b for a, b in zip(x, shortlist_loglik(lp, cand, C, eps))])
                    q += m
                    names_due = False
                    path.append(name_group)
                    step_eigs.append(e)
                    j = lp.index(max(lp))
                    answers.append((cand[j], math.exp(lp[j]), math.exp(max(x))))
                    continue
            if stop is not None:
                break
            g = choose(policy, post, eigs, avail, rules, sizes, eps, image, budget_left=budget - q)
            lp = log_softmax(sims[g], lam)
            x = normalise_log([a + b for a, b in zip(x, group_loglik(lp, rules, g, sizes[g], eps))])
            if scorer == "sum":
                sc = sum_scores({g: lp}, rules, sizes, [g])
                sums = [a + b for a, b in zip(sums, sc)]
            asked.add(g)
            q += sizes[g]
            path.append(g)
            step_eigs.append(eigs[g])
            k = lp.index(max(lp))
            answers.append((k, math.exp(lp[k]), math.exp(max(x))))
    except Fragile as why:
        out["fragile"] = str(why)
    post = [math.exp(v) for v in x]
    tot = sum(sums)
    scores = [s / tot for s in sums] if (scorer == "sum" and tot > 0) else post
    best = max(scores)
    label = min(c for c in range(C) if scores[c] == best)
    out.update(path=path, step_eigs=step_eigs, answers=answers, q=q, stop=stop, scores=scores, label=label, confidence=best)
    return out

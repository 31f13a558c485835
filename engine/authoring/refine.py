"""Refine an attribute system on labelled dev images with the model frozen.

Every step works on cached image embeddings: the only model calls are text
embeddings of new candidate prompts, made through ``prompt_sims``, a callable
``prompts (P,) -> (B, P)`` cosine similarities of the B images at hand to
those prompts (see :class:`engine.authoring.refine_images.PromptSims`). Refinement sees only
the dev images it is given; :func:`split_by_image` (from :mod:`engine.core.channel_fit`) makes the
dev/test split.

Steps, each switchable (:class:`RefineConfig`) and reported (:class:`RefineReport`):

1. calibration: λ and ε by maximum likelihood of the full-system posterior;
2. rule correction: per (class, group) the option the class's dev images
   favour more than images of other classes do (its lift), if it beats the given
   rule's lift by ``rule_prior`` nats; classes with fewer than ``min_images`` dev
   images are left alone;
3. template selection: per group, the candidate template with the highest
   dev log-likelihood of the true classes' options;
4. pruning: options no class uses, then groups whose dev information gain is
   not above ``min_gain`` nats (default 0: groups that tell nothing or mislead);

then λ and ε are fitted again on the refined system.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np
from scipy.special import logsumexp

from engine.core.channel_fit import fit_logit_scale_and_eps, split_by_image  # noqa: F401  (re-exported)
from engine.core.scoring import bayes_loglik, build_channel, check_eps, check_logit_scale, group_log_probs

from systems.build import BASELINE_GROUP
from systems.format import PLACEHOLDER, AttributeSystem, Group

PromptSims = Callable[[Sequence[str]], np.ndarray]

#: Generic rewrites tried for every group's template (besides the given one).
GENERIC_TEMPLATES: tuple[str, ...] = (
    PLACEHOLDER,
    "a photo of {}.",
    "a picture of {}",
    "an image showing {}",
    "a drawing of {}",
)


@dataclass(frozen=True)
class RefineConfig:
    """Which steps run, and their thresholds.

    rule_prior : nats of lift a new option must gain over the given rule (see :func:`correct_rules`).
    min_images : classes with fewer dev images keep their rules.
    min_gain : groups whose dev information gain (nats) is not above this are dropped.
    template_margin : nats of mean dev log-likelihood a new template must gain.
    lam, eps : the starting logit scale and rule noise (the model's own / the engine default).
    extra_templates : {group name: [templates]} tried besides the generic rewrites (e.g. from an LLM).
    """

    calibrate: bool = True
    rules: bool = True
    templates: bool = True
    prune: bool = True
    rule_prior: float = 0.5
    min_images: int = 3
    min_gain: float = 0.0
    template_margin: float = 0.01
    lam: float = 100.0
    eps: float = 0.05
    extra_templates: Mapping[str, Sequence[str]] = field(default_factory=dict)

    def __post_init__(self):
        check_logit_scale(self.lam)
        check_eps(self.eps)
        if self.rule_prior < 0 or self.min_gain < 0 or self.template_margin < 0:
            raise ValueError("rule_prior, min_gain and template_margin must be >= 0")
        if self.min_images < 1:
            raise ValueError(f"min_images == {self.min_images}, must be >= 1")


@dataclass(frozen=True)
class RuleChange:
    """One rule changed, with its evidence: the lift (nats) of the old rule and the new option
    over the class's dev images (see :func:`correct_rules`)."""

    cls: str
    group: str
    old: tuple[str, ...]
    new: tuple[str, ...]
    old_score: float
    new_score: float
    n_images: int

    def line(self) -> str:
        return (f"rule {self.cls} / {self.group}: {list(self.old)} -> {list(self.new)} "
                f"(lift {self.old_score:+.3f} -> {self.new_score:+.3f} nats over {self.n_images} dev images)")


@dataclass
class RefineReport:
    """Everything refinement did, in order."""

    lam: float = 0.0
    eps: float = 0.0
    calibration: dict = field(default_factory=dict)
    rule_changes: list[RuleChange] = field(default_factory=list)
    rules_left_alone: list[str] = field(default_factory=list)  # classes under min_images
    templates: dict[str, dict] = field(default_factory=dict)  # group -> {old, new, old_ll, new_ll, tried}
    pruned_options: dict[str, list[str]] = field(default_factory=dict)
    dropped_groups: dict[str, float] = field(default_factory=dict)  # group -> dev gain (nats)
    group_gain: dict[str, float] = field(default_factory=dict)
    q_before: int = 0
    q_after: int = 0
    text_prompts_embedded: int = 0

    def lines(self) -> list[str]:
        out = []
        if self.calibration:
            c = self.calibration
            out.append(f"calibration: λ {c['lam0']:g} -> {c['lam']:.3g}, ε {c['eps0']:g} -> {c['eps']:.3g} "
                       f"(dev NLL {c['nll_start']:.3f} -> {c['nll']:.3f})")
        out += [ch.line() for ch in self.rule_changes]
        if self.rules_left_alone:
            out.append(f"rules left alone (too few dev images): {len(self.rules_left_alone)} classes")
        for g, t in self.templates.items():
            if t["new"] != t["old"]:
                out.append(f"template {g}: {t['old']!r} -> {t['new']!r} "
                           f"(dev log-lik {t['old_ll']:.3f} -> {t['new_ll']:.3f}, {t['tried']} tried)")
        for g, opts in self.pruned_options.items():
            out.append(f"pruned options of {g} no class uses: {opts}")
        for g, gain in self.dropped_groups.items():
            out.append(f"dropped group {g}: dev information gain {gain:.4f} nats")
        out.append(f"Q {self.q_before} -> {self.q_after} (saved {self.q_before - self.q_after}); "
                   f"{self.text_prompts_embedded} candidate prompts embedded")
        return out

    def to_dict(self) -> dict:
        d = asdict(self)
        d["rule_changes"] = [asdict(c) for c in self.rule_changes]
        return d


# ----- the dev/test split ------------------------------------------------------------------------

# ----- pure scoring helpers ----------------------------------------------------------------------

def set_log_prob(log_p: np.ndarray, options: Sequence[int]) -> np.ndarray:
    """log Σ_{k ∈ options} p[k] per row. log_p (n, K) -> (n,)."""
    return logsumexp(log_p[:, list(options)], axis=1)


def template_log_lik(log_p: np.ndarray, truth: np.ndarray, rules: Sequence[frozenset[int]]) -> float:
    """Mean dev log-likelihood of the true classes' acceptable options under one group.

    log_p : (n, K) group log-probabilities; truth : (n,) class indices;
    rules : per class, the acceptable options (empty = not applicable; those images are skipped).
    Returns the mean over images with an applicable rule (0.0 when there are none).
    """
    log_p = np.asarray(log_p, dtype=np.float64)
    ok = np.zeros((len(rules), log_p.shape[1]), dtype=bool)  # (C, K) acceptable options per class
    for c, opts in enumerate(rules):
        ok[c, sorted(opts)] = True
    mask = ok[np.asarray(truth, dtype=np.int64)]  # (n, K)
    has = mask.any(axis=1)
    if not has.any():
        return 0.0
    vals = logsumexp(np.where(mask[has], log_p[has], -np.inf), axis=1)
    return float(vals.mean())


def group_information_gain(log_p: np.ndarray, truth: np.ndarray, P_g: np.ndarray) -> float:
    """Dev information gain of one group, in nats.

    The mean over images of log π(y | answer) − log(1/C): how much asking only this
    group raises the log posterior of the true class above the uniform prior.
    log_p : (n, K); truth : (n,); P_g : (C, K) channel of the group.
    Can be negative for a group that misleads.
    """
    loglik = bayes_loglik(log_p, P_g)  # (n, C)
    log_post = loglik - logsumexp(loglik, axis=1, keepdims=True)
    C = P_g.shape[0]
    return float(np.mean(log_post[np.arange(len(truth)), truth]) + np.log(C))


def template_variants(template: str, extra: Sequence[str] = ()) -> list[str]:
    """The given template first, then the generic rewrites and ``extra``, deduplicated.
    Candidates without exactly one ``{}`` are dropped."""
    out = [template]
    for t in (*GENERIC_TEMPLATES, *extra):
        if t.count(PLACEHOLDER) == 1 and t not in out:
            out.append(t)
    return out


# ----- the steps ---------------------------------------------------------------------------------

def _with(system: AttributeSystem, **changes) -> AttributeSystem:
    fields = dict(name=system.name, classes=system.classes, groups=system.groups, rules=system.rules,
                  baseline_template=system.baseline_template, description=system.description)
    fields.update(changes)
    return AttributeSystem(**fields)


class _Memo:
    """prompt_sims with memory: each distinct prompt is scored once, and counted."""

    def __init__(self, prompt_sims: PromptSims):
        self.prompt_sims, self.cols = prompt_sims, {}

    def __call__(self, prompts: Sequence[str]) -> np.ndarray:
        new = [p for p in dict.fromkeys(prompts) if p not in self.cols]
        if new:
            block = np.asarray(self.prompt_sims(new), dtype=np.float64)
            if block.ndim != 2 or block.shape[1] != len(new):
                raise ValueError(f"prompt_sims returned shape {block.shape} for {len(new)} prompts; expected (n, {len(new)})")
            self.cols.update({p: block[:, j] for j, p in enumerate(new)})
        return np.stack([self.cols[p] for p in prompts], axis=1)


def correct_rules(system: AttributeSystem, sims: list[np.ndarray], truth: np.ndarray, lam: float,
                  config: RefineConfig, report: RefineReport) -> AttributeSystem:
    """Step 2. ``sims[g]`` is (n, K_g) for the dev images; returns the system with changed rules.

    An option's evidence for class c is its *lift*: the mean log-probability over c's dev images
    minus its class-balanced mean over the images of the *other* classes whose given rule does not
    hold the option. A model that favours one option for every image (a bias, not knowledge of c)
    gives that option no lift, so it wins no rule; an option many classes share keeps its full lift,
    because the classes that share it are not its baseline. A rule changes to the option of highest
    lift when that beats the given rule's lift by ``rule_prior``. With no such other class, an
    option's lift is 0.
    """
    rules = [list(row) for row in system.rules]
    counts = np.bincount(truth, minlength=system.n_classes)
    report.rules_left_alone = [c for c, n in zip(system.classes, counts) if 0 < n < config.min_images]
    n_per = np.maximum(counts, 1)[:, None]

    is_present = counts > 0

    def class_means(values: np.ndarray) -> np.ndarray:
        """(n, K) per-image values -> (C, K) per-class means (rows of absent classes are 0)."""
        out = np.zeros((system.n_classes, values.shape[1]))
        np.add.at(out, truth, values)
        return out / n_per

    def lifts(means: np.ndarray, outside: np.ndarray) -> np.ndarray:
        """(C, K) lifts: means[c, k] minus the mean of means[c', k] over present c' != c with outside[c', k]."""
        use = outside & is_present[:, None]  # (C, K) classes that form each option's baseline
        tot = (means * use).sum(axis=0)  # (K,)
        num = use.sum(axis=0)  # (K,)
        tot_c, num_c = tot[None, :] - means * use, num[None, :] - use  # leave class c itself out
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(num_c > 0, means - tot_c / np.maximum(num_c, 1), 0.0)

    for g, group in enumerate(system.groups):
        if group.name == BASELINE_GROUP:  # a class's name is its name: nothing to correct
            continue
        log_p = group_log_probs(sims[g], lam)
        mean_k = class_means(log_p)  # (C, K)
        given = np.zeros(mean_k.shape, dtype=bool)  # (C, K) options of the given rules
        for c2, row in enumerate(system.rules):
            given[c2, sorted(row[g])] = True
        lift_k = lifts(mean_k, ~given)  # (C, K)
        set_lifts: dict[frozenset[int], np.ndarray] = {}
        for c, cls in enumerate(system.classes):
            old = system.rules[c][g]
            if counts[c] < config.min_images or not old:  # no evidence, or not applicable: keep
                continue
            lift = lift_k[c]  # (K,)
            best = int(np.argmax(lift))
            if old not in set_lifts:  # (C,) lift of the whole set, against classes whose rule misses it
                sm = class_means(set_log_prob(log_p, sorted(old))[:, None])
                set_lifts[old] = lifts(sm, ~given[:, sorted(old)].any(axis=1, keepdims=True))[:, 0]
            old_lift = float(set_lifts[old][c])
            if best in old or lift[best] <= old_lift + config.rule_prior:
                continue
            rules[c][g] = frozenset([best])
            report.rule_changes.append(RuleChange(
                cls=cls, group=group.name, old=tuple(group.options[k] for k in sorted(old)),
                new=(group.options[best],), old_score=old_lift, new_score=float(lift[best]),
                n_images=int(counts[c])))
    return _with(system, rules=tuple(tuple(r) for r in rules))


def select_templates(system: AttributeSystem, prompt_sims: PromptSims, truth: np.ndarray, lam: float,
                     config: RefineConfig, report: RefineReport) -> AttributeSystem:
    """Step 3: per group, the candidate template with the best dev log-likelihood."""
    groups = list(system.groups)
    for g, group in enumerate(system.groups):
        rules = [row[g] for row in system.rules]
        tried = template_variants(group.template, config.extra_templates.get(group.name, ()))
        scores = []
        for t in tried:
            cand = Group(group.name, t, group.options)
            scores.append(template_log_lik(group_log_probs(prompt_sims(cand.prompts()), lam),
                                           truth, rules))
        best = int(np.argmax(scores))
        if best != 0 and scores[best] < scores[0] + config.template_margin:
            best = 0
        report.templates[group.name] = {"old": group.template, "new": tried[best], "old_ll": scores[0],
                                        "new_ll": scores[best], "tried": len(tried)}
        groups[g] = Group(group.name, tried[best], group.options)
    return _with(system, groups=tuple(groups))


def prune_options(system: AttributeSystem, report: RefineReport) -> AttributeSystem:
    """Step 4a: drop options no class uses (rules re-indexed); a group left with none is dropped."""
    groups, cols = [], []
    for g, group in enumerate(system.groups):
        used = sorted(set().union(*(row[g] for row in system.rules)))
        unused = [o for k, o in enumerate(group.options) if k not in used]
        if unused:
            report.pruned_options[group.name] = unused
        if not used:
            report.dropped_groups.setdefault(group.name, 0.0)
            continue
        remap = {k: i for i, k in enumerate(used)}
        groups.append(Group(group.name, group.template, tuple(group.options[k] for k in used)))
        cols.append([frozenset(remap[k] for k in row[g]) for row in system.rules])
    rules = tuple(tuple(col[c] for col in cols) for c in range(system.n_classes))
    return _with(system, groups=tuple(groups), rules=rules)


def drop_uninformative(system: AttributeSystem, sims: list[np.ndarray], truth: np.ndarray, lam: float, eps: float,
                       config: RefineConfig, report: RefineReport) -> AttributeSystem:
    """Step 4b: drop groups whose dev information gain is not above ``min_gain`` (at least one group stays)."""
    ch = build_channel(system.rule_matrix, system.option_counts, eps)
    gains = [group_information_gain(group_log_probs(sims[g], lam), truth, ch.P[:, ch.cols(g)])
             for g in range(system.n_groups)]
    report.group_gain = {g.name: v for g, v in zip(system.groups, gains)}
    keep = [g for g, v in enumerate(gains) if v > config.min_gain + 1e-9]  # float noise is not information
    if not keep:
        keep = [int(np.argmax(gains))]
    for g in range(system.n_groups):
        if g not in keep:
            report.dropped_groups[system.groups[g].name] = gains[g]
    return _with(system, groups=tuple(system.groups[g] for g in keep),
                 rules=tuple(tuple(row[g] for g in keep) for row in system.rules))


def _calibrate(system: AttributeSystem, sims: list[np.ndarray], truth: np.ndarray, lam: float,
               eps: float) -> tuple[float, float, dict]:
    fit = fit_logit_scale_and_eps(np.concatenate(sims, axis=1), truth, system.rule_matrix, system.option_counts,
                                  lam0=lam, eps0=eps)
    return fit.lam, fit.eps, {"lam0": lam, "eps0": eps, "lam": fit.lam, "eps": fit.eps,
                              "nll_start": fit.nll_start, "nll": fit.nll}


def refine(system: AttributeSystem, prompt_sims: PromptSims, truth: np.ndarray,
           config: RefineConfig = RefineConfig()) -> tuple[AttributeSystem, RefineReport]:
    """Refine ``system`` on dev images.

    system : the AttributeSystem to improve (C classes).
    prompt_sims : prompts (P,) -> (n, P) similarities of the n dev images (and only those).
    truth : (n,) class index of each dev image.
    Returns (refined system, report). The refined system keeps every class.
    """
    truth = np.asarray(truth, dtype=np.int64)
    if truth.ndim != 1 or len(truth) == 0:
        raise ValueError("refinement needs at least one labelled dev image")
    if truth.min() < 0 or truth.max() >= system.n_classes:
        raise ValueError(f"truth holds class indices outside 0..{system.n_classes - 1}")
    report = RefineReport(q_before=system.q_total)
    lam, eps = config.lam, config.eps

    prompt_sims = _Memo(prompt_sims)

    def sims_of(s: AttributeSystem) -> list[np.ndarray]:
        return [prompt_sims(g.prompts()) for g in s.groups]

    sims = sims_of(system)
    if config.calibrate:
        lam, eps, report.calibration = _calibrate(system, sims, truth, lam, eps)
    if config.rules:
        system = correct_rules(system, sims, truth, lam, config, report)
    if config.templates:
        system = select_templates(system, prompt_sims, truth, lam, config, report)
    if config.prune:
        system = prune_options(system, report)
        system = drop_uninformative(system, sims_of(system), truth, lam, eps, config, report)
    if config.calibrate and (config.rules or config.templates or config.prune):
        lam, eps, report.calibration = _calibrate(system, sims_of(system), truth, config.lam, config.eps)
    report.lam, report.eps, report.q_after = lam, eps, system.q_total
    report.text_prompts_embedded = len(prompt_sims.cols)
    refined = _with(system, name=f"{system.name}:refined",
                    description=(system.description + " (refined on dev images)").strip())
    return refined, report

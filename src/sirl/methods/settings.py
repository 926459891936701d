"""Each method's settings: one dataclass per registered method that has any, the section ``method.<name>``
of the config (``--method.si.probes=2``; ``method: {si: {probes: 2}}`` in a preset).

This is the light half of the methods registry: it imports nothing but the config's field helpers, so that
loading a config never imports torch. :data:`SETTINGS` gives each method that has settings its class, by
the name its module registers its :class:`~sirl.methods.base.Method` under; the method's credit function
receives its own section (``MethodContext.settings``) and the shared values it needs, never the whole
config. Knobs that several methods read are declared once, in the parts below, and composed into each
method's class; each method's section holds its own copy.

Before these sections, one ``method`` section held the knobs of every method, each method reading what it
used, and si_internal's and prime's knobs had sections of their own (``internalize``, ``prime``). Those
places are still read (sirl.config.read_old_places): :data:`MOVED_SECTIONS` and :data:`MOVED_KNOBS` say
where each key went; ``method.probes=2`` sets the probes of every method that has them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from sirl.config_fields import ConfigError, ranged


class SettingsPart:
    """What every settings class and part shares: :meth:`check`, the checks that involve several of its fields."""

    def check(self, key: str) -> None:
        """Raise a ConfigError naming ``key`` (the section's dotted place, e.g. ``method.si``) when two of the
        section's fields do not fit together; each part checks its own fields and calls the next."""


# --- parts that several methods share ----------------------------------------------------------------


@dataclass
class ProbeCount(SettingsPart):
    probes: int = ranged(1, 1)
    """K: probe continuations per checked prefix (si's search and si_internal's checks; random_reset: per reset
    point; vine: per step boundary). A larger K estimates each prefix's value with less noise at K times
    the tokens; a smaller one checks more failures per token. The default's figures: docs/results.md,
    "Measurements behind the defaults"."""


@dataclass
class Search(ProbeCount):
    """The oracle search over a failure's prefixes (docs/method.md, "Localize"; sirl.internalize.credit.search)."""

    free_evidence: bool = True
    """Start each search at the longest prefix a verified trajectory of the same prompt shares."""
    first_check: Literal["divergence", "bisect"] = "divergence"
    """divergence: the first probe checks the step right after that shared prefix; bisect: plain halving."""
    drop: float = ranged(0.5, 0, 1, high_open=True)
    """A checked prefix is still good while its estimated value keeps more than drop x the value of the last
    good prefix; 0 is docs/method.md's rule (good while any probe verifies). Above 0, a wrong step that leaves
    some chance of a right final answer (as on arith, where a later slip can land on it) does not pass as good.
    The default's figures: docs/results.md, "Measurements behind the defaults"."""
    settle_probes: int = ranged(0, 0)
    """With drop > 0: a checked prefix whose K probes include a verified one gets this many more before the
    drop rule decides, so that a continuation that verified by luck after a wrong step does not pass the
    step as good; most checks find no success and cost only K. 0: decide on the K probes. Why it is off by
    default: docs/results.md, "Measurements behind the defaults"."""

    def check(self, key: str) -> None:
        if self.settle_probes > 0 and self.drop == 0:
            raise ConfigError(
                f"{key}.settle_probes={self.settle_probes} needs {key}.drop > 0: with drop = 0 one verified probe "
                f"already makes a prefix good, so settle probes would change nothing; set {key}.drop (e.g. 0.5) or settle_probes=0"
            )
        super().check(key)


@dataclass
class FailureBudget(SettingsPart):
    max_localizations: int = ranged(64, 0)
    """Most failures localized (si, si_internal), reset (random_reset) or branched (tree_branch) per step,
    chosen by ``failure_choice``."""
    failure_choice: Literal["half_solved", "least_solved", "most_solved", "random"] = "half_solved"
    """Which failures the ``max_localizations`` budget keeps, round-robin over prompts: solve rate closest
    to one half first, lowest first, highest first, or a random order (sirl.credit.divergence.choose_failures).
    Within a prompt, the failure sharing the longest prefix with a success first (random: random)."""


@dataclass
class StepCredit(SettingsPart):
    """How a localized failure and the probes drawn for it are credited (docs/method.md, "Credit")."""

    error_scale: float = ranged(1.0, 0)
    """Multiplier of the error step's penalty -(V(before) - V(after))."""
    error_span: Literal["step", "first_difference"] = "step"
    """The tokens of the error step the penalty falls on: the whole step, or from the first token where the
    failure left every verified sibling (the tokens before it, a success wrote too)."""
    probe_baseline: Literal["all", "leave_out"] = "all"
    """V(prefix) in a probe's advantage R - V(prefix): every free sample through the prefix, or all but the
    probe itself and the failure it was drawn for (with K = 1, "all" gives every failed probe 0)."""
    post_error: Literal["zero", "outcome"] = "zero"
    """Credit of the steps after the error step: 0, or the trajectory's outcome advantage."""
    train_on_probes: bool = True
    """Every probe joins the batch (advantage R - V(prefix) on its own tokens); otherwise only corrections."""
    correction_samples: int = ranged(0, 0)
    """Extra continuations sampled from each good prefix, so it has a small group of its own."""


@dataclass
class Repair(SettingsPart):
    """The repair buffer: good prefixes found by the method, continued on-policy by later steps
    (docs/method.md, "Reuse")."""

    repair_share: float = ranged(0.25, 0, 1)
    """Share of each step's prompts drawn from the repair buffer (continued from a stored good prefix)."""
    repair_capacity: int = ranged(512, 1)
    """Good prefixes the repair buffer keeps (the most recent)."""


@dataclass
class Branches(SettingsPart):
    branch_samples: int = ranged(2, 2, 16)
    """Continuations sampled from each branch point, scored against each other (leave-one-out): tree_branch's
    decision points (the step where a failure left every success of its group), and the reset points of
    ``blind_resets``."""


@dataclass
class BlindResets(Branches):
    blind_resets: int = ranged(0, 0)
    """Most groups with no success per step (where the outcome advantage and the outcome-based localizer see
    nothing) whose first failure gets ``branch_samples`` continuations from a reset point: just before the
    step the policy's own verdict names (si_internal) or through a uniformly random number of steps
    (random_reset). The branch is scored leave-one-out with tree credit; a verified continuation is a
    correction and its prefix a repair entry. 0: off."""


@dataclass
class TreeCredit(SettingsPart):
    """Credit over the group's own prefix tree (docs/method.md, "Credit"; sirl.credit.tree_credit)."""

    outcome_mix: float = ranged(0.0, 0, 1)
    """The share of each token's advantage that is the response's outcome advantage (the rest is tree
    credit); 0 is plain tree credit, 1 is the outcome method."""
    values: Literal["mean", "leave_one_out"] = "mean"
    """A trie node's value V in V(child) - V(parent): the mean outcome of the rows through it, or for each row
    the mean of the *other* rows through it (its own outcome where none is), which makes a row's credit add up
    to its RLOO score (sirl.credit.tree.tree_token_advantages)."""
    weighting: Literal["none", "node_count"] = "none"
    """"node_count" divides each token's advantage by the number of rows of its group that sampled the same
    token in the same context (lambda-GRPO, arXiv 2509.21154), so a step many rows share is not trained once
    per row; "none" trains every row's copy."""


# --- one class per method -----------------------------------------------------------------------------
# A dataclass lists its parts' fields base class last first: the bases below are written in reverse of the
# order the section shows its fields in.


@dataclass
class SiSettings(Repair, StepCredit, FailureBudget, Search):
    """si (sirl.methods.si): localize failures (at their divergence step by default, or by probing their
    prefixes), credit the error step, train on any probes and corrections, reuse the good prefixes."""

    localizer: Literal["search", "divergence", "ground_truth"] = "divergence"
    """divergence: the step where the failure left every success of its group, free (no probe), which the
    search can only move later; failures of all-fail groups are not localized (they keep the outcome
    advantage). search: the oracle localizer (docs/method.md), K probes a checked prefix. ground_truth: a
    diagnostic, never the method: the error step is the task's own first wrong step (tasks with ground truth
    only), and K probes from the prefix before it give V(before) and the corrections. docs/method.md keeps
    ground truth out of training; this setting exists to measure what the search's mistakes cost
    (benchmarks/ablate_si.py). Why divergence is the default (it beat grpo on arith mod 7 and tied it on
    mod 97 and countdown, where search tied too, with no probe tokens): docs/results.md, "Measurements
    behind the defaults"."""
    error_span: Literal["step", "first_difference"] = "first_difference"
    """As StepCredit.error_span; si's default is the first differing token, as si-divergence was measured."""
    probe_baseline: Literal["all", "leave_out"] = "leave_out"
    """As StepCredit.probe_baseline (read only where probes are drawn: the search and ground_truth
    localizers); si's default is leave_out, as si was measured against grpo on every testbed."""


@dataclass
class SiInternalSettings(BlindResets, Repair, StepCredit, FailureBudget, Search):
    """si_internal (sirl.methods.si_internal): si where the policy, on the same weights, learns to name the
    first wrong step of its own solutions (the self-verification format of sirl.tasks.base.Task) and
    proposes it, confirmed by probes, with oracle audits; si's search and credit knobs apply to it as to si."""

    localizer: Literal["proposals", "divergence"] = "proposals"
    """proposals: the policy proposes the error step of every chosen failure, confirmed by probes and
    audited by the oracle search (the design of the committed benchmarks/results/internalize* tables).
    divergence: where a group holds a success, the free divergence step (si's divergence localizer, no
    probe, no proposal), so the policy's own verdict is used only where nothing else can look, failures of
    all-fail groups (``blind_resets``); benchmarks/compare_internal_divergence.yaml measures it."""
    verdict_format: Literal["index", "judgments", "rederive"] = "index"
    """How a verdict is written (sirl.tasks.base.Task.verdict_target): index, the number of the first wrong
    step in one token; judgments, a mark per step up to the first wrong one ("++-"); rederive, each step
    recomputed beside its written result, then marked ("7+5=2?2+2*3=6?5-"; tasks with step_check only).
    Verdict tokens count in the generated-token budget whatever the format. ``sirl eval`` reads verdicts
    in this format too."""
    verify_loss: Literal["sft", "rl", "both"] = "sft"
    """How the policy learns self-verification: sft, an auxiliary cross-entropy on the oracle's verdict;
    rl, verdicts sampled and rewarded +1 for agreeing with the oracle, -1 otherwise; or both."""
    verify_coef: float = ranged(0.01, 0)
    """Weight of the self-verification term (the auxiliary loss, or the verdicts' advantages under rl). The
    auxiliary loss starts near 12 nats with gradients far larger than the policy gradient's, so a large
    weight lets it take the shared weights over. The default's figures: docs/results.md, "Measurements
    behind the defaults"."""
    verify_batch: int = ranged(32, 0)
    """Self-verification examples trained on per step, drawn from the most recent ones."""
    verify_group: int = ranged(4, 1)
    """rl: verdicts sampled per example (their rewards are compared within the group)."""
    none_share: float = ranged(0.25, 0, 1)
    """Share of verified solutions (verdict "none") among the examples trained on per step."""
    confirm_probes: int | None = ranged(None, 1)
    """Probes per confirmation check; None uses ``probes`` (K)."""
    reuse_samples: bool = True
    """A confirmation check draws no probes when K samples of the same prompt besides the failure already
    pass through its prefix: a sibling that wrote the same steps is a draw from that prefix like a probe.
    Sound only because the proposal does not look at any outcome; the oracle search cannot do the same,
    since past the longest certified prefix, where it checks, every sibling failed by definition. What it
    saves and costs: docs/results.md, "Measurements behind the defaults"."""
    audit_min: float = ranged(0.1, 0, 1, low_open=True)
    """The audit fraction never falls below this: some failures always get the full oracle search."""
    audit_max: float = ranged(1.0, 0, 1, low_open=True)
    audit_window: int = ranged(256, 1)
    """Audits over which agreement with the oracle is measured; audit fraction = 1 - agreement, clamped."""
    verification_capacity: int = ranged(4096, 1)
    """Self-verification examples kept (the most recent)."""

    def check(self, key: str) -> None:
        if self.audit_min > self.audit_max:
            raise ConfigError(f"{key}.audit_min={self.audit_min} is above {key}.audit_max={self.audit_max}; the audit share is kept between them")
        super().check(key)


@dataclass
class RandomResetSettings(Repair, BlindResets, FailureBudget, ProbeCount):
    """random_reset (sirl.methods.random_reset): si's harness with the reset step drawn at random instead of
    localized, the baseline of what localization buys; K (``probes``) continuations per reset point."""

    train_on_probes: bool = True
    """Every probe joins the batch (advantage R - V(prefix) on its own tokens); otherwise only verified ones."""


@dataclass
class VineSettings(ProbeCount):
    """vine (sirl.methods.vine): K (``probes``) probes at every inner step boundary of every trajectory."""


@dataclass
class TreeSettings(TreeCredit):
    """tree (sirl.methods.tree): zero-sum credit V(child) - V(parent) over the group's prefix tree, no probes."""


@dataclass
class TreeBranchSettings(Repair, Branches, FailureBudget, TreeCredit):
    """tree_branch (sirl.methods.tree_branch): tree credit plus ``branch_samples`` continuations from each chosen
    failure's decision point, scored leave-one-out; a verified one's prefix goes to the repair buffer."""


@dataclass
class PrimeSettings(SettingsPart):
    """prime (sirl.methods.prime): PRIME (Cui et al. 2025, arXiv 2502.01456), an implicit process reward model
    trained online from the outcome labels (docs/method.md, "PRIME")."""

    beta: float = ranged(0.05, 0, low_open=True)
    """beta of the implicit reward beta * log(pi_phi / pi_ref), in the reward model's cross-entropy and in the
    token process rewards (the paper's 0.05)."""
    lr: float | None = ranged(None, 0, 1, low_open=True)
    """The reward model's AdamW learning rate, constant; None uses train.lr (the paper's was twice its
    policy's: 1e-6 against 5e-7)."""
    grad_clip: float = ranged(10.0, 0, low_open=True)
    """Gradient-norm clip of the reward model's step (10 in the authors' run script)."""
    gamma: float = ranged(1.0, 0, 1)
    """Discount of the return of the process rewards (the paper's 1)."""
    accuracy_low: float = ranged(0.2, 0, 1)
    """The accuracy filter's lower bound: a prompt's group is trained on (by the policy and the reward model)
    only when its share of verified samples lies in [accuracy_low, accuracy_high] (the paper's 0.2 and 0.8;
    with 8 samples a prompt this drops groups with 0, 1, 7 or 8 successes). 0 and 1 keep every group."""
    accuracy_high: float = ranged(0.8, 0, 1)
    """The accuracy filter's upper bound (see accuracy_low)."""
    whiten: bool = True
    """Whiten the advantages over the step's trained tokens (subtract their mean, divide by their std), as
    the authors' released code does after the paper's advantage estimate; False keeps the estimate's scale."""

    def check(self, key: str) -> None:
        if self.accuracy_low > self.accuracy_high:
            raise ConfigError(f"{key}.accuracy_low={self.accuracy_low} is above {key}.accuracy_high={self.accuracy_high}; "
                              "the filter keeps the groups whose mean reward lies between them")
        super().check(key)


SETTINGS: dict[str, type] = {
    "si": SiSettings,
    "si_internal": SiInternalSettings,
    "random_reset": RandomResetSettings,
    "vine": VineSettings,
    "tree": TreeSettings,
    "tree_branch": TreeBranchSettings,
    "prime": PrimeSettings,
}
"""Each registered method that has settings, by its name in the registry (sirl.methods.METHODS), with its
settings class; the others (grpo, dr_grpo and rloo, which differ only in their estimator, or a method
registered from outside sirl) have none. tests/test_methods.py holds these names to the registry."""


def _method_sections() -> type:
    sections = [(name, cls, field(default_factory=cls)) for name, cls in SETTINGS.items()]
    made = dataclasses.make_dataclass("MethodSections", sections, namespace={"of": _section_of})
    made.__module__ = __name__  # where pickle and readers find it
    made.__doc__ = ("The ``method`` section of the config: one section per method with settings, named after it "
                    "(sirl.methods.settings.SETTINGS).")
    return made


def _section_of(self, name: str):
    """Method ``name``'s settings (None for a method without any)."""
    return getattr(self, name) if name in SETTINGS else None


MethodSections = _method_sections()


# --- where the knobs were before ---------------------------------------------------------------------


MOVED_SECTIONS: dict[str, str] = {"internalize": "method.si_internal", "prime": "method.prime"}
"""Sections that moved whole: ``internalize.verify_coef`` is read as ``method.si_internal.verify_coef``."""


def _in(knob: str, *methods: str) -> tuple[str, ...]:
    return tuple(f"method.{m}.{knob}" for m in methods)


_SI = ("si", "si_internal")
MOVED_KNOBS: dict[str, tuple[str, ...]] = {
    "probes": _in("probes", *_SI, "random_reset", "vine"),
    "free_evidence": _in("free_evidence", *_SI),
    "localizer": _in("localizer", "si"),
    "first_check": _in("first_check", *_SI),
    "drop": _in("drop", *_SI),
    "settle_probes": _in("settle_probes", *_SI),
    "max_localizations": _in("max_localizations", *_SI, "random_reset", "tree_branch"),
    "failure_choice": _in("failure_choice", *_SI, "random_reset", "tree_branch"),
    "error_scale": _in("error_scale", *_SI),
    "error_span": _in("error_span", *_SI),
    "probe_baseline": _in("probe_baseline", *_SI),
    "post_error": _in("post_error", *_SI),
    "train_on_probes": _in("train_on_probes", *_SI, "random_reset"),
    "correction_samples": _in("correction_samples", *_SI),
    "normalization": ("algo.normalization",),
    "branch_samples": _in("branch_samples", "si_internal", "random_reset", "tree_branch"),
    "blind_resets": _in("blind_resets", "si_internal", "random_reset"),
    "tree_outcome_mix": _in("outcome_mix", "tree", "tree_branch"),
    "tree_values": _in("values", "tree", "tree_branch"),
    "tree_weighting": _in("weighting", "tree", "tree_branch"),
    "repair_share": _in("repair_share", *_SI, "random_reset", "tree_branch"),
    "repair_capacity": _in("repair_capacity", *_SI, "random_reset", "tree_branch"),
    "verification_capacity": _in("verification_capacity", "si_internal"),
}
"""The knobs of the one ``method`` section of before (``method.probes``), each with every place it is read
from now: a knob several methods read is set in each of their sections."""

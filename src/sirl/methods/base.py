"""What every method shares: its registry entry, what it is given each step, and the policy as it samples.

A method's credit function takes the step's verified rollouts and a :class:`MethodContext` (its own
settings, sirl.methods.settings, and the shared values it needs) and returns a frozen
:class:`~sirl.types.Credit`. Extra samples it needs (probes, verdicts) come from the context's
:class:`PolicySampler`, which verifies them and counts the tokens it generates, so every token a method
spends lands in the budget without the method counting it.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from sirl.batch import TokenBatch, collate_supervised
from sirl.config import ConfigError, ExperimentConfig, TrainConfig
from sirl.distributed import Distributed
from sirl.internalize import selfverify
from sirl.internalize.localize import prefix_ids
from sirl.internalize.repair import RepairBuffer, RepairEntry, VerificationExample, VerificationExamples
from sirl.internalize.selfverify import AuditSchedule
from sirl.methods.settings import SETTINGS, Repair, SiInternalSettings
from sirl.prompts import PromptFormat
from sirl.rollout import SamplingParams, sample_trajectories
from sirl.tasks.base import Task
from sirl.types import Credit, Trajectory, Verdict
from sirl.verifier import Verifier, verify_trajectories


class PolicySampler:
    """The current policy as a method samples from it during one step: probes from prefixes (verified,
    like the rollouts) and self-verification verdicts. ``tokens`` counts what it generated, by kind:
    ``probe`` (response tokens past the given prefix) and ``verify`` (verdict tokens). Verdicts are written
    in the format the calling method names (``fmt``: sirl.tasks.base.Task.verdict_target)."""

    def __init__(
        self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, task: Task, params: SamplingParams, *,
        generator: torch.Generator, verifier: Verifier | None, max_batch: int, prompt_format: PromptFormat | None = None,
    ):
        self.model, self.tokenizer, self.task, self.params = model, tokenizer, task, params
        self.prompt_format = prompt_format
        self.generator, self.verifier, self.max_batch = generator, verifier, max_batch
        self.tokens = {"probe": 0, "verify": 0}

    def probe(self, requests: list[tuple[Trajectory, int]], k: int) -> list[list[Trajectory]]:
        """``k`` verified continuations of each (trajectory, steps) request's prefix through that many steps,
        in the trajectory's group."""
        found = sample_trajectories(
            self.model, self.tokenizer, self.task, [t.problem for t, _ in requests], self.params, group_size=k,
            prefixes=[prefix_ids(t, steps) for t, steps in requests], groups=[t.group for t, _ in requests],
            generator=self.generator, max_batch=self.max_batch, prompt_format=self.prompt_format,
        )
        found = verify_trajectories(self.task, found, self.verifier)
        self.tokens["probe"] += sum(len(p.response_ids) - p.prefix_len for p in found)
        return [found[i * k : (i + 1) * k] for i in range(len(requests))]

    def propose(self, failures: list[Trajectory], fmt: str) -> list[Verdict]:
        """The policy's greedy verdicts on the failures (which step went wrong first)."""
        verdicts = selfverify.propose(self.model, self.tokenizer, self.task, [(t.problem, t.text) for t in failures], self.max_batch, fmt)
        self.tokens["verify"] += sum(v.n_tokens for v in verdicts)
        return verdicts

    def sample_verdicts(self, examples: list[VerificationExample], group: int, first_group: int, fmt: str) -> list[Trajectory]:
        """``group`` sampled verdicts per example, rewarded for agreeing with the oracle (selfverify)."""
        verdicts = selfverify.sampled_verdicts(
            self.model, self.tokenizer, self.task, examples, group, self.generator, first_group=first_group,
            max_batch=self.max_batch, fmt=fmt,
        )
        self.tokens["verify"] += sum(len(v.response_ids) for v in verdicts)
        return verdicts

    def verdict_batch(self, examples: list[VerificationExample], fmt: str) -> TokenBatch:
        """The oracle's verdicts on ``examples`` as a supervised batch (nothing is generated)."""
        pairs = selfverify.supervised_batch(self.task, self.tokenizer, examples, fmt)
        return collate_supervised(pairs, self.tokenizer.pad_token_id)


class MethodMemory:
    """What a method keeps from one step to the next (saved in every checkpoint): good prefixes to restart
    from, self-verification examples, and the audit schedule."""

    def __init__(self, repair_capacity: int, verification_capacity: int, audits: AuditSchedule):
        self.repair = RepairBuffer(repair_capacity)
        self.verification = VerificationExamples(verification_capacity)
        self.audits = audits

    @classmethod
    def of(cls, settings: Any) -> MethodMemory:
        """The memory of a method with ``settings`` (its section, or None): the repair buffer's capacity from a
        method with one (``repair_capacity``), the self-verification examples' and the audit schedule from
        si_internal's settings; a method without them keeps those parts at their defaults, unused."""
        repair = settings if isinstance(settings, Repair) else Repair()
        internal = settings if isinstance(settings, SiInternalSettings) else SiInternalSettings()
        return cls(repair.repair_capacity, internal.verification_capacity,
                   AuditSchedule(internal.audit_min, internal.audit_max, internal.audit_window))

    def remember(self, step: int, rollouts: Sequence[Trajectory], credit: Credit, good_prefixes: Sequence[tuple[Trajectory, list[int]]]) -> None:
        """Keep the step's good prefixes (repair buffer) and its oracle verdicts: each localized failure's
        error step, and "none" for each verified fresh sample (self-verification examples)."""
        for t, prefix in good_prefixes:
            self.repair.add(RepairEntry(t.problem, prefix, step))
        for found in credit.localizations:
            t = credit.rows[found.row]
            self.verification.add(VerificationExample(t.problem, t.text, found.localization.error_step, step))
        for t in rollouts:
            if t.reward >= 1 and t.prefix_len == 0:
                self.verification.add(VerificationExample(t.problem, t.text, None, step))


@dataclass(frozen=True)
class MethodContext:
    """What a method is given each step besides the rollouts: its own settings and the shared values it needs."""

    task: Task
    settings: Any
    """The method's own settings, its config section method.<name> (sirl.methods.settings); None for a method
    without any."""
    outcome_advantage: str
    """algo.outcome_advantage: the estimator of the outcome advantages beside a method's step credit
    (sirl.credit.outcome.ADVANTAGES)."""
    sampler: PolicySampler
    rng: random.Random
    """The method's own random stream (saved in checkpoints)."""
    memory: MethodMemory
    step: int
    state: MethodState | None = None
    """The method's own state (:attr:`Method.make_state`), None for a method without one."""


class MethodState(Protocol):
    """What a method keeps besides the policy and :class:`MethodMemory` (PRIME's reward model and its
    optimizer): built once from the starting policy (:attr:`Method.make_state`), handed to every step in
    the context, and saved in every checkpoint so that a resumed run continues it exactly."""

    def tensors(self) -> dict[str, torch.Tensor]:
        """Its tensors by name (weights, optimizer moments), as a checkpoint stores them."""
        ...

    def to_json(self) -> dict:
        """Everything else, as plain JSON."""
        ...

    def load(self, tensors: dict[str, torch.Tensor], data: dict) -> None:
        """Restore what :meth:`tensors` and :meth:`to_json` saved."""
        ...


CreditFn = Callable[[Sequence[Trajectory], MethodContext], Credit]


def refuse_ground_truth(config: ExperimentConfig, task: Task) -> None:
    """Every method's check but si's: the ground-truth localizer is a diagnostic of si only, and a run of
    another method that sets it (``method.localizer`` of before set it for every method) is refused rather
    than run without it."""
    if config.method.si.localizer == "ground_truth":
        raise ConfigError(
            f"method.si.localizer=ground_truth is a diagnostic of algo.name=si only (got algo.name={config.algo.name}); "
            "use method.si.localizer=search"
        )
    # (localizer=divergence is si's too; the other methods have no localizer of their own, so nothing to refuse)


@dataclass(frozen=True)
class Method:
    """A registry entry. ``credit`` turns the step's verified rollouts into a :class:`Credit`;
    ``uses_repair``: a share of each step's prompts continue good prefixes from the repair buffer;
    ``check`` refuses, before anything runs, a config or task the method cannot work with;
    ``make_state`` builds what it keeps besides the policy (checkpointed with the run). Its settings are
    sirl.methods.settings.SETTINGS[name] (the config section method.<name>), if it has any."""

    name: str
    summary: str
    credit: CreditFn
    uses_repair: bool = False
    """A share of each step's prompts continue good prefixes from the repair buffer (its settings' ``repair_share``)."""
    check: Callable[[ExperimentConfig, Task], None] = refuse_ground_truth
    make_state: Callable[[Any, TrainConfig, PreTrainedModel, Distributed], MethodState] | None = None
    """Builds the method's own state from its settings, the train section and the starting policy (before any
    resume); None: the method has none."""
    min_group_size: int = 1
    """The fewest samples per prompt the method learns from: 2 for a credit that only compares the samples
    of one prompt with each other (in a group of one every advantage would be 0); 1 where probes or
    branches give a lone sample something to be compared with."""


METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add ``method`` to the registry; a name can be registered once. A method that keeps a repair buffer
    draws its share from its settings, so it must have settings with ``repair_share``."""
    if method.name in METHODS:
        raise ValueError(f"a method named {method.name!r} is already registered ({METHODS[method.name].summary})")
    if method.uses_repair and not issubclass(SETTINGS.get(method.name, object), Repair):
        raise ValueError(f"method {method.name!r} uses the repair buffer, so its settings (sirl.methods.settings.SETTINGS) "
                         "need the Repair part (repair_share, repair_capacity)")
    METHODS[method.name] = method
    return method


def get_method(name: str) -> Method:
    """The registered method ``name``; an unknown name is a ConfigError listing the valid ones."""
    from sirl.methods import load

    load()  # every method module registered (a no-op after the first call)
    try:
        return METHODS[name]
    except KeyError:
        raise ConfigError(f"unknown method algo.name={name!r}; valid methods: {sorted(METHODS)}") from None

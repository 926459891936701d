"""Typed records passed between components (task -> rollout -> verify -> credit -> update).

Every record is a frozen dataclass: components hand each other values, never mutable state.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch

Span = tuple[int, int]
"""A half-open interval ``[start, end)``: characters of a completion, or tokens of a response."""


@dataclass(frozen=True)
class Problem:
    """One task instance.

    ``prompt`` is the exact text the policy is conditioned on; ``answer`` is the reference final answer
    (as text); ``meta`` holds task-specific facts (operands, difficulty, ...) that verifiers and
    ground-truth functions may use. ``meta["difficulty"]`` is an int when the task defines one.
    """

    prompt: str
    answer: str
    meta: dict = field(default_factory=dict, hash=False)

    def to_json(self) -> dict:
        return {"prompt": self.prompt, "answer": self.answer, "meta": to_jsonable(self.meta)}

    @classmethod
    def from_json(cls, data: dict) -> Problem:
        return cls(data["prompt"], data["answer"], from_jsonable(data["meta"]))


@dataclass(frozen=True)
class Trajectory:
    """One sampled response to a problem, with its steps mapped onto its tokens.

    ``response_ids`` includes the EOS token when the policy emitted one; ``logprobs`` are the sampling
    policy's log-probabilities of each response token; ``step_spans`` are token spans ``[start, end)`` of
    the task's steps and partition ``response_ids`` (EOS belongs to the last step). ``group`` ties samples
    of the same prompt together for group-relative advantages. ``prefix_len`` counts the leading response
    tokens that were given rather than sampled (a probe or a repair continues a stored prefix): they are
    context, never trained on again, and the trajectory is a sample of the policy only after them.
    ``reward`` is None until the verification stage scores it (sirl.verifier.verify_trajectories).
    """

    problem: Problem
    prompt_ids: list[int]
    response_ids: list[int]
    logprobs: list[float]
    text: str
    reward: float | None
    truncated: bool
    group: int
    step_spans: list[Span]
    prefix_len: int = 0


@dataclass(frozen=True)
class Localization:
    """Where a failure went wrong. ``index`` is the failure's position among those localized together;
    ``error_step`` the 0-based index of its first irrecoverable step (t* - 1 in docs/method.md's 1-based
    terms), None when it could not be localized; the good prefix is the first ``error_step`` steps.
    ``checks`` lists (k, V̂(k) > 0) in the order probed."""

    index: int
    error_step: int | None
    value_before: float = 0.0
    value_after: float = 0.0
    probes: int = 0
    checks: tuple[tuple[int, bool], ...] = ()
    proposal: str | None = None
    """The policy's own verdict on the failure (si_internal), as it wrote it."""


@dataclass(frozen=True)
class Verdict:
    """What the policy answered when asked for the first wrong step of a solution: ``step`` is the 0-based
    step it named (None for "none"); ``valid`` is False when the answer did not parse (it then counts as a
    disagreement)."""

    text: str
    step: int | None
    valid: bool
    n_tokens: int


@dataclass(frozen=True)
class LocalizedFailure:
    """A failure the method localized, by row of its :class:`Credit`, with its correction's row (a verified
    continuation of the good prefix) when one was found."""

    row: int
    localization: Localization
    correction_row: int | None = None


@dataclass(frozen=True)
class AuxiliaryLoss:
    """A supervised cross-entropy term the update adds to the policy loss: ``coef`` times the token-mean
    cross-entropy of the target tokens of ``input_ids_BT`` (``target_mask_BT[b, t]`` marks that position t
    scores a target token t+1), split across the minibatches of each epoch like the rollouts. Logged as
    ``loss/<name>``."""

    name: str
    coef: float
    input_ids_BT: torch.Tensor  # [B, T]
    attention_BT: torch.Tensor  # [B, T]
    target_mask_BT: torch.Tensor  # [B, T-1]


@dataclass(frozen=True)
class Credit:
    """What a method makes of one step's verified rollouts: the rows to train on, with an advantage per
    response token (``token_advantages[i]`` is ``[len(rows[i].response_ids)]``; given-prefix tokens are
    context and carry 0), and what else the update and the log need.

    ``reference[i]`` marks rows of the original batch: under additive normalization the loss denominators
    count only them, so extra rows (probes, corrections) add gradient instead of diluting it."""

    rows: tuple[Trajectory, ...]
    token_advantages: tuple[torch.Tensor, ...]
    reference: tuple[bool, ...]
    aux_losses: tuple[AuxiliaryLoss, ...] = ()
    metrics: Mapping[str, float] = field(default_factory=dict)
    localizations: tuple[LocalizedFailure, ...] = ()
    row_kinds: tuple[str, ...] = ()
    """Per row: "sample" (the step's own rollouts), "probe", "correction", "branch" or "verdict"; empty
    means every row is a sample."""
    trained_tokens: int = 0
    """Tokens the method itself passed forward and backward through a model of its own this step (PRIME's
    reward model), beside the rows the policy update trains on; they count in the trained-token budget."""

    def __post_init__(self):
        object.__setattr__(self, "metrics", MappingProxyType(dict(self.metrics)))  # read-only once returned
        if not len(self.rows) == len(self.token_advantages) == len(self.reference):
            raise ValueError(f"credit rows ({len(self.rows)}), advantages ({len(self.token_advantages)}) and reference "
                             f"flags ({len(self.reference)}) must match")
        if self.row_kinds and len(self.row_kinds) != len(self.rows):
            raise ValueError(f"credit has {len(self.rows)} rows but {len(self.row_kinds)} row kinds")

    def kind(self, row: int) -> str:
        return self.row_kinds[row] if self.row_kinds else "sample"


def to_jsonable(value: Any) -> Any:
    """Plain values as JSON (for checkpoints); tuples are tagged so that they come back as tuples."""
    if isinstance(value, tuple):
        return {"__tuple__": [to_jsonable(v) for v in value]}
    if isinstance(value, list):
        return [to_jsonable(v) for v in value]
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise TypeError(f"cannot store a dict with non-string keys as JSON: keys {list(value)[:3]}")
        return {k: to_jsonable(v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot store a {type(value).__name__} as JSON (problem metadata must be plain values)")


def from_jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"__tuple__"}:
            return tuple(from_jsonable(v) for v in value["__tuple__"])
        return {k: from_jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_jsonable(v) for v in value]
    return value

"""Typed records passed between components (task -> rollout -> verify -> localize -> credit).

Every record is a frozen dataclass: components hand each other values, never mutable state.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

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
    """One sampled response to a problem, scored, with its steps mapped onto its tokens.

    ``response_ids`` includes the EOS token when the policy emitted one; ``logprobs`` are the sampling
    policy's log-probabilities of each response token; ``step_spans`` are token spans ``[start, end)`` of
    the task's steps and partition ``response_ids`` (EOS belongs to the last step). ``group`` ties samples
    of the same prompt together for group-relative advantages. ``prefix_len`` counts the leading response
    tokens that were given rather than sampled (a probe or a repair continues a stored prefix): they are
    context, never trained on again, and the trajectory is a sample of the policy only after them.
    """

    problem: Problem
    prompt_ids: list[int]
    response_ids: list[int]
    logprobs: list[float]
    text: str
    reward: float
    truncated: bool
    group: int
    step_spans: list[Span]
    prefix_len: int = 0


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

"""What localization leaves behind for later steps: good prefixes to restart from, and self-verification
examples.

The repair buffer keeps (problem, good prefix) pairs, the prefix through the last step before a localized
error, from which the policy is known to succeed sometimes (V > 0). Later training steps draw a share of
their prompts from it and the *current* policy continues the stored prefix: a reset to a known-improvable
state, sampled on-policy, nothing stale replayed. Self-verification examples, (problem, completion, first
wrong step or None), are what the policy later learns to produce itself.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass
from typing import Generic, TypeVar

from sirl.types import Problem

Entry = TypeVar("Entry")


@dataclass(frozen=True)
class RepairEntry:
    problem: Problem
    prefix_ids: list[int]
    """Response tokens of the good prefix."""
    step: int
    """The training step that found it."""


class DrawPool(Generic[Entry]):
    """A bounded FIFO from which draws are taken without replacement (the entries drawn leave it): the
    repair buffer here, and the TRL adapter's good prefixes (sirl.integrations.trl)."""

    def __init__(self, capacity: int):
        self.entries: deque[Entry] = deque(maxlen=capacity)

    def add(self, entry: Entry) -> None:
        self.entries.append(entry)

    def draw(self, n: int, rng: random.Random) -> list[Entry]:
        """Up to ``n`` entries, uniformly at random without replacement, removed from the pool."""
        n = min(n, len(self.entries))
        picked = sorted(rng.sample(range(len(self.entries)), n), reverse=True)
        drawn = [self.entries[i] for i in picked]
        for i in picked:
            del self.entries[i]
        return drawn

    def __len__(self) -> int:
        return len(self.entries)


class RepairBuffer(DrawPool[RepairEntry]):
    """A bounded FIFO of good prefixes; drawing removes the entries drawn."""

    def to_json(self) -> list[dict]:
        return [{"problem": e.problem.to_json(), "prefix_ids": e.prefix_ids, "step": e.step} for e in self.entries]

    def load_json(self, data: list[dict]) -> None:
        """Replace the contents with what :meth:`to_json` returned (a checkpoint)."""
        self.entries.clear()
        self.entries.extend(RepairEntry(Problem.from_json(e["problem"]), e["prefix_ids"], e["step"]) for e in data)


@dataclass(frozen=True)
class VerificationExample:
    """The policy's own completion of a problem and where it first went wrong (0-based step), or None for
    a verified completion. Labels come from the oracle localizer, never from a task's ground truth."""

    problem: Problem
    completion: str
    first_error: int | None
    step: int


class VerificationExamples:
    """The most recent self-verification examples (a bounded FIFO: training uses recent outputs)."""

    def __init__(self, capacity: int):
        self.examples: deque[VerificationExample] = deque(maxlen=capacity)

    def add(self, example: VerificationExample) -> None:
        self.examples.append(example)

    def __len__(self) -> int:
        return len(self.examples)

    def to_json(self) -> list[dict]:
        return [
            {"problem": e.problem.to_json(), "completion": e.completion, "first_error": e.first_error, "step": e.step}
            for e in self.examples
        ]

    def load_json(self, data: list[dict]) -> None:
        """Replace the contents with what :meth:`to_json` returned (a checkpoint)."""
        self.examples.clear()
        self.examples.extend(
            VerificationExample(Problem.from_json(e["problem"]), e["completion"], e["first_error"], e["step"]) for e in data
        )

"""Pieces the step-credit methods (si, si_internal, random_reset, vine) share: the step's evidence about
prefix values, the choice of failures to work on, and a probe sampler that remembers what it drew."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from sirl.internalize.credit import ProbeFn, outcome_advantages, select_failures, value_scales
from sirl.internalize.localize import PrefixBook
from sirl.types import Trajectory


@dataclass
class StepEvidence:
    """What one step's rollouts say before any probe: outcome advantages ``[B]``, the value scale of each
    group, every trajectory by prefix (``book``, which probes join), and each group's solve rate from its
    given prefix."""

    rollouts: tuple[Trajectory, ...]
    outcome_B: torch.Tensor
    scales: dict[int, float]
    book: PrefixBook
    solve_rate: dict[int, float]

    @classmethod
    def of(cls, rollouts: Sequence[Trajectory], estimator: str) -> StepEvidence:
        book = PrefixBook(rollouts)
        solve_rate: dict[int, float] = {}
        for t in rollouts:
            solve_rate.setdefault(t.group, book.value(t.group, t.response_ids[: t.prefix_len])[0])
        return cls(tuple(rollouts), outcome_advantages(rollouts, estimator), value_scales(rollouts, estimator), book, solve_rate)

    def outcome_token_advantages(self) -> list[torch.Tensor]:
        return [torch.full((len(t.response_ids),), float(a)) for t, a in zip(self.rollouts, self.outcome_B)]

    def failure_rows(self) -> list[int]:
        """Rows of the fresh failures (reward < 1, sampled from the prompt alone)."""
        return [i for i, t in enumerate(self.rollouts) if t.reward < 1 and t.prefix_len == 0]

    def choose_failures(self, budget: int) -> tuple[list[int], dict[str, float]]:
        """Rows of the failures to localize under ``budget`` (sirl.internalize.credit.select_failures), and
        the metrics of the choice: the share of failures whose prompt has no success at all, and how many
        localizable ones the budget left out."""
        rows = self.failure_rows()
        failures = [self.rollouts[i] for i in rows]
        chosen = [rows[i] for i in select_failures(failures, self.book, self.solve_rate, budget)]
        unlocalizable = sum(not self.book.certified(t.group, []) for t in failures)
        return chosen, {
            "loc/unlocalizable_frac": unlocalizable / max(len(failures), 1),
            "loc/budget_skipped": len(failures) - unlocalizable - len(chosen),
        }


class RecordingProbe:
    """Wraps a probe sampler and keeps every group of probes it returned, in order, so the method can
    train on them and find the corrections among them."""

    def __init__(self, probe: ProbeFn):
        self._probe = probe
        self.groups: list[list[Trajectory]] = []
        self.owners: list[Trajectory] = []  # the trajectory each group was drawn from

    def __call__(self, requests: list[tuple[Trajectory, int]], k: int) -> list[list[Trajectory]]:
        found = self._probe(requests, k)
        self.groups.extend(found)
        self.owners.extend(t for t, _ in requests)
        return found

    @property
    def drawn(self) -> list[Trajectory]:
        return [p for group in self.groups for p in group]

    @property
    def drawn_for(self) -> list[Trajectory]:
        """For each of :attr:`drawn`, the trajectory whose prefix it continued."""
        return [owner for owner, group in zip(self.owners, self.groups) for _ in group]

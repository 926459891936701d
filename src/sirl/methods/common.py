"""Pieces the step-credit methods (si, si_internal, random_reset, vine) share: the step's evidence about
prefix values, the choice of failures to work on, and a probe sampler that remembers what it drew."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from sirl import algos
from sirl.internalize.credit import ProbeFn, outcome_advantages, select_failures, value_scales
from sirl.internalize.localize import PrefixBook, prefix_ids
from sirl.types import Credit, Trajectory


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

    def choose_failures(self, budget: int, rule: str = "half_solved", rng: random.Random | None = None) -> tuple[list[int], dict[str, float]]:
        """Rows of the failures to localize under ``budget``, in the order of ``rule``
        (sirl.internalize.credit.select_failures), and the metrics of the choice: the share of failures
        whose prompt has no success at all, and how many localizable ones the budget left out."""
        rows = self.failure_rows()
        failures = [self.rollouts[i] for i in rows]
        chosen = [rows[i] for i in select_failures(failures, self.book, self.solve_rate, budget, rule, rng)]
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


@dataclass
class BlindResets:
    """What :func:`blind_resets` adds to a step: branch rows with their advantages and kinds, the good
    prefixes a verified branch found, and ``reset/*`` metrics."""

    rows: list[Trajectory] = field(default_factory=list)
    advantages: list[torch.Tensor] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)
    good_prefixes: list[tuple[Trajectory, list[int]]] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)


def all_fail_failures(rollouts: Sequence[Trajectory], most: int) -> list[Trajectory]:
    """The first failure of each of the first ``most`` groups (by group id) sampled from the prompt alone
    whose every row failed: the groups outcome RL learns nothing from and the divergence localizer cannot
    read (no success to diverge from). Every reset rule gets the same failures from the same rollouts."""
    by_group: dict[int, list[Trajectory]] = {}
    for t in rollouts:
        by_group.setdefault(t.group, []).append(t)
    blind = [rows for _, rows in sorted(by_group.items()) if all(t.reward < 1 and t.prefix_len == 0 for t in rows)]
    return [rows[0] for rows in blind[:most]]


def blind_resets(
    rollouts: Sequence[Trajectory], most: int, k: int, reset_steps: Callable[[list[Trajectory]], list[int | None]],
    probe: ProbeFn, first_error: Callable[[Trajectory], int | None] | None = None,
) -> BlindResets:
    """Resets where outcome RL is blind (issue: internalization that learns; SRPO, arXiv 2605.25507, resets
    to improvable states). For each failure of :func:`all_fail_failures`, ``reset_steps`` gives the number of
    its steps to keep (None: no reset); ``k`` continuations of that prefix are sampled (through ``probe``,
    which counts their tokens in the budget) and scored against each other with tree credit and a
    leave-one-out baseline (sirl.algos.branch_token_advantages), on the scale of an all-fail group (1).
    With ``first_error`` (ground truth) the metrics say how often the reset point is just before the first
    wrong step."""
    failures = all_fail_failures(rollouts, most)
    out = BlindResets()
    if not failures:
        out.metrics["reset/blind_groups"] = 0.0
        return out
    steps = reset_steps(failures)
    requests = [(t, s) for t, s in zip(failures, steps, strict=True) if s is not None]
    branches = probe(requests, k) if requests else []
    for (failure, kept), group in zip(requests, branches):
        advantages = algos.branch_token_advantages([b.response_ids for b in group], [b.reward for b in group], group[0].prefix_len)
        out.rows += group
        out.advantages += advantages
        out.kinds += ["correction" if b.reward >= 1 else "branch" for b in group]
        if any(b.reward >= 1 for b in group):
            out.good_prefixes.append((failure, prefix_ids(failure, kept)))
    n_rows = len(out.rows)
    out.metrics.update({
        "reset/blind_groups": float(len(failures)),
        "reset/resets": float(len(requests)),
        "reset/solve_rate": sum(b.reward >= 1 for b in out.rows) / max(n_rows, 1),
        "reset/opened": sum(any(b.reward >= 1 for b in g) for g in branches) / max(len(requests), 1),
    })
    if first_error is not None and requests:
        out.metrics["reset/at_first_error"] = sum(kept == first_error(t) for t, kept in requests) / len(requests)
    return out


def with_blind_resets(credit: Credit, blind: BlindResets) -> Credit:
    """``credit`` with the branch rows of :func:`blind_resets` appended (extra rows, not reference ones)."""
    return dataclasses.replace(
        credit,
        rows=(*credit.rows, *blind.rows),
        token_advantages=(*credit.token_advantages, *blind.advantages),
        reference=(*credit.reference, *(False,) * len(blind.rows)),
        metrics={**credit.metrics, **blind.metrics},
        row_kinds=(*(credit.row_kinds or ("sample",) * len(credit.rows)), *blind.kinds),
    )

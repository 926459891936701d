"""Pieces the step-credit methods (si, si_internal, tree_branch, random_reset, vine) share: their rows as
the credit core reads them (token ids, rewards, groups, step ends), the choice of failures to work on,
and a probe sampler that remembers what it drew. The credit itself is sirl.credit's."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from sirl import credit as core
from sirl.credit.divergence import choose_failures as choose_failure_rows, group_solve_rates
from sirl.credit.outcome import outcome_advantages as group_outcome_advantages, value_scales as group_value_scales
from sirl.credit.tree import branch_token_advantages
from sirl.internalize.credit import ProbeFn
from sirl.internalize.localize import PrefixBook, prefix_ids, step_ends
from sirl.schema import (
    LOC_BUDGET_SKIPPED, LOC_UNLOCALIZABLE_FRAC, RESET_AT_FIRST_ERROR, RESET_BLIND_GROUPS, RESET_OPENED, RESET_RESETS,
    RESET_SOLVE_RATE,
)
from sirl.types import Credit, Trajectory


@dataclass(frozen=True)
class TokenRows:
    """Trajectories as the credit core (sirl.credit) reads them, one entry per row."""

    responses: tuple[list[int], ...]
    rewards: tuple[float, ...]
    groups: tuple[int, ...]
    step_ends: tuple[list[int], ...]
    prefix_lens: tuple[int, ...]

    @classmethod
    def of(cls, rows: Sequence[Trajectory]) -> TokenRows:
        return cls(
            tuple(t.response_ids for t in rows), tuple(t.reward for t in rows), tuple(t.group for t in rows),
            tuple(step_ends(t) for t in rows), tuple(t.prefix_len for t in rows),
        )


def outcome_advantages(trajectories: Sequence[Trajectory], estimator: str) -> torch.Tensor:
    """Group-relative outcome advantages (sirl.credit.outcome.ADVANTAGES[estimator]), one per trajectory ``[B]``."""
    return group_outcome_advantages([t.reward for t in trajectories], [t.group for t in trajectories], estimator)


def value_scales(trajectories: Sequence[Trajectory], estimator: str) -> dict[int, float]:
    """Per group, the factor that puts value differences on the outcome advantages' scale: 1 / group std
    for the std-normalized estimator (grpo), 1 for the others (sirl.credit.outcome.VALUE_SCALES)."""
    return group_value_scales([t.reward for t in trajectories], [t.group for t in trajectories], estimator)


def outcome_token_advantages(rollouts: Sequence[Trajectory], estimator: str) -> list[torch.Tensor]:
    """Each row's outcome advantage on every one of its tokens (sirl.credit.outcome_credit)."""
    rows = TokenRows.of(rollouts)
    return list(core.outcome_credit(rows.responses, rows.rewards, rows.groups, estimator=estimator).token_advantages)


def failure_rows(rollouts: Sequence[Trajectory]) -> list[int]:
    """Rows of the fresh failures (reward < 1, sampled from the prompt alone)."""
    return [i for i, t in enumerate(rollouts) if t.reward < 1 and t.prefix_len == 0]


def choose_failures(
    book: PrefixBook, rollouts: Sequence[Trajectory], budget: int, rule: str = "half_solved", rng: random.Random | None = None,
) -> tuple[list[int], dict[str, float]]:
    """Rows of the failures to localize under ``budget``, in the order of ``rule``
    (sirl.credit.divergence.choose_failures on the rollouts' prefix tree, ``book``, before any probe joins
    it), and the metrics of the choice: the share of failures whose prompt has no success at all, and how
    many localizable ones the budget left out."""
    tree = book.tree
    rows = failure_rows(rollouts)
    ends = [step_ends(t) for t in rollouts]
    chosen = [rows[i] for i in choose_failure_rows(tree, rows, ends, group_solve_rates(tree, range(len(rollouts))), budget, rule, rng)]
    unlocalizable = sum(not tree.certified(tree.roots[rollouts[i].group]) for i in rows)
    return chosen, {
        LOC_UNLOCALIZABLE_FRAC: unlocalizable / max(len(rows), 1),
        LOC_BUDGET_SKIPPED: len(rows) - unlocalizable - len(chosen),
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
    leave-one-out baseline (sirl.credit.tree.branch_token_advantages), on the scale of an all-fail group (1).
    With ``first_error`` (ground truth) the metrics say how often the reset point is just before the first
    wrong step."""
    failures = all_fail_failures(rollouts, most)
    out = BlindResets()
    if not failures:
        out.metrics[RESET_BLIND_GROUPS] = 0.0
        return out
    steps = reset_steps(failures)
    requests = [(t, s) for t, s in zip(failures, steps, strict=True) if s is not None]
    branches = probe(requests, k) if requests else []
    for (failure, kept), group in zip(requests, branches):
        advantages = branch_token_advantages([b.response_ids for b in group], [b.reward for b in group], group[0].prefix_len)
        out.rows += group
        out.advantages += advantages
        out.kinds += ["correction" if b.reward >= 1 else "branch" for b in group]
        if any(b.reward >= 1 for b in group):
            out.good_prefixes.append((failure, prefix_ids(failure, kept)))
    n_rows = len(out.rows)
    out.metrics.update({
        RESET_BLIND_GROUPS: float(len(failures)),
        RESET_RESETS: float(len(requests)),
        RESET_SOLVE_RATE: sum(b.reward >= 1 for b in out.rows) / max(n_rows, 1),
        RESET_OPENED: sum(any(b.reward >= 1 for b in g) for g in branches) / max(len(requests), 1),
    })
    if first_error is not None and requests:
        out.metrics[RESET_AT_FIRST_ERROR] = sum(kept == first_error(t) for t, kept in requests) / len(requests)
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

"""Find where a failed trajectory went wrong by sampling from its prefixes (the oracle localizer).

Terms follow docs/method.md. The prefix value V(k) is the chance that the current policy, continuing from the
prompt plus the first k steps of a response, reaches a verified answer; it is estimated by K sampled
continuations (probes). The first irrecoverable step t* of a failed trajectory is the smallest k with
V̂(k) = 0 given V̂(k-1) > 0; under the assumption that V̂ falls monotonically along a failed trajectory,
binary search over k finds it with about K * ceil(log2(n+1)) probes.

Free evidence comes first: a verified trajectory certifies all of its own prefixes (V > 0), so a failure
that shares its first c steps with a success of the same prompt (a sibling, or any probe) starts its search
at c. With ``first_check="divergence"`` its first probe checks step c+1, the step where it left every known
success; on tasks with one solution path that step is the error, and the search ends after K probes.
A failure whose prompt has no success at all (no sibling, no probe) cannot be localized: it is counted.

Nothing here touches a model: probes come from a callback, so the search can be tested with a scripted
sampler and run batched through the rollout engine (all failures of a training step probe together, one
engine call per round).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from sirl.credit.prefix_tree import PrefixTree
from sirl.types import Localization, Trajectory

Probe = Callable[[list[tuple[Trajectory, int]]], list[list[Trajectory]]]
"""Given (trajectory, k) requests, return for each the probe trajectories continuing the trajectory's
prefix through k steps (``prefix_len`` set to that prefix's length, same ``group``)."""


def prefix_ids(trajectory: Trajectory, k: int) -> list[int]:
    """Response tokens of the prefix through ``k`` steps (k = 0: the empty prefix)."""
    return trajectory.response_ids[: trajectory.step_spans[k - 1][1]] if k > 0 else []


def step_ends(trajectory: Trajectory) -> list[int]:
    """The token offset where each of the trajectory's steps ends: its steps as the credit core
    (sirl.credit) reads them (``step_spans`` partition the response, so each step starts where the one
    before it ended)."""
    return [end for _, end in trajectory.step_spans]


class PrefixBook:
    """Every trajectory of a training step (samples, probes, corrections), as rows of the group's prefix
    tree (sirl.credit.prefix_tree.PrefixTree, which the probes join), queried by group and token prefix.

    ``certified(group, prefix)``: some verified trajectory passes through the prefix, so V(prefix) > 0.
    ``value(group, prefix)``: the success rate of the trajectories that pass through the prefix *and were
    sampled freely from it or earlier* (``prefix_len <= len(prefix)``); a probe from a longer prefix passes
    through a shorter one too, but its path was forced on the way and would bias the estimate.
    """

    def __init__(self, trajectories: Sequence[Trajectory] = ()):
        self.tree = PrefixTree()
        self.trajectories: list[Trajectory] = []  # by row of the tree
        self._rows: dict[int, list[int]] = {}  # id(trajectory) -> its rows (a trajectory added twice counts twice)
        self.add(trajectories)

    def add(self, trajectories: Sequence[Trajectory]) -> None:
        for t in trajectories:
            row = self.tree.add(t.response_ids, t.reward, t.group, t.prefix_len)
            self.trajectories.append(t)
            self._rows.setdefault(id(t), []).append(row)

    def row(self, trajectory: Trajectory) -> int:
        """The tree row of ``trajectory`` (its first, if it was added twice)."""
        rows = self._rows.get(id(trajectory))
        if not rows:
            raise KeyError(f"a trajectory of group {trajectory.group} that was never added to the book")
        return rows[0]

    def rows_of(self, trajectories: Sequence[Trajectory | None]) -> list[int]:
        """The tree rows of the given trajectories (compared by identity; None and strangers have none)."""
        return [row for t in trajectories if t is not None for row in self._rows.get(id(t), [])]

    def node(self, group: int, prefix: list[int]) -> int | None:
        return self.tree.node(group, prefix)

    def certified(self, group: int, prefix: list[int]) -> bool:
        return self.tree.certified(self.tree.node(group, prefix))

    def value(self, group: int, prefix: list[int]) -> tuple[float, int]:
        """(success rate, number of samples) among free samples through ``prefix``; (0, 0) if none."""
        return self.tree.value(self.tree.node(group, prefix))

    def value_without(self, group: int, prefix: list[int], left_out: Sequence[Trajectory | None]) -> tuple[float, int]:
        """:meth:`value` without the trajectories in ``left_out`` (compared by identity)."""
        return self.tree.value_without(self.tree.node(group, prefix), self.rows_of(left_out))

    def samples_besides(self, group: int, prefix: list[int], trajectory: Trajectory) -> int:
        """How many free samples through ``prefix`` there are besides ``trajectory`` (the failure being
        localized: it was picked because it failed, so its own outcome is no evidence about the prefix)."""
        node = self.tree.node(group, prefix)
        if node is None:
            return 0
        return self.tree.free[node] - sum(self.tree.passes_free(row, node) for row in self.rows_of([trajectory]))


@dataclass
class _Search:
    index: int
    trajectory: Trajectory
    lo: int  # V̂(lo) > 0 known
    hi: int  # V̂(hi) = 0 known
    mid: int
    probes: int = 0
    checks: list[tuple[int, bool]] = field(default_factory=list)


def certified_prefix_steps(book: PrefixBook, trajectory: Trajectory, below: int) -> int:
    """The most steps k < ``below`` whose prefix some verified trajectory of the group passes through, or
    -1 when none (not even the prompt alone)."""
    for k in range(below - 1, -1, -1):
        if book.certified(trajectory.group, prefix_ids(trajectory, k)):
            return k
    return -1


def localize(
    failures: Sequence[Trajectory],
    book: PrefixBook,
    probe: Probe,
    *,
    free_evidence: bool = True,
    first_check: Literal["divergence", "bisect"] = "divergence",
    drop: float = 0.0,
    settle: Probe | None = None,
) -> list[Localization]:
    """Localize each failure (a trajectory with reward < 1), all searches advancing together.

    Each round asks ``probe`` for one prefix per unfinished search and adds the probes to ``book``, so a
    success found for one failure certifies prefixes of every other failure that shares them. Without
    ``free_evidence`` the search ignores shared prefixes and bisects the whole response (the prompt's
    own group still has to contain a success: V̂(0) > 0).

    ``drop = 0`` is docs/method.md's rule: a checked prefix is still good when any trajectory through it
    verified (V̂ > 0). With ``drop > 0`` it is still good only when its estimated value keeps more than
    ``drop`` times the value of the last good prefix, so the search finds the step that destroyed most
    of the value even where a wrong step leaves a little chance of recovery (a lucky final answer).

    ``settle`` (used with ``drop > 0``): a check whose probes include a verified one gets more probes,
    drawn by ``settle``, before the drop rule decides. A few probes from a wrong step sometimes verify
    by luck, and one such probe would make the prefix look as good as the one before; most checks find
    no success and cost only their first probes.
    """
    results: dict[int, Localization] = {}
    searches: list[_Search] = []
    for index, trajectory in enumerate(failures):
        n = len(trajectory.step_spans)
        if not book.certified(trajectory.group, []):
            results[index] = Localization(index, None)
            continue
        lo = certified_prefix_steps(book, trajectory, below=n) if free_evidence else 0
        mid = lo + 1 if first_check == "divergence" else (lo + n) // 2
        searches.append(_Search(index, trajectory, lo=lo, hi=n, mid=mid))

    while True:
        active = [s for s in searches if s.hi - s.lo > 1]
        if not active:
            break
        probes = probe([(s.trajectory, s.mid) for s in active])
        for s, found in zip(active, probes):
            book.add(found)
            s.probes += len(found)
        if settle is not None and drop > 0:
            lucky = [s for s, found in zip(active, probes) if any(p.reward >= 1 for p in found)]
            for s, found in zip(lucky, settle([(s.trajectory, s.mid) for s in lucky]) if lucky else []):
                book.add(found)
                s.probes += len(found)
        for s in active:
            prefix = prefix_ids(s.trajectory, s.mid)
            if drop > 0:
                value_lo, _ = book.value(s.trajectory.group, prefix_ids(s.trajectory, s.lo))
                ok = book.value(s.trajectory.group, prefix)[0] > drop * value_lo
            else:
                ok = book.certified(s.trajectory.group, prefix)
            s.checks.append((s.mid, ok))
            if ok:
                s.lo = s.mid
            else:
                s.hi = s.mid
            if free_evidence and drop == 0:  # probes of this round may certify later prefixes of this failure
                s.lo = max(s.lo, certified_prefix_steps(book, s.trajectory, below=s.hi))
            s.mid = (s.lo + s.hi) // 2

    for s in searches:
        before, _ = book.value(s.trajectory.group, prefix_ids(s.trajectory, s.lo))
        after, _ = book.value(s.trajectory.group, prefix_ids(s.trajectory, s.hi))
        results[s.index] = Localization(
            s.index, error_step=s.hi - 1, value_before=before, value_after=after, probes=s.probes, checks=tuple(s.checks)
        )
    return [results[i] for i in range(len(failures))]

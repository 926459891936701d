"""Where a failure left every success of its group, and the credit of a localized failure (docs/method.md,
"Credit").

- :func:`divergence_step`: the step after the failure's longest step-prefix that a success of its group
  also wrote (the free localizer: no probe is drawn); :func:`PrefixTree.shared_with_success` gives the
  first token where it left them.
- :func:`choose_failures`: which failures get localized under a per-step budget, and in which order.
- :func:`localized_token_advantages`: 0 on the good prefix, -(V(before) - V(after)) on the error step
  (from its first token, or from the first differing token), then 0 or the outcome advantage.

All on row indices of a :class:`~sirl.credit.prefix_tree.PrefixTree` and per-row ``step_ends``.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from sirl.credit.prefix_tree import PrefixTree
from sirl.credit.step_advantages import broadcast_steps_to_tokens, localized_step_advantages, step_index, step_prefix_len


@dataclass(frozen=True)
class Divergence:
    """One localized failure."""

    row: int
    error_step: int
    """The step after the longest step-prefix that a success of its group shares (0-based)."""
    first_difference: int
    """The token offset where it left every success of its group."""
    value_before: float
    """Success rate of the free samples through the prefix before the error step."""
    value_after: float
    """... through the prefix including the error step."""


def prefix_node(tree: PrefixTree, row: int, n_tokens: int) -> int:
    """The node of ``row``'s first ``n_tokens`` tokens."""
    return tree.paths[row][n_tokens]


def certified_prefix_steps(tree: PrefixTree, row: int, step_ends: Sequence[int], below: int) -> int:
    """The most steps k < ``below`` whose prefix some success of the row's group passes through, or -1
    when none (not even the prompt alone)."""
    for k in range(below - 1, -1, -1):
        if tree.certified(prefix_node(tree, row, step_prefix_len(step_ends, k))):
            return k
    return -1


def divergence_step(tree: PrefixTree, row: int, step_ends: Sequence[int]) -> int:
    """The failure's divergence step: the step after its longest step-prefix that a success of its group
    shares, where it left every known success (-1 when its group has no success). A failure's last step
    is the latest it can be: the whole response is no success's prefix."""
    return certified_prefix_steps(tree, row, step_ends, below=len(step_ends))


def divergence(tree: PrefixTree, row: int, step_ends: Sequence[int]) -> Divergence | None:
    """The failure ``row`` localized at its divergence step with the free samples' values before and
    through it; None when its group has no success."""
    c = divergence_step(tree, row, step_ends)
    if c < 0:
        return None
    before, _ = tree.value(prefix_node(tree, row, step_prefix_len(step_ends, c)))
    after, _ = tree.value(prefix_node(tree, row, step_prefix_len(step_ends, c + 1)))
    return Divergence(row, c, tree.shared_with_success(row), before, after)


def group_solve_rates(tree: PrefixTree, rows: Sequence[int]) -> dict[int, float]:
    """Per group, the success rate of its free rows from the given prefix of its first row in ``rows``
    (the prompt alone for a fresh group; the stored prefix for a group that continues one)."""
    rates: dict[int, float] = {}
    for row in rows:
        group = tree.groups[row]
        if group not in rates:
            rates[group] = tree.value(prefix_node(tree, row, tree.prefix_lens[row]))[0]
    return rates


FAILURE_CHOICES = ("half_solved", "least_solved", "most_solved", "random")
"""The rules for which failures get localized (or branched) under a per-step budget (:func:`choose_failures`)."""


def choose_failures(
    tree: PrefixTree, failures: Sequence[int], step_ends: Sequence[Sequence[int]], solve_rate: dict[int, float], budget: int,
    rule: str = "half_solved", rng: random.Random | None = None,
) -> list[int]:
    """Positions in ``failures`` (row indices of ``tree``; ``step_ends`` per row of the tree) of at most
    ``budget`` localizable failures (a success shares their prompt), in the order ``rule`` puts the
    prompts, round-robin over prompts so each gets one before any gets two:

    - half_solved: solve rate closest to one half first (the prompts whose outcome is least settled);
    - least_solved: lowest solve rate first (a failure is the prompt's usual outcome);
    - most_solved: highest first (a failure is a slip of a policy that mostly solves the prompt);
    - random: prompts and failures in a random order drawn from ``rng``.

    Ties go to the lower group id. Within a prompt (all rules but random) the failure sharing the longest
    prefix with a success comes first: the cheapest search and the shortest branch."""
    if rule not in FAILURE_CHOICES:
        raise ValueError(f"unknown failure choice {rule!r}; choose one of {', '.join(FAILURE_CHOICES)}")
    by_group: dict[int, list[tuple[int, int]]] = {}
    for i, row in enumerate(failures):
        group = tree.groups[row]
        if tree.certified(tree.roots[group]):
            by_group.setdefault(group, []).append((divergence_step(tree, row, step_ends[row]), i))
    groups = sorted(by_group)
    if rule == "random":
        if rng is None:
            raise ValueError("failure choice 'random' needs an rng")
        rng.shuffle(groups)
        queues = [rng.sample(by_group[g], len(by_group[g])) for g in groups]
    else:
        order = {
            "half_solved": lambda g: abs(solve_rate[g] - 0.5),
            "least_solved": lambda g: solve_rate[g],
            "most_solved": lambda g: -solve_rate[g],
        }[rule]
        queues = [sorted(by_group[g], key=lambda item: -item[0]) for g in sorted(groups, key=lambda g: (order(g), g))]
    chosen: list[int] = []
    while len(chosen) < budget and any(queues):
        for queue in queues:
            if queue and len(chosen) < budget:
                chosen.append(queue.pop(0)[1])
    return chosen


POST_ERROR = ("zero", "outcome")
ERROR_SPANS = ("step", "first_difference")


def localized_token_advantages(
    step_ends: Sequence[int], prefix_len: int, error_step: int, value_before: float, value_after: float, outcome_advantage: float, *,
    scale: float, error_scale: float, post_error: str, error_from_token: int = 0,
) -> torch.Tensor:
    """Token advantages of one localized failure, float32 ``[step_ends[-1]]``: 0 on the good prefix,
    -(V(before) - V(after)) times ``error_scale * scale`` on the error step, then 0 or the outcome
    advantage (``post_error``); 0 on the first ``prefix_len`` tokens (given). Tokens of the error step
    before ``error_from_token`` (the first token where the failure left every success of its group) carry
    no penalty: a success wrote them too."""
    if post_error not in POST_ERROR:
        raise ValueError(f"unknown post_error {post_error!r}; choose one of {', '.join(POST_ERROR)}")
    n = len(step_ends)
    step_adv = localized_step_advantages(
        n_steps_B=torch.tensor([n]),
        error_step_B=torch.tensor([error_step]),
        value_before_B=torch.tensor([value_before]),
        value_after_B=torch.tensor([value_after]),
        after_error_B=torch.tensor([outcome_advantage]) if post_error == "outcome" else torch.zeros(1),
        width=n,
    )
    step_adv[0, :n] *= torch.where(torch.arange(n) == error_step, error_scale * scale, 1.0)
    adv = broadcast_steps_to_tokens(step_adv, step_index(step_ends, step_ends[-1] if step_ends else 0, prefix_len)[None])[0]
    if error_from_token:
        start = step_prefix_len(step_ends, error_step)
        adv[start:max(start, error_from_token)] = 0.0
    return adv

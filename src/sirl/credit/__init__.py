"""sirl's credit on token ids: pure functions from a step's groups of responses to per-token advantages.

Inputs common to the entry points (B rows, any number of groups mixed):

- ``responses``: the response token ids of each row, no padding;
- ``rewards``: the row's scalar reward; ``groups``: group id per row (rows of one group answer one prompt);
- ``step_ends``: per row, the token offset where each step ends (increasing, the last the response's
  length); step k is tokens ``[step_ends[k-1], step_ends[k])`` with ``step_ends[-1] := 0``;
- ``prefix_lens``: tokens at the start of a response that were given, not sampled (None: all 0);
- ``success_threshold``: a reward at least this counts as a success for the step credit.

Entry points: :func:`outcome_credit` (GRPO and its variants, one advantage per row on every token),
:func:`divergence_credit` (a failure localized where it left every success of its group: 0 on the prefix
a success also wrote, the destroyed value on its error step), :func:`tree_credit` (V(child) - V(parent)
over the group's prefix tree). Each returns a :class:`GroupCredit`. The pieces live in the modules:
``prefix_tree`` (node values and visit counts), ``divergence`` (divergence step, first differing token,
failure choice, localized advantages), ``tree`` (tree credit), ``step_advantages`` (step values to
tokens), ``outcome`` (group-relative estimators); each has its naive twin in the tests.

Nothing here imports a model, a config or sirl's records: the TRL and verl adapters and sirl's own
methods call the same functions.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from sirl.credit.divergence import (
    ERROR_SPANS, FAILURE_CHOICES, POST_ERROR, Divergence, choose_failures, divergence, group_solve_rates, localized_token_advantages,
)
from sirl.credit.outcome import ADVANTAGES, outcome_advantages, value_scales
from sirl.credit.prefix_tree import PrefixTree
from sirl.credit.tree import TREE_VALUES, tree_node_counts, tree_token_advantages

TREE_WEIGHTINGS = ("none", "node_count")


@dataclass(frozen=True)
class GroupCredit:
    """What an entry point makes of B rows."""

    token_advantages: tuple[torch.Tensor, ...]
    """One float32 ``[T_i]`` per row. Given tokens (``prefix_lens``) are context that the loss masks: tree
    and localized credit put 0 there, the outcome advantage of an unlocalized row covers them too."""
    outcome_advantages: torch.Tensor
    """``[B]`` the group-relative outcome advantage per row."""
    divergences: tuple[Divergence, ...] = ()
    """The failures localized, in the order they were chosen."""
    metrics: dict[str, float] = field(default_factory=dict)
    """``credit/localized_frac`` (localized / failures), ``credit/mean_error_step`` (when any was
    localized), ``credit/zero_frac`` (share of trained tokens whose advantage is 0); tree credit adds
    ``credit/tree_zero_frac`` (share of trained tokens whose node value did not change)."""


def _check_rows(
    responses: Sequence[Sequence[int]], rewards: Sequence[float], groups: Sequence[int], prefix_lens: Sequence[int] | None,
    step_ends: Sequence[Sequence[int]] | None = None,
) -> list[int]:
    """The rows' given-prefix lengths (zeros when None), after checking every input has one entry per row."""
    n = len(responses)
    for name, values in (("rewards", rewards), ("groups", groups), ("prefix_lens", prefix_lens), ("step_ends", step_ends)):
        if values is not None and len(values) != n:
            raise ValueError(f"{name} has {len(values)} entries for {n} responses: give one per row")
    given = [0] * n if prefix_lens is None else [int(p) for p in prefix_lens]
    for i, (tokens, p) in enumerate(zip(responses, given)):
        if not 0 <= p <= len(tokens):
            raise ValueError(f"row {i}: prefix_lens {p} outside its {len(tokens)} response tokens")
    if step_ends is not None:
        for i, (tokens, ends) in enumerate(zip(responses, step_ends)):
            if not ends or ends[-1] != len(tokens) or any(b < a for a, b in zip(ends, ends[1:])) or ends[0] < 0:
                raise ValueError(
                    f"row {i}: step_ends {list(ends)} must be increasing offsets whose last is the response's length "
                    f"({len(tokens)}); an empty response is one empty step, [0]"
                )
    return given


def _zero_frac(token_advantages: Sequence[torch.Tensor], prefix_lens: Sequence[int]) -> float:
    """Share of trained (not given) tokens whose advantage is 0."""
    zeros = sum(int((a[p:] == 0).sum()) for a, p in zip(token_advantages, prefix_lens))
    trained = sum(len(a) - p for a, p in zip(token_advantages, prefix_lens))
    return zeros / max(trained, 1)


def outcome_credit(
    responses: Sequence[Sequence[int]], rewards: Sequence[float], groups: Sequence[int], *, estimator: str = "grpo"
) -> GroupCredit:
    """Each row's group-relative outcome advantage (``estimator``: grpo, dr_grpo or rloo) on every token."""
    _check_rows(responses, rewards, groups, None)
    outcome_B = outcome_advantages(list(rewards), list(groups), estimator)
    token_adv = tuple(torch.full((len(tokens),), float(a)) for tokens, a in zip(responses, outcome_B))
    return GroupCredit(token_adv, outcome_B, (), {"credit/localized_frac": 0.0, "credit/zero_frac": _zero_frac(token_adv, [0] * len(token_adv))})


def divergence_credit(
    responses: Sequence[Sequence[int]],
    rewards: Sequence[float],
    groups: Sequence[int],
    step_ends: Sequence[Sequence[int]],
    *,
    prefix_lens: Sequence[int] | None = None,
    success_threshold: float = 1.0,
    estimator: str = "grpo",
    error_span: str = "first_difference",
    post_error: str = "zero",
    error_scale: float = 1.0,
    max_localizations: int | None = None,
    failure_choice: str = "half_solved",
    rng: random.Random | None = None,
) -> GroupCredit:
    """The divergence credit (docs/method.md, "Credit", with the free localizer): successes and
    unlocalized failures keep the outcome advantage; each chosen failure (sampled from the prompt alone,
    its group holding a success; at most ``max_localizations`` of them, ``failure_choice`` orders them)
    is localized at its divergence step, the step after its longest step-prefix a success of its group
    also wrote, and gets 0 on that good prefix, -(V(before) - V(after)) * error_scale * scale on the error
    step (from the first token where it left every success under ``error_span="first_difference"``, from
    the step's start under ``"step"``), then 0 or its outcome advantage (``post_error``). V is the success
    rate of the rows free through a prefix; scale is 1 / group std under ``estimator="grpo"``, else 1."""
    given = _check_rows(responses, rewards, groups, prefix_lens, step_ends)
    if error_span not in ERROR_SPANS:
        raise ValueError(f"unknown error_span {error_span!r}; choose one of {', '.join(ERROR_SPANS)}")
    if post_error not in POST_ERROR:
        raise ValueError(f"unknown post_error {post_error!r}; choose one of {', '.join(POST_ERROR)}")
    if failure_choice not in FAILURE_CHOICES:
        raise ValueError(f"unknown failure_choice {failure_choice!r}; choose one of {', '.join(FAILURE_CHOICES)}")
    rewards, groups = [float(r) for r in rewards], list(groups)
    tree = PrefixTree.build(responses, rewards, groups, given, success_threshold)
    outcome_B = outcome_advantages(rewards, groups, estimator)
    scales = value_scales(rewards, groups, estimator)
    token_adv = [torch.full((len(tokens),), float(a)) for tokens, a in zip(responses, outcome_B)]
    failures = [i for i in range(len(responses)) if rewards[i] < success_threshold and given[i] == 0]
    budget = len(failures) if max_localizations is None else max_localizations
    chosen = [failures[i] for i in choose_failures(tree, failures, step_ends, group_solve_rates(tree, range(len(tree))), budget, failure_choice, rng)]
    divergences = []
    for row in chosen:
        found = divergence(tree, row, step_ends[row])
        if found is None:
            continue
        divergences.append(found)
        token_adv[row] = localized_token_advantages(
            step_ends[row], given[row], found.error_step, found.value_before, found.value_after, float(outcome_B[row]),
            scale=scales[groups[row]], error_scale=error_scale, post_error=post_error,
            error_from_token=found.first_difference if error_span == "first_difference" else 0,
        )
    metrics = {"credit/localized_frac": len(divergences) / max(len(failures), 1), "credit/zero_frac": _zero_frac(token_adv, given)}
    if divergences:
        metrics["credit/mean_error_step"] = sum(d.error_step for d in divergences) / len(divergences)
    return GroupCredit(tuple(token_adv), outcome_B, tuple(divergences), metrics)


def tree_credit(
    responses: Sequence[Sequence[int]],
    rewards: Sequence[float],
    groups: Sequence[int],
    *,
    prefix_lens: Sequence[int] | None = None,
    estimator: str = "grpo",
    values: str = "mean",
    weighting: str = "none",
    outcome_mix: float = 0.0,
) -> GroupCredit:
    """Tree credit (sirl.credit.tree): V(child) - V(parent) over each group's prefix tree with ``values``
    ("mean" or "leave_one_out" node values), on the outcome advantage's scale (times 1 / group std under
    ``estimator="grpo"``), mixed with ``outcome_mix`` of the outcome advantage, and under
    ``weighting="node_count"`` divided by the number of rows that sampled the same token in the same
    context (lambda-GRPO)."""
    given = _check_rows(responses, rewards, groups, prefix_lens)
    if weighting not in TREE_WEIGHTINGS:
        raise ValueError(f"unknown weighting {weighting!r}; choose one of {', '.join(TREE_WEIGHTINGS)}")
    if values not in TREE_VALUES:
        raise ValueError(f"unknown values {values!r}; choose one of {', '.join(TREE_VALUES)}")
    rewards, groups = [float(r) for r in rewards], list(groups)
    outcome_B = outcome_advantages(rewards, groups, estimator)
    scales = value_scales(rewards, groups, estimator)
    tree = tree_token_advantages(responses, rewards, groups, given, values=values)
    outcome = [torch.full((len(tokens),), float(a)) for tokens, a in zip(responses, outcome_B)]
    token_adv = tuple((1 - outcome_mix) * a * scales[g] + outcome_mix * o for g, a, o in zip(groups, tree, outcome))
    if weighting == "node_count":
        token_adv = tuple(a / n for a, n in zip(token_adv, tree_node_counts(responses, groups, given)))
    metrics = {
        "credit/localized_frac": 0.0,
        "credit/zero_frac": _zero_frac(token_adv, given),
        "credit/tree_zero_frac": _zero_frac(tree, given),
    }
    return GroupCredit(token_adv, outcome_B, (), metrics)


__all__ = [
    "ADVANTAGES", "Divergence", "GroupCredit", "PrefixTree", "divergence_credit", "outcome_credit", "tree_credit",
]

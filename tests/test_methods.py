"""Methods of the registry on hand-made rollouts: what each puts on which token."""

import random

import pytest
import torch

from sirl.config import ExperimentConfig, MethodConfig
from sirl.internalize.credit import outcome_advantages
from sirl.internalize.selfverify import AuditSchedule
from sirl.methods import METHODS, MethodContext, MethodMemory, get_method
from sirl.types import Problem, Trajectory


def rollout(tokens: list[int], reward: float, group: int = 0) -> Trajectory:
    return Trajectory(Problem(f"p{group}", "a"), [1], tokens, [0.0] * len(tokens), "", reward, False, group, [(0, len(tokens))])


def credit(name: str, rollouts, **method):
    context = MethodContext(
        None, ExperimentConfig(method=MethodConfig(**method)), None, random.Random(0), MethodMemory(8, 8, AuditSchedule(1, 1, 4)), 1,
    )
    return get_method(name).credit(rollouts, context)


GROUP = [rollout([5, 6, 7, 2], 1.0), rollout([5, 6, 8, 2], 0.0), rollout([5, 9, 2], 0.0), rollout([5, 6, 7, 2], 1.0), rollout([4, 4, 2], 1.0, 1), rollout([4, 3, 2], 0.0, 1)]


def test_tree_credit_keeps_grpos_advantage_per_row_and_puts_it_where_the_paths_part():
    tree = credit("tree", GROUP)
    grpo = outcome_advantages(GROUP, "grpo")
    for row, adv, outcome in zip(GROUP, tree.token_advantages, grpo):
        assert adv.sum().item() == pytest.approx(outcome.item(), abs=1e-4)  # the row's total is GRPO's advantage
        assert adv[0].item() == 0.0  # the first token, shared by the whole group
    # group 0 (std 1/sqrt(3) of rewards 1, 0, 0, 1): token "6" after [5] moves V from 1/2 to 2/3
    assert tree.token_advantages[0][1].item() == pytest.approx((2 / 3 - 1 / 2) * 3**0.5, rel=1e-4)
    # tokens where V does not change: group 0's shared "5" (4), the "2" after [5,9] (1), both "2"s after
    # [5,6,7] and the one after [5,6,8] (3); group 1's "4" (2) and its two final "2"s (2): 12 of 21
    assert tree.metrics["tree/zero_frac"] == pytest.approx(12 / 21)


def test_mixing_in_the_outcome_advantage():
    half = credit("tree", GROUP, tree_outcome_mix=0.5)
    plain, outcome = credit("tree", GROUP), credit("grpo", GROUP)
    for a, p, o in zip(half.token_advantages, plain.token_advantages, outcome.token_advantages):
        assert torch.allclose(a, 0.5 * p + 0.5 * o, atol=1e-6)
    assert all(torch.allclose(a, o) for a, o in zip(credit("tree", GROUP, tree_outcome_mix=1.0).token_advantages, outcome.token_advantages))


def test_every_method_is_registered_once_with_a_summary():
    assert sorted(METHODS) == ["dr_grpo", "grpo", "random_reset", "rloo", "si", "si_internal", "tree", "vine"]
    assert all(m.name == name and m.summary for name, m in METHODS.items())

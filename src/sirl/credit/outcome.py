"""Group-relative outcome advantages: one number per response from the rewards of its group.

Pure functions of a rewards tensor ``rewards_B`` and group ids ``group_B`` (0..n_groups-1 for the
estimators, any ints for the value scales). Variants are a name -> function dict (``ADVANTAGES``) so a
caller picks one by name instead of branching.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def _group_stats(rewards_B: torch.Tensor, group_B: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sequence group size, group mean and unbiased group std (0 for groups of one)."""
    n_groups = int(group_B.max()) + 1 if len(group_B) else 0
    ones = torch.ones_like(rewards_B)
    size_G = torch.zeros(n_groups, dtype=rewards_B.dtype).index_add_(0, group_B, ones)
    mean_G = torch.zeros(n_groups, dtype=rewards_B.dtype).index_add_(0, group_B, rewards_B) / size_G.clamp(min=1)
    centered_B = rewards_B - mean_G[group_B]
    sq_G = torch.zeros(n_groups, dtype=rewards_B.dtype).index_add_(0, group_B, centered_B**2)
    std_G = (sq_G / (size_G - 1).clamp(min=1)).sqrt()
    return size_G[group_B], mean_G[group_B], std_G[group_B]


def grpo_advantages(rewards_B: torch.Tensor, group_B: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """GRPO (Shao et al. 2024, DeepSeekMath, eq. 3): (r - mean_group) / (std_group + eps).

    ``group_B`` gives each sequence's group id (0..n_groups-1). A group whose rewards are all equal, or
    that has one member, gets advantage 0 (its std is 0, so the numerator is 0 too).
    """
    _, mean_B, std_B = _group_stats(rewards_B, group_B)
    return (rewards_B - mean_B) / (std_B + eps)


def dr_grpo_advantages(rewards_B: torch.Tensor, group_B: torch.Tensor) -> torch.Tensor:
    """Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training", sec. 3.1): r - mean_group.

    Dropping the std removes GRPO's question-difficulty bias; dropping per-sequence length normalization
    is the loss aggregation's job (use ``seq_mean_token_sum_norm``).
    """
    _, mean_B, _ = _group_stats(rewards_B, group_B)
    return rewards_B - mean_B


def rloo_advantages(rewards_B: torch.Tensor, group_B: torch.Tensor) -> torch.Tensor:
    """RLOO (Kool et al. 2019; Ahmadian et al. 2024, "Back to Basics"): r_i - mean_{j != i} r_j.

    Equals G/(G-1) * (r_i - mean_group). A group of one has no other member to compare with: 0.
    """
    size_B, mean_B, _ = _group_stats(rewards_B, group_B)
    loo_baseline_B = (mean_B * size_B - rewards_B) / (size_B - 1).clamp(min=1)
    return torch.where(size_B > 1, rewards_B - loo_baseline_B, torch.zeros_like(rewards_B))


ADVANTAGES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "grpo": grpo_advantages,
    "dr_grpo": dr_grpo_advantages,
    "rloo": rloo_advantages,
}


def group_std_scales(rewards_B: torch.Tensor, group_B: torch.Tensor, eps: float = 1e-6) -> dict[int, float]:
    """Per group id, 1 / (std + eps) of its rewards: the factor GRPO divides a group's reward differences
    by, so step-level value differences can be put on the same scale. A group whose std is 0 (or that has
    one member) gets 1. Each group's std is ``torch.std`` of its own rewards (unbiased), like
    ``grpo_advantages``' group std."""
    scales = {}
    for group in dict.fromkeys(group_B.tolist()):  # first-seen order
        values = rewards_B[group_B == group]
        std = values.std().item() if len(values) > 1 else 0.0
        scales[group] = 1.0 / (std + eps) if std > 0 else 1.0
    return scales


def unit_scales(rewards_B: torch.Tensor, group_B: torch.Tensor) -> dict[int, float]:
    """Per group id, 1: the estimators that do not divide by the group std (dr_grpo, rloo)."""
    return dict.fromkeys(group_B.tolist(), 1.0)


VALUE_SCALES: dict[str, Callable[[torch.Tensor, torch.Tensor], dict[int, float]]] = {
    "grpo": group_std_scales,
    "dr_grpo": unit_scales,
    "rloo": unit_scales,
}
"""For each advantage estimator, the per-group factor that puts value differences on its scale."""


def zero_std_fraction(rewards_B: torch.Tensor, group_B: torch.Tensor) -> float:
    """Share of groups whose rewards are all equal (they carry no outcome signal)."""
    if len(rewards_B) == 0:
        return 0.0
    _, _, std_B = _group_stats(rewards_B, group_B)
    n_groups = int(group_B.max()) + 1
    flat_G = torch.zeros(n_groups, dtype=torch.bool).index_fill_(0, group_B[std_B == 0], True)
    present_G = torch.zeros(n_groups, dtype=torch.bool).index_fill_(0, group_B, True)
    return float(flat_G.sum() / present_G.sum())


def outcome_advantages(rewards: list[float], groups: list[int], estimator: str) -> torch.Tensor:
    """``ADVANTAGES[estimator]`` of float32 rewards, groups of any int ids (renumbered in sorted order), ``[B]``."""
    if estimator not in ADVANTAGES:
        raise ValueError(f"unknown outcome estimator {estimator!r}; choose one of {', '.join(ADVANTAGES)}")
    order = {g: i for i, g in enumerate(sorted(set(groups)))}
    return ADVANTAGES[estimator](_float32(rewards), torch.tensor([order[g] for g in groups], dtype=torch.long))


def value_scales(rewards: list[float], groups: list[int], estimator: str) -> dict[int, float]:
    """Per group id, ``VALUE_SCALES[estimator]`` of float32 rewards: 1 / group std under grpo, 1 otherwise."""
    if estimator not in VALUE_SCALES:
        raise ValueError(f"unknown outcome estimator {estimator!r}; choose one of {', '.join(VALUE_SCALES)}")
    return VALUE_SCALES[estimator](_float32(rewards), torch.tensor(list(groups), dtype=torch.long))


def _float32(rewards: list[float]) -> torch.Tensor:
    return torch.tensor([float(r) for r in rewards], dtype=torch.float32)

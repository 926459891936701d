"""The update's RL math, as pure functions of tensors and scalars: PPO-clip, KL estimators, loss aggregation.

Nothing here knows about models, tasks, configs or trainers, so every formula can be read next to its
source and tested against numbers derived by hand. Shapes are in the names: ``_B`` one value per sequence,
``_BT`` per response token (``T`` the padded response length), ``_G`` per group.

Variants are small name -> function dicts (``LOSS_AGGREGATIONS``, ``KL_ESTIMATORS``; ``ADVANTAGES`` from
sirl.credit) so the training loop picks one by config name instead of branching.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

# The credit (group-relative outcome advantages, step and tree credit) is sirl.credit's: pure functions on
# token ids that sirl's methods and the TRL/verl adapters share. The outcome estimators are named here too,
# where the step metrics and older callers look for them.
from sirl.credit.outcome import (  # noqa: F401
    ADVANTAGES, VALUE_SCALES, dr_grpo_advantages, group_std_scales, grpo_advantages, rloo_advantages, unit_scales, zero_std_fraction,
)

MAX_LOG_RATIO = 20.0
"""Log importance ratios are clamped to +-20 before exp (e^20 ~ 5e8): finite even for a token the policy
has all but abandoned, and far outside any clip range, so the clipped objective is unchanged."""


# --- policy loss --------------------------------------------------------------------------------


def ppo_clip_loss(
    logp_BT: torch.Tensor,
    old_logp_BT: torch.Tensor,
    adv_BT: torch.Tensor,
    clip_low: float,
    clip_high: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token PPO-clip loss (Schulman et al. 2017, eq. 7) with separate ranges below and above 1
    ("clip-higher", Yu et al. 2025, DAPO sec. 3.1):

        ratio = exp(logp - old_logp),  loss = max(-A * ratio, -A * clip(ratio, 1 - clip_low, 1 + clip_high))

    Returns the loss and a 0/1 tensor marking tokens where the clipped branch was taken, both ``[B, T]``.
    """
    log_ratio_BT = (logp_BT - old_logp_BT).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)
    ratio_BT = log_ratio_BT.exp()
    unclipped_BT = -adv_BT * ratio_BT
    clipped_BT = -adv_BT * ratio_BT.clamp(1 - clip_low, 1 + clip_high)
    return torch.maximum(unclipped_BT, clipped_BT), (clipped_BT > unclipped_BT).float()


# --- KL to a reference policy -------------------------------------------------------------------


def kl_k1(logp_BT: torch.Tensor, ref_logp_BT: torch.Tensor) -> torch.Tensor:
    """k1 = log p - log p_ref: unbiased for KL(p || p_ref) under samples of p, high variance, can be < 0
    (Schulman 2020, "Approximating KL Divergence")."""
    return logp_BT - ref_logp_BT


def kl_k3(logp_BT: torch.Tensor, ref_logp_BT: torch.Tensor) -> torch.Tensor:
    """k3 = (r - 1) - log r with r = p_ref / p: unbiased, always >= 0, low variance (Schulman 2020);
    the estimator GRPO uses (Shao et al. 2024, eq. 4)."""
    log_r_BT = (ref_logp_BT - logp_BT).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)
    return log_r_BT.exp() - 1 - log_r_BT


KL_ESTIMATORS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {"k1": kl_k1, "k3": kl_k3}


# --- loss aggregation ---------------------------------------------------------------------------
# Each mode is written as per-token weights w, with the loss = sum(w * token_loss). Weights depend only on
# the masks and on one count (tokens, sequences or rows) that sets the denominator. Weights are computed
# once for a whole minibatch, so micro-batches (gradient accumulation) add up exactly to the minibatch's
# loss; under data parallelism ``count`` is the sum of every process's count (as verl's ``agg_loss`` uses
# global token counts), so the processes' losses add up to the loss of one process on the global batch.
#
# ``reference_B`` (default: every row) names the rows whose counts set the denominators. Extra samples
# (corrections, probes) outside it then *add* gradient at the scale of the original batch instead of
# diluting it ("additive" normalization); passing every row gives the diluting alternative.


def _reference(mask_BT: torch.Tensor, reference_B: torch.Tensor | None) -> torch.Tensor:
    return mask_BT if reference_B is None else mask_BT * reference_B[:, None]


def token_count(mask_BT: torch.Tensor, reference_B: torch.Tensor | None = None) -> torch.Tensor:
    """Response tokens of the reference rows: token_mean's denominator."""
    return _reference(mask_BT, reference_B).sum()


def sequence_count(mask_BT: torch.Tensor, reference_B: torch.Tensor | None = None) -> torch.Tensor:
    """Reference rows with at least one response token: seq_mean_token_mean's denominator."""
    return (_reference(mask_BT, reference_B).sum(-1) > 0).sum()


def row_count(mask_BT: torch.Tensor, reference_B: torch.Tensor | None = None) -> int:
    """Reference rows, with or without tokens: seq_mean_token_sum_norm's denominator (over norm_length)."""
    return mask_BT.shape[0] if reference_B is None else int(reference_B.sum())


def token_mean_weights(
    mask_BT: torch.Tensor, norm_length: int, reference_B: torch.Tensor | None = None, count: float | None = None
) -> torch.Tensor:
    """Mean over every response token of the batch (DAPO's token-level loss, Yu et al. 2025 sec. 3.3):
    w = mask / n_tokens."""
    n_tokens = token_count(mask_BT, reference_B) if count is None else torch.as_tensor(count, dtype=mask_BT.dtype)
    return mask_BT / n_tokens.clamp(min=1)


def seq_mean_token_mean_weights(
    mask_BT: torch.Tensor, norm_length: int, reference_B: torch.Tensor | None = None, count: float | None = None
) -> torch.Tensor:
    """Mean over sequences of each sequence's token mean (the original GRPO objective, Shao et al. 2024
    eq. 3): w = mask / (len_b * n_seqs). Long sequences weigh as much as short ones, so each of their
    tokens weighs less. Sequences without tokens are not counted."""
    lengths_B = mask_BT.sum(-1, keepdim=True)
    n_seqs = sequence_count(mask_BT, reference_B) if count is None else torch.as_tensor(count, dtype=mask_BT.dtype)
    return mask_BT / (lengths_B.clamp(min=1) * n_seqs.clamp(min=1))


def seq_mean_token_sum_norm_weights(
    mask_BT: torch.Tensor, norm_length: int, reference_B: torch.Tensor | None = None, count: float | None = None
) -> torch.Tensor:
    """Each sequence's token sum over a constant length, averaged over sequences (Dr. GRPO, Liu et al.
    2025 sec. 3.1): w = mask / (n_seqs * norm_length), no length bias. norm_length is usually
    max_new_tokens."""
    n_seqs = row_count(mask_BT, reference_B) if count is None else count
    return mask_BT / max(n_seqs * norm_length, 1)


LOSS_AGGREGATIONS: dict[str, Callable[..., torch.Tensor]] = {
    "token_mean": token_mean_weights,
    "seq_mean_token_mean": seq_mean_token_mean_weights,
    "seq_mean_token_sum_norm": seq_mean_token_sum_norm_weights,
}
LOSS_COUNTS: dict[str, Callable[..., torch.Tensor | int]] = {
    "token_mean": token_count,
    "seq_mean_token_mean": sequence_count,
    "seq_mean_token_sum_norm": row_count,
}
"""The count behind each aggregation's denominator, summed over processes under data parallelism."""


# --- metrics --------------------------------------------------------------------------------------


def entropy(log_probs_BTV: torch.Tensor) -> torch.Tensor:
    """Entropy of each next-token distribution, ``[B, T]``, from its log-probabilities ``[B, T, V]``.
    A metric only: it takes no part in the loss."""
    return -(log_probs_BTV.exp() * log_probs_BTV).sum(-1)

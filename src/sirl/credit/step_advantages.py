"""Step-level credit in two small composable pieces (the VinePPO formula, Kazemnejad et al. 2024, eq. 6,
without its sentinel values): advantages per step from measured prefix values, then a broadcast from steps
to tokens through each token's step index.

Steps are given by ``step_ends``: per row, the token offset where each step ends (non-decreasing, the last
one the response's length); step k is tokens ``[step_ends[k-1], step_ends[k])`` with ``step_ends[-1] := 0``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def step_starts(step_ends: Sequence[int]) -> list[int]:
    """The token offset where each step starts."""
    return [0, *step_ends[:-1]] if step_ends else []


def step_prefix_len(step_ends: Sequence[int], k: int) -> int:
    """Tokens in the prefix through the first ``k`` steps (k = 0: the empty prefix)."""
    return step_ends[k - 1] if k > 0 else 0


def step_index(step_ends: Sequence[int], n_tokens: int, prefix_len: int = 0) -> torch.Tensor:
    """The step of each response token (``[n_tokens]``, long); -1 on the first ``prefix_len`` tokens (given,
    not sampled: they are not trained) and on tokens past the last step end."""
    index = torch.full((n_tokens,), -1, dtype=torch.long)
    for step, (start, end) in enumerate(zip(step_starts(step_ends), step_ends)):
        index[start:end] = step
    index[:prefix_len] = -1
    return index


def value_difference_step_advantages(values_BK: torch.Tensor, known_BK: torch.Tensor) -> torch.Tensor:
    """A(step k) = V(k) - V(k-1) for k = 1..K-1, where both prefix values were measured; 0 elsewhere.

    ``values_BK[b, k]`` is the estimated value of the prefix through k steps (k = 0 is the prompt alone,
    the last column the whole response, i.e. its outcome); ``known_BK`` marks measured ones. Returns
    ``[B, K-1]``: column j is the advantage of step j (0-based), the step from prefix j to prefix j+1.
    """
    both_BK = known_BK[:, 1:] & known_BK[:, :-1]
    return torch.where(both_BK, values_BK[:, 1:] - values_BK[:, :-1], torch.zeros_like(values_BK[:, 1:]))


def localized_step_advantages(
    n_steps_B: torch.Tensor,
    error_step_B: torch.Tensor,
    value_before_B: torch.Tensor,
    value_after_B: torch.Tensor,
    after_error_B: torch.Tensor,
    width: int,
) -> torch.Tensor:
    """Step advantages of localized failures (docs/method.md, "Credit"), ``[B, width]``.

    Steps before the error step get 0 (the good prefix is not punished); the error step e gets
    -(V(e) - V(e+1)) in prefix-value terms, i.e. -(value_before - value_after), the value it destroyed;
    steps after it get ``after_error_B`` (0, or the trajectory's outcome advantage); columns past the
    trajectory's last step are 0. ``error_step_B`` is 0-based.
    """
    step_BS = torch.arange(width)[None, :].expand(len(n_steps_B), width)
    error_BS = error_step_B[:, None]
    advantages = torch.zeros(len(n_steps_B), width, dtype=value_before_B.dtype)
    advantages = torch.where(step_BS == error_BS, -(value_before_B - value_after_B)[:, None], advantages)
    advantages = torch.where(step_BS > error_BS, after_error_B[:, None].expand(-1, width), advantages)
    return torch.where(step_BS < n_steps_B[:, None], advantages, torch.zeros_like(advantages))


def broadcast_steps_to_tokens(step_adv_BS: torch.Tensor, step_index_BT: torch.Tensor) -> torch.Tensor:
    """Token advantages: each token takes its step's advantage; ``step_index_BT`` is -1 on tokens that
    belong to no step (prompt, given prefix, padding), which get 0. Naive equivalent: a loop that looks
    up ``step_adv_BS[b, step_index_BT[b, t]]`` token by token (tests hold them equal)."""
    gathered_BT = step_adv_BS.gather(1, step_index_BT.clamp(min=0))
    return torch.where(step_index_BT >= 0, gathered_BT, torch.zeros_like(gathered_BT))

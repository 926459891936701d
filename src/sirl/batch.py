"""Token batches: right-padded sequences with the next-token alignment, for RL rows and SFT rows alike.

A causal LM's output at position t scores token t+1, so every per-token tensor of a batch of ``[B, T]``
sequences is ``[B, T-1]``: column t belongs to token t+1. :func:`pack` is the one place that alignment is
written; RL rows (sirl.update) and supervised rows (sirl.sft, the self-verification loss) both use it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from sirl.types import Trajectory


@dataclass(frozen=True)
class TokenBatch:
    """Right-padded sequences and the positions that are trained on."""

    input_ids_BT: torch.Tensor  # [B, T] long: prompt + response, then padding
    attention_BT: torch.Tensor  # [B, T] long: 1 on real tokens
    target_mask_BT: torch.Tensor  # [B, T-1] float: 1 where the scored token (t+1) is trained on

    def __len__(self) -> int:
        return self.input_ids_BT.shape[0]


def pack(prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], trained_from: Sequence[int], pad_id: int) -> TokenBatch:
    """Right-pad ``prompts[i] + responses[i]``; the target mask covers response tokens from
    ``trained_from[i]`` on (a given prefix before it is context only)."""
    width = max((len(p) + len(r) for p, r in zip(prompts, responses)), default=1)
    B = len(prompts)
    input_ids = torch.full((B, width), pad_id, dtype=torch.long)
    attention = torch.zeros((B, width), dtype=torch.long)
    mask = torch.zeros((B, width - 1))
    for i, (prompt, response, start) in enumerate(zip(prompts, responses, trained_from, strict=True)):
        P, R = len(prompt), len(response)
        input_ids[i, : P + R] = torch.tensor([*prompt, *response])
        attention[i, : P + R] = 1
        mask[i, P - 1 + start : P + R - 1] = 1  # position P-1 scores the first response token
    return TokenBatch(input_ids, attention, mask)


def response_values(batch: TokenBatch, prompt_lengths: Sequence[int], values: Sequence[Sequence[float] | torch.Tensor]) -> torch.Tensor:
    """Per-response-token values (log-probs, advantages) placed at their scoring positions, ``[B, T-1]``,
    0 elsewhere."""
    out = torch.zeros(batch.target_mask_BT.shape)
    for i, (P, row) in enumerate(zip(prompt_lengths, values, strict=True)):
        row = torch.as_tensor(row, dtype=out.dtype)
        out[i, P - 1 : P - 1 + len(row)] = row
    return out


@dataclass(frozen=True)
class PolicyBatch:
    """Rollouts packed for the policy update (sirl.update): a :class:`TokenBatch` whose target mask marks
    sampled response tokens, with their sampling log-probs and advantages."""

    tokens: TokenBatch
    old_logp_BT: torch.Tensor  # [B, T-1] sampling log-probs (0 elsewhere)
    adv_BT: torch.Tensor  # [B, T-1] token advantages (0 elsewhere)
    reference_B: torch.Tensor  # [B] bool: rows of the original batch, which set the loss denominators

    def __len__(self) -> int:
        return len(self.tokens)

    def rows(self, index: torch.Tensor) -> PolicyBatch:
        t = self.tokens
        return PolicyBatch(
            TokenBatch(t.input_ids_BT[index], t.attention_BT[index], t.target_mask_BT[index]),
            self.old_logp_BT[index], self.adv_BT[index], self.reference_B[index],
        )


def collate_rollouts(
    trajectories: Sequence[Trajectory], token_advantages: Sequence[torch.Tensor], pad_id: int, reference: Sequence[bool] | None = None
) -> PolicyBatch:
    """Pack trajectories and their per-response-token advantages; tokens of a given prefix
    (``prefix_len``) are context only. ``reference`` marks the original batch's rows (all by default)."""
    prompts = [t.prompt_ids for t in trajectories]
    tokens = pack(prompts, [t.response_ids for t in trajectories], [t.prefix_len for t in trajectories], pad_id)
    lengths = [len(p) for p in prompts]
    old_logp = response_values(tokens, lengths, [t.logprobs for t in trajectories])
    adv = response_values(tokens, lengths, token_advantages)
    reference_B = torch.ones(len(trajectories), dtype=torch.bool) if reference is None else torch.tensor(list(reference), dtype=torch.bool)
    return PolicyBatch(tokens, old_logp, adv, reference_B)


def collate_supervised(examples: Sequence[tuple[Sequence[int], Sequence[int]]], pad_id: int) -> TokenBatch:
    """(prompt ids, target ids) pairs: every target token is trained on."""
    return pack([p for p, _ in examples], [r for _, r in examples], [0] * len(examples), pad_id)

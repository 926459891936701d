"""The policy update: PPO-clip epochs over one step's rows, an optional KL penalty, auxiliary losses, guards.

``algo.ppo_epochs`` passes over the batch, each split into ``algo.minibatches`` optimizer steps; a
minibatch's loss is sum(w * token_loss) with the weights of ``algo.loss_agg`` (sirl.algos), plus
``kl_coef`` times the KL estimate to the frozen starting policy, plus each auxiliary loss (a supervised
cross-entropy, e.g. self-verification) on its share of rows. Micro-batches only bound memory: their
gradients add up to the minibatch's. Under data parallelism every denominator is a count over all
processes and the gradients are summed, so two processes on two halves of a batch take exactly the step one
process takes on the whole batch (tests/test_update.py holds the weights equal).

Guards: a batch with no token to train on is a no-op. An optimizer step whose loss or gradient norm is
not finite is not taken: gradients are dropped, the optimizer state is untouched, and the rest of the
step's updates are abandoned, so with one epoch and one minibatch (the default) the weights are exactly
unchanged; earlier, finite updates of the same step stand. The stats then report the non-finite values
that were measured, never a calm 0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

import torch
from transformers import PreTrainedModel

from sirl import algos
from sirl.batch import PolicyBatch, TokenBatch
from sirl.config import AlgoConfig
from sirl.distributed import Distributed
from sirl.model import supervised_loss, token_logprobs
from sirl.types import AuxiliaryLoss


@dataclass(frozen=True)
class UpdateStats:
    """Means over the optimizer steps taken (or, for a skipped step, the values of the step that was not
    taken: at least one of them is not finite)."""

    policy_loss: float = 0.0
    kl: float = 0.0
    entropy: float = 0.0
    clip_frac: float = 0.0
    grad_norm: float = 0.0
    aux: Mapping[str, float] = field(default_factory=dict)
    """Auxiliary loss by name (its cross-entropy, before the coefficient)."""
    skipped: bool = False
    """An optimizer step was refused because its loss or gradient norm was not finite."""

    def __post_init__(self):
        object.__setattr__(self, "aux", MappingProxyType(dict(self.aux)))

    def to_metrics(self) -> dict[str, float]:
        return {
            "loss/policy": self.policy_loss, "loss/kl": self.kl, "entropy": self.entropy, "clip_frac": self.clip_frac,
            "grad_norm": self.grad_norm, **{f"loss/{name}": value for name, value in self.aux.items()},
        }


ACTIVATION_BUDGET_BYTES = 3 << 30
"""What the automatic micro-batch (:func:`auto_micro_batch_tokens`) lets activations take."""


def activation_bytes_per_token(config, gradient_checkpointing: bool = False) -> int:
    """An estimate of the float32 activations a decoder keeps per token for the backward pass: about
    16 hidden-size and 4 intermediate-size vectors per layer (norm inputs, q/k/v, attention output,
    residuals; gate, up, their product, the activation). With gradient checkpointing each layer keeps its
    input only, plus one layer's worth while it is recomputed. Measured on SmolLM2-135M (30 layers, 576/1536)
    the update's peak grew ~1.7 MB per micro-batch token without checkpointing, near this estimate (1.8 MB)."""
    layers = getattr(config, "num_hidden_layers", 1)
    hidden = getattr(config, "hidden_size", 1)
    intermediate = getattr(config, "intermediate_size", 4 * hidden)
    per_layer = 16 * hidden + 4 * intermediate
    return 4 * (2 * layers * hidden + per_layer if gradient_checkpointing else layers * per_layer)


def auto_micro_batch_tokens(model: PreTrainedModel, gradient_checkpointing: bool = False) -> int:
    """train.micro_batch_tokens=None: the tokens whose activations fit :data:`ACTIVATION_BUDGET_BYTES`.
    sirl's tiny policy gets ~78,000 (so micro_batch_size rows bind, as before), SmolLM2-135M ~1,700."""
    return max(1, ACTIVATION_BUDGET_BYTES // activation_bytes_per_token(model.config, gradient_checkpointing))


def micro_rows(micro_batch_size: int, micro_batch_tokens: int | None, width: int) -> int:
    """Rows per micro-batch of a batch padded to ``width`` tokens: at most micro_batch_size rows and
    micro_batch_tokens tokens, at least one row."""
    if micro_batch_tokens is None:
        return micro_batch_size
    return max(1, min(micro_batch_size, micro_batch_tokens // max(width, 1)))


def _reference_logprobs(ref_model: PreTrainedModel, batch: PolicyBatch, micro_batch_size: int, device: torch.device) -> torch.Tensor:
    tokens = batch.tokens
    with torch.no_grad():
        return torch.cat([
            token_logprobs(ref_model, tokens.input_ids_BT[i : i + micro_batch_size].to(device), tokens.attention_BT[i : i + micro_batch_size].to(device),
                           tokens.target_mask_BT[i : i + micro_batch_size].to(device))[0].cpu()
            for i in range(0, len(batch), micro_batch_size)
        ])


def _rows(batch: TokenBatch, index: torch.Tensor) -> TokenBatch:
    return TokenBatch(batch.input_ids_BT[index], batch.attention_BT[index], batch.target_mask_BT[index])


def policy_update(
    model: PreTrainedModel,
    optimizer: torch.optim.Optimizer,
    batch: PolicyBatch,
    algo: AlgoConfig,
    *,
    norm_length: int,
    micro_batch_size: int,
    micro_batch_tokens: int | None = None,
    grad_clip: float,
    generator: torch.Generator,
    dist: Distributed,
    ref_model: PreTrainedModel | None = None,
    aux_losses: Sequence[AuxiliaryLoss] = (),
) -> UpdateStats:
    """PPO-clip updates on one step's rows (see the module docstring); returns their :class:`UpdateStats`."""
    device = next(model.parameters()).device
    if len(batch) == 0 or not dist.sum([float(batch.tokens.target_mask_BT.sum())])[0]:
        return UpdateStats()
    # Rows per forward/backward pass: micro-batches bound memory only (their gradients add up).
    micro_batch_size = micro_rows(micro_batch_size, micro_batch_tokens, batch.tokens.input_ids_BT.shape[1])
    parameters = [p for p in model.parameters() if p.requires_grad]
    ref_logp = _reference_logprobs(ref_model, batch, micro_batch_size, device) if ref_model is not None else None
    # Each auxiliary loss is split across the minibatches of an epoch like the rollouts.
    aux_chunks = [(aux, torch.arange(len(aux.input_ids_BT)).chunk(algo.minibatches)) for aux in aux_losses if aux.coef > 0 and len(aux.input_ids_BT)]
    policy_keys = ("policy_loss", "kl", "entropy", "clip_frac")
    totals = dict.fromkeys((*policy_keys, "grad_norm"), 0.0)
    aux_totals = {aux.name: 0.0 for aux, _ in aux_chunks}
    n_updates = 0
    model.train()
    for _ in range(algo.ppo_epochs):
        order = torch.randperm(len(batch), generator=generator)
        for m, minibatch_rows in enumerate(order.chunk(algo.minibatches)):
            minibatch = batch.rows(minibatch_rows)
            mask_BT = minibatch.tokens.target_mask_BT
            # Denominators over the whole minibatch of every process (see sirl.algos, loss aggregation).
            count = dist.sum([float(algos.LOSS_COUNTS[algo.loss_agg](mask_BT, minibatch.reference_B))])[0] if dist.world_size > 1 else None
            weights_BT = algos.LOSS_AGGREGATIONS[algo.loss_agg](mask_BT, norm_length, minibatch.reference_B, count=count)
            token_share_BT = algos.token_mean_weights(mask_BT, norm_length)  # for metrics
            optimizer.zero_grad(set_to_none=True)
            stats = dict.fromkeys(policy_keys, 0.0)
            aux_stats: dict[str, float] = {}
            for start in range(0, len(minibatch), micro_batch_size):
                rows = slice(start, start + micro_batch_size)
                ids, attention = minibatch.tokens.input_ids_BT[rows].to(device), minibatch.tokens.attention_BT[rows].to(device)
                micro_mask_BT, weight_BT = mask_BT[rows].to(device), weights_BT[rows].to(device)
                logp_BT, entropy_BT = token_logprobs(model, ids, attention, micro_mask_BT)
                pg_BT, clipped_BT = algos.ppo_clip_loss(
                    logp_BT, minibatch.old_logp_BT[rows].to(device), minibatch.adv_BT[rows].to(device), algo.clip_low, algo.clip_high
                )
                loss = (pg_BT * weight_BT).sum()
                share_BT = token_share_BT[rows].to(device)
                if ref_logp is not None:
                    kl_BT = algos.KL_ESTIMATORS[algo.kl_estimator](logp_BT, ref_logp[minibatch_rows][rows].to(device))
                    kl = (kl_BT * weight_BT).sum()
                    loss = loss + algo.kl_coef * kl
                    stats["kl"] += (kl_BT.detach() * share_BT).sum().item()
                loss.backward()
                stats["policy_loss"] += (pg_BT.detach() * weight_BT).sum().item()
                stats["entropy"] += (entropy_BT.detach() * share_BT * micro_mask_BT).sum().item()
                stats["clip_frac"] += (clipped_BT * share_BT).sum().item()
            for aux, chunks in aux_chunks:
                if m < len(chunks):
                    part = _rows(TokenBatch(aux.input_ids_BT, aux.attention_BT, aux.target_mask_BT), chunks[m])
                    n_targets = dist.sum([float(part.target_mask_BT.sum())])[0] if dist.world_size > 1 else None
                    aux_loss = supervised_loss(model, part, n_targets=n_targets)
                    (aux.coef * aux_loss).backward()
                    aux_stats[aux.name] = aux_loss.item()
            dist.sum_gradients(model)
            grad_norm = torch.nn.utils.clip_grad_norm_(parameters, grad_clip).item()
            # A non-finite loss anywhere (summed over processes, so that all of them decide alike) or gradient.
            values = [*stats.values(), *aux_stats.values()]
            bad_loss = dist.sum([float(not all(math.isfinite(v) for v in values))])[0] > 0
            if bad_loss or not math.isfinite(grad_norm):
                optimizer.zero_grad(set_to_none=True)
                return UpdateStats(**stats, grad_norm=grad_norm, aux={**aux_totals, **aux_stats}, skipped=True)
            optimizer.step()
            for key, value in stats.items():
                totals[key] += value
            for key, value in aux_stats.items():
                aux_totals[key] += value
            totals["grad_norm"] += grad_norm
            n_updates += 1
    return UpdateStats(
        **{key: value / n_updates for key, value in totals.items()}, aux={key: value / n_updates for key, value in aux_totals.items()}
    )

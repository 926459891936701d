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
import torch.nn.functional as F
from transformers import PreTrainedModel

from sirl import algos
from sirl.batch import PolicyBatch, TokenBatch
from sirl.config import AlgoConfig
from sirl.distributed import Distributed
from sirl.model import base_causal_lm, compute_autocast, compute_dtype, count_parameters, is_large_model, supervised_loss, token_logprobs, trainable_parameters
from sirl.schema import CLIP_FRAC, ENTROPY, GRAD_NORM, LOSS_KL, LOSS_POLICY, aux_loss
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
            LOSS_POLICY: self.policy_loss, LOSS_KL: self.kl, ENTROPY: self.entropy, CLIP_FRAC: self.clip_frac,
            GRAD_NORM: self.grad_norm, **{aux_loss(name): value for name, value in self.aux.items()},
        }


ACTIVATION_BUDGET_BYTES = 3 << 30
"""What the automatic micro-batch (:func:`auto_micro_batch_tokens`) lets activations take, below
sirl.model.LARGE_MODEL_PARAMETERS; from there on :func:`activation_budget_bytes`."""

LARGE_MODEL_ACTIVATION_WEIGHTS = 2
"""A large model's activation budget in float32 copies of its weights (SmolLM2-135M: 1.08 GB). A step
then peaks near weights + gradients + optimizer state, what TRL's GRPOTrainer takes with gradient
checkpointing, without recomputing any forward pass; the micro-batches are still hundreds of tokens,
which keeps the matrix products efficient."""

BF16_ACTIVATION_SHARE = 0.6
"""Activations kept under bf16 autocast, as a share of float32's: on SmolLM2-135M the tensors saved for
the backward pass came to 1.34 MB per token in float32 and 0.81 MB under bf16 autocast (norm inputs, the
rotary embedding and the residual stream stay float32)."""


def activation_budget_bytes(model: PreTrainedModel) -> int:
    if not is_large_model(model):
        return ACTIVATION_BUDGET_BYTES
    return LARGE_MODEL_ACTIVATION_WEIGHTS * 4 * count_parameters(model)


def activation_bytes_per_token(config, gradient_checkpointing: bool = False, dtype: torch.dtype = torch.float32) -> int:
    """An estimate of the float32 activations a decoder keeps per token for the backward pass: about
    16 hidden-size and 4 intermediate-size vectors per layer (norm inputs, q/k/v, attention output,
    residuals; gate, up, their product, the activation). With gradient checkpointing each layer keeps its
    input only, plus one layer's worth while it is recomputed. Measured on SmolLM2-135M (30 layers, 576/1536)
    the update's peak grew ~1.7 MB per micro-batch token without checkpointing, near this estimate (1.8 MB)."""
    layers = getattr(config, "num_hidden_layers", 1)
    hidden = getattr(config, "hidden_size", 1)
    intermediate = getattr(config, "intermediate_size", 4 * hidden)
    per_layer = 16 * hidden + 4 * intermediate
    fp32 = 4 * (2 * layers * hidden + per_layer if gradient_checkpointing else layers * per_layer)
    return fp32 if dtype == torch.float32 else int(fp32 * BF16_ACTIVATION_SHARE)


def auto_micro_batch_tokens(model: PreTrainedModel, gradient_checkpointing: bool = False) -> int:
    """train.micro_batch_tokens=None: the tokens whose activations fit :func:`activation_budget_bytes`.
    sirl's tiny policy gets ~78,000 (so micro_batch_size rows bind, as before), SmolLM2-135M ~600 in float32
    and ~1,000 under bf16 autocast."""
    per_token = activation_bytes_per_token(model.config, gradient_checkpointing, compute_dtype(model))
    return max(1, activation_budget_bytes(model) // per_token)


def adamw(model: torch.nn.Module, *, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW (betas 0.9, 0.99) over the trainable parameters. A large model (sirl.model.is_large_model) gets
    torch's fused kernel, one pass over each tensor where the default takes about ten: on SmolLM2-135M's
    weights a step took 0.22 s on one CPU thread against 0.95 s. sirl's small policies keep the default
    implementation, whose rounding their recorded runs have."""
    fused = is_large_model(model) and next(model.parameters()).device.type in ("cpu", "cuda")
    return torch.optim.AdamW(trainable_parameters(model), lr=lr, weight_decay=weight_decay, betas=(0.9, 0.99), fused=fused or None)


HEAD_CHUNK = 256
"""Scored positions per chunk of :class:`_ScoredHead`: its float32 temporaries are [256, V] (50 MB at
V = 49,152)."""


class _ScoredHead(torch.autograd.Function):
    """``log p(target)`` and the entropy (no gradient) of each scored position from its final hidden state.

    Forward: per chunk of positions, the logits ``hidden @ weight.T`` in the compute dtype, then their
    log-softmax in float32. Only the chunk's logits are kept for the backward pass, in the compute dtype
    (bf16: 2 bytes per vocabulary entry, where autograd would keep float32 log-probabilities, and
    checkpointing would compute the product again). Backward: ``d log p_t / d logits = onehot_t - p``,
    then the two products. Naive twin: ``F.log_softmax(head(hidden).float()).gather(target)`` (what
    sirl.model.token_logprobs computes), held equal with its gradients in tests/test_update_speed_paths.py.
    """

    @staticmethod
    def forward(ctx, hidden_NH, weight_VH, targets_N, dtype, chunk):
        with torch.autocast(hidden_NH.device.type, enabled=False):
            w = weight_VH.detach().to(dtype)
            logits, logp, entropy, lse = [], [], [], []
            for start in range(0, len(targets_N), chunk):
                z_nV = F.linear(hidden_NH[start : start + chunk].detach().to(dtype), w)
                zf_nV = z_nV.float()
                lse_n = torch.logsumexp(zf_nV, dim=-1)
                logp.append(zf_nV.gather(-1, targets_N[start : start + chunk, None]).squeeze(-1) - lse_n)
                # H = lse - sum_v p_v z_v (the entropy of softmax(z)); sirl.algos.entropy on the log-probs.
                p_nV = (zf_nV - lse_n[:, None]).exp_()
                entropy.append(lse_n - (p_nV * zf_nV).sum(-1))
                logits.append(z_nV)
                lse.append(lse_n)
        ctx.save_for_backward(hidden_NH, weight_VH, targets_N, *lse, *logits)
        ctx.dtype, ctx.chunk, ctx.n_chunks = dtype, chunk, len(logits)
        entropy_N = torch.cat(entropy) if entropy else hidden_NH.new_zeros(0, dtype=torch.float32)
        ctx.mark_non_differentiable(entropy_N)
        return (torch.cat(logp) if logp else hidden_NH.new_zeros(0, dtype=torch.float32)), entropy_N

    @staticmethod
    def backward(ctx, grad_logp_N, _grad_entropy):
        hidden_NH, weight_VH, targets_N, *rest = ctx.saved_tensors
        lse, logits = rest[: ctx.n_chunks], rest[ctx.n_chunks :]
        dtype, chunk = ctx.dtype, ctx.chunk
        with torch.autocast(hidden_NH.device.type, enabled=False):
            w = weight_VH.detach().to(dtype)
            want_hidden, want_weight = ctx.needs_input_grad[:2]  # a frozen head (LoRA) needs no weight gradient
            grad_hidden = torch.empty_like(hidden_NH) if want_hidden else None
            grad_weight = torch.zeros_like(weight_VH) if want_weight else None
            for i, start in enumerate(range(0, len(targets_N), chunk)):
                g_n = grad_logp_N[start : start + chunk].float()
                # d logp / d z = onehot(target) - softmax(z), times the incoming gradient of each position.
                grad_z = (logits[i].float() - lse[i][:, None]).exp_().mul_(-g_n[:, None])
                grad_z.scatter_add_(-1, targets_N[start : start + chunk, None], g_n[:, None])
                grad_z = grad_z.to(dtype)
                if want_hidden:
                    grad_hidden[start : start + chunk] = (grad_z @ w).to(hidden_NH.dtype)
                if want_weight:
                    grad_weight += (grad_z.T @ hidden_NH[start : start + chunk].detach().to(dtype)).to(grad_weight.dtype)
        return grad_hidden, grad_weight, None, None, None


def response_logprobs(
    model: PreTrainedModel, input_ids_BT: torch.Tensor, attention_mask_BT: torch.Tensor, target_mask_BT: torch.Tensor, *, chunk: int = HEAD_CHUNK,
) -> tuple[torch.Tensor, torch.Tensor]:
    """sirl.model.token_logprobs on the scored positions of ``target_mask_BT`` ([B, T-1]; 0 elsewhere), for
    a large model: the same numbers in fewer operations.

    1. Rows whose context is the same (every token before their first scored position's: a group's
       samples of one prompt) share one forward pass over it, less its last token: its keys and values
       are computed once, copied to each row, and each row's rest runs on top of them (every row's
       gradient flows back into the shared pass). On a group of 8 samples of 128 tokens after a 140-token
       prompt this is 1,164 tokens through the decoder instead of 2,144. It needs every row to have such
       a context; otherwise the rows run whole, as in token_logprobs.
    2. The output projection runs on scored positions only, in :class:`_ScoredHead`.

    Naive twin: token_logprobs (tests/test_update_speed_paths.py holds values and gradients equal)."""
    B, T = input_ids_BT.shape
    base = base_causal_lm(model)
    decoder, head = base.get_decoder(), base.get_output_embeddings()
    target_BT = target_mask_BT.bool()
    position_BT = (attention_mask_BT.long().cumsum(-1) - 1).clamp(min=0)
    first_B = torch.where(target_BT.any(-1), target_BT.long().argmax(-1), torch.full((B,), T - 1, device=target_BT.device))  # first scored position
    start_B = attention_mask_BT.long().argmax(-1)  # first real token (left padding)
    rows_N, cols_N = target_BT.nonzero(as_tuple=True)
    with compute_autocast(model):
        if bool((first_B > start_B).all()):
            contexts = [tuple(input_ids_BT[b, int(start_B[b]) : int(first_B[b])].tolist()) for b in range(B)]
            unique = {context: u for u, context in enumerate(dict.fromkeys(contexts))}
            group_B = torch.tensor([unique[c] for c in contexts], device=input_ids_BT.device)
            prefix_ids, prefix_mask, prefix_pos = _left_aligned(
                [(input_ids_BT[b, s:f], attention_mask_BT[b, s:f], position_BT[b, s:f]) for b, s, f in _first_rows(group_B, start_B, first_B)]
            )
            cache = decoder(input_ids=prefix_ids, attention_mask=prefix_mask, position_ids=prefix_pos, use_cache=True).cache
            cache.batch_select_indices(group_B)  # each row's copy of its context's keys and values
            suffix_ids, suffix_mask, suffix_pos = _left_aligned(
                [(input_ids_BT[b, f:], attention_mask_BT[b, f:], position_BT[b, f:]) for b, f in enumerate(first_B.tolist())]
            )
            hidden_BSH = decoder(
                input_ids=suffix_ids, attention_mask=torch.cat([prefix_mask[group_B], suffix_mask], dim=1), position_ids=suffix_pos,
                cache=cache, use_cache=True,
            ).last_hidden_state
            # Position t of row b sits at t - first_b after the left padding of the suffix batch.
            hidden_NH = hidden_BSH[rows_N, cols_N - first_B[rows_N] + (suffix_ids.shape[1] - (T - first_B[rows_N]))]
        else:
            hidden_BTH = decoder(input_ids=input_ids_BT, attention_mask=attention_mask_BT, position_ids=position_BT, use_cache=False).last_hidden_state
            hidden_NH = hidden_BTH[rows_N, cols_N]
    logp_N, entropy_N = _ScoredHead.apply(hidden_NH, head.weight, input_ids_BT[rows_N, cols_N + 1], compute_dtype(model), chunk)
    logp_BT = logp_N.new_zeros(B, T - 1).index_put((rows_N, cols_N), logp_N)
    entropy_BT = entropy_N.new_zeros(B, T - 1).index_put((rows_N, cols_N), entropy_N)
    return logp_BT, entropy_BT


def _first_rows(group_B: torch.Tensor, start_B: torch.Tensor, first_B: torch.Tensor) -> list[tuple[int, int, int]]:
    """(row, context start, context end) of the first row of each group, in group order."""
    firsts: dict[int, int] = {}
    for b, g in enumerate(group_B.tolist()):
        firsts.setdefault(g, b)
    return [(b, int(start_B[b]), int(first_B[b])) for _, b in sorted(firsts.items())]


def _left_aligned(pieces: list[tuple[torch.Tensor, ...]]) -> tuple[torch.Tensor, ...]:
    """Rows of (ids, mask, positions) of different lengths, left-padded into [R, L] tensors (mask 0)."""
    width = max(len(p[0]) for p in pieces)
    out = [torch.zeros(len(pieces), width, dtype=t.dtype, device=t.device) for t in pieces[0]]
    for r, piece in enumerate(pieces):
        for tensor, part in zip(out, piece):
            tensor[r, width - len(part) :] = part
    return tuple(out)


def uses_response_logprobs(model: PreTrainedModel) -> bool:
    """The update scores with :func:`response_logprobs`: a large model with a decoder, a bias-free output
    projection and a key-value cache (not under gradient checkpointing, which turns the cache off)."""
    if not is_large_model(model):
        return False
    base = base_causal_lm(model)
    try:
        decoder, head = base.get_decoder(), base.get_output_embeddings()
    except (AttributeError, NotImplementedError):
        return False
    return (
        decoder is not None and isinstance(getattr(head, "weight", None), torch.Tensor) and getattr(head, "bias", None) is None
        and not _checkpointing(base)
    )


def _checkpointing(model: PreTrainedModel) -> bool:
    """Gradient checkpointing is on (transformers 5 renamed the property; either is read)."""
    for name in ("is_activation_checkpointing", "is_gradient_checkpointing"):
        if hasattr(type(model), name):
            return bool(getattr(model, name))
    return False


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


def _context_micro_batches(tokens: TokenBatch, micro_batch_size: int, micro_batch_tokens: int | None) -> list[torch.Tensor]:
    """Row indices of each micro-batch for :func:`response_logprobs`: rows ordered by context (a group's
    rows side by side), packed while the context tokens (once per context) plus the rest of each row's
    tokens fit ``micro_batch_tokens``, at most ``micro_batch_size`` rows, at least one row."""
    ids_BT, target_BT = tokens.input_ids_BT, tokens.target_mask_BT.bool()
    B, T = ids_BT.shape
    first_B = torch.where(target_BT.any(-1), target_BT.long().argmax(-1), torch.full((B,), T - 1)).tolist()
    start_B = tokens.attention_BT.long().argmax(-1).tolist()
    contexts = [tuple(ids_BT[b, start_B[b] : first_B[b]].tolist()) for b in range(B)]
    order = sorted(range(B), key=lambda b: (contexts[b], b))
    budget = micro_batch_tokens if micro_batch_tokens is not None else float("inf")
    batches, current, seen, used = [], [], set(), 0
    for b in order:
        cost = (T - first_B[b]) + (0 if contexts[b] in seen else first_B[b] - start_B[b])
        if current and (len(current) >= micro_batch_size or used + cost > budget):
            batches.append(torch.tensor(current))
            current, seen, used = [], set(), 0
            cost = (T - first_B[b]) + first_B[b] - start_B[b]
        current.append(b)
        seen.add(contexts[b])
        used += cost
    batches.append(torch.tensor(current))
    return batches


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
    shared = uses_response_logprobs(model)
    score = response_logprobs if shared else token_logprobs
    width = batch.tokens.input_ids_BT.shape[1]
    max_rows = micro_batch_size  # the shared path packs by tokens itself (_context_micro_batches)
    micro_batch_size = micro_rows(micro_batch_size, micro_batch_tokens, width)
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
            if shared:  # a group's rows together, so that its prompt is computed once (response_logprobs)
                micro_batches = _context_micro_batches(minibatch.tokens, max_rows, micro_batch_tokens)
            else:
                micro_batches = [slice(start, start + micro_batch_size) for start in range(0, len(minibatch), micro_batch_size)]
            for rows in micro_batches:
                ids, attention = minibatch.tokens.input_ids_BT[rows].to(device), minibatch.tokens.attention_BT[rows].to(device)
                micro_mask_BT, weight_BT = mask_BT[rows].to(device), weights_BT[rows].to(device)
                logp_BT, entropy_BT = score(model, ids, attention, micro_mask_BT)
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

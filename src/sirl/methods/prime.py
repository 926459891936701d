"""prime: PRIME (Cui et al. 2025, "Process Reinforcement through Implicit Rewards", arXiv 2502.01456), the
published method that turns outcome labels into dense credit, in sirl's harness as a baseline for si.

An implicit process reward model (PRM) pi_phi starts as a copy of the starting policy and is trained online
on the policy's own rollouts from their outcome labels; the frozen starting policy is the reference
pi_ref. Each step, on the verified rollouts (the paper's Algorithm 1, in the order of the authors' run
script, ``prime_model.update=after``):

1. Accuracy filter: only the prompts whose group's mean reward lies in [method.prime.accuracy_low,
   method.prime.accuracy_high] are trained on, by the PRM and by the policy (the paper's 0.2 and 0.8; it
   oversamples prompts to refill the batch, sirl does not, so the tokens of the dropped groups are spent).
2. Implicit process rewards, one per response token (the paper's implicit PRM reward, after Yuan et al.
   2024, "Free Process Rewards without Process Labels")::

       r_phi(y_t) = beta * log( pi_phi(y_t | y_<t) / pi_ref(y_t | y_<t) )

3. PRM update: one AdamW step on the paper's cross-entropy on the outcome label r_o in [0, 1], with the
   sequence's implicit reward r_phi(y) = sum_t r_phi(y_t) = beta * log( pi_phi(y) / pi_ref(y) ) as the logit::

       L_CE(phi) = -E[ r_o * log sigmoid(r_phi(y)) + (1 - r_o) * log(1 - sigmoid(r_phi(y))) ]

   The rewards of 2 come from the same forward pass, before this step ("single forward").
4. Advantages: the paper's estimate, the return of the process rewards with a leave-one-out baseline (the
   mean of the other K - 1 responses' averaged process rewards) plus RLOO on the outcome rewards::

       A_t^i = sum_{s>=t} gamma^(s-t) [ r_phi(y_s^i) - 1/(K-1) sum_{j!=i} mean_u r_phi(y_u^j) ]   (RLOO with implicit process rewards)
             + r_o(y^i) - 1/(K-1) sum_{j!=i} r_o(y^j)                                          (RLOO with outcome rewards)

   then (method.prime.whiten) whitened over the step's trained tokens, as the authors' released code does.
5. The loop's PPO-clip update of the policy on the kept rows (the paper's policy loss).

Cost, all counted: the PRM's forward and backward pass over every kept row is added to the trained tokens
(``Credit.trained_tokens``); the reference's forward pass, like the KL reference's, is not (it has no
backward pass). The PRM, its gradients and AdamW moments, and the reference are logged as
``memory/method_state_mb``, and are checkpointed with the run (:class:`PrimeState`).

The tensor math (:func:`implicit_process_rewards`, :func:`prm_cross_entropy`, :func:`prime_advantages`,
:func:`whiten`, :func:`accuracy_filter`) is pure; tests/test_prime.py holds it to hand-derived numbers and
:func:`prime_advantages` to its loop twin :func:`prime_advantages_naive`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

from sirl import algos
from sirl.batch import pack
from sirl.checkpoint import optimizer_from_tensors, optimizer_to_tensors
from sirl.config import ConfigError, ExperimentConfig, TrainConfig
from sirl.distributed import Distributed
from sirl.methods.base import Method, MethodContext, refuse_ground_truth, register
from sirl.methods.settings import PrimeSettings
from sirl.model import base_causal_lm, token_logprobs, trainable_parameters
from sirl.schema import (
    METHOD_STATE_MB, PRIME_KEPT_FRAC, PRIME_OUTCOME_ADV_ABS, PRIME_PRM_ACCURACY, PRIME_PRM_GRAD_NORM, PRIME_PRM_LOSS,
    PRIME_PRM_SKIPPED, PRIME_PROCESS_ADV_ABS,
)
from sirl.tasks.base import Task
from sirl.types import Credit, Trajectory
from sirl.update import auto_micro_batch_tokens, micro_rows

WHITEN_EPS = 1e-8
"""Added to the variance before the square root in :func:`whiten` (the authors' code uses the same)."""


# --- the math, pure ---------------------------------------------------------------------------------


def accuracy_filter(rewards_B: torch.Tensor, group_B: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """[B] bool: the rows whose group's mean reward lies in [low, high] (the paper's accuracy filter). A
    group whose mean is not finite (a broken verifier) is kept, so that the NaN reaches the loss guards
    instead of silently emptying the batch."""
    n_groups = int(group_B.max()) + 1 if len(group_B) else 0
    size_G = torch.zeros(n_groups, dtype=torch.float64).index_add_(0, group_B, torch.ones(len(group_B), dtype=torch.float64))
    mean_G = torch.zeros(n_groups, dtype=torch.float64).index_add_(0, group_B, rewards_B.double()) / size_G.clamp(min=1)
    mean_B = mean_G[group_B]
    outside_B = (mean_B < low - 1e-9) | (mean_B > high + 1e-9)  # False for NaN
    return ~outside_B


def implicit_process_rewards(prm_logp_BT: torch.Tensor, ref_logp_BT: torch.Tensor, mask_BT: torch.Tensor, beta: float) -> torch.Tensor:
    """r_phi(y_t) = beta * log(pi_phi(y_t|y_<t) / pi_ref(y_t|y_<t)) on the trained tokens (``mask_BT``), 0
    elsewhere; [B, T] like its inputs."""
    return beta * (prm_logp_BT - ref_logp_BT) * mask_BT


def prm_cross_entropy(log_ratio_sum_B: torch.Tensor, outcome_B: torch.Tensor, beta: float) -> torch.Tensor:
    """The PRM's loss per sequence, [B]: the paper's cross-entropy on the outcome label r_o with the logit
    r_phi(y) = beta * sum_t log(pi_phi(y_t|y_<t) / pi_ref(y_t|y_<t)) (``log_ratio_sum_B`` is the sum):
    -(r_o log sigmoid(r_phi) + (1 - r_o) log(1 - sigmoid(r_phi))), computed from the logit for stability."""
    return F.binary_cross_entropy_with_logits(beta * log_ratio_sum_B, outcome_B.to(log_ratio_sum_B.dtype), reduction="none")


def prime_advantages(
    process_BL: torch.Tensor, mask_BL: torch.Tensor, outcome_B: torch.Tensor, group_B: torch.Tensor, gamma: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The paper's advantage estimate before whitening, [B, L] over response tokens (``mask_BL`` marks the
    trained ones; a given prefix is context and gets 0). Returns (the process part, the whole advantage):

        process_t^i = sum_{s>=t, s trained} gamma^(s-t) [ r_phi(y_s^i) - b^i ],
        b^i = 1/(K-1) sum_{j != i in i's group} mean_{u trained} r_phi(y_u^j)   (leave-one-out baseline)
        A_t^i = process_t^i + r_o(y^i) - 1/(K-1) sum_{j != i} r_o(y^j)            (RLOO on the outcome)

    A group of one has no other member: its baseline and outcome advantage are 0. The loop twin is
    :func:`prime_advantages_naive`."""
    mask_BL = mask_BL.to(process_BL.dtype)
    n_groups = int(group_B.max()) + 1 if len(group_B) else 0
    count_B = mask_BL.sum(1)
    mean_B = (process_BL * mask_BL).sum(1) / count_B.clamp(min=1)
    size_G = torch.zeros(n_groups, dtype=process_BL.dtype).index_add_(0, group_B, torch.ones_like(mean_B))
    sum_G = torch.zeros(n_groups, dtype=process_BL.dtype).index_add_(0, group_B, mean_B)
    baseline_B = (sum_G[group_B] - mean_B) / (size_G[group_B] - 1).clamp(min=1)
    centered_BL = (process_BL - baseline_B[:, None]) * mask_BL
    returns_BL = torch.zeros_like(centered_BL)
    running_B = torch.zeros_like(mean_B)
    for t in reversed(range(centered_BL.shape[1])):  # the discounted return, from the last token back
        running_B = centered_BL[:, t] + gamma * running_B
        returns_BL[:, t] = running_B
    returns_BL = returns_BL * mask_BL
    outcome_adv_B = algos.rloo_advantages(outcome_B.to(process_BL.dtype), group_B)
    return returns_BL, returns_BL + outcome_adv_B[:, None] * mask_BL


def prime_advantages_naive(
    process: list[list[float]], trained_from: list[int], outcome: list[float], group: list[int], gamma: float
) -> list[list[float]]:
    """:func:`prime_advantages` (the whole advantage) written as the paper writes it, one row and one token
    at a time; ``process[i]`` holds row i's per-token process rewards, trained from ``trained_from[i]``."""
    def mean_reward(j: int) -> float:
        trained = process[j][trained_from[j]:]
        return sum(trained) / len(trained) if trained else 0.0

    out = []
    for i, row in enumerate(process):
        others = [j for j in range(len(process)) if group[j] == group[i] and j != i]
        baseline = sum(mean_reward(j) for j in others) / len(others) if others else 0.0
        outcome_adv = outcome[i] - sum(outcome[j] for j in others) / len(others) if others else 0.0
        advantages = []
        for t in range(len(row)):
            if t < trained_from[i]:
                advantages.append(0.0)
                continue
            ret = sum(gamma ** (s - t) * (row[s] - baseline) for s in range(t, len(row)))
            advantages.append(ret + outcome_adv)
        out.append(advantages)
    return out


def whiten(values_BL: torch.Tensor, mask_BL: torch.Tensor, total: Callable[[list[float]], list[float]] = lambda v: v) -> torch.Tensor:
    """(x - mean) / sqrt(var + 1e-8) over the masked entries, with the unbiased variance (the authors'
    code whitens the advantages so); 0 off the mask. ``total`` sums a list of numbers over the processes
    of a data-parallel run (Distributed.sum), so every process whitens with the global batch's moments.
    With fewer than two entries the result is x - mean."""
    mask_BL = mask_BL.to(values_BL.dtype)
    count, total_sum = total([float(mask_BL.sum()), float((values_BL * mask_BL).sum())])
    mean = total_sum / max(count, 1.0)
    (squares,) = total([float((((values_BL - mean) * mask_BL) ** 2).sum())])
    scale = 1.0 / math.sqrt(squares / (count - 1) + WHITEN_EPS) if count > 1 else 1.0
    return (values_BL - mean) * scale * mask_BL


# --- the reward model and its reference: the method's state ----------------------------------------


@dataclass
class PrimeState:
    """The implicit PRM (trained), its AdamW optimizer and the frozen reference (the starting policy); the
    loop checkpoints it (sirl.methods.MethodState)."""

    prm: PreTrainedModel
    reference: PreTrainedModel
    optimizer: torch.optim.Optimizer
    dist: Distributed
    micro_batch_tokens: int
    micro_batch_size: int
    """train.micro_batch_size: most rows per forward and backward pass of the PRM, as of the policy."""

    def tensors(self) -> dict[str, torch.Tensor]:
        optimizer_tensors, _ = optimizer_to_tensors(self.optimizer)
        weights = {f"prm/{name}": p.detach() for name, p in self.prm.named_parameters() if p.requires_grad}
        return {**weights, **optimizer_tensors}

    def to_json(self) -> dict:
        return {"optimizer": optimizer_to_tensors(self.optimizer)[1]}

    def load(self, tensors: dict[str, torch.Tensor], data: dict) -> None:
        trained = {name: p for name, p in self.prm.named_parameters() if p.requires_grad}
        saved = {key.removeprefix("prm/") for key in tensors if key.startswith("prm/")}
        if saved != set(trained):
            raise ValueError(f"the checkpoint's reward model does not fit this one (missing {sorted(set(trained) - saved)[:3]}, "
                             f"unexpected {sorted(saved - set(trained))[:3]})")
        with torch.no_grad():
            for name, parameter in trained.items():
                parameter.copy_(tensors[f"prm/{name}"])
        optimizer_from_tensors(self.optimizer, tensors, data["optimizer"])

    def state_bytes(self) -> int:
        """What the method holds besides the policy: the PRM's weights, its gradients and AdamW moments
        (as large as its trained weights), and the reference's weights."""
        def size(tensors) -> int:
            return sum(t.numel() * t.element_size() for t in tensors)

        moments = [v for entry in self.optimizer.state.values() for v in entry.values() if torch.is_tensor(v)]
        return size(self.prm.parameters()) + size(trainable_parameters(self.prm)) + size(moments) + size(self.reference.parameters())


def make_prime_state(settings: PrimeSettings, train: TrainConfig, model: PreTrainedModel, dist: Distributed) -> PrimeState:
    """The PRM and the reference, both copies of the starting policy (the paper initializes both from it);
    the PRM's optimizer and micro-batches as the policy's (``train``), but its own learning rate if set."""
    prm = copy.deepcopy(model)
    reference = copy.deepcopy(model).eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(trainable_parameters(prm), lr=settings.lr or train.lr, weight_decay=train.weight_decay, betas=(0.9, 0.99))
    tokens = train.micro_batch_tokens or auto_micro_batch_tokens(base_causal_lm(prm), train.gradient_checkpointing)
    return PrimeState(prm, reference, optimizer, dist, tokens, train.micro_batch_size)


# --- the credit function ----------------------------------------------------------------------------


def _response_values(values_BT: torch.Tensor, rows: Sequence[Trajectory], width: int) -> torch.Tensor:
    """Per-response-token values [B, width] from a packed batch's [B, T-1] (position P-1+k scores response
    token k)."""
    out = torch.zeros(len(rows), width, dtype=values_BT.dtype)
    for i, t in enumerate(rows):
        P, R = len(t.prompt_ids), len(t.response_ids)
        out[i, :R] = values_BT[i, P - 1 : P - 1 + R]
    return out


def prime_credit(rollouts: Sequence[Trajectory], context: MethodContext) -> Credit:
    settings: PrimeSettings = context.settings
    state = context.state
    if not isinstance(state, PrimeState):
        raise RuntimeError("prime needs its reward model: the training loop builds it with Method.make_state")
    rewards_B = torch.tensor([t.reward for t in rollouts], dtype=torch.float64)
    finite = rewards_B[torch.isfinite(rewards_B)]
    if len(finite) and (finite.min() < 0 or finite.max() > 1):
        raise ValueError(f"prime trains its reward model on outcome labels in [0, 1] (a cross-entropy); task "
                         f"{context.task.name!r} gave rewards from {float(finite.min()):g} to {float(finite.max()):g}")
    group_B = torch.tensor([t.group for t in rollouts], dtype=torch.long)

    # 1. The accuracy filter.
    kept_B = accuracy_filter(rewards_B, torch.unique(group_B, return_inverse=True)[1], settings.accuracy_low, settings.accuracy_high)
    rows = [t for t, keep in zip(rollouts, kept_B.tolist()) if keep]
    metrics: dict[str, float] = {PRIME_KEPT_FRAC: len(rows) / max(len(rollouts), 1)}
    if not rows:
        metrics[METHOD_STATE_MB] = state.state_bytes() / 2**20
        return Credit(rows=(), token_advantages=(), reference=(), metrics=metrics)
    outcome_B = rewards_B[kept_B]
    group_B = torch.unique(group_B[kept_B], return_inverse=True)[1]

    # 2-3. Process rewards from the PRM's forward pass, then its update on the same pass.
    prm, optimizer, dist = state.prm, state.optimizer, state.dist
    device = next(prm.parameters()).device
    batch = pack([t.prompt_ids for t in rows], [t.response_ids for t in rows], [t.prefix_len for t in rows], context.sampler.tokenizer.pad_token_id)
    n_rows = dist.sum([float(len(rows))])[0]  # the loss is a mean over every process's rows
    step = micro_rows(state.micro_batch_size, state.micro_batch_tokens, batch.input_ids_BT.shape[1])
    prm.train()
    optimizer.zero_grad(set_to_none=True)
    process, log_ratio_sums, losses = [], [], []
    for start in range(0, len(rows), step):
        part = slice(start, start + step)
        ids, attention, mask = (x[part].to(device) for x in (batch.input_ids_BT, batch.attention_BT, batch.target_mask_BT))
        prm_logp_BT, _ = token_logprobs(prm, ids, attention, mask)
        with torch.no_grad():
            ref_logp_BT, _ = token_logprobs(state.reference, ids, attention, mask)
        log_ratio_BT = (prm_logp_BT - ref_logp_BT) * mask
        loss_B = prm_cross_entropy(log_ratio_BT.sum(1), outcome_B[part].to(device), settings.beta)
        (loss_B.sum() / n_rows).backward()
        losses.append(loss_B.detach().cpu())
        log_ratio_sums.append(log_ratio_BT.sum(1).detach().cpu())
        process.append(implicit_process_rewards(prm_logp_BT.detach(), ref_logp_BT, mask, settings.beta).cpu())
    dist.sum_gradients(prm)
    grad_norm = torch.nn.utils.clip_grad_norm_(trainable_parameters(prm), settings.grad_clip).item()
    loss_B, log_ratio_sum_B = torch.cat(losses), torch.cat(log_ratio_sums)
    bad = dist.sum([float(not (torch.isfinite(loss_B).all() and math.isfinite(grad_norm)))])[0] > 0
    if not bad:  # a non-finite loss or gradient leaves the PRM as it was (the policy update's guards decide the rest)
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)

    # 4. The paper's advantages from the rewards before the update, whitened over the trained tokens.
    width = max(len(t.response_ids) for t in rows)
    process_BL = _response_values(torch.cat(process).double(), rows, width)
    mask_BL = _response_values(batch.target_mask_BT.double(), rows, width)
    process_part_BL, adv_BL = prime_advantages(process_BL, mask_BL, outcome_B, group_B, settings.gamma)
    outcome_part_BL = adv_BL - process_part_BL
    if settings.whiten:
        adv_BL = whiten(adv_BL, mask_BL, dist.sum)
    trained = mask_BL.sum().clamp(min=1)
    # The PRM's verdict, the sign of r_phi(y), agrees with the label (before its step; a zero reward, as at the
    # start, where the PRM is the reference, agrees with nothing).
    correct_B = ((log_ratio_sum_B > 0) & (outcome_B > 0.5)) | ((log_ratio_sum_B < 0) & (outcome_B <= 0.5))
    metrics.update({
        PRIME_PRM_LOSS: float(loss_B.mean()),
        PRIME_PRM_GRAD_NORM: grad_norm,
        PRIME_PRM_SKIPPED: float(bad),
        PRIME_PRM_ACCURACY: float(correct_B.double().mean()),
        # the two parts' sizes before whitening, per trained token: how much of the credit is the PRM's
        PRIME_PROCESS_ADV_ABS: float((process_part_BL.abs() * mask_BL).sum() / trained),
        PRIME_OUTCOME_ADV_ABS: float(((outcome_part_BL).abs() * mask_BL).sum() / trained),
        METHOD_STATE_MB: state.state_bytes() / 2**20,
    })
    return Credit(
        rows=tuple(rows),
        token_advantages=tuple(adv_BL[i, : len(t.response_ids)].float() for i, t in enumerate(rows)),
        reference=(True,) * len(rows),
        metrics=metrics,
        trained_tokens=sum(len(t.prompt_ids) + len(t.response_ids) for t in rows),
    )


def check_prime(config: ExperimentConfig, task: Task) -> None:
    refuse_ground_truth(config, task)
    if config.rollout.group_size < 2:
        raise ConfigError(f"prime's leave-one-out baselines need rollout.group_size >= 2 (got {config.rollout.group_size})")
    config.method.prime.check("method.prime")  # its bounds, as loading a config checks them


register(Method(
    "prime", "PRIME: implicit PRM trained online from outcomes, process + outcome RLOO advantages (baseline)",
    prime_credit, check=check_prime, make_state=make_prime_state,
))

"""sirl's step credit as a verl advantage estimator (verl 0.9.1).

    from sirl.integrations import verl as sirl_verl
    sirl_verl.register(tokenizer, credit="divergence", step_splitter="lines")  # algorithm.adv_estimator=sirl_divergence
    sirl_verl.route_compute_advantage()  # verl's compute_advantage then gives sirl's estimators the response ids

verl calls a registered estimator (``core_algos.register_adv_est``) with the token-level rewards
``[B, R]``, the response mask ``[B, R]``, the group index (``uid``, one per row) and the algorithm config;
a prefix-based credit also needs the response token ids, which verl 0.9.1 passes only to its GDPO
estimator, as ``batch``, in ``ray_trainer.compute_advantage``. Two ways to give them to sirl's:

- :func:`route_compute_advantage` (no edit of verl): rebinds the name ``compute_advantage`` in
  ``verl.trainer.ppo.ray_trainer`` (the legacy trainer's ``fit``) and ``verl.trainer.ppo.v1.utils`` to
  :func:`compute_advantage`, which gives sirl's estimators the batch as verl gives GDPO's and hands every
  other estimator to verl's own function unchanged. Call it in the process that runs the trainer
  (verl's ``TaskRunner.run``, a Ray actor), with :func:`register`.
- or edit verl's ``ray_trainer.compute_advantage``: add the estimator's name to the GDPO condition,
  ``if adv_estimator in (AdvantageEstimator.GDPO, "gdpo", "sirl_divergence"):``.

The v1 trainer (``trainer.use_v1=True``) fetches only the fields its ``_compute_advantage`` lists
(``uid``, ``response_mask``, ``rm_scores``, ...): ``responses`` must be added to that list as well.

What the estimator computes (docs/integrations.md): a row's reward is its token-level rewards summed (as
verl's GRPO reads them), its response the tokens up to its last unmasked one, its group its ``uid``; steps
come from decoding the response with ``tokenizer`` and splitting the text (``sirl.credit.steps``); the
credit is ``sirl.credit``'s on the outcome scale verl's GRPO uses: ``estimator="grpo"`` (divided by the
group std + 1e-6, verl's epsilon) when ``algorithm.norm_adv_by_std_in_grpo`` is true (verl's default),
``"dr_grpo"`` otherwise. One difference from verl's GRPO: a group of one row gets 0 (sirl's rule), where
verl gives it its raw score. verl's estimator interface returns tensors only, so the credit's metrics
(share of failures localized, ...) are not logged; TRL's adapter logs them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from enum import Enum

import torch

try:
    from verl.trainer.ppo import core_algos
except ImportError as error:  # an optional extra
    raise ImportError(f"sirl.integrations.verl needs verl ({error}); install it with pip install -e '.[verl]'") from error

import sirl.credit as credit_core
from sirl.credit.steps import Splitter, resolve_splitter
from sirl.integrations.tokens import completion_step_ends

CREDITS = ("divergence", "tree", "outcome")
REGISTERED: dict[str, Callable] = {}
"""sirl's estimators registered in this process, by name (:func:`compute_advantage` routes these)."""


def _name(adv_estimator) -> str:
    return adv_estimator.value if isinstance(adv_estimator, Enum) else str(adv_estimator)


def response_rows(responses_BR: torch.Tensor, response_mask_BR: torch.Tensor) -> list[list[int]]:
    """Each row's response token ids up to its last unmasked token (a masked token inside, a tool's output
    in a multi-turn response, stays: it is part of the prefix the policy continued)."""
    mask = response_mask_BR.bool()
    positions = torch.arange(mask.size(1), device=mask.device).expand_as(mask)
    lengths = torch.where(mask, positions + 1, torch.zeros_like(positions)).amax(dim=1)
    return [row[:n].tolist() for row, n in zip(responses_BR.cpu(), lengths.cpu().tolist())]


def group_ids(index: Sequence) -> list[int]:
    """verl's per-row ``uid`` (any hashable) as group numbers in order of first appearance."""
    numbers: dict = {}
    return [numbers.setdefault(uid, len(numbers)) for uid in index]


def make_estimator(
    tokenizer=None, *, credit: str = "divergence", step_splitter: Splitter = "lines", success_threshold: float = 1.0,
    credit_options: dict | None = None,
) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    """An advantage estimator with verl's signature (the module docstring says what it computes);
    ``tokenizer`` decodes responses for the step splitter (needed by ``credit="divergence"``)."""
    if credit not in CREDITS:
        raise ValueError(f"credit={credit!r}; choose one of {CREDITS}")
    if credit == "divergence" and tokenizer is None:
        raise ValueError("credit='divergence' needs the tokenizer: the steps come from the decoded responses")
    resolve_splitter(step_splitter)
    options = dict(credit_options or {})

    def estimator(
        token_level_rewards: torch.Tensor, response_mask: torch.Tensor, index: Sequence | None = None, config=None,
        batch=None, responses: torch.Tensor | None = None, **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if responses is None and batch is not None and "responses" in batch.keys():
            responses = batch["responses"]
        if responses is None:
            raise ValueError(
                "sirl's estimator needs the response token ids, which verl's compute_advantage passes only to GDPO: call "
                "sirl.integrations.verl.route_compute_advantage() in the trainer's process, and under trainer.use_v1 add "
                "'responses' to the fields its _compute_advantage fetches (docs/integrations.md)"
            )
        if index is None:
            raise ValueError("sirl's estimator needs the group index (data.non_tensor_batch['uid'])")
        norm = True if config is None else bool(config.get("norm_adv_by_std_in_grpo", True))
        rows = response_rows(responses, response_mask)
        rewards = token_level_rewards.sum(dim=-1).tolist()  # verl's GRPO: scores = token_level_rewards.sum(-1)
        groups = group_ids(index)
        estimator_name = "grpo" if norm else "dr_grpo"
        if credit == "divergence":
            step_ends = [completion_step_ends(tokenizer, ids, step_splitter) for ids in rows]
            result = credit_core.divergence_credit(rows, rewards, groups, step_ends, success_threshold=success_threshold,
                                                   estimator=estimator_name, **options)
        elif credit == "tree":
            result = credit_core.tree_credit(rows, rewards, groups, estimator=estimator_name, **options)
        else:
            result = credit_core.outcome_credit(rows, rewards, groups, estimator=estimator_name)
        advantages_BR = torch.zeros_like(token_level_rewards, dtype=torch.float32)
        for i, adv in enumerate(result.token_advantages):
            advantages_BR[i, :len(adv)] = adv.to(advantages_BR.device)
        advantages_BR = advantages_BR * response_mask
        return advantages_BR, advantages_BR  # (advantages, returns), as verl's outcome estimators return them

    return estimator


def register(
    tokenizer=None, *, credit: str = "divergence", name: str | None = None, step_splitter: Splitter = "lines",
    success_threshold: float = 1.0, credit_options: dict | None = None,
) -> str:
    """Register sirl's ``credit`` with verl (``core_algos.register_adv_est``) under ``name`` (default
    ``sirl_<credit>``) and return the name, the value of ``algorithm.adv_estimator``. verl refuses a
    second, different estimator under a name already taken."""
    name = name or f"sirl_{credit}"
    estimator = make_estimator(tokenizer, credit=credit, step_splitter=step_splitter, success_threshold=success_threshold,
                               credit_options=credit_options)
    core_algos.register_adv_est(name)(estimator)
    REGISTERED[name] = estimator
    return name


def compute_advantage(data, adv_estimator, gamma: float = 1.0, lam: float = 1.0, num_repeat: int = 1,
                      norm_adv_by_std_in_grpo: bool = True, config=None):
    """``verl.trainer.ppo.ray_trainer.compute_advantage`` with one change: sirl's estimators (registered with
    :func:`register`) also get ``batch=data.batch``, which holds ``responses``, as verl's GDPO estimator
    does. Every other estimator goes to verl's own function, untouched."""
    from verl.trainer.ppo import ray_trainer

    verl_compute_advantage = getattr(ray_trainer, "_verl_compute_advantage", ray_trainer.compute_advantage)
    name = _name(adv_estimator)
    if name not in REGISTERED:
        return verl_compute_advantage(data, adv_estimator, gamma=gamma, lam=lam, num_repeat=num_repeat,
                                      norm_adv_by_std_in_grpo=norm_adv_by_std_in_grpo, config=config)
    if "response_mask" not in data.batch.keys():
        data.batch["response_mask"] = ray_trainer.compute_response_mask(data)
    estimator = core_algos.get_adv_estimator_fn(name)
    advantages, returns = estimator(
        token_level_rewards=data.batch["token_level_rewards"], response_mask=data.batch["response_mask"], config=config,
        index=data.non_tensor_batch["uid"], batch=data.batch,
    )
    data.batch["advantages"] = advantages
    data.batch["returns"] = returns
    return data


def route_compute_advantage() -> None:
    """Make verl's trainers call :func:`compute_advantage` (module docstring): the legacy trainer's
    ``ray_trainer.compute_advantage`` and, where the v1 trainer imports (it needs ``transfer_queue``), its
    ``v1.utils.compute_advantage``; a process where v1 does not import cannot run it either. Idempotent."""
    from verl.trainer.ppo import ray_trainer

    if not hasattr(ray_trainer, "_verl_compute_advantage"):
        ray_trainer._verl_compute_advantage = ray_trainer.compute_advantage
    ray_trainer.compute_advantage = compute_advantage
    v1_utils = _v1_utils()
    if v1_utils is not None:
        v1_utils.compute_advantage = compute_advantage


def _v1_utils():
    """verl's ``trainer.ppo.v1.utils``, or None where the v1 trainer does not import."""
    try:
        from verl.trainer.ppo.v1 import utils
    except ImportError:
        return None
    return utils

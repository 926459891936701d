"""sirl's step credit inside TRL: a ``GRPOTrainer`` whose advantages are per token.

    from sirl.integrations.trl import CreditGRPOTrainer
    trainer = CreditGRPOTrainer(model=..., reward_funcs=..., args=GRPOConfig(...), train_dataset=...,
                                credit="divergence", step_splitter="lines")

The hook is the smallest TRL allows. ``GRPOTrainer._generate_and_score_completions`` samples the
completions, scores them and returns a batch whose ``advantages`` are one number per completion, ``[B]``;
``_compute_loss`` multiplies them into its per-token loss and accepts ``[B, T]`` from a subclass (TRL
1.16, ``grpo_trainer.py``: "To support subclasses that provide advantages with shape (B, T)"). This class
lets TRL do all of that, keeps the completion ids and rewards it scored (``_calculate_rewards``), and
replaces ``advantages`` with per-token ones computed over whole groups by ``sirl.credit``. Generation (HF
or vLLM), PEFT, DeepSpeed/FSDP, the loss types, importance sampling, KL and logging are TRL's.

How the advantages are made (every process computes the same numbers):

1. Rewards are TRL's: its reward functions' outputs, weighted and summed (``reward_weights``); a completion
   for which every function returned None is unscorable: it is left out of its group (as TRL leaves it out
   of the group mean and std) and gets 0 on every token.
2. A group is ``num_generations`` consecutive completions of the batch gathered over processes (TRL's own
   layout). The completion ids and the step ends of every process are gathered (padded to one width),
   the credit is computed over all groups, and each process keeps its own rows.
3. Steps: each completion's text (decoded with special tokens skipped) is split by ``step_splitter`` (a
   name of ``sirl.credit.steps``, ``"regex:<pattern>"``, or a callable text -> character spans; default
   one step per line) and mapped onto tokens by ``sirl.credit.steps.token_step_ends`` (a token belongs to
   the step where its first character is). Token offsets come from the tokenizer's offset mapping when
   re-encoding the text gives the sampled ids back (a fast tokenizer), otherwise from decoding token by
   token (sirl.rollout.steps.token_char_offsets); sirl.integrations.tokens.
4. Credit (``credit``): ``"divergence"`` is ``sirl.credit.divergence_credit`` (a failure, reward below
   ``success_threshold``, gets 0 on the prefix a success of its group also wrote and the destroyed value on
   the step where it left them), ``"tree"`` ``sirl.credit.tree_credit``, ``"outcome"``
   ``sirl.credit.outcome_credit`` (TRL's own advantage on every token). ``credit_options`` passes their
   keyword settings (``post_error``, ``error_span``, ``max_localizations``, ...).
5. Scale: TRL's ``scale_rewards``. The credit is computed unscaled (``estimator="dr_grpo"``: outcome part
   r - group mean, localized penalty -(V(before) - V(after))) and every token of a row is divided by TRL's
   denominator for that row: ``std(group) + 1e-4`` under ``"group"``, ``std(batch) + 1e-4`` under
   ``"batch"``, 1 under ``"none"`` (TRL's nan-aware unbiased std). So the outcome part is TRL's own
   advantage (equal to float rounding: the group mean is summed in another order) and the step penalty is
   on the same scale, as sirl's ``grpo`` estimator puts it (with TRL's 1e-4 for sirl's 1e-6).
   ``multi_objective_aggregation="normalize_then_sum"`` has no per-group reward scale to put a step value
   on and is refused.

The credit's metrics go to TRL's logs: ``credit/localized_frac`` (localized failures / failures),
``credit/mean_error_step`` (when a failure was localized), ``credit/zero_frac`` (share of tokens whose
advantage is 0). Two TRL options read the advantage's sign per sequence by design (the off-policy mask,
``off_policy_mask_threshold``, and VESPO's gamma weights); with per-token advantages they read it per token.
"""

from __future__ import annotations

import inspect
import random
from collections.abc import Sequence

import torch

try:
    from trl import GRPOTrainer
    from trl.trainer.utils import nanstd
except ImportError as error:  # an optional extra
    raise ImportError(f"sirl.integrations.trl needs TRL ({error}); install it with pip install -e '.[trl]'") from error

import sirl.credit as credit_core
from sirl.credit.steps import Splitter, resolve_splitter
from sirl.integrations.tokens import completion_step_ends

CREDITS = ("divergence", "tree", "outcome")
TRL_STD_EPS = 1e-4
"""TRL's GRPOTrainer divides by ``std + 1e-4`` (grpo_trainer.py, ``_generate_and_score_completions``)."""
SCALE_REWARDS = ("group", "batch", "none")
_CREDIT_FUNCTIONS = {"divergence": credit_core.divergence_credit, "tree": credit_core.tree_credit, "outcome": credit_core.outcome_credit}
_SET_BY_ADAPTER = {"responses", "rewards", "groups", "step_ends", "prefix_lens", "success_threshold", "estimator", "rng"}


def credit_options_of(credit: str) -> list[str]:
    """The keyword settings ``credit_options`` may give the credit function of ``credit``."""
    parameters = inspect.signature(_CREDIT_FUNCTIONS[credit]).parameters
    return [name for name, p in parameters.items() if p.kind is p.KEYWORD_ONLY and name not in _SET_BY_ADAPTER]


def trl_denominators(rewards_B: torch.Tensor, group_size: int, scale_rewards: str) -> torch.Tensor:
    """What TRL divides each row's ``r - group mean`` by, ``[B]`` float32: ``nanstd(group) + 1e-4``
    (``"group"``), ``nanstd(batch) + 1e-4`` (``"batch"``) or 1 (``"none"``); NaN rewards (unscorable)
    are left out of the std, as TRL does."""
    if scale_rewards == "none":
        return torch.ones_like(rewards_B)
    if scale_rewards == "group":
        std_B = nanstd(rewards_B.view(-1, group_size), dim=1).repeat_interleave(group_size) if group_size > 1 else torch.zeros_like(rewards_B)
    elif scale_rewards == "batch":
        std_B = nanstd(rewards_B).expand_as(rewards_B) if rewards_B.numel() > 1 else torch.zeros_like(rewards_B)
    else:
        raise ValueError(f"scale_rewards={scale_rewards!r}; TRL knows {SCALE_REWARDS}")
    return std_B + TRL_STD_EPS


def group_token_advantages(
    responses: Sequence[Sequence[int]],
    rewards_B: torch.Tensor,
    group_size: int,
    step_ends: Sequence[Sequence[int]] | None,
    *,
    credit: str,
    scale_rewards: str,
    success_threshold: float = 1.0,
    credit_options: dict | None = None,
    rng: random.Random | None = None,
) -> tuple[list[torch.Tensor], dict[str, float]]:
    """Per-token advantages of a gathered batch (module docstring, points 1, 4 and 5): one float32 ``[T_i]``
    per row, and the credit's metrics. Rows ``[g * group_size, (g + 1) * group_size)`` are group g;
    ``rewards_B`` holds NaN for unscorable rows (0 on their tokens); ``step_ends`` is needed for
    ``credit="divergence"`` only."""
    if credit not in CREDITS:
        raise ValueError(f"unknown credit {credit!r}; choose one of {CREDITS}")
    rewards_B = rewards_B.detach().float().cpu()
    denominators_B = trl_denominators(rewards_B, group_size, scale_rewards)
    kept = [i for i in range(len(responses)) if torch.isfinite(rewards_B[i])]
    advantages = [torch.zeros(len(tokens)) for tokens in responses]
    if not kept:
        return advantages, {}
    rows = dict(responses=[list(responses[i]) for i in kept], rewards=[float(rewards_B[i]) for i in kept],
                groups=[i // group_size for i in kept])
    options = dict(credit_options or {})
    if credit == "divergence":
        result = credit_core.divergence_credit(**rows, step_ends=[list(step_ends[i]) for i in kept], success_threshold=success_threshold,
                                               estimator="dr_grpo", rng=rng, **options)
    else:
        result = _CREDIT_FUNCTIONS[credit](**rows, estimator="dr_grpo", **options)
    for i, adv in zip(kept, result.token_advantages):
        # TRL zeroes what its division leaves undefined (nan_to_num): a group with one scorable row
        advantages[i] = torch.nan_to_num(adv / denominators_B[i], nan=0.0)
    return advantages, dict(result.metrics)


class CreditGRPOTrainer(GRPOTrainer):
    """TRL's ``GRPOTrainer`` with sirl's per-token credit (module docstring). Every argument of
    ``GRPOTrainer`` is accepted as is; the credit's own are keyword-only:

    credit: ``"divergence"`` (default), ``"tree"`` or ``"outcome"``.
    step_splitter: how a completion's text is cut into steps: ``"lines"`` (default), ``"sentences"``,
        ``"regex:<pattern>"`` (a step ends after each match) or a callable text -> [(start, end), ...].
    success_threshold: a completion whose summed, weighted reward is at least this is a success (the
        divergence credit localizes failures against the successes of their group).
    credit_options: keyword settings of the credit function (``credit_options_of(credit)`` lists them).
    """

    def __init__(
        self, *args, credit: str = "divergence", step_splitter: Splitter = "lines", success_threshold: float = 1.0,
        credit_options: dict | None = None, **kwargs,
    ):
        if credit not in CREDITS:
            raise ValueError(f"credit={credit!r}; choose one of {CREDITS}")
        unknown = sorted(set(credit_options or {}) - set(credit_options_of(credit)))
        if unknown:
            raise ValueError(f"credit_options {unknown} are not settings of credit={credit!r}; it takes {credit_options_of(credit)}")
        resolve_splitter(step_splitter)  # a bad name fails here, not at the first step
        super().__init__(*args, **kwargs)
        if self.multi_objective_aggregation != "sum_then_normalize":
            raise ValueError(
                f"multi_objective_aggregation={self.multi_objective_aggregation!r}: the step credit needs one reward per "
                "completion on the scale its group is normalized on; use 'sum_then_normalize' (TRL's default)"
            )
        self.credit, self.step_splitter, self.success_threshold = credit, step_splitter, float(success_threshold)
        self.credit_options = dict(credit_options or {})
        self._credit_calls = 0
        self._scored: tuple[list[list[int]], torch.Tensor] | None = None

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        # this process's completions and every process's rewards ([B_all, n_funcs], gathered by TRL)
        self._scored = ([list(ids) for ids in completion_ids_list], rewards_per_func)
        return rewards_per_func

    def _generate_and_score_completions(self, inputs):
        self._scored = None
        output = super()._generate_and_score_completions(inputs)
        if self._scored is None:
            raise RuntimeError("GRPOTrainer did not score completions through _calculate_rewards; this TRL version is not supported")
        completion_ids, rewards_per_func = self._scored
        self._scored = None
        mode = "train" if self.model.training else "eval"
        group_size = self.num_generations if mode == "train" else self.num_generations_eval
        advantages_BT, metrics = self.token_advantages(completion_ids, rewards_per_func, group_size, output["completion_ids"].size(1))
        output["advantages"] = advantages_BT.to(output["completion_ids"].device)
        for name, value in metrics.items():
            self._metrics[mode][name].append(value)
        return output

    def token_advantages(
        self, completion_ids: list[list[int]], rewards_per_func: torch.Tensor, group_size: int, width: int,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """This process's ``[B_local, width]`` advantages from its completions and every process's rewards:
        step ends computed here, ids and step ends gathered, the credit computed over all groups on every
        process, this process's rows kept and padded to ``width`` with 0."""
        rewards_B = (rewards_per_func * self.reward_weights.to(rewards_per_func.device).unsqueeze(0)).nansum(dim=1)
        rewards_B[torch.isnan(rewards_per_func).all(dim=1)] = torch.nan
        step_ends = None
        if self.credit == "divergence":
            step_ends = [completion_step_ends(self._tokenizer, ids, self.step_splitter) for ids in completion_ids]
        all_ids, all_ends = self._gather_rows(completion_ids, step_ends)
        self._credit_calls += 1
        rng = random.Random(f"{self.args.seed}-{self._credit_calls}")  # the same choices on every process
        advantages, metrics = group_token_advantages(
            all_ids, rewards_B, group_size, all_ends, credit=self.credit, scale_rewards=self.scale_rewards,
            success_threshold=self.success_threshold, credit_options=self.credit_options, rng=rng,
        )
        first = self.accelerator.process_index * len(completion_ids)
        advantages_BT = torch.zeros(len(completion_ids), width)
        for row, adv in enumerate(advantages[first:first + len(completion_ids)]):
            advantages_BT[row, :len(adv)] = adv
        return advantages_BT, metrics

    def _gather_rows(self, completion_ids: list[list[int]], step_ends: list[list[int]] | None) -> tuple[list[list[int]], list[list[int]] | None]:
        """Every process's completion ids and step ends, in process order (TRL's layout of the gathered
        batch): padded with -1 to one width, gathered as tensors, unpadded."""
        if self.accelerator.num_processes == 1:
            return completion_ids, step_ends
        device = self.accelerator.device

        def gather_ragged(rows: list[list[int]]) -> list[list[int]]:
            width = max((len(r) for r in rows), default=0)
            local = torch.full((len(rows), width + 1), -1, dtype=torch.long, device=device)
            for i, r in enumerate(rows):
                local[i, 0] = len(r)
                local[i, 1:1 + len(r)] = torch.tensor(r, dtype=torch.long)
            padded = self.accelerator.pad_across_processes(local, dim=1, pad_index=-1)
            gathered = self.accelerator.gather(padded).cpu()
            return [row[1:1 + int(row[0])].tolist() for row in gathered]

        return gather_ragged(completion_ids), None if step_ends is None else gather_ragged(step_ends)

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

6. Continuing good prefixes (``repair_share``, off by default): the good prefix
   of each failure localized (its tokens through the step before its error step) joins a pool with the
   dataset row it answers; each generation batch, ``round(repair_share * groups)`` of its groups (the last
   ones) are replaced by prefixes drawn from the pool, and the policy continues each one: the prefix is
   appended to the tokenized prompt, so generation (HF or vLLM) samples after it and the loss takes it as
   context; the reward functions see the prefix and the continuation as one completion (and the column
   ``sirl_prefix_tokens``, the prefix's length); the credit sees them as one response whose first tokens
   were given. This is sirl's repair buffer (sirl.internalize.repair). Measured on arith mod 7 it adds
   nothing to the credit, in sirl (16 seeds: -0.4 [-1.4, +0.5] points without it) or in TRL (8 seeds,
   ``repair_share=0.25``: -3.0 [-6.8, +0.2] against the credit alone), hence off by default
   (docs/results.md). The pool is saved in TRL's checkpoints (``sirl_good_prefixes.json``) and read back on
   resume.

The credit's metrics go to TRL's logs: ``credit/localized_frac`` (localized failures / failures),
``credit/mean_error_step`` (when a failure was localized), ``credit/zero_frac`` (share of tokens whose
advantage is 0); with continuation, ``repair/buffer_draws`` (groups continued) and ``repair/buffer_size``.
Two TRL options read the advantage's sign per sequence by design (the off-policy mask,
``off_policy_mask_threshold``, and VESPO's gamma weights); with per-token advantages they read it per token.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch

try:
    from trl import GRPOTrainer
    from trl.trainer.utils import nanstd
    from accelerate.utils import gather_object
except ImportError as error:  # an optional extra
    raise ImportError(f"sirl.integrations.trl needs TRL ({error}); install it with pip install -e '.[trl]'") from error

import sirl.credit as credit_core
from sirl.credit.steps import Splitter, resolve_splitter
from sirl.integrations.tokens import completion_step_ends
from sirl.internalize.repair import DrawPool
from sirl.schema import REPAIR_BUFFER_DRAWS, REPAIR_BUFFER_SIZE

CREDITS = ("divergence", "tree", "outcome")
TRL_STD_EPS = 1e-4
"""TRL's GRPOTrainer divides by ``std + 1e-4`` (grpo_trainer.py, ``_generate_and_score_completions``)."""
SCALE_REWARDS = ("group", "batch", "none")
PREFIX_TOKENS_COLUMN = "sirl_prefix_tokens"
"""The column reward functions receive with each row's continued prefix length in tokens (0: a fresh sample)."""
GOOD_PREFIXES_FILE = "sirl_good_prefixes.json"
"""The pool of good prefixes in a TRL checkpoint folder."""
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
    prefix_lens: Sequence[int] | None = None,
    success_threshold: float = 1.0,
    credit_options: dict | None = None,
    rng: random.Random | None = None,
) -> tuple[list[torch.Tensor], dict[str, float], list[credit_core.Divergence]]:
    """Per-token advantages of a gathered batch (module docstring, points 1, 4 and 5): one float32 ``[T_i]``
    per row, the credit's metrics, and the failures localized (``Divergence.row`` a row of the batch).
    Rows ``[g * group_size, (g + 1) * group_size)`` are group g; ``rewards_B`` holds NaN for unscorable rows
    (0 on their tokens); ``step_ends`` is needed for ``credit="divergence"`` only; ``prefix_lens`` counts
    the leading tokens of each response that were given (a continued good prefix), not sampled."""
    if credit not in CREDITS:
        raise ValueError(f"unknown credit {credit!r}; choose one of {CREDITS}")
    rewards_B = rewards_B.detach().float().cpu()
    denominators_B = trl_denominators(rewards_B, group_size, scale_rewards)
    kept = [i for i in range(len(responses)) if torch.isfinite(rewards_B[i])]
    advantages = [torch.zeros(len(tokens)) for tokens in responses]
    if not kept:
        return advantages, {}, []
    rows = dict(responses=[list(responses[i]) for i in kept], rewards=[float(rewards_B[i]) for i in kept],
                groups=[i // group_size for i in kept])
    given = None if prefix_lens is None else [int(prefix_lens[i]) for i in kept]
    options = dict(credit_options or {})
    if credit == "divergence":
        result = credit_core.divergence_credit(**rows, step_ends=[list(step_ends[i]) for i in kept], prefix_lens=given,
                                               success_threshold=success_threshold, estimator="dr_grpo", rng=rng, **options)
    elif credit == "tree":
        result = credit_core.tree_credit(**rows, prefix_lens=given, estimator="dr_grpo", **options)
    else:
        result = credit_core.outcome_credit(**rows, estimator="dr_grpo", **options)
    for i, adv in zip(kept, result.token_advantages):
        # TRL zeroes what its division leaves undefined (nan_to_num): a group with one scorable row
        advantages[i] = torch.nan_to_num(adv / denominators_B[i], nan=0.0)
    divergences = [dataclasses.replace(d, row=kept[d.row]) for d in result.divergences]
    return advantages, dict(result.metrics), divergences


def good_prefix(response: Sequence[int], step_ends: Sequence[int], error_step: int) -> list[int]:
    """The tokens of ``response`` through the step before ``error_step`` (the empty prefix for step 0):
    the good prefix of a failure localized at ``error_step``, from which a later step continues."""
    return list(response[: step_ends[error_step - 1]]) if error_step > 0 else []


def continued_groups(n_groups: int, n_drawn: int) -> range:
    """The groups of a gathered batch that continue the ``n_drawn`` good prefixes drawn: the last ones, as
    sirl's own loop puts fresh prompts first and drawn prefixes after them."""
    return range(n_groups - n_drawn, n_groups)


@dataclass(frozen=True)
class GoodPrefix:
    """A good prefix kept for a later step: the dataset row whose prompt it answers (TRL's input, reward
    columns included), the response tokens through the last step before a localized error, and the
    training step that found it."""

    example: dict
    prefix_ids: list[int]
    step: int


class CreditGRPOTrainer(GRPOTrainer):
    """TRL's ``GRPOTrainer`` with sirl's per-token credit (module docstring). Every argument of
    ``GRPOTrainer`` is accepted as is; the credit's own are keyword-only:

    credit: ``"divergence"`` (default), ``"tree"`` or ``"outcome"``.
    step_splitter: how a completion's text is cut into steps: ``"lines"`` (default), ``"sentences"``,
        ``"regex:<pattern>"`` (a step ends after each match) or a callable text -> [(start, end), ...].
    success_threshold: a completion whose summed, weighted reward is at least this is a success (the
        divergence credit localizes failures against the successes of their group).
    credit_options: keyword settings of the credit function (``credit_options_of(credit)`` lists them).
    repair_share: share of each generation batch's groups that continue a good prefix found earlier
        (module docstring, point 6; sirl's si uses 0.25); 0, the default, turns it off. Only the
        divergence credit finds good prefixes.
    repair_capacity: good prefixes kept (the most recent).
    """

    def __init__(
        self, *args, credit: str = "divergence", step_splitter: Splitter = "lines", success_threshold: float = 1.0,
        credit_options: dict | None = None, repair_share: float = 0.0, repair_capacity: int = 512, **kwargs,
    ):
        if credit not in CREDITS:
            raise ValueError(f"credit={credit!r}; choose one of {CREDITS}")
        unknown = sorted(set(credit_options or {}) - set(credit_options_of(credit)))
        if unknown:
            raise ValueError(f"credit_options {unknown} are not settings of credit={credit!r}; it takes {credit_options_of(credit)}")
        resolve_splitter(step_splitter)  # a bad name fails here, not at the first step
        repair_share = float(repair_share)
        if not 0.0 <= repair_share <= 1.0 or repair_capacity < 1:
            raise ValueError(f"repair_share={repair_share} must be in [0, 1] and repair_capacity={repair_capacity} at least 1")
        if repair_share and credit != "divergence":
            raise ValueError(f"repair_share={repair_share}: only credit='divergence' finds good prefixes to continue; use repair_share=0")
        super().__init__(*args, **kwargs)
        if self.multi_objective_aggregation != "sum_then_normalize":
            raise ValueError(
                f"multi_objective_aggregation={self.multi_objective_aggregation!r}: the step credit needs one reward per "
                "completion on the scale its group is normalized on; use 'sum_then_normalize' (TRL's default)"
            )
        if repair_share:
            self._check_continuable()
        self.credit, self.step_splitter, self.success_threshold = credit, step_splitter, float(success_threshold)
        self.credit_options = dict(credit_options or {})
        self.repair_share = repair_share
        self.good_prefixes: DrawPool[GoodPrefix] = DrawPool(repair_capacity)
        self._credit_calls = 0
        self._scored: tuple[list[list[int]], torch.Tensor, list[int]] | None = None
        self._row_prefixes: list[list[int]] = []

    def _check_continuable(self) -> None:
        """Continuing good prefixes appends them to the tokenized prompt and stores dataset rows in
        checkpoints: refused where TRL builds prompts otherwise (a rollout_func, tools, environments) and
        for rows that JSON cannot hold (images)."""
        for name in ("rollout_func", "environment_factories"):
            if getattr(self, name, None) is not None:
                raise ValueError(f"repair_share > 0 continues good prefixes from the tokenized prompt, which {name} replaces; use repair_share=0")
        if getattr(self, "tools", None):
            raise ValueError("repair_share > 0 with tools: a continued prefix would cut into a tool-call loop; use repair_share=0")
        if self.train_dataset is not None and hasattr(self.train_dataset, "__getitem__"):
            first = dict(self.train_dataset[0])
            try:
                json.dumps(first)
            except TypeError as error:
                raise ValueError(f"repair_share > 0 keeps dataset rows in checkpoints as JSON, and the first training row "
                                 f"does not convert ({error}); use repair_share=0") from error

    # --- continuing good prefixes (module docstring, point 6) -------------------------------------------

    def _continue_good_prefixes(self, inputs: list[dict]) -> tuple[list[dict], list[list[int]], int]:
        """This process's rows with the last ``round(repair_share * groups)`` groups of the gathered batch
        replaced by good prefixes drawn from the pool (the same draw on every process), each row's prefix
        ids, and the number drawn."""
        group_size, n_local = self.num_generations, len(inputs)
        n_groups = n_local * self.accelerator.num_processes // group_size
        rng = random.Random(f"{self.args.seed}-repair-{self.state.global_step}")  # resumes draw the same
        drawn = self.good_prefixes.draw(round(self.repair_share * n_groups), rng)
        first = self.accelerator.process_index * n_local
        inputs, prefixes = list(inputs), [[] for _ in inputs]
        for entry, group in zip(drawn, continued_groups(n_groups, len(drawn))):
            for row in range(group * group_size, (group + 1) * group_size):
                if first <= row < first + n_local:
                    inputs[row - first], prefixes[row - first] = dict(entry.example), list(entry.prefix_ids)
        return inputs, prefixes, len(drawn)

    def _tokenize_prompts(self, prompts):
        prompt_ids, images, multimodal_fields = super()._tokenize_prompts(prompts)
        if len(self._row_prefixes) == len(prompt_ids) and any(self._row_prefixes):
            # the policy continues each good prefix, and the loss sees it as context (part of the prompt)
            prompt_ids = [list(ids) + prefix for ids, prefix in zip(prompt_ids, self._row_prefixes)]
        return prompt_ids, images, multimodal_fields

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        prefixes = self._row_prefixes if len(self._row_prefixes) == len(completion_ids_list) else [[] for _ in completion_ids_list]
        full_ids = [prefix + list(ids) for prefix, ids in zip(prefixes, completion_ids_list)]
        if any(prefixes):
            # the reward functions judge the whole response: the continued prefix and what was sampled after it
            completions = list(completions)
            for i, prefix in enumerate(prefixes):
                if prefix:
                    text = self.processing_class.decode(full_ids[i], skip_special_tokens=True)
                    completions[i] = [{**completions[i][-1], "content": text}] if isinstance(completions[i], list) else text
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, full_ids)
        # this process's responses and every process's rewards ([B_all, n_funcs], gathered by TRL)
        self._scored = (full_ids, rewards_per_func, [len(p) for p in prefixes])
        return rewards_per_func

    def _generate_and_score_completions(self, inputs):
        self._scored = None
        mode = "train" if self.model.training else "eval"
        drawn = 0
        self._row_prefixes = [[] for _ in inputs]
        if mode == "train" and self.repair_share:
            inputs, self._row_prefixes, drawn = self._continue_good_prefixes(inputs)
            inputs = [{**x, PREFIX_TOKENS_COLUMN: len(p)} for x, p in zip(inputs, self._row_prefixes)]
        try:
            output = super()._generate_and_score_completions(inputs)
        finally:
            self._row_prefixes = []
        if self._scored is None:
            raise RuntimeError("GRPOTrainer did not score completions through _calculate_rewards; this TRL version is not supported")
        responses, rewards_per_func, prefix_lens = self._scored
        self._scored = None
        group_size = self.num_generations if mode == "train" else self.num_generations_eval
        advantages_BT, metrics = self.token_advantages(responses, rewards_per_func, group_size, output["completion_ids"].size(1),
                                                       prefix_lens=prefix_lens, examples=inputs if mode == "train" and self.repair_share else None)
        output["advantages"] = advantages_BT.to(output["completion_ids"].device)
        if self.repair_share and mode == "train":
            metrics.update({REPAIR_BUFFER_DRAWS: drawn, REPAIR_BUFFER_SIZE: len(self.good_prefixes)})
        for name, value in metrics.items():
            self._metrics[mode][name].append(value)
        return output

    def token_advantages(
        self, completion_ids: list[list[int]], rewards_per_func: torch.Tensor, group_size: int, width: int, *,
        prefix_lens: list[int] | None = None, examples: list[dict] | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """This process's ``[B_local, width]`` advantages from its responses (a continued prefix, then the
        completion) and every process's rewards: step ends computed here, ids, step ends and prefix lengths
        gathered, the credit computed over all groups on every process, this process's rows kept (their
        completion tokens, after any prefix) and padded to ``width`` with 0. With ``examples`` (this
        process's dataset rows), the good prefix of each failure localized joins the pool."""
        prefix_lens = prefix_lens or [0] * len(completion_ids)
        rewards_B = (rewards_per_func * self.reward_weights.to(rewards_per_func.device).unsqueeze(0)).nansum(dim=1)
        rewards_B[torch.isnan(rewards_per_func).all(dim=1)] = torch.nan
        step_ends = None
        if self.credit == "divergence":
            step_ends = [completion_step_ends(self._tokenizer, ids, self.step_splitter) for ids in completion_ids]
        all_ids, all_ends = self._gather_rows(completion_ids, step_ends)
        all_prefix_lens = [row[0] for row in self._gather_rows([[n] for n in prefix_lens], None)[0]]
        self._credit_calls += 1
        rng = random.Random(f"{self.args.seed}-{self._credit_calls}")  # the same choices on every process
        advantages, metrics, divergences = group_token_advantages(
            all_ids, rewards_B, group_size, all_ends, credit=self.credit, scale_rewards=self.scale_rewards, prefix_lens=all_prefix_lens,
            success_threshold=self.success_threshold, credit_options=self.credit_options, rng=rng,
        )
        if examples is not None and divergences:
            all_examples = examples if self.accelerator.num_processes == 1 else gather_object(examples)
            for found in divergences:
                example = {k: v for k, v in all_examples[found.row].items() if k != PREFIX_TOKENS_COLUMN}
                self.good_prefixes.add(GoodPrefix(example, good_prefix(all_ids[found.row], all_ends[found.row], found.error_step),
                                                  self.state.global_step))
        first = self.accelerator.process_index * len(completion_ids)
        advantages_BT = torch.zeros(len(completion_ids), width)
        for row, (adv, given) in enumerate(zip(advantages[first:first + len(completion_ids)], prefix_lens)):
            advantages_BT[row, :len(adv) - given] = adv[given:]
        return advantages_BT, metrics

    # --- checkpoints: the pool of good prefixes, as TRL keeps its own extra state -------------------------

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        if self.repair_share and self.args.should_save:
            folder = os.path.join(self._get_output_dir(trial=trial), f"checkpoint-{self.state.global_step}")
            entries = [dataclasses.asdict(e) for e in self.good_prefixes.entries]
            path = os.path.join(folder, GOOD_PREFIXES_FILE)
            with open(path + ".tmp", "w") as handle:
                json.dump({"capacity": self.good_prefixes.entries.maxlen, "entries": entries}, handle)
            os.replace(path + ".tmp", path)

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        path = os.path.join(checkpoint, GOOD_PREFIXES_FILE) if checkpoint is not None else None
        if self.repair_share and path and os.path.exists(path):
            with open(path) as handle:
                saved = json.load(handle)
            self.good_prefixes.entries.clear()
            self.good_prefixes.entries.extend(GoodPrefix(e["example"], e["prefix_ids"], e["step"]) for e in saved["entries"])

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

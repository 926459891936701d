"""What a training step logs: the metrics.jsonl record, and the trajectories samples.jsonl shows.

The loop hands over the step's records (rollouts, credit, update stats, token counts); this module
decides what each logged number means, so the loop stays a loop.
"""

from __future__ import annotations

import json
from dataclasses import astuple, dataclass
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from sirl import algos
from sirl.checkpoint import TokenCounts
from sirl.distributed import Distributed
from sirl.schema import (
    ADV_ZERO_STD_FRAC, GUARD_SKIPPED_STEPS, LR, REPAIR_BUFFER_DRAWS, REPAIR_BUFFER_SIZE, REWARD_MEAN, ROLLOUT_RESPONSE_TOKENS,
    ROLLOUT_SAMPLES, ROLLOUT_TRUNCATED_FRAC, TIME_ROLLOUT_S, TIME_STEP_S, TOKENS_PER_S, TOKENS_POLICY, TOKENS_PROBE,
    TOKENS_TOTAL, TOKENS_TRAINED, TOKENS_VERIFY, VERIFY_ERRORS, VERIFY_EXAMPLES, VERIFY_TIMEOUTS,
)
from sirl.tasks import Task
from sirl.rollout.steps import aligned_char_spans, token_char_offsets
from sirl.types import Credit, Trajectory
from sirl.update import UpdateStats
from sirl.verifier.pool import VerifyCounts


@dataclass(frozen=True)
class StepCounts:
    """One step's totals that the processes of a data-parallel run add up before logging."""

    policy_tokens: float
    probe_tokens: float
    verify_tokens: float
    fresh_reward: float
    """Summed reward of the samples drawn from the prompt alone (not continuing a stored prefix)."""
    fresh: float
    truncated: float
    samples: float
    verify_timeouts: float
    verify_errors: float
    trained_tokens: float
    """Tokens through forward and backward: every credit row's and auxiliary row's prompt and response, once
    per PPO epoch, and those the method trained a model of its own on (``Credit.trained_tokens``)."""

    @classmethod
    def of(cls, rollouts: list[Trajectory], generated: dict[str, int], verified: VerifyCounts, credit: Credit, epochs: int) -> StepCounts:
        fresh = [t for t in rollouts if t.prefix_len == 0]  # reward/mean: fresh prompts only, as in grpo
        return cls(
            policy_tokens=float(sum(len(t.response_ids) - t.prefix_len for t in rollouts)),
            probe_tokens=float(generated["probe"]), verify_tokens=float(generated["verify"]),
            fresh_reward=float(sum(t.reward for t in fresh)), fresh=float(len(fresh)),
            truncated=float(sum(t.truncated for t in rollouts)), samples=float(len(rollouts)),
            verify_timeouts=float(verified.timeouts), verify_errors=float(verified.errors),
            trained_tokens=float(epochs * (
                sum(len(t.prompt_ids) + len(t.response_ids) for t in credit.rows) + sum(int(a.attention_BT.sum()) for a in credit.aux_losses)
            ) + credit.trained_tokens),
        )

    def summed(self, dist: Distributed) -> StepCounts:
        return StepCounts(*dist.sum(list(astuple(self))))


def step_metrics(
    counts: StepCounts, tokens: TokenCounts, rollouts: list[Trajectory], credit: Credit, update: UpdateStats, *,
    trained_tokens: int, skipped_steps: int, lr: float, rollout_s: float, step_s: float, train_elapsed_s: float,
) -> dict[str, float]:
    """The metrics.jsonl record of a step (before its evaluation). ``tokens`` are the run's totals after
    the step; ``counts`` the step's own, summed over processes."""
    rewards_B = torch.tensor([t.reward for t in rollouts])
    group_B = torch.tensor([t.group for t in rollouts])
    n = max(counts.samples, 1)
    return {
        TOKENS_TOTAL: tokens.total,
        TOKENS_POLICY: tokens.policy,
        TOKENS_PROBE: tokens.probe,
        TOKENS_VERIFY: tokens.verify,
        TOKENS_TRAINED: trained_tokens,
        REWARD_MEAN: counts.fresh_reward / max(counts.fresh, 1),
        **update.to_metrics(),
        GUARD_SKIPPED_STEPS: skipped_steps,
        ADV_ZERO_STD_FRAC: algos.zero_std_fraction(rewards_B, group_B),
        ROLLOUT_SAMPLES: int(counts.samples),
        ROLLOUT_TRUNCATED_FRAC: counts.truncated / n,
        ROLLOUT_RESPONSE_TOKENS: counts.policy_tokens / n,
        VERIFY_TIMEOUTS: int(counts.verify_timeouts),
        VERIFY_ERRORS: int(counts.verify_errors),
        **credit.metrics,
        LR: lr,
        TIME_ROLLOUT_S: rollout_s,
        TIME_STEP_S: step_s,
        TOKENS_PER_S: tokens.total / train_elapsed_s,
    }


def repair_metrics(draws: int, memory) -> dict[str, int]:
    """Methods with a repair buffer: prompts continued from it this step, its size, and the self-verification
    examples kept (sirl.methods.MethodMemory)."""
    return {REPAIR_BUFFER_DRAWS: draws, REPAIR_BUFFER_SIZE: len(memory.repair), VERIFY_EXAMPLES: len(memory.verification)}


# --- samples.jsonl: trajectories for inspection and the run report ------------------------------------


def pick_sample_rows(credit: Credit, n: int) -> list[int]:
    """Up to ``n`` rows of the step's own samples to show: distinct texts, spread over prompts (round-robin
    over groups), each prompt's localized failures first, then its other failures and successes in turn."""
    localized = {found.row for found in credit.localizations}
    by_group: dict[int, list[int]] = {}
    seen: set[tuple[str, str, int]] = set()
    for i, t in enumerate(credit.rows):
        key = (t.problem.prompt, t.text, t.prefix_len)
        if credit.kind(i) != "sample" or key in seen:
            continue
        seen.add(key)
        by_group.setdefault(t.group, []).append(i)
    queues = []
    for rows in by_group.values():
        first = [i for i in rows if i in localized]
        successes = [i for i in rows if credit.rows[i].reward >= 1]
        failures = [i for i in rows if i not in localized and i not in successes]  # a NaN reward is no success
        interleaved = [i for pair in zip(failures, successes) for i in pair]
        rest = failures[len(successes):] + successes[len(failures):]
        queues.append(first + interleaved + rest)
    queues.sort(key=lambda q: (q[0] not in localized, credit.rows[q[0]].group))  # prompts with a localization first
    picked: list[int] = []
    while len(picked) < n and any(queues):
        for queue in queues:
            if queue and len(picked) < n:
                picked.append(queue.pop(0))
    return picked


def sample_records(step: int, task: Task, tokenizer: PreTrainedTokenizerBase, credit: Credit, n: int) -> list[dict]:
    """The records samples.jsonl gets for a step: :func:`pick_sample_rows`, each followed by its correction
    when the method found one. Given-prefix tokens are context: their advantage is null, never trained."""
    located = {found.row: found for found in credit.localizations}
    records = []
    for i in pick_sample_rows(credit, n):
        records.append(_record(step, task, tokenizer, credit, i, located.get(i)))
        found = located.get(i)
        if found is not None and found.correction_row is not None:
            records.append(_record(step, task, tokenizer, credit, found.correction_row, None))
    return records


def _record(step: int, task: Task, tokenizer: PreTrainedTokenizerBase, credit: Credit, row: int, found) -> dict:
    t = credit.rows[row]
    advantages = credit.token_advantages[row].tolist()
    record = {
        "step": step,
        "kind": credit.kind(row),
        "group": t.group,
        "prompt": t.problem.prompt,
        "prompt_text": tokenizer.decode(t.prompt_ids),  # exactly what the model saw (chat template, examples)
        "steps": [t.text[a:b] for a, b in aligned_char_spans(t.step_spans, token_char_offsets(tokenizer, t.response_ids)[1], len(t.text))],
        "reward": t.reward,
        "truncated": t.truncated,
        "prefix_len": t.prefix_len,
        "token_advantages": [None if k < t.prefix_len else round(a, 4) for k, a in enumerate(advantages)],
        "tokens": tokenizer.batch_decode([[token] for token in t.response_ids]),
    }
    if found is not None:
        loc = found.localization
        record["localized_step"] = loc.error_step
        record["probes"] = loc.probes
        record["correction"] = credit.rows[found.correction_row].text if found.correction_row is not None else None
        if loc.proposal is not None:
            record["self_verdict"] = loc.proposal
    if task.has_ground_truth:
        record["first_error"] = task.first_error(t.problem, t.text)
    return record


def append_samples(path: Path, records: list[dict]) -> None:
    with path.open("a") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")


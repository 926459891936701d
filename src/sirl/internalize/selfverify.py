"""Self-verification: the policy names the first wrong step of a solution (or "none"), on its own weights.

The format belongs to the task (``Task.verification_prompt``, ``verdict_target``, ``read_verdict``), so every
task, a user's own included, gets it: ``index`` (one token naming the step), ``judgments`` (a mark per
step up to the first wrong one) or ``rederive`` (each step recomputed beside its written result, then
marked; tasks that implement ``step_check``). This module asks the policy for verdicts, builds the training
batches that teach it (an auxiliary cross-entropy on the oracle's verdict, or sampled verdicts rewarded
for agreeing with the oracle), and keeps the audit schedule: the share of failures that always get the
full oracle search follows how often the policy has agreed with it (more agreement, fewer audits, never
fewer than a floor).
"""

from __future__ import annotations

import random
from collections import deque

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from sirl.internalize.repair import VerificationExample, VerificationExamples
from sirl.model import encode_prompt, encode_text, eos_ids
from sirl.rollout import SamplingParams, generate
from sirl.tasks.base import Task
from sirl.types import Problem, Trajectory, Verdict

VERDICT_TOKENS = 8
"""Most new tokens of an ``index`` verdict ("none", or a step number)."""
SPARE_TOKENS = 4
"""Room past the longest well-formed step-by-step verdict, so an overlong one shows as malformed."""


def verdict_tokens(tokenizer: PreTrainedTokenizerBase, task: Task, solutions: list[tuple[Problem, str]], fmt: str) -> int:
    """Most new tokens a verdict in ``fmt`` may take on these solutions: the longest well-formed one (every
    step judged right, the longest a verdict can be) plus :data:`SPARE_TOKENS`."""
    if fmt == "index":
        return VERDICT_TOKENS
    return SPARE_TOKENS + max(len(encode_text(tokenizer, task.verdict_target(p, c, None, fmt))) for p, c in solutions)


def read(task: Task, problem: Problem, completion: str, text: str, fmt: str) -> tuple[int | None, bool]:
    """(named step, well-formed) of a verdict text; a malformed one names nothing and scores as wrong."""
    try:
        return task.read_verdict(problem, completion, text, fmt), True
    except ValueError:
        return None, False


def propose(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, task: Task, solutions: list[tuple[Problem, str]],
    max_batch: int = 1024, fmt: str = "index",
) -> list[Verdict]:
    """Greedy verdicts of the policy on (problem, completion) pairs, in format ``fmt``."""
    if not solutions:
        return []
    contexts = [encode_prompt(tokenizer, task.verification_prompt(p, c)) for p, c in solutions]
    out = generate(
        model, contexts, SamplingParams(verdict_tokens(tokenizer, task, solutions, fmt), temperature=0.0),
        eos_ids=eos_ids(model, tokenizer), pad_id=tokenizer.pad_token_id, max_batch=max_batch,
    )
    verdicts = []
    for row, (problem, completion) in enumerate(solutions):
        tokens = out.row_tokens(row)
        text = tokenizer.decode(tokens, skip_special_tokens=True)
        step, valid = read(task, problem, completion, text, fmt)
        verdicts.append(Verdict(text, step, valid, len(tokens)))
    return verdicts


def draw_examples(store: VerificationExamples, n: int, none_share: float, rng: random.Random) -> list[VerificationExample]:
    """``n`` recent examples, ``none_share`` of them verified solutions when there are enough of each kind."""
    failures = [e for e in store.examples if e.first_error is not None]
    successes = [e for e in store.examples if e.first_error is None]
    n_none = min(len(successes), round(n * none_share))
    n_fail = min(len(failures), n - n_none)
    n_none = min(len(successes), n - n_fail)  # top up with successes when failures are short
    return rng.sample(failures, n_fail) + rng.sample(successes, n_none)


def supervised_batch(
    task: Task, tokenizer: PreTrainedTokenizerBase, examples: list[VerificationExample], fmt: str = "index"
) -> list[tuple[list[int], list[int]]]:
    """(verification prompt ids, verdict ids + EOS) pairs, for the auxiliary cross-entropy. The label is
    the example's first wrong step: the steps before it judged right, it judged wrong, nothing after it."""
    return [
        (
            encode_prompt(tokenizer, task.verification_prompt(e.problem, e.completion)),
            encode_text(tokenizer, task.verdict_target(e.problem, e.completion, e.first_error, fmt)) + [tokenizer.eos_token_id],
        )
        for e in examples
    ]


def sampled_verdicts(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    examples: list[VerificationExample],
    group: int,
    generator: torch.Generator | None,
    first_group: int,
    max_batch: int = 1024,
    fmt: str = "index",
) -> list[Trajectory]:
    """``group`` sampled verdicts per example, as trajectories rewarded +1 when they name the oracle's
    step (or "none" on a verified solution) and -1 otherwise; each example's verdicts are one group."""
    if not examples:
        return []
    prompts = [encode_prompt(tokenizer, task.verification_prompt(e.problem, e.completion)) for e in examples]
    limit = verdict_tokens(tokenizer, task, [(e.problem, e.completion) for e in examples], fmt)
    out = generate(
        model, prompts, SamplingParams(limit, temperature=1.0), eos_ids=eos_ids(model, tokenizer),
        pad_id=tokenizer.pad_token_id, repeats=group, generator=generator, max_batch=max_batch,
    )
    trajectories = []
    for row in range(len(out)):
        index = int(out.context_index_B[row])
        example, tokens = examples[index], out.row_tokens(row)
        text = tokenizer.decode(tokens, skip_special_tokens=True)
        step, valid = read(task, example.problem, example.completion, text, fmt)
        agrees = valid and step == example.first_error
        trajectories.append(
            Trajectory(
                problem=example.problem, prompt_ids=prompts[index], response_ids=tokens,
                logprobs=out.logp_BT[row, : len(tokens)].tolist(), text=text, reward=1.0 if agrees else -1.0,
                truncated=bool(out.truncated_B[row]), group=first_group + index, step_spans=[(0, len(tokens))],
            )
        )
    return trajectories


class AuditSchedule:
    """The audit fraction: 1 - (agreement over the last ``window`` audits), clamped to [low, high].
    With no audit yet it is ``high``: nothing is known about the policy's verdicts."""

    def __init__(self, low: float, high: float, window: int):
        if not 0 < low <= high <= 1:
            raise ValueError(f"need 0 < internalize.audit_min <= internalize.audit_max <= 1, got {low}, {high}")
        self.low, self.high = low, high
        self.outcomes: deque[bool] = deque(maxlen=window)

    @property
    def agreement(self) -> float | None:
        return sum(self.outcomes) / len(self.outcomes) if self.outcomes else None

    @property
    def fraction(self) -> float:
        agreement = self.agreement
        return self.high if agreement is None else min(self.high, max(self.low, 1.0 - agreement))

    def record(self, agreed: bool) -> None:
        self.outcomes.append(agreed)

    def to_json(self) -> list[bool]:
        return list(self.outcomes)

    def load_json(self, data: list[bool]) -> None:
        """Replace the recorded outcomes with what :meth:`to_json` returned (a checkpoint)."""
        self.outcomes.clear()
        self.outcomes.extend(bool(x) for x in data)

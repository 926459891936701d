"""Held-out evaluation: greedy accuracy with a 95% interval, accuracy by difficulty, where failures first
go wrong (ground-truth tasks), pass@k under sampling, and decoding speed.

The held-out set is a pure function of (task, size, eval seed), so every run and every method is scored
on the same problems.
"""

from __future__ import annotations

import math
import random
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from tqdm import tqdm

from sirl.config import ConfigError
from sirl.prompts import PromptFormat
from sirl.rollout import SamplingParams, before_stop, generate, response_end_ids, text_decoder
from sirl.tasks.base import Task, difficulty_order, level_from_key
from sirl.types import Problem
from sirl.verifier import Verifier, score_completions


class EvaluationFailed(RuntimeError):
    """The held-out evaluation raised during training (SFT or RL); the weights trained until then were
    saved first, and the message says where."""


def heldout_problems(task: Task, n: int, seed: int) -> list[Problem]:
    """``n`` distinct test-split problems (fewer when the split has fewer), the same for the same seed."""
    rng = random.Random(seed)
    problems: dict[str, Problem] = {}
    misses = 0
    while len(problems) < n and misses < 20 * n:  # a small finite split runs out of new prompts
        problem = task.sample(rng, "test")
        if problem.prompt in problems:
            misses += 1
        else:
            problems[problem.prompt] = problem
    return list(problems.values())


def wilson_interval(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (Wilson 1927): sane at 0%, 100% and small n."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    denominator = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return (max(0.0, center - half), min(1.0, center + half))


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct (Chen et al. 2021, "Evaluating LLMs trained on code"):
    1 - C(n-c, k) / C(n, k), the chance that k of the n samples drawn without replacement include a success."""
    if n - c < k:
        return 1.0
    return 1.0 - math.prod((n - c - i) / (n - i) for i in range(k))


@dataclass(frozen=True)
class Completion:
    problem: Problem
    text: str
    n_tokens: int
    truncated: bool
    reward: float


@dataclass
class EvalResult:
    n: int
    accuracy: float
    ci95: tuple[float, float]
    by_difficulty: dict[int | float | str, dict[str, float]]
    first_error_histogram: dict[int, int] | None
    """Ground-truth first wrong step of each greedy failure (tasks with ground truth): count by step
    index. The keys are 0-based, as every log counts (eval.json, samples.jsonl); what a person reads
    (``format_result``, the run report) numbers steps from 1, as the self-verification prompt does."""
    mean_response_tokens: float
    truncated_frac: float
    tokens_per_second: float
    pass_at_k: dict[int, float] = field(default_factory=dict)
    sample_temperature: float | None = None
    rewards: list[float] = field(default_factory=list)
    """Each held-out problem's greedy reward, in the order of the problems: comparisons pair methods on the
    same problems with it (sirl.compare's bootstrap over seeds and problems)."""
    difficulties: list[int | float | str | None] = field(default_factory=list)
    """Each held-out problem's difficulty level (None where the task gives none), in the same order: paired
    differences by difficulty band pick their problems with it (sirl.compare)."""

    def to_json(self) -> dict:
        out = asdict(self)
        out["ci95"] = list(self.ci95)
        return out

    @classmethod
    def from_json(cls, data: dict) -> EvalResult:
        """The inverse of :meth:`to_json` (JSON turned the int keys into strings)."""
        histogram = data["first_error_histogram"]
        return cls(
            **{**data, "ci95": tuple(data["ci95"]),
               "by_difficulty": {level_from_key(k): v for k, v in data["by_difficulty"].items()},
               "first_error_histogram": None if histogram is None else {int(k): v for k, v in histogram.items()},
               "pass_at_k": {int(k): v for k, v in data.get("pass_at_k", {}).items()}}
        )


def progress_bar(label: str | None, total: int, unit: str) -> tqdm:
    """The bar long evaluations show (with its ETA) on stderr; ``label=None`` shows none. It disappears
    when done (``leave=False``), so only the result stays on the screen."""
    return tqdm(total=total, desc=label, unit=unit, disable=label is None, leave=False, dynamic_ncols=True)


def problem_chunks(n_problems: int, repeats: int, batch_size: int) -> list[range]:
    """Whole problems, at most ``batch_size`` rows (``repeats`` each) per chunk, at least one problem:
    the same chunks ``sirl.rollout.generate(max_batch=batch_size)`` makes, so decoding chunk by chunk
    (to show progress) consumes a sampling generator exactly as one call would."""
    per = max(1, batch_size // repeats)
    return [range(start, min(start + per, n_problems)) for start in range(0, n_problems, per)]


def complete(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    problems: list[Problem],
    params: SamplingParams,
    *,
    repeats: int = 1,
    batch_size: int = 256,
    generator: torch.Generator | None = None,
    verifier: Verifier | None = None,
    progress: str | None = None,
    prompt_format: PromptFormat | None = None,
) -> tuple[list[Completion], float]:
    """Sample ``repeats`` completions per problem and score them (with ``verifier``, else ``task.verify``
    in this process); returns them, problem by problem, and the seconds taken (decoding only). With a
    ``progress`` label, a bar counts the completions decoded and scored."""
    completions: list[Completion] = []
    seconds = 0.0
    prompt_format = prompt_format or PromptFormat(tokenizer)
    with progress_bar(progress, len(problems) * repeats, "sample") as bar:
        for chunk in problem_chunks(len(problems), repeats, batch_size):
            part = [problems[i] for i in chunk]
            start = time.perf_counter()
            generations = generate(
                model,
                [prompt_format.encode(p.prompt) for p in part],
                params,
                eos_ids=response_end_ids(model, tokenizer, prompt_format),
                pad_id=tokenizer.pad_token_id,
                repeats=repeats,
                generator=generator,
                max_batch=batch_size,
                decode=text_decoder(tokenizer),
            )
            seconds += time.perf_counter() - start
            rows = [(part[int(generations.context_index_B[row])], generations.row_tokens(row)) for row in range(len(generations))]
            texts = [tokenizer.decode(tokens, skip_special_tokens=True) for _, tokens in rows]
            if generations.stopped_B is not None:  # the verifier scores the text before a stop string
                texts = [before_stop(text, params.stop) if bool(generations.stopped_B[row]) else text for row, text in enumerate(texts)]
            rewards = score_completions(task, [problem for problem, _ in rows], texts, verifier)
            completions += [
                Completion(problem, text, len(tokens), bool(generations.truncated_B[row]), reward)
                for row, ((problem, tokens), text, reward) in enumerate(zip(rows, texts, rewards))
            ]
            bar.update(len(rows))
    return completions, seconds


def check_pass_k(pass_k: Sequence[int], n_samples: int) -> None:
    """The unbiased estimator needs at least k samples per problem for every k."""
    if pass_k and n_samples < max(pass_k):
        raise ConfigError(f"eval.n_samples={n_samples} must be >= max(eval.pass_k)={max(pass_k)}")


def evaluate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    problems: list[Problem],
    *,
    max_new_tokens: int,
    batch_size: int = 256,
    pass_k: Sequence[int] = (),
    n_samples: int = 8,
    temperature: float = 1.0,
    seed: int = 0,
    verifier: Verifier | None = None,
    progress: str | None = None,
    prompt_format: PromptFormat | None = None,
    stop: Sequence[str] = (),
) -> EvalResult:
    """Greedy accuracy and its breakdowns; pass@k for each k in ``pass_k`` from ``n_samples`` samples
    (none by default: sampling costs ``n_samples`` times the greedy pass). Completions are scored by
    ``verifier`` (else by ``task.verify`` in this process). With a ``progress`` label, each pass shows a
    bar with its ETA. ``prompt_format`` is how prompts are shown (sirl.prompts; default raw) and ``stop``
    the stop strings that end a response besides EOS."""
    check_pass_k(pass_k, n_samples)  # before the greedy pass, not after it
    greedy, seconds = complete(
        model, tokenizer, task, problems, SamplingParams(max_new_tokens, temperature=0.0, stop=tuple(stop)), batch_size=batch_size,
        verifier=verifier, progress=None if progress is None else f"{progress} (greedy)", prompt_format=prompt_format,
    )
    n = len(greedy)
    correct = sum(c.reward for c in greedy)
    by_level: dict[int | float | str, list[float]] = defaultdict(list)
    for c in greedy:
        level = task.difficulty(c.problem)
        if level is not None:
            by_level[level].append(c.reward)
    histogram = None
    if task.has_ground_truth:
        errors = [task.first_error(c.problem, c.text) for c in greedy if c.reward < 1]
        histogram = dict(sorted(Counter(e for e in errors if e is not None).items()))
    n_tokens = sum(c.n_tokens for c in greedy)
    result = EvalResult(
        n=n,
        accuracy=correct / n if n else 0.0,
        ci95=wilson_interval(correct, n),
        by_difficulty={k: {"n": len(v), "accuracy": sum(v) / len(v)} for k, v in sorted(by_level.items(), key=lambda kv: difficulty_order(kv[0]))},
        first_error_histogram=histogram,
        mean_response_tokens=n_tokens / n if n else 0.0,
        truncated_frac=sum(c.truncated for c in greedy) / n if n else 0.0,
        tokens_per_second=n_tokens / seconds if seconds > 0 else 0.0,
        rewards=[c.reward for c in greedy],
        difficulties=[task.difficulty(c.problem) for c in greedy],
    )
    if pass_k:
        generator = torch.Generator(device=model.device).manual_seed(seed)  # on the device that samples
        sampled, _ = complete(
            model,
            tokenizer,
            task,
            problems,
            SamplingParams(max_new_tokens, temperature=temperature, stop=tuple(stop)),
            repeats=n_samples,
            batch_size=batch_size,
            generator=generator,
            verifier=verifier,
            prompt_format=prompt_format,
            progress=None if progress is None else f"{progress} (pass@k, {n_samples} samples each)",
        )
        successes = [sum(c.reward >= 1 for c in sampled[i * n_samples : (i + 1) * n_samples]) for i in range(n)]
        result.pass_at_k = {k: sum(pass_at_k(n_samples, c, k) for c in successes) / n for k in pass_k}
        result.sample_temperature = temperature
    return result


def step_number(index: int) -> int:
    """The step a person reads for a 0-based step index: steps are numbered from 1 everywhere they are
    shown (``sirl eval``, the run report, the self-verification prompt's ``[1]``)."""
    return index + 1


def format_result(result: EvalResult, pass_k_hint: str | None = None) -> str:
    """The human-readable report printed by ``sirl eval``; ``pass_k_hint`` stands in pass@k's place when it
    was not measured (to say how to measure it)."""
    lo, hi = result.ci95
    lines = [
        f"accuracy (greedy)  {result.accuracy:.1%}  95% CI [{lo:.1%}, {hi:.1%}]  n={result.n}",
        f"response tokens    {result.mean_response_tokens:.1f} mean, {result.truncated_frac:.1%} truncated",
        f"decoding speed     {result.tokens_per_second:,.0f} tokens/s (greedy, batched)",
    ]
    if result.pass_at_k:
        shown = "  ".join(f"pass@{k} {v:.1%}" for k, v in result.pass_at_k.items())
        lines.append(f"sampled (T={result.sample_temperature:g})  {shown}")
    elif pass_k_hint:
        lines.append(f"pass@k             {pass_k_hint}")
    if result.by_difficulty:
        lines.append("accuracy by difficulty:")
        for level, row in result.by_difficulty.items():
            lines.append(f"  {level:>4}  {row['accuracy']:6.1%}  (n={row['n']})")
    if result.first_error_histogram is not None:
        total = sum(result.first_error_histogram.values())
        lines.append(f"first wrong step of greedy failures (ground truth, steps from 1, {total} failures):")
        peak = max(result.first_error_histogram.values(), default=1)
        for index, count in result.first_error_histogram.items():
            lines.append(f"  step {step_number(index):>3}  {count:5d}  {'#' * max(1, round(30 * count / peak))}")
    return "\n".join(lines)


@dataclass
class SelfVerifyResult:
    """How well a policy names the first wrong step of its own sampled solutions."""

    n_failures: int
    n_successes: int
    failure_accuracy: float | None
    """Verdict == the task's ground-truth first wrong step, over failures (None without ground truth)."""
    failure_ci95: tuple[float, float] | None
    failure_said_none: float
    """Share of failures the policy called correct."""
    success_accuracy: float
    """Share of verified solutions the policy called correct ("none")."""
    invalid: float
    """Share of verdicts that did not parse."""
    most_common_step: float | None = None
    """What guessing scores on the same failures: the share whose first wrong step is the most common one
    (the best constant answer, chosen knowing the answers), None without ground truth ..."""
    uniform_step: float | None = None
    """... and the expected accuracy of naming one of each failure's steps at random."""

    def to_json(self) -> dict:
        out = asdict(self)
        if self.failure_ci95 is not None:
            out["failure_ci95"] = list(self.failure_ci95)
        return out


def guessing_baselines(first_errors: list[int], n_steps: list[int]) -> tuple[float, float]:
    """What naming a step without reading the solution scores on failures with these first wrong steps:
    (the share of the most common one, the expected share when each failure gets one of its steps at random)."""
    most_common = Counter(first_errors).most_common(1)[0][1] / len(first_errors)
    uniform = sum(1 / max(n, 1) for n in n_steps) / len(n_steps)
    return most_common, uniform


def evaluate_self_verification(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    problems: list[Problem],
    *,
    max_new_tokens: int,
    samples: int = 4,
    temperature: float = 1.0,
    batch_size: int = 256,
    seed: int = 0,
    verifier: Verifier | None = None,
    progress: str | None = None,
    fmt: str = "index",
) -> SelfVerifyResult:
    """Sample ``samples`` solutions per problem, then ask the policy, in the task's self-verification
    format ``fmt``, for the first wrong step of each (greedy verdicts). With a ``progress`` label, both passes
    show a bar with its ETA."""
    from sirl.internalize.selfverify import propose  # imported here: it builds on this module's neighbours

    generator = torch.Generator(device=model.device).manual_seed(seed)  # on the device that samples
    completions, _ = complete(
        model, tokenizer, task, problems, SamplingParams(max_new_tokens, temperature=temperature),
        repeats=samples, batch_size=batch_size, generator=generator, verifier=verifier,
        progress=None if progress is None else f"{progress} (solutions, {samples} each)",
    )
    failures = [c for c in completions if c.reward < 1]
    successes = [c for c in completions if c.reward >= 1]
    solutions = [(c.problem, c.text) for c in failures + successes]
    verdicts = []
    with progress_bar(None if progress is None else f"{progress} (verdicts)", len(solutions), "verdict") as bar:
        for start in range(0, len(solutions), batch_size):  # the chunks propose makes itself: only the bar is new
            verdicts += propose(model, tokenizer, task, solutions[start : start + batch_size], batch_size, fmt)
            bar.update(min(batch_size, len(solutions) - start))
    on_failures, on_successes = verdicts[: len(failures)], verdicts[len(failures) :]
    accuracy, interval, most_common, uniform = None, None, None, None
    if task.has_ground_truth and failures:
        truth = [task.first_error(c.problem, c.text) for c in failures]
        right = sum(v.step == e and v.valid for v, e in zip(on_failures, truth))
        accuracy, interval = right / len(failures), wilson_interval(right, len(failures))
        most_common, uniform = guessing_baselines(truth, [len(task.split_steps(c.text)) for c in failures])
    return SelfVerifyResult(
        n_failures=len(failures),
        n_successes=len(successes),
        failure_accuracy=accuracy,
        failure_ci95=interval,
        failure_said_none=sum(v.valid and v.step is None for v in on_failures) / max(len(failures), 1),
        success_accuracy=sum(v.valid and v.step is None for v in on_successes) / max(len(successes), 1),
        invalid=sum(not v.valid for v in verdicts) / max(len(verdicts), 1),
        most_common_step=most_common,
        uniform_step=uniform,
    )


def format_self_verification(result: SelfVerifyResult) -> str:
    lines = [f"self-verification of its own samples: {result.n_failures} failures, {result.n_successes} verified solutions"]
    if result.failure_accuracy is not None:
        lo, hi = result.failure_ci95
        lines.append(f"  names the first wrong step   {result.failure_accuracy:.1%}  95% CI [{lo:.1%}, {hi:.1%}] (ground truth)")
        lines.append(
            f"  guessing would score         {result.most_common_step:.1%} (always the most common step), "
            f"{result.uniform_step:.1%} (a step at random)"
        )
    lines += [
        f"  calls a failure correct      {result.failure_said_none:.1%}",
        f"  calls a verified one correct {result.success_accuracy:.1%}",
        f"  unparsable verdicts          {result.invalid:.1%}",
    ]
    return "\n".join(lines)

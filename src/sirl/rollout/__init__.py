"""Sampling engines: continuations of prompts or of arbitrary prefixes, with log-probs and step spans."""

from __future__ import annotations

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from sirl.model import encode_prompt, eos_ids
from sirl.rollout.engine import Generations, SamplingParams, generate, pick_backend
from sirl.rollout.steps import char_spans_to_token_spans, token_char_offsets
from sirl.tasks.base import Task
from sirl.types import Problem, Trajectory

__all__ = ["Generations", "SamplingParams", "generate", "pick_backend", "sample_trajectories"]


def sample_trajectories(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    problems: list[Problem],
    params: SamplingParams,
    *,
    group_size: int,
    generator: torch.Generator | None = None,
    max_batch: int = 1024,
) -> list[Trajectory]:
    """``group_size`` scored trajectories per problem (one prefill per problem), problem-major; the
    ``group`` of each is its problem's index in ``problems``."""
    prompts = [encode_prompt(tokenizer, p.prompt) for p in problems]
    generations = generate(
        model,
        prompts,
        params,
        eos_ids=eos_ids(model, tokenizer),
        pad_id=tokenizer.pad_token_id,
        repeats=group_size,
        generator=generator,
        max_batch=max_batch,
    )
    trajectories = []
    for row in range(len(generations)):
        index = int(generations.context_index_B[row])
        problem, response = problems[index], generations.row_tokens(row)
        text, offsets = token_char_offsets(tokenizer, response)
        trajectories.append(
            Trajectory(
                problem=problem,
                prompt_ids=prompts[index],
                response_ids=response,
                logprobs=generations.logp_BT[row, : len(response)].tolist(),
                text=text,
                reward=task.verify(problem, text),
                truncated=bool(generations.truncated_B[row]),
                group=index,
                step_spans=char_spans_to_token_spans(task.split_steps(text), offsets, len(text)),
            )
        )
    return trajectories

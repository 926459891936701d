"""Sampling engines: continuations of prompts or of arbitrary prefixes, with log-probs and step spans.

Rollout only samples: its trajectories are unscored (``reward`` None) until the verification stage
(sirl.verifier.verify_trajectories) scores them.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from sirl.model import eos_ids
from sirl.prompts import PromptFormat
from sirl.rollout.engine import Generations, NonFiniteLogits, SamplingParams, before_stop, generate, pick_backend, resolve_rollout_dtype, rollout_dtype
from sirl.rollout.steps import char_spans_to_token_spans, token_char_offsets
from sirl.tasks.base import Task
from sirl.types import Problem, Trajectory

__all__ = [
    "before_stop", "Generations", "NonFiniteLogits", "SamplingParams", "generate", "pick_backend", "resolve_rollout_dtype", "response_end_ids",
    "rollout_dtype", "sample_trajectories", "text_decoder",
]


def response_end_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompt_format: PromptFormat | None) -> list[int]:
    """Every token id that ends a response: EOS (sirl.model.eos_ids) and the chat format's end of turn."""
    return sorted(set(eos_ids(model, tokenizer)) | set(prompt_format.stop_ids if prompt_format else ()))


def text_decoder(tokenizer: PreTrainedTokenizerBase):
    """Token ids -> response text (special tokens dropped), as stop strings are searched for."""
    return lambda ids: tokenizer.decode(ids, skip_special_tokens=True)


def sample_trajectories(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    problems: list[Problem],
    params: SamplingParams,
    *,
    group_size: int | list[int],
    prefixes: list[list[int]] | None = None,
    groups: list[int] | None = None,
    generator: torch.Generator | None = None,
    max_batch: int = 1024,
    prompt_format: PromptFormat | None = None,
) -> list[Trajectory]:
    """Unscored trajectories, ``group_size`` (one int, or one per problem) per problem, problem-major, with
    one prefill per problem.

    ``prefixes[i]``, when given, is a partial response (token ids) that problem i's samples continue: the
    trajectory's response is the prefix followed by the sampled tokens, its ``prefix_len`` is the length
    of the prefix, and its log-probs are 0 on the given tokens. ``groups[i]`` is the group id of problem
    i's samples (default: i). ``prompt_format`` is how prompts are shown (sirl.prompts; default: raw).
    """
    prefixes = prefixes or [[] for _ in problems]
    groups = groups if groups is not None else list(range(len(problems)))
    prompt_format = prompt_format or PromptFormat(tokenizer)
    prompts = [prompt_format.encode(p.prompt) for p in problems]
    generations = generate(
        model,
        [prompt + prefix for prompt, prefix in zip(prompts, prefixes)],
        params,
        eos_ids=response_end_ids(model, tokenizer, prompt_format),
        pad_id=tokenizer.pad_token_id,
        repeats=group_size,
        generator=generator,
        max_batch=max_batch,
        decode=text_decoder(tokenizer),
    )
    rows = []
    for row in range(len(generations)):
        index = int(generations.context_index_B[row])
        response = prefixes[index] + generations.row_tokens(row)
        text, offsets = token_char_offsets(tokenizer, response)
        if generations.stopped_B is not None and bool(generations.stopped_B[row]):
            text = before_stop(text, params.stop)  # its tokens belong to the last step, as EOS does
        rows.append((index, response, text, offsets))
    trajectories = []
    for row, (index, response, text, offsets) in enumerate(rows):
        prefix = prefixes[index]
        trajectories.append(
            Trajectory(
                problem=problems[index],
                prompt_ids=prompts[index],
                response_ids=response,
                logprobs=[0.0] * len(prefix) + generations.logp_BT[row, : len(response) - len(prefix)].tolist(),
                text=text,
                reward=None,
                truncated=bool(generations.truncated_B[row]),
                group=groups[index],
                step_spans=char_spans_to_token_spans(task.split_steps(text), offsets, len(text)),
                prefix_len=len(prefix),
            )
        )
    return trajectories

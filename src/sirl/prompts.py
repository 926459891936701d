"""What the model sees: a task's prompt as text and token ids, raw or in the tokenizer's chat format.

A task's prompt (``Problem.prompt``) is the problem alone ("7+5*3-2=", a GSM8K question). Instruct models
are trained on conversations, so for them the prompt goes in a user turn of the tokenizer's own chat
template (``apply_chat_template``), after an optional system prompt and ``few_shot`` worked examples from
the task's training split (each a user turn with the example's prompt and an assistant turn with its
reference solution), and generation starts after the assistant header (``add_generation_prompt=True``).
The template's end-of-turn token ends a response (:attr:`PromptFormat.stop_ids`).

``raw`` is the format sirl's own character-level policies were trained on: the prompt as is, encoded with
the tokenizer's special prefix; with ``few_shot`` > 0 the examples come first, each prompt followed by its
solution and a blank line. ``auto`` (the default) is ``chat`` when the tokenizer has a chat template and
``raw`` otherwise; sirl's character-level tokenizers have none, so their prompts are exactly as before.

:meth:`PromptFormat.text` is the exact text the model sees, special tokens included: runs record it
(``prompt.json``, the ``prompt_text`` of samples.jsonl) and ``sirl eval`` prints one.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from transformers import PreTrainedTokenizerBase

from sirl.config import ConfigError, PromptConfig
from sirl.tasks.base import Task

FEW_SHOT_SEPARATOR = "\n\n"
"""Between the worked examples of a raw few-shot prompt (and after the last one)."""


def has_chat_template(tokenizer: PreTrainedTokenizerBase) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


@dataclass(frozen=True)
class PromptFormat:
    tokenizer: PreTrainedTokenizerBase
    kind: str = "raw"
    """"chat" or "raw" (never "auto": :func:`prompt_format` resolves it)."""
    system: str | None = None
    examples: tuple[tuple[str, str], ...] = ()
    """(prompt, solution) pairs shown before the problem."""
    stop_ids: tuple[int, ...] = field(default=())
    """Token ids that end a response besides the tokenizer's EOS: the chat template's end-of-turn token."""

    def text(self, prompt: str) -> str:
        """The exact text the model is given for a task prompt (special tokens included)."""
        if self.kind == "raw":
            return "".join(p + s + FEW_SHOT_SEPARATOR for p, s in self.examples) + prompt
        return self.tokenizer.apply_chat_template(self.messages(prompt), tokenize=False, add_generation_prompt=True)

    def messages(self, prompt: str) -> list[dict[str, str]]:
        """The conversation of a chat prompt: system, examples as earlier turns, the problem as the last user turn."""
        messages = [{"role": "system", "content": self.system}] if self.system else []
        for example_prompt, solution in self.examples:
            messages += [{"role": "user", "content": example_prompt.strip()}, {"role": "assistant", "content": solution}]
        # The task's trailing newline (gsm8k) is the raw format's cue to start writing; in a turn it is noise.
        return messages + [{"role": "user", "content": prompt.strip()}]

    def encode(self, prompt: str) -> list[int]:
        """Token ids of :meth:`text`. Raw prompts get the tokenizer's own special prefix (a BOS, where it
        has one), as before; a chat template writes its special tokens itself, so none are added."""
        return self.tokenizer(self.text(prompt), add_special_tokens=self.kind == "raw")["input_ids"]


def end_of_turn_ids(tokenizer: PreTrainedTokenizerBase) -> tuple[int, ...]:
    """The special token the chat template writes right after an assistant message (``<|im_end|>``,
    ``<|eot_id|>``, ...), found by rendering a two-turn conversation; () when it writes none."""
    marker = "SIRL_END_OF_TURN_PROBE"
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "x"}, {"role": "assistant", "content": marker}], tokenize=False
    )
    after = text[text.rfind(marker) + len(marker):]
    ids = tokenizer(after, add_special_tokens=False)["input_ids"]
    special = set(tokenizer.all_special_ids) | {i for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items() if t.special}
    return (ids[0],) if ids and ids[0] in special else ()


def prompt_format(config: PromptConfig, tokenizer: PreTrainedTokenizerBase, task: Task) -> PromptFormat:
    """The format ``config`` asks for, with its few-shot examples drawn from ``task``'s training split
    (distinct prompts, the same for the same ``config.few_shot_seed``)."""
    kind = config.format
    if kind == "auto":
        kind = "chat" if has_chat_template(tokenizer) else "raw"
    if kind == "chat" and not has_chat_template(tokenizer):
        raise ConfigError(
            "prompt.format=chat but the model's tokenizer has no chat template (sirl's own character-level policies "
            "have none); use prompt.format=raw or auto"
        )
    if kind == "raw" and config.system:
        raise ConfigError("prompt.system is set but prompt.format is raw, which has no system turn; use prompt.format=chat or drop prompt.system")
    rng = random.Random(f"few-shot-{config.few_shot_seed}")
    examples: dict[str, str] = {}
    for _ in range(100 * config.few_shot):
        if len(examples) == config.few_shot:
            break
        problem = task.sample(rng, "train")
        examples.setdefault(problem.prompt, task.reference_solution(problem))
    stop = end_of_turn_ids(tokenizer) if kind == "chat" else ()
    return PromptFormat(tokenizer, kind, config.system, tuple(examples.items()), stop)


def describe_format(fmt: PromptFormat) -> str:
    """One line: the format, its system prompt and its examples."""
    parts = [fmt.kind]
    if fmt.system:
        parts.append(f"system prompt {fmt.system!r}")
    parts.append(f"{len(fmt.examples)} worked example(s)")
    if fmt.stop_ids:
        parts.append(f"end of turn {[fmt.tokenizer.convert_ids_to_tokens(i) for i in fmt.stop_ids]}")
    return ", ".join(parts)


def prompt_record(fmt: PromptFormat, example_prompt: str) -> dict:
    """What a run or an evaluation records about its prompts: the format and the exact text of one."""
    return {
        "format": fmt.kind, "system": fmt.system, "few_shot": len(fmt.examples),
        "end_of_turn_ids": list(fmt.stop_ids), "example_prompt": example_prompt, "example_text": fmt.text(example_prompt),
    }

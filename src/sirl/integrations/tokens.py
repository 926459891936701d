"""A response's token ids -> its text, each token's characters in it, and its ``step_ends``: what the TRL
and verl adapters give the credit core. The tokenizer is used here only; ``sirl.credit.steps`` is pure."""

from __future__ import annotations

from collections.abc import Sequence

from sirl.credit.steps import Splitter, split_steps, token_step_ends
from sirl.rollout.steps import token_char_offsets


def completion_offsets(tokenizer, token_ids: Sequence[int]) -> tuple[str, list[tuple[int, int]]]:
    """The completion's text (special tokens skipped, as TRL decodes it for its reward functions) and each token's characters
    ``(start, end)`` in it; a token that writes no text has ``start == end``. A fast tokenizer's offset
    mapping where re-encoding the text gives back the sampled ids (:func:`mapped_offsets`), otherwise the
    offsets found by decoding (:func:`decoded_offsets`)."""
    return mapped_offsets(tokenizer, token_ids) or decoded_offsets(tokenizer, token_ids)


def mapped_offsets(tokenizer, token_ids: Sequence[int]) -> tuple[str, list[tuple[int, int]]] | None:
    """Offsets from a fast tokenizer's ``return_offsets_mapping`` on the decoded text, special tokens
    ``(0, 0)``; None for a slow tokenizer, or when the text re-encodes to other ids than were sampled
    (a sampled segmentation the tokenizer would not produce itself)."""
    if not getattr(tokenizer, "is_fast", False):
        return None
    ids = [int(t) for t in token_ids]
    text = tokenizer.decode(ids, skip_special_tokens=True)
    special = set(tokenizer.all_special_ids)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    if encoded["input_ids"] != [t for t in ids if t not in special]:
        return None
    mapping = iter(encoded["offset_mapping"])
    return text, [(0, 0) if t in special else tuple(next(mapping)) for t in ids]


def decoded_offsets(tokenizer, token_ids: Sequence[int]) -> tuple[str, list[tuple[int, int]]]:
    """Offsets from decoding, for any tokenizer: token i starts at the length of the text the tokens
    before it decode to (sirl.rollout.steps.token_char_offsets, which sirl's own rollouts use) and ends
    where the next one starts; a byte token that only begins a character writes no text."""
    text, starts = token_char_offsets(tokenizer, [int(t) for t in token_ids])
    ends = [*starts[1:], len(text)]
    return text, [(start, max(start, end)) for start, end in zip(starts, ends)]


def completion_step_ends(tokenizer, token_ids: Sequence[int], splitter: Splitter) -> list[int]:
    """``step_ends`` of one completion: its text split by ``splitter``, mapped onto its tokens."""
    text, offsets = completion_offsets(tokenizer, token_ids)
    return token_step_ends(split_steps(text, splitter), offsets)

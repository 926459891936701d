"""Map a task's character step spans onto response token indices.

A token belongs to the step that contains its first character; a token that produces no text belongs to
the step of the character after it, and at the end of the response (EOS) to the last step. Token spans therefore partition the response tokens exactly as the character spans
partition the text.

With a BPE vocabulary a token can hold the end of one step and the start of the next ("\\n " ends a
line and starts the next one's indent): it belongs to the first, so a step's tokens decode to its
characters with the boundary moved to the token boundary, and the prefix through a step (its tokens, which
is what probes continue) decodes to exactly the steps before (:func:`aligned_char_spans`). A step that no
token starts in (its characters all inside a token of the step before) would have no tokens; it is joined
to the step before, so no token span is empty (except the single step of an empty response). A multi-byte
character split over several byte tokens is never cut: its later tokens belong with its first.
"""

from __future__ import annotations

import bisect

from transformers import PreTrainedTokenizerBase

from sirl.types import Span


def token_char_offsets(tokenizer: PreTrainedTokenizerBase, token_ids: list[int]) -> tuple[str, list[int]]:
    """The decoded text (special tokens skipped) and, per token, the offset of its first character.

    Fast path: decode each token alone and add up the lengths, exact whenever single-token decodes
    concatenate to the whole decode (character-level and most BPE vocabularies). Otherwise (a multi-byte
    character split across byte tokens, decoders that merge spaces) fall back to decoding every prefix,
    which is exact for any tokenizer at quadratic cost.
    """
    text = tokenizer.decode(token_ids, skip_special_tokens=True)
    pieces = tokenizer.batch_decode([[t] for t in token_ids], skip_special_tokens=True)
    if "".join(pieces) == text:
        offsets, position = [], 0
        for piece in pieces:
            offsets.append(position)
            position += len(piece)
        return text, offsets
    # A prefix that ends inside a multi-byte character decodes with U+FFFD for its partial bytes; they are
    # not counted, so the tokens that finish a character start where the character does.
    offsets = [len(tokenizer.decode(token_ids[:i], skip_special_tokens=True).rstrip("\ufffd")) for i in range(len(token_ids))]
    return text, offsets


def char_spans_to_token_spans(char_spans: list[Span], token_offsets: list[int], text_length: int) -> list[Span]:
    """Token spans ``[start, end)`` for each character span (a partition of the text).

    Token i goes to the step containing character ``token_offsets[i]``; a token starting at the very end
    of the text (EOS, or any zero-width token) goes to the last step.
    """
    step_starts = [start for start, _ in char_spans]
    owners = [max(bisect.bisect_right(step_starts, min(offset, max(text_length - 1, 0))) - 1, 0) for offset in token_offsets]
    spans, cursor = [], 0
    for step in range(len(char_spans)):
        end = bisect.bisect_right(owners, step, lo=cursor)
        spans.append((cursor, end))
        cursor = end
    if not token_offsets:
        return spans
    # A step no token starts in joins the step before it (the first step, the one after it).
    merged: list[Span] = []
    for start, end in spans:
        if end > start:
            merged.append((merged.pop()[0] if merged and merged[-1][0] == merged[-1][1] else start, end))
        elif merged:
            merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return merged


def aligned_char_spans(token_spans: list[Span], token_offsets: list[int], text_length: int) -> list[Span]:
    """The character spans of token spans: each step's characters as its tokens write them (step
    boundaries moved to token boundaries). ``text[a:b]`` over them are the texts probes see as prefixes."""
    starts = [token_offsets[start] if start < len(token_offsets) else text_length for start, _ in token_spans]
    starts[0] = 0
    return [(a, b) for a, b in zip(starts, starts[1:] + [text_length])]

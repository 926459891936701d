"""Map a task's character step spans onto response token indices.

A token belongs to the step that contains its first character; a token that produces no text belongs to
the step of the character after it, and at the end of the response (EOS) to the last step. Token spans therefore partition the response tokens exactly as the character spans
partition the text.
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
    offsets = [len(tokenizer.decode(token_ids[:i], skip_special_tokens=True)) for i in range(len(token_ids))]
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
    return spans

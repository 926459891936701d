"""Step boundaries of a response: its text split into steps, and those steps mapped onto its tokens.

Two pure functions, on strings and integers only (no tokenizer object), so that the TRL and verl adapters
and sirl's own tasks give the credit the same ``step_ends``:

- :func:`split_steps` ``(text, splitter) -> [(start, end), ...]``: the character spans of the steps, in
  order, contiguous, covering the text (an empty text is one empty step).
- :func:`token_step_ends` ``(char_spans, token_offsets) -> [end, ...]``: per step, the token offset where it
  ends (strictly increasing, the last one the number of tokens), what ``sirl.credit`` reads as ``step_ends``.

A splitter is a name, ``"regex:<pattern>"``, or any callable ``text -> spans``:

    lines       one step per line, its newline included; a blank line (empty or whitespace only) joins
                the step before it, leading blank lines the first step (so no step is whitespace alone:
                a tokenizer that writes "\\n\\n" as one token would leave it without a token of its own).
                The same spans as ``sirl.tasks.base.split_lines`` (prose tasks such as gsm8k).
    sentences   a step ends after ``.``, ``!`` or ``?`` (closing quotes and brackets included) followed by
                whitespace, and at every line break; the whitespace after the end belongs to the step it
                ends. A plain rule: "e.g. " ends a step too.
    regex:P     a step ends after each match of the regular expression P (``re.finditer``); a zero-width
                match (a lookahead, ``regex:(?=Step )``) ends a step where it stands. ``regex:;`` gives
                arith's steps (``7+5=2;`` ``2*3=6;`` ``#6``), the same spans as ``ArithTask.split_steps``.

Token rule (the one ``sirl.rollout.steps`` applies to sirl's own rollouts, so both give the same step ends):
a token belongs to the step that contains its first character, so a token that straddles a boundary
("\\n " ends a line and starts the next one's indent) belongs to the step where it starts. A token that
writes no text (EOS, any special token) belongs to the step of the character after it, at the end of the
text to the last step. A step that no token starts in joins the step before it (its characters lie inside
a token of that step), so no step is empty of tokens (except the one step of an empty response).
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Callable, Sequence

Span = tuple[int, int]
"""Characters ``[start, end)`` of a text."""
SplitterFn = Callable[[str], Sequence[Span]]
Splitter = str | SplitterFn
"""A name in :data:`SPLITTERS`, ``"regex:<pattern>"``, or a callable ``text -> spans``."""

REGEX_PREFIX = "regex:"


def _spans_from_ends(ends: Sequence[int], length: int) -> list[Span]:
    """Contiguous spans ending at each of ``ends`` (ascending, inside ``(0, length)``; others dropped) and
    the remainder as the last span; one empty span for an empty text."""
    bounds = sorted({e for e in ends if 0 < e < length})
    starts = [0, *bounds]
    return list(zip(starts, [*bounds, length]))


def split_lines(text: str) -> list[Span]:
    """One step per line (module docstring): a line ends after its ``\\n``; blank lines join the step
    before them, leading blank lines the first step."""
    ends, pending = [], False  # pending: a line with text since the last end
    position = 0
    for line in re.findall(r"[^\n]*\n|[^\n]+$", text):  # lines end at "\n" only (not at "\r" as str.splitlines)
        position += len(line)
        if line.strip():
            if pending:  # the previous line with text ends its step here, where this one starts
                ends.append(position - len(line))
            pending = True
    return _spans_from_ends(ends, len(text))


_SENTENCE_END = re.compile(r"[.!?]+[\"'\u201d\u2019)\]]*\s+|\n\s*")


def split_sentences(text: str) -> list[Span]:
    """A step ends after a sentence's end mark and the whitespace after it, or after a line break and the
    whitespace after it (module docstring)."""
    return _spans_from_ends([m.end() for m in _SENTENCE_END.finditer(text)], len(text))


def regex_splitter(pattern: str) -> SplitterFn:
    """The splitter ``regex:<pattern>``: a step ends after each match of ``pattern``."""
    try:
        compiled = re.compile(pattern)
    except re.error as error:
        raise ValueError(f"step splitter {REGEX_PREFIX}{pattern!r}: not a valid regular expression ({error})") from None

    def split(text: str) -> list[Span]:
        return _spans_from_ends([m.end() for m in compiled.finditer(text)], len(text))

    split.__name__ = f"{REGEX_PREFIX}{pattern}"
    return split


SPLITTERS: dict[str, SplitterFn] = {"lines": split_lines, "sentences": split_sentences}
"""The named splitters; ``regex:<pattern>`` and callables are accepted besides them."""


def resolve_splitter(splitter: Splitter) -> SplitterFn:
    """The callable of a splitter given by name, by ``regex:<pattern>`` or as a callable."""
    if callable(splitter):
        return splitter
    if isinstance(splitter, str):
        if splitter.startswith(REGEX_PREFIX):
            return regex_splitter(splitter[len(REGEX_PREFIX):])
        if splitter in SPLITTERS:
            return SPLITTERS[splitter]
    raise ValueError(
        f"unknown step splitter {splitter!r}; give one of {sorted(SPLITTERS)}, '{REGEX_PREFIX}<pattern>' "
        "(a step ends after each match), or a callable text -> [(start, end), ...]"
    )


def check_spans(spans: Sequence[Span], length: int, source: str = "step splitter") -> list[Span]:
    """``spans`` as a list of int pairs, after checking that they cover ``[0, length)`` in order with no gap
    or overlap (empty spans are allowed: they get no token). Raises ValueError naming ``source``."""
    spans = [(int(a), int(b)) for a, b in spans]
    if not spans:
        raise ValueError(f"{source} returned no step for a text of {length} characters; return at least one span, (0, {length})")
    cursor = 0
    for index, (start, end) in enumerate(spans):
        if start != cursor or end < start:
            raise ValueError(
                f"{source}: step {index} is {(start, end)}, expected it to start at {cursor} (the end of the step "
                "before) and not end before it starts; steps must cover the text in order without gaps"
            )
        cursor = end
    if cursor != length:
        raise ValueError(f"{source}: the steps end at character {cursor}, the text has {length}; the last step must end at the text's end")
    return spans


def split_steps(text: str, splitter: Splitter = "lines") -> list[Span]:
    """The character spans of the steps of ``text`` (checked to cover it; module docstring)."""
    split = resolve_splitter(splitter)
    return check_spans(split(text), len(text), f"step splitter {getattr(split, '__name__', split)!r}")


def token_step_ends(char_spans: Sequence[Span], token_offsets: Sequence[tuple[int, int]]) -> list[int]:
    """Per step, the token offset where it ends: ``step_ends`` of ``sirl.credit`` (strictly increasing, the
    last one ``len(token_offsets)``; ``[0]`` for a response of no tokens).

    ``char_spans`` are the steps of a text (:func:`split_steps`); ``token_offsets[i] = (start, end)`` are the
    characters token i writes (a fast tokenizer's ``return_offsets_mapping``; a token that writes no text
    has ``start == end``, whatever its position: fast tokenizers give special tokens ``(0, 0)``). The token
    rule is the module docstring's: a token belongs to the step of its first character, a token without
    text to the step of the character after the text before it; a step no token starts in joins the step
    before. The naive twin is ``sirl.rollout.steps.char_spans_to_token_spans`` (tests hold them equal).
    """
    char_spans = check_spans(char_spans, char_spans[-1][1] if char_spans else 0, "token_step_ends: char_spans")
    length = char_spans[-1][1]
    step_starts = [start for start, _ in char_spans]
    owners = []
    written_to = last_start = 0  # where the text of the tokens so far ends; where the last one with text starts
    for index, (start, end) in enumerate(token_offsets):
        if end > start:  # the bytes of one character share its offsets, so starts may repeat, never go back
            if start < last_start or end > length:
                raise ValueError(
                    f"token_step_ends: token {index} has offsets {(start, end)} after a token starting at {last_start} "
                    f"(text length {length}); offsets must be in order and inside the text"
                )
            last_start, written_to = start, max(written_to, end)
        position = start if end > start else written_to
        owners.append(bisect.bisect_right(step_starts, min(position, max(length - 1, 0))) - 1)
    ends = [i + 1 for i in range(len(owners) - 1) if owners[i + 1] != owners[i]]
    return [*ends, len(owners)]

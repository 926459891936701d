"""sirl.credit.steps: step splitters and the mapping of character steps onto token step ends, against
hand-derived spans and against sirl's own splitters and token mapping (the naive twins)."""

from __future__ import annotations

import random

import pytest

from sirl.credit.steps import SPLITTERS, check_spans, split_steps, token_step_ends
from sirl.rollout.steps import char_spans_to_token_spans
from sirl.tasks.base import split_lines, split_on_separator


def test_lines_hand_derived():
    # "a\n" "\n" "b\n" "c": the blank line joins the step before it -> [0,3) [3,5) [5,6)
    assert split_steps("a\n\nb\nc", "lines") == [(0, 3), (3, 5), (5, 6)]
    # lines "\n" [0,1) " \n" [1,3) "x\ry\n" [3,7) "z\n" [7,9): the leading blank lines belong to the first
    # step, and "\r" is not a line end
    assert split_steps("\n \nx\ry\nz\n", "lines") == [(0, 7), (7, 9)]
    assert split_steps("", "lines") == [(0, 0)]
    assert split_steps("\n\n", "lines") == [(0, 2)]


def test_sentences_hand_derived():
    text = 'He said "go." Then: 3.5 left!  Done\nNext'
    # ends: after 'go."' and its space (14), after "left!" and two spaces (31), after the line break (36);
    # "3.5" is not an end (no whitespace after the dot)
    assert split_steps(text, "sentences") == [(0, 14), (14, 31), (31, 36), (36, 40)]


def test_regex_hand_derived():
    assert split_steps("7+5=2;2*3=6;#6", "regex:;") == [(0, 6), (6, 12), (12, 14)]
    assert split_steps("7+5=2;", "regex:;") == [(0, 6)]  # no empty step after a final match
    # a zero-width match ends a step where it stands
    assert split_steps("Step 1 x Step 2 y", "regex:(?=Step )") == [(0, 9), (9, 17)]


def test_callable_and_errors():
    assert split_steps("abcd", lambda t: [(0, 1), (1, 4)]) == [(0, 1), (1, 4)]
    with pytest.raises(ValueError, match="start at 1"):
        split_steps("abcd", lambda t: [(0, 1), (2, 4)])
    with pytest.raises(ValueError, match="the text has 4"):
        split_steps("abcd", lambda t: [(0, 3)])
    with pytest.raises(ValueError, match=r"\['lines', 'sentences'\]"):
        split_steps("abcd", "paragraphs")
    with pytest.raises(ValueError, match="not a valid regular expression"):
        split_steps("abcd", "regex:(")
    assert sorted(SPLITTERS) == ["lines", "sentences"]


def random_text(rng: random.Random, alphabet: str = "ab \n.;!?\r") -> str:
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 14)))


def test_named_splitters_give_sirls_task_spans():
    """`lines` is sirl's prose split (gsm8k), `regex:;` arith's: the same spans on random texts."""
    rng = random.Random(0)
    for _ in range(3000):
        text = random_text(rng)
        assert split_steps(text, "lines") == split_lines(text), repr(text)
        assert split_steps(text, "regex:;") == split_on_separator(text, ";"), repr(text)


def test_token_step_ends_hand_derived():
    # steps "ab\n" [0,3) "cd" [3,5); tokens "a" "b\nc" "d" <eos>: "b\nc" starts in step 0 so belongs to it,
    # "d" to step 1, <eos> (offsets (0, 0), no text) to the step of the character after the text: the last.
    assert token_step_ends([(0, 3), (3, 5)], [(0, 1), (1, 4), (4, 5), (0, 0)]) == [2, 4]
    # step 1 "c" [3,4) lies inside the token "b\ncd" that starts in step 0: it joins step 0
    assert token_step_ends([(0, 3), (3, 4), (4, 6)], [(0, 1), (1, 5), (5, 6)]) == [2, 3]
    # a special token between steps belongs to the step after it (the character after it)
    assert token_step_ends([(0, 2), (2, 4)], [(0, 2), (0, 0), (2, 4)]) == [1, 3]
    # two byte tokens of one character share its offsets
    assert token_step_ends([(0, 1), (1, 2)], [(0, 1), (1, 2), (1, 2)]) == [1, 3]
    assert token_step_ends([(0, 0)], []) == [0]
    assert token_step_ends([(0, 0)], [(0, 0)]) == [1]
    with pytest.raises(ValueError, match="in order"):
        token_step_ends([(0, 4)], [(2, 3), (0, 1)])
    with pytest.raises(ValueError, match="inside the text"):
        token_step_ends([(0, 4)], [(0, 5)])


def test_token_step_ends_equal_sirls_token_mapping():
    """Naive twin: sirl.rollout.steps.char_spans_to_token_spans on the same steps and tokens (random
    partitions of random texts into tokens, with tokens that write no text sprinkled in)."""
    rng = random.Random(1)
    for _ in range(3000):
        text = random_text(rng)
        cuts = sorted(rng.sample(range(1, len(text)), rng.randint(0, max(len(text) - 1, 0)))) if len(text) > 1 else []
        bounds = [0, *cuts, len(text)] if text else [0]
        offsets = []
        for a, b in zip(bounds, bounds[1:]):
            if rng.random() < 0.2:
                offsets.append((0, 0))
            offsets.append((a, b))
        if rng.random() < 0.5:
            offsets.append((0, 0))  # EOS
        starts, written = [], 0  # sirl's offsets: the length of the text before each token
        for a, b in offsets:
            starts.append(a if b > a else written)
            written = max(written, b)
        for spans in (split_steps(text, "lines"), split_steps(text, "sentences"), split_steps(text, "regex:;")):
            expected = [end for _, end in char_spans_to_token_spans(spans, starts, len(text))]
            assert token_step_ends(spans, offsets) == (expected if offsets else [0]), (text, spans, offsets)


def test_check_spans_accepts_empty_steps_inside():
    assert check_spans([(0, 2), (2, 2), (2, 3)], 3) == [(0, 2), (2, 2), (2, 3)]
    assert token_step_ends([(0, 2), (2, 2), (2, 3)], [(0, 1), (1, 2), (2, 3)]) == [2, 3]

"""Chat prompts, stop strings and natural-language steps on a BPE tokenizer with merged-whitespace tokens
("\\n\\n", "\\n ") and multi-byte characters split over byte tokens (tests/bpe_helpers.py)."""

from __future__ import annotations

import random

import pytest
import torch

from bpe_helpers import IM_END, bpe_tokenizer, tiny_llama
from sirl.config import ConfigError, PromptConfig
from sirl.model import encode_prompt, encode_text
from sirl.prompts import prompt_format
from sirl.rollout import SamplingParams, generate, sample_trajectories
from sirl.rollout.steps import aligned_char_spans, char_spans_to_token_spans, token_char_offsets
from sirl.tasks import load_task
from sirl.tasks.base import split_lines, split_on_separator
from sirl.tokenizer import build_char_tokenizer

TEXTS = [
    "Janet has 16 eggs.\n\nShe eats 3.\n 13 are left.\n\n#### 13\n",
    "Le café coûte 3 €.\n\nDeux cafés: 6 €.\n 日本 😀\n\n",
    "\n\n 1+1=2\n 2+2=4\n\n3+3=6\n \n#### 6",
    "😀\n😀😀\n\n日本\n",
    "one line only",
    "",
]


def test_the_helper_tokenizer_merges_whitespace_and_splits_multibyte_characters():
    """Without these the step tests below would not test what they claim."""
    tokenizer = bpe_tokenizer()
    pieces = [tokenizer.decode([i]) for i in encode_text(tokenizer, "a\n\nb\n c 😀")]
    assert "\n\n" in pieces and "\n " in pieces
    assert len(encode_text(tokenizer, "😀")) > 1  # a character over several byte tokens


def token_steps(tokenizer, text, splitter=split_lines):
    ids = encode_text(tokenizer, text) + [tokenizer.eos_token_id]
    decoded, offsets = token_char_offsets(tokenizer, ids)
    assert decoded == text
    spans = char_spans_to_token_spans(splitter(text), offsets, len(text))
    return ids, offsets, spans


@pytest.mark.parametrize("text", TEXTS)
def test_prose_steps_have_tokens_and_prefixes_decode_to_the_steps_before(text):
    tokenizer = bpe_tokenizer()
    ids, offsets, spans = token_steps(tokenizer, text)
    # A partition of the response tokens (EOS included, in the last step) into non-empty spans.
    assert spans[0][0] == 0 and spans[-1][1] == len(ids)
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    assert all(end > start for start, end in spans)
    chars = aligned_char_spans(spans, offsets, len(text))
    assert "".join(text[a:b] for a, b in chars) == text
    for k, (start, end) in enumerate(spans):
        # The prefix through step k (what a probe continues) decodes to exactly the steps before and this one,
        # and a step's tokens decode to its characters: boundaries are token boundaries.
        assert tokenizer.decode(ids[:end], skip_special_tokens=True) == text[: chars[k][1]]
        assert tokenizer.decode(ids[start:end], skip_special_tokens=True) == text[chars[k][0] : chars[k][1]]
        assert "\ufffd" not in tokenizer.decode(ids[:end], skip_special_tokens=True)  # never inside a character
    # Each step holds exactly one line with text (blank lines and a line-start space ride with a neighbour).
    if text.strip():
        assert [sum(1 for line in text[a:b].split("\n") if line.strip()) for a, b in chars] == [1] * len(chars)


def test_the_old_line_splitter_leaves_steps_without_tokens_on_this_tokenizer():
    """The failure the prose splitter removes: a bare blank-line step inside a merged "\\n\\n" token."""
    tokenizer = bpe_tokenizer()
    text = TEXTS[0]
    char_spans = split_on_separator(text, "\n")
    ids = encode_text(tokenizer, text)
    _, offsets = token_char_offsets(tokenizer, ids)
    step_starts = [start for start, _ in char_spans]
    owners = {max(i for i, s in enumerate(step_starts) if s <= min(o, len(text) - 1)) for o in offsets}
    assert len(owners) < len(char_spans)  # some step owns no token
    assert all(end > start for start, end in char_spans_to_token_spans(char_spans, offsets, len(text)))  # now joined


def test_the_real_model_steps_are_the_same_under_the_char_tokenizer():
    """sirl's own char-level policies: one token per character, spans exactly the character spans."""
    text = "1+2=3;3*4=2;#2"
    tokenizer = build_char_tokenizer(text)
    ids = encode_text(tokenizer, text) + [tokenizer.eos_token_id]
    _, offsets = token_char_offsets(tokenizer, ids)
    spans = char_spans_to_token_spans(split_on_separator(text, ";"), offsets, len(text))
    assert spans == [(0, 6), (6, 12), (12, 15)]
    assert aligned_char_spans(spans, offsets, len(text)) == split_on_separator(text, ";")


def test_chat_format_puts_the_problem_in_the_user_turn_after_worked_examples():
    tokenizer = bpe_tokenizer()
    task = load_task("arith", min_ops=2, max_ops=3)
    fmt = prompt_format(PromptConfig(few_shot=2, system="Be exact."), tokenizer, task)
    assert fmt.kind == "chat" and len(fmt.examples) == 2
    problem = task.sample(random.Random(0), "test")
    text = fmt.text(problem.prompt)
    assert text.startswith("<|im_start|>system\nBe exact.<|im_end|>\n<|im_start|>user\n")
    assert text.endswith(f"<|im_start|>user\n{problem.prompt}<|im_end|>\n<|im_start|>assistant\n")
    for prompt, solution in fmt.examples:  # examples are training problems with their reference solutions
        assert f"<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n{solution}<|im_end|>" in text
        from sirl.tasks.base import split_of
        assert split_of(prompt, task.test_fraction) == "train"
    assert text.index(fmt.examples[0][1]) < text.index(fmt.examples[1][1]) < text.rindex(problem.prompt)
    ids = fmt.encode(problem.prompt)
    assert tokenizer.decode(ids) == text and ids.count(tokenizer.bos_token_id) == text.count("<|im_start|>")  # no extra BOS
    assert fmt.stop_ids == (tokenizer.convert_tokens_to_ids(IM_END),)
    # The same seed gives the same examples; another seed other ones.
    assert prompt_format(PromptConfig(few_shot=2), tokenizer, task).examples == fmt.examples
    assert prompt_format(PromptConfig(few_shot=2, few_shot_seed=1), tokenizer, task).examples != fmt.examples


def test_char_level_policies_keep_raw_prompts_exactly():
    task = load_task("arith")
    tokenizer = build_char_tokenizer(task.alphabet())
    fmt = prompt_format(PromptConfig(), tokenizer, task)
    assert fmt.kind == "raw" and fmt.stop_ids == ()
    prompt = task.sample(random.Random(0), "test").prompt
    assert fmt.encode(prompt) == encode_prompt(tokenizer, prompt) and fmt.text(prompt) == prompt
    with pytest.raises(ConfigError, match="prompt.format=chat"):
        prompt_format(PromptConfig(format="chat"), tokenizer, task)
    few = prompt_format(PromptConfig(few_shot=1), tokenizer, task)
    (example, solution), = few.examples
    assert few.text(prompt) == f"{example}{solution}\n\n{prompt}"


def test_the_end_of_turn_token_ends_a_chat_response():
    import dataclasses

    tokenizer = bpe_tokenizer()
    model = tiny_llama(tokenizer).eval()
    task = load_task("gsm8k")
    fmt = prompt_format(PromptConfig(), tokenizer, task)
    problem = task.problem(task.indices("test")[0])
    params = SamplingParams(12, temperature=0.0)
    free = generate(model, [fmt.encode(problem.prompt)], params, eos_ids=[999_999], pad_id=tokenizer.pad_token_id).row_tokens(0)
    # Let the format's end-of-turn id be the token greedy writes fourth: the response must end right there.
    end = free[3]
    cut = free[: free.index(end) + 1]
    out = sample_trajectories(model, tokenizer, task, [problem], params, group_size=1, prompt_format=dataclasses.replace(fmt, stop_ids=(end,)))
    assert out[0].response_ids == cut and not out[0].truncated
    assert tokenizer.decode(out[0].prompt_ids) == fmt.text(problem.prompt)  # what the model saw, exactly
    plain = sample_trajectories(model, tokenizer, task, [problem], params, group_size=1, prompt_format=fmt)
    assert plain[0].response_ids == free or fmt.stop_ids[0] in plain[0].response_ids


def test_stop_strings_end_a_row_right_after_the_token_that_completes_them():
    tokenizer = bpe_tokenizer()
    model = tiny_llama(tokenizer, seed=3).eval()
    context = encode_text(tokenizer, "Janet has")
    params = SamplingParams(40, temperature=1.0)
    free = generate(model, [context], params, eos_ids=[999_999], pad_id=tokenizer.pad_token_id, repeats=6,
                    generator=torch.Generator().manual_seed(0))
    texts = [tokenizer.decode(free.row_tokens(r)) for r in range(len(free))]
    # A stop string that some rows write: two characters from the middle of the first row's text.
    row_text = texts[0]
    stop = row_text[len(row_text) // 2 : len(row_text) // 2 + 2]
    stopped = generate(model, [context], SamplingParams(40, temperature=1.0, stop=(stop,)), eos_ids=[999_999], pad_id=tokenizer.pad_token_id,
                       repeats=6, generator=torch.Generator().manual_seed(0), decode=tokenizer.decode)
    hits = 0
    for r in range(len(free)):
        tokens, cut = free.row_tokens(r), stopped.row_tokens(r)
        assert tokens[: len(cut)] == cut  # the same draws up to the stop
        if stop in texts[r]:
            hits += 1
            n = next(i for i in range(1, len(tokens) + 1) if stop in tokenizer.decode(tokens[:i]))
            assert len(cut) == n and not bool(stopped.truncated_B[r])
        else:
            assert cut == tokens and bool(stopped.truncated_B[r])
    assert hits >= 1
    assert stopped.stopped_B.tolist() == [stop in t for t in texts]
    with pytest.raises(ValueError, match="decode"):
        generate(model, [context], SamplingParams(4, stop=("x",)), eos_ids=[0], pad_id=0)


def test_the_verifier_scores_the_text_before_a_stop_string():
    from sirl.rollout import before_stop

    assert before_stop("#5\n\n3+4=", ("\n\n",)) == "#5" and before_stop("#5", ("\n",)) == "#5"
    assert before_stop("a;b\nc", ("\n", ";")) == "a"

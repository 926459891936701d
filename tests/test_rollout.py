"""The rollout engine against naive references: HF generate, teacher forcing, per-row sampling."""

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from sirl.model import SIZE_PRESETS, build_model, load_model, token_logprobs
from sirl.paths import resolve_path
from sirl.rollout import SamplingParams, generate
from sirl.rollout.engine import FastBackend, HFBackend
from sirl.rollout.steps import char_spans_to_token_spans, token_char_offsets
from sirl.tasks.arith import ArithTask

BACKENDS = {"fast": FastBackend, "hf": HFBackend}
SHIPPED = ["checkpoints/arith-tiny", "checkpoints/countdown-tiny"]


def left_padded(contexts, pad_id=0):
    width = max(map(len, contexts))
    ids = torch.full((len(contexts), width), pad_id)
    mask = torch.zeros((len(contexts), width), dtype=torch.long)
    for i, c in enumerate(contexts):
        ids[i, width - len(c) :] = torch.tensor(c)
        mask[i, width - len(c) :] = 1
    return ids, mask


def hf_greedy(model, contexts, max_new_tokens, eos, pad_id):
    ids, mask = left_padded(contexts, pad_id)
    out = model.generate(
        input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
        eos_token_id=eos, pad_token_id=pad_id,
    )
    rows = []
    for row in out[:, ids.shape[1] :].tolist():
        # generate pads finished rows with pad_id after their EOS
        cut = next((i + 1 for i, t in enumerate(row) if t in eos), len(row))
        rows.append(row[:cut])
    return rows


@pytest.fixture(params=["llama", "qwen2"])
def model(request, arith_tokenizer):
    return build_model(arith_tokenizer, request.param, SIZE_PRESETS["nano"], 256, seed=1).eval()


CONTEXTS = [[5, 6, 7], [8, 9, 10, 11, 12, 13, 14], [15], [16, 17, 18, 19]]


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_greedy_matches_hf_generate(model, backend):
    out = generate(model, CONTEXTS, SamplingParams(20, temperature=0.0), eos_ids=[1], pad_id=0, backend=BACKENDS[backend](model))
    assert [out.row_tokens(i) for i in range(len(out))] == hf_greedy(model, CONTEXTS, 20, [1], 0)


@pytest.mark.parametrize("backend", sorted(BACKENDS))
@pytest.mark.parametrize("temperature, top_p", [(1.0, 1.0), (0.7, 0.9)])
def test_sampled_logprobs_equal_teacher_forcing(model, backend, temperature, top_p):
    params = SamplingParams(25, temperature=temperature, top_p=top_p)
    out = generate(
        model, CONTEXTS, params, eos_ids=[1], pad_id=0, repeats=[3, 1, 2, 1],
        generator=torch.Generator().manual_seed(0), backend=BACKENDS[backend](model),
    )
    assert out.context_index_B.tolist() == [0, 0, 0, 1, 2, 2, 3]
    for row in range(len(out)):
        context = CONTEXTS[int(out.context_index_B[row])]
        new = out.row_tokens(row)
        full = torch.tensor([context + new])
        logits = model(full).logits[0, len(context) - 1 : -1].float() / temperature
        expected = torch.log_softmax(logits, -1).gather(-1, torch.tensor(new)[:, None]).squeeze(-1)
        assert torch.allclose(out.logp_BT[row, : len(new)], expected, atol=1e-5)
        assert out.mask_BT[row].sum() == len(new) and not out.mask_BT[row, len(new) :].any()
        assert (out.logp_BT[row, len(new) :] == 0).all() and (out.tokens_BT[row, len(new) :] == 0).all()
        assert bool(out.truncated_B[row]) == (1 not in new)


def test_backends_sample_the_same_tokens(model):
    params = SamplingParams(25, temperature=1.0)
    runs = [
        generate(model, CONTEXTS, params, eos_ids=[1], pad_id=0, repeats=2, generator=torch.Generator().manual_seed(3), backend=cls(model))
        for cls in BACKENDS.values()
    ]
    assert torch.equal(runs[0].tokens_BT, runs[1].tokens_BT)


def test_shared_prefill_equals_one_row_per_sample(model):
    """repeats=[2, 3] reuses each context's cache; the naive equivalent lists the contexts 2 and 3 times."""
    params = SamplingParams(25, temperature=1.0)
    shared = generate(model, CONTEXTS[:2], params, eos_ids=[1], pad_id=0, repeats=[2, 3], generator=torch.Generator().manual_seed(5))
    naive = generate(model, [CONTEXTS[0]] * 2 + [CONTEXTS[1]] * 3, params, eos_ids=[1], pad_id=0, generator=torch.Generator().manual_seed(5))
    assert torch.equal(shared.tokens_BT, naive.tokens_BT)
    assert torch.allclose(shared.logp_BT, naive.logp_BT, atol=1e-6)


def test_chunks_do_not_change_greedy_output(model):
    params = SamplingParams(15, temperature=0.0)
    whole = generate(model, CONTEXTS, params, eos_ids=[1], pad_id=0, repeats=2)
    chunked = generate(model, CONTEXTS, params, eos_ids=[1], pad_id=0, repeats=2, max_batch=3)
    assert torch.equal(whole.tokens_BT, chunked.tokens_BT)


def naive_greedy(model, context: list[int], max_new_tokens: int, eos: int) -> tuple[list[int], bool]:
    """The definition: one full forward pass per token, the argmax, stop after EOS. (tokens, truncated)."""
    ids = list(context)
    with torch.no_grad():
        for _ in range(max_new_tokens):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
            if ids[-1] == eos:
                return ids[len(context) :], False
    return ids[len(context) :], True


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_eos_ends_rows_and_truncation_is_flagged(arith_tokenizer, backend):
    model = build_model(arith_tokenizer, "llama", SIZE_PRESETS["nano"], 256, seed=2).eval()
    # The nano model's tied read-out repeats the last token forever; an untied random one wanders, and its
    # greedy paths from these contexts reach EOS (id 1) at different steps, or never.
    model.lm_head.weight = torch.nn.Parameter(torch.randn(model.lm_head.weight.shape, generator=torch.Generator().manual_seed(0)))
    contexts = [[6, 5, 21], [21, 20], [20, 18, 11, 22], [12, 2, 8, 2], [15, 8], [5, 6]]
    expected = [naive_greedy(model, c, 10, eos=1) for c in contexts]
    # EOS as the first, second, fourth, eighth (after generated pad ids) and tenth (the last allowed) token,
    # and a row that never ends
    assert [len(tokens) for tokens, _ in expected] == [1, 2, 4, 8, 10, 10] and [t for _, t in expected] == [False] * 5 + [True]
    out = generate(model, contexts, SamplingParams(10, temperature=0.0), eos_ids=[1], pad_id=0, backend=BACKENDS[backend](model))
    assert [(out.row_tokens(i), bool(out.truncated_B[i])) for i in range(len(out))] == expected
    assert out.lengths_B.tolist() == [len(tokens) for tokens, _ in expected]
    for row, (tokens, _) in enumerate(expected):  # nothing after the end: padding, masked out
        assert out.mask_BT[row].sum() == len(tokens) and (out.tokens_BT[row, len(tokens) :] == 0).all()


def test_bad_arguments_are_explained(model):
    with pytest.raises(ValueError, match="at least one token"):
        generate(model, [[]], SamplingParams(5), eos_ids=[1], pad_id=0)
    with pytest.raises(ValueError, match="repeats"):
        generate(model, [[5]], SamplingParams(5), eos_ids=[1], pad_id=0, repeats=[1, 2])
    with pytest.raises(ValueError, match="max_position_embeddings"):
        generate(model, [[5]], SamplingParams(1000), eos_ids=[1], pad_id=0)
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(5, top_p=0)


@pytest.mark.parametrize("path", SHIPPED)
def test_greedy_matches_hf_generate_on_shipped_policies(path):
    if not (resolve_path(path) / "config.json").exists():
        pytest.fail(f"{path} is missing: regenerate it with the commands in checkpoints/README.md")
    from sirl.evaluate import heldout_problems
    from sirl.tasks import load_task

    model, tokenizer = load_model(path)
    task = load_task(path.split("/")[-1].split("-")[0])
    problems = heldout_problems(task, 48, seed=0)
    contexts = [tokenizer(p.prompt)["input_ids"] for p in problems]
    out = generate(model, contexts, SamplingParams(160, temperature=0.0), eos_ids=[tokenizer.eos_token_id], pad_id=tokenizer.pad_token_id)
    expected = hf_greedy(model, contexts, 160, [tokenizer.eos_token_id], tokenizer.pad_token_id)
    assert [out.row_tokens(i) for i in range(len(out))] == expected
    # and the sampled log-probs of a trained policy match teacher forcing too
    sampled = generate(model, contexts, SamplingParams(160), eos_ids=[1], pad_id=0, generator=torch.Generator().manual_seed(0))
    for row in range(0, len(sampled), 7):
        new = sampled.row_tokens(row)
        full = torch.tensor([contexts[row] + new])
        lp, _ = token_logprobs(model, full, torch.ones_like(full))
        assert torch.allclose(sampled.logp_BT[row, : len(new)], lp[0, len(contexts[row]) - 1 :], atol=1e-5)


# --- step spans onto tokens -------------------------------------------------------------------------


def naive_token_steps(char_spans, token_offsets, text_length):
    """Reference: scan every token and every step."""
    owners = []
    for offset in token_offsets:
        position = min(offset, max(text_length - 1, 0))
        owner = 0
        for step, (start, end) in enumerate(char_spans):
            if start <= position < end or (start == end == position):
                owner = step
        owners.append(owner)
    return [[i for i, o in enumerate(owners) if o == step] for step in range(len(char_spans))]


def test_step_map_is_exact_for_the_char_tokenizer(arith_tokenizer):
    task = ArithTask()
    text = "7+5=2;2*3=6;6-2=4;#4"
    ids = arith_tokenizer(text)["input_ids"] + [arith_tokenizer.eos_token_id]
    decoded, offsets = token_char_offsets(arith_tokenizer, ids)
    assert decoded == text and offsets == list(range(len(text))) + [len(text)]
    spans = char_spans_to_token_spans(task.split_steps(text), offsets, len(text))
    assert spans == [(0, 6), (6, 12), (12, 18), (18, 21)]  # EOS (token 20) belongs to the answer step


def test_step_map_with_a_bpe_tokenizer_matches_a_naive_scan():
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<pad>", "<eos>", "<unk>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    corpus = ["7+5=2;2*3=6;6-2=4;#4", "1+1=2;2*2=4;#4", "3-1=2;2+2=4;4*4=6;#6"] * 50
    backend.train_from_iterator(corpus, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    task = ArithTask()
    assert len(tokenizer("7+5=2;2*3=6;6-2=4;#4")["input_ids"]) < 20  # tokens span several characters
    for text in ["7+5=2;2*3=6;6-2=4;#4", "1+1=2;2*2=4;#4", "3-1=2;2+2", ""]:
        ids = tokenizer(text)["input_ids"] + [tokenizer.eos_token_id]
        decoded, offsets = token_char_offsets(tokenizer, ids)
        assert decoded == text
        char_spans = task.split_steps(text)
        spans = char_spans_to_token_spans(char_spans, offsets, len(text))
        assert [list(range(s, e)) for s, e in spans] == naive_token_steps(char_spans, offsets, len(text))
        assert spans[-1][1] == len(ids)  # a partition: the last span ends at the last token (EOS)

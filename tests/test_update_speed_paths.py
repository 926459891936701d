"""The update's large-model paths against their naive twins: the scored-position head (_ScoredHead) against
the log-softmax of the full logits, shared-context forward passes (response_logprobs) against
token_logprobs, values and gradients; micro-batches by context; fused AdamW; the activation budget."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

import sirl.model
from sirl.batch import PolicyBatch, TokenBatch
from sirl.config import AlgoConfig
from sirl.distributed import Distributed
from sirl.model import token_logprobs
from sirl.update import (
    HEAD_CHUNK, _context_micro_batches, _ScoredHead, activation_bytes_per_token, adamw, auto_micro_batch_tokens, policy_update,
    response_logprobs, uses_response_logprobs,
)

V = 300


def gqa_llama(seed: int = 0) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=V, hidden_size=96, intermediate_size=192, num_hidden_layers=3, num_attention_heads=6, num_key_value_heads=2,
        max_position_embeddings=256, tie_word_embeddings=True, pad_token_id=0, eos_token_id=1, bos_token_id=None,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def grouped_batch(seed: int = 0):
    """Two prompts (5 and 9 tokens) with 3 sampled responses each of different lengths, one prompt alone,
    and a row whose first 3 response tokens are a given prefix (not scored): left-padded as sirl collates."""
    g = torch.Generator().manual_seed(seed)
    prompt_a, prompt_b, prompt_c = (torch.randint(2, V, (n,), generator=g).tolist() for n in (5, 9, 4))
    rows = []  # (prompt, response, unscored response tokens)
    for prompt, lengths in ((prompt_a, (6, 11, 3)), (prompt_b, (8, 8, 12)), (prompt_c, (7,))):
        for n in lengths:
            rows.append((prompt, torch.randint(2, V, (n,), generator=g).tolist(), 0))
    rows.append((prompt_a, torch.randint(2, V, (9,), generator=g).tolist(), 3))
    width = max(len(p) + len(r) for p, r, _ in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    attention = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width - 1)
    for i, (prompt, response, unscored) in enumerate(rows):
        sequence = prompt + response
        ids[i, width - len(sequence) :] = torch.tensor(sequence)
        attention[i, width - len(sequence) :] = 1
        mask[i, width - len(response) - 1 + unscored :] = 1  # position t scores token t + 1
    return ids, attention, mask


def grads(model):
    return [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("chunk", [HEAD_CHUNK, 7])
def test_scored_head_equals_the_log_softmax_of_the_full_logits_with_gradients(chunk):
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(40, 16, generator=g, requires_grad=True)
    weight = torch.randn(V, 16, generator=g, requires_grad=True)
    targets = torch.randint(0, V, (40,), generator=g)
    upstream = torch.randn(40, generator=g)
    # Naive: the full logits, float32 log-softmax, gather (sirl.model.token_logprobs on these positions).
    log_probs = F.log_softmax(F.linear(hidden, weight), -1)
    naive_logp = log_probs.gather(-1, targets[:, None]).squeeze(-1)
    naive_entropy = -(log_probs.exp() * log_probs).sum(-1)
    (naive_logp * upstream).sum().backward()
    naive_grads = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    logp, entropy = _ScoredHead.apply(hidden, weight, targets, torch.float32, chunk)
    (logp * upstream).sum().backward()
    assert torch.allclose(logp, naive_logp, atol=1e-5) and torch.allclose(entropy, naive_entropy.detach(), atol=1e-5)
    assert not entropy.requires_grad
    assert torch.allclose(hidden.grad, naive_grads[0], atol=1e-5) and torch.allclose(weight.grad, naive_grads[1], atol=1e-5)


def test_a_frozen_head_gets_no_gradient_and_the_hidden_states_theirs():
    g = torch.Generator().manual_seed(2)
    hidden = torch.randn(12, 16, generator=g, requires_grad=True)
    weight = torch.randn(V, 16, generator=g)  # frozen, as under LoRA
    targets = torch.randint(0, V, (12,), generator=g)
    _ScoredHead.apply(hidden, weight, targets, torch.float32, 5)[0].sum().backward()
    naive = hidden.grad.clone()
    hidden.grad = None
    F.log_softmax(F.linear(hidden, weight), -1).gather(-1, targets[:, None]).sum().backward()
    assert weight.grad is None and torch.allclose(naive, hidden.grad, atol=1e-5)


def test_scored_head_in_bf16_matches_autocast():
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(30, 32, generator=g, requires_grad=True)
    weight = (torch.randn(V, 32, generator=g) * 0.3).requires_grad_()
    targets = torch.randint(0, V, (30,), generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = F.linear(hidden, weight)  # bf16, as the model's head under autocast
    naive = F.log_softmax(logits.float(), -1).gather(-1, targets[:, None]).squeeze(-1)
    naive.sum().backward()
    naive_grads = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    logp, _ = _ScoredHead.apply(hidden, weight, targets, torch.bfloat16, 8)
    logp.sum().backward()
    assert torch.allclose(logp, naive, atol=1e-5)  # the same bf16 logits, the same float32 log-softmax
    # Gradients: both are bf16 products of bf16-rounded factors; they differ by bf16 rounding (2^-8 relative).
    for mine, theirs in zip((hidden.grad, weight.grad), naive_grads):
        assert (mine - theirs).norm() <= 1e-2 * theirs.norm()


@pytest.mark.parametrize("chunk", [HEAD_CHUNK, 5])
def test_shared_context_log_probs_equal_token_logprobs_with_gradients(chunk):
    model = gqa_llama()
    ids, attention, mask = grouped_batch()
    upstream = torch.randn(mask.shape, generator=torch.Generator().manual_seed(3))
    naive_logp, naive_entropy = token_logprobs(model, ids, attention, mask, full_logits_max=10**12)
    (naive_logp * mask * upstream).sum().backward()
    naive_grads = grads(model)
    model.zero_grad()
    logp, entropy = response_logprobs(model, ids, attention, mask, chunk=chunk)
    (logp * mask * upstream).sum().backward()
    on = mask.bool()
    assert torch.allclose(logp[on], naive_logp[on], atol=1e-5) and torch.allclose(entropy[on], naive_entropy[on], atol=1e-5)
    assert (logp[~on] == 0).all() and (entropy[~on] == 0).all()
    for mine, theirs in zip(grads(model), naive_grads):
        assert torch.allclose(mine, theirs, atol=1e-5, rtol=1e-4)


def test_shared_contexts_are_computed_once(monkeypatch):
    model = gqa_llama()
    ids, attention, mask = grouped_batch()
    calls = []
    decoder = model.get_decoder()
    real = decoder.forward
    monkeypatch.setattr(decoder, "forward", lambda **kw: (calls.append(tuple(kw["input_ids"].shape)), real(**kw))[1])
    response_logprobs(model, ids, attention, mask)
    # Three distinct contexts (prompt a, prompt b, prompt c) and prompt a + 3 given tokens: 4 rows of context,
    # then all 8 rows' rest.
    assert len(calls) == 2 and calls[0][0] == 4 and calls[1][0] == len(ids)
    assert calls[0][1] + calls[1][1] < ids.shape[1] + 3


def test_a_row_without_context_runs_every_row_whole():
    model = gqa_llama()
    ids, attention, mask = grouped_batch()
    mask[2] = 0
    mask[2, attention[2].argmax() :] = 1  # row 2 is scored from its first token on: no context to share
    naive = token_logprobs(model, ids, attention, mask, full_logits_max=10**12)[0]
    on = mask.bool()
    assert torch.allclose(response_logprobs(model, ids, attention, mask)[0][on], naive[on], atol=1e-5)


def test_context_micro_batches_hold_every_row_once_groups_together_within_the_budget():
    ids, attention, mask = grouped_batch()
    tokens = TokenBatch(ids, attention, mask)
    T = ids.shape[1]
    first = [int(m.nonzero()[0]) for m in mask]
    start = [int(a.nonzero()[0]) for a in attention]
    context = [tuple(ids[b, start[b] : first[b]].tolist()) for b in range(len(ids))]

    def cost(rows):  # each distinct context once, plus every row's rest
        return sum(len(c) for c in {context[b] for b in rows}) + sum(T - first[b] for b in rows)

    for size, budget in ((64, None), (3, None), (64, 40), (64, 1)):
        batches = [b.tolist() for b in _context_micro_batches(tokens, size, budget)]
        assert sorted(sum(batches, [])) == list(range(len(ids)))
        assert all(1 <= len(b) <= size for b in batches)
        assert all(len(b) == 1 or budget is None or cost(b) <= budget for b in batches)
        if budget is None and size == 64:
            assert len(batches) == 1
    # Rows of one context sit side by side: prompt b's three rows (3, 4, 5) are consecutive.
    flat = torch.cat(_context_micro_batches(tokens, 64, None)).tolist()
    where = sorted(flat.index(r) for r in (3, 4, 5))
    assert where[2] - where[0] == 2


def update_step(model, large: bool, monkeypatch):
    monkeypatch.setattr(sirl.model, "LARGE_MODEL_PARAMETERS", 1 if large else 10**12)
    ids, attention, mask = grouped_batch()
    with torch.no_grad():
        old = token_logprobs(model, ids, attention, mask)[0]
    adv = torch.randn(mask.shape, generator=torch.Generator().manual_seed(1)) * mask
    batch = PolicyBatch(TokenBatch(ids, attention, mask), old + 0.05 * mask, adv, torch.ones(len(ids)))
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)  # the step is the (clipped) gradient itself
    stats = policy_update(model, optimizer, batch, AlgoConfig(), norm_length=12, micro_batch_size=3, micro_batch_tokens=40, grad_clip=1.0,
                          generator=torch.Generator().manual_seed(0), dist=Distributed.from_env(torch.device("cpu")))
    return stats, torch.cat([p.detach().flatten() for p in model.parameters()])


def test_the_large_model_update_takes_the_small_model_step(monkeypatch):
    small_stats, small = update_step(gqa_llama(), large=False, monkeypatch=monkeypatch)
    model = gqa_llama()
    monkeypatch.setattr(sirl.model, "LARGE_MODEL_PARAMETERS", 1)
    assert uses_response_logprobs(model)
    large_stats, large = update_step(model, large=True, monkeypatch=monkeypatch)
    before = torch.cat([p.detach().flatten() for p in gqa_llama().parameters()])
    assert (small - before).abs().max() > 1e-3  # the step moved the weights
    assert (large - small).abs().max() < 1e-5
    for key in ("policy_loss", "entropy", "clip_frac", "grad_norm"):
        assert getattr(large_stats, key) == pytest.approx(getattr(small_stats, key), rel=1e-4, abs=1e-6)


def test_the_large_model_update_packs_micro_batches_by_tokens_not_by_padded_rows(monkeypatch):
    model = gqa_llama()
    monkeypatch.setattr(sirl.model, "LARGE_MODEL_PARAMETERS", 1)
    ids, attention, mask = grouped_batch()
    batch = PolicyBatch(TokenBatch(ids, attention, mask), torch.zeros(mask.shape), mask.clone(), torch.ones(len(ids)))
    passes = []
    decoder = model.get_decoder()
    real = decoder.forward
    monkeypatch.setattr(decoder, "forward", lambda **kw: (passes.append(tuple(kw["input_ids"].shape)), real(**kw))[1])
    # 8 rows of 21 padded tokens are 168 tokens, over the budget of 120; their 4 distinct contexts once plus
    # every row's rest are 91 tokens, under it: one micro-batch, two decoder passes.
    policy_update(model, torch.optim.SGD(model.parameters(), lr=0.0), batch, AlgoConfig(), norm_length=12, micro_batch_size=64,
                  micro_batch_tokens=120, grad_clip=1.0, generator=torch.Generator().manual_seed(0),
                  dist=Distributed.from_env(torch.device("cpu")))
    assert len(passes) == 2 and passes[1][0] == len(ids)


def test_adamw_is_fused_for_large_models_only(monkeypatch):
    model = gqa_llama()
    assert not adamw(model, lr=1e-3, weight_decay=0.0).defaults["fused"]
    monkeypatch.setattr(sirl.model, "LARGE_MODEL_PARAMETERS", 1)
    assert adamw(model, lr=1e-3, weight_decay=0.0).defaults["fused"]


def test_large_models_get_an_activation_budget_of_twice_their_weights():
    smollm2 = LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3)

    class Model:  # SmolLM2-135M's shape and parameter count, without its weights
        config = smollm2

        def __init__(self, dtype=None):
            if dtype is not None:
                self.sirl_compute_dtype = dtype

        def parameters(self):
            return iter([torch.empty(134_515_008, device="meta")])

    fp32, bf16 = auto_micro_batch_tokens(Model()), auto_micro_batch_tokens(Model(torch.bfloat16))
    # 2 x 538 MB over the estimated activations of a token (1.8 MB in float32, 60% of it under bf16).
    assert fp32 == 2 * 4 * 134_515_008 // activation_bytes_per_token(smollm2) and 500 < fp32 < 700
    assert 900 < bf16 < 1100

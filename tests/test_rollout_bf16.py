"""The large-model decoding path (LargeModelBackend: weights cast once, oneDNN-packed on a CPU, cache read in
place, block sampling) against its naive equivalents, and bf16 decoding against float32.

Tolerances, and why:
- LargeModelBackend in float32 against FastBackend (the module-by-module path): 1e-5 on log-probs. The
  same arithmetic in another order (oneDNN's blocked products instead of MKL's, attention on a transposed
  cache); float32 rounding over a few layers stays near 1e-6.
- bf16 against float32, teacher-forced on the same tokens: the mean absolute log-prob difference at most
  0.01 nats on the tiny model and 0.05 nats on SmolLM2-135M, every token within 0.05 and 0.3 nats. bf16
  keeps 8 significant bits, so each matrix product's inputs carry a relative rounding of up to 2^-9 and
  a logit of 20 is rounded by up to 0.06; over SmolLM2's 30 layers that gave a mean of 0.03 nats and a
  largest difference of 0.18 on 4 x 48 gsm8k tokens (measured, float32 head: 0.017 and 0.13). The
  bound that matters is PPO's clip range: the sampling log-probs are the ratio's denominator, and a
  mean error of 0.05 nats is a quarter of log(1.2) = 0.18, so most tokens' ratios stay well inside it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

import sirl.model
from sirl.model import token_logprobs
from sirl.rollout import SamplingParams, generate, resolve_rollout_dtype, rollout_dtype
from sirl.rollout import engine
from sirl.rollout.engine import (
    FastBackend, HFBackend, LargeModelBackend, _shared_roots, pick_backend, sample_next, sample_next_by_blocks,
)

SMOLLM2 = Path(__file__).resolve().parents[1] / "models/smollm2-135m-instruct"


def gqa_llama(seed: int = 0, vocab: int = 300) -> LlamaForCausalLM:
    """A tiny random Llama shaped like SmolLM2 (grouped-query attention: 6 query heads on 2 key heads)."""
    config = LlamaConfig(
        vocab_size=vocab, hidden_size=96, intermediate_size=192, num_hidden_layers=3, num_attention_heads=6, num_key_value_heads=2,
        max_position_embeddings=256, tie_word_embeddings=True, pad_token_id=0, eos_token_id=1, bos_token_id=None,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


def other_architecture(arch: str):
    """A tiny random qwen2 (biased q, k, v projections) or qwen3 (q and k RMSNorms) of the same shape."""
    from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

    config_cls, model_cls = {"qwen2": (Qwen2Config, Qwen2ForCausalLM), "qwen3": (Qwen3Config, Qwen3ForCausalLM)}[arch]
    config = config_cls(
        vocab_size=300, hidden_size=96, intermediate_size=192, num_hidden_layers=2, num_attention_heads=6, num_key_value_heads=2,
        head_dim=16, max_position_embeddings=256, tie_word_embeddings=True, pad_token_id=0, eos_token_id=1, bos_token_id=None,
        use_sliding_window=False,
    )
    torch.manual_seed(0)
    model = model_cls(config).eval()
    with torch.no_grad():  # random gains and biases, so that folding and permuting them is tested
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or name.endswith("proj.bias"):
                p.copy_(1 + 0.3 * torch.randn_like(p) if name.endswith("weight") else 0.3 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("arch", ["qwen2", "qwen3"])
def test_large_backend_in_float32_equals_the_module_by_module_path_on_qwen(arch):
    model = other_architecture(arch)
    ctx = contexts()
    sampled = generate(model, ctx, SamplingParams(20), eos_ids=[10**6], pad_id=0, generator=torch.Generator().manual_seed(0))
    fast = teacher_forced_decode(FastBackend(model), ctx, sampled.tokens_BT)
    large = teacher_forced_decode(LargeModelBackend(model, torch.float32), ctx, sampled.tokens_BT)
    assert (fast - large).abs().max() < 1e-5
    for row, context in enumerate(ctx):  # and transformers' own forward over each whole sequence
        ids = torch.tensor([context + sampled.row_tokens(row)])
        with torch.no_grad():
            reference = F.log_softmax(model(ids).logits[0, len(context) - 1 : -1], -1).gather(-1, ids[0, len(context) :, None]).squeeze(-1)
        assert (large[row] - reference).abs().max() < 1e-5
    bf16 = teacher_forced_decode(LargeModelBackend(model, torch.bfloat16), ctx, sampled.tokens_BT)
    assert 0 < (bf16 - fast).abs().mean() <= 0.01


def contexts(lengths=(3, 7, 1, 12), seed=1, vocab=300):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(2, vocab, (n,), generator=g).tolist() for n in lengths]


def teacher_forced_decode(backend, context_list, tokens_BT) -> torch.Tensor:
    """[B, T] log-probs of ``tokens_BT`` under ``backend``, fed through its own prefill and decode steps."""
    P, T = max(map(len, context_list)), tokens_BT.shape[1]
    ids = torch.zeros(len(context_list), P, dtype=torch.long)
    mask = torch.zeros(len(context_list), P, dtype=torch.bool)
    for i, c in enumerate(context_list):
        ids[i, P - len(c) :], mask[i, P - len(c) :] = torch.tensor(c), True
    out = []
    with torch.no_grad(), backend.autocast():
        logits, state = backend.prefill(ids, mask, P + T)
        for t in range(T):
            out.append(F.log_softmax(logits, -1).gather(-1, tokens_BT[:, t : t + 1]).squeeze(-1))
            if t < T - 1:
                logits = backend.decode(tokens_BT[:, t], state)
    return torch.stack(out, 1)


@pytest.mark.parametrize("packed, cache_block", [(True, 64), (False, 64), (True, 4)])
def test_large_backend_in_float32_equals_the_module_by_module_path(packed, cache_block, monkeypatch):
    if packed and not engine._onednn_linear_available(torch.float32):
        pytest.skip("this torch build has no oneDNN packed linear")
    monkeypatch.setattr(engine, "CACHE_BLOCK", cache_block)  # 4: the cache grows many times, before and after copies
    model = gqa_llama()
    ctx = contexts()
    # Greedy: the same tokens; per-row repeats 2, 1, 3, 1 exercise the cache copy for uneven groups, and EOS
    # (id 5, frequent under this model) finishes rows so the batch is compacted on the way.
    params = SamplingParams(30, temperature=0.0)
    kwargs = dict(eos_ids=[5], pad_id=0, repeats=[2, 1, 3, 1])
    naive = generate(model, ctx, params, backend=FastBackend(model), **kwargs)
    large = generate(model, ctx, params, backend=LargeModelBackend(model, torch.float32, packed=packed), **kwargs)
    assert torch.equal(naive.tokens_BT, large.tokens_BT) and torch.equal(naive.mask_BT, large.mask_BT)
    assert (naive.logp_BT - large.logp_BT).abs().max() < 1e-5
    # Sampled tokens fed back through both: every decode step's log-probs agree.
    sampled = generate(model, ctx, SamplingParams(24), eos_ids=[10**6], pad_id=0, generator=torch.Generator().manual_seed(0))
    fast = teacher_forced_decode(FastBackend(model), ctx, sampled.tokens_BT)
    packed_lp = teacher_forced_decode(LargeModelBackend(model, torch.float32, packed=packed), ctx, sampled.tokens_BT)
    assert (fast - packed_lp).abs().max() < 1e-5


def probe_contexts():
    """Probes as si takes them: two prompts, each under several prefixes of a response, and a lone prompt."""
    g = torch.Generator().manual_seed(4)
    a, b, c = (torch.randint(2, 300, (n,), generator=g).tolist() for n in (14, 9, 6))
    response_a, response_b = torch.randint(2, 300, (12,), generator=g).tolist(), torch.randint(2, 300, (7,), generator=g).tolist()
    return [a + response_a[:3], b + response_b[:1], a + response_a[:9], c, a, b + response_b[:6], a + response_a[:12]]


def test_shared_roots_are_what_contexts_have_in_common_and_save_work():
    ctx = probe_contexts()
    root_B, length_B = _shared_roots(ctx)
    for i, j in ((0, 2), (0, 4), (0, 6), (1, 5)):
        assert root_B[i] == root_B[j] >= 0
    assert root_B[3] == -1 and root_B[0] != root_B[1]
    for i, c in enumerate(ctx):
        if root_B[i] >= 0:
            group = [ctx[j] for j in range(len(ctx)) if root_B[j] == root_B[i]]
            # the root is common to the group (naive check) and leaves every context at least one token
            assert all(g[: length_B[i]] == c[: length_B[i]] for g in group) and length_B[i] < len(c)
    assert length_B[4] == 13  # prompt a alone is 14 tokens: the root of its group stops one short
    cost = sum(1 for r in set(root_B) if r >= 0) * max(length_B) + len(ctx) * max(len(c) - n for c, n in zip(ctx, length_B))
    assert cost < len(ctx) * max(map(len, ctx))
    assert _shared_roots([[1, 2, 3], [4, 5, 6]]) is None and _shared_roots([[1, 2, 3]]) is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_shared_root_prefill_equals_prefilling_every_context_whole(dtype, monkeypatch):
    model = gqa_llama()
    ctx = probe_contexts()
    params = SamplingParams(16, temperature=0.0)
    kwargs = dict(eos_ids=[5], pad_id=0, repeats=[2, 1, 1, 3, 1, 2, 1])
    calls = []
    real = LargeModelBackend._prefill_shared
    monkeypatch.setattr(LargeModelBackend, "_prefill_shared", lambda self, *a: (calls.append(1), real(self, *a))[1])
    shared = generate(model, ctx, params, backend=LargeModelBackend(model, dtype), **kwargs)
    assert calls  # the roots were shared
    monkeypatch.setattr(engine, "_shared_roots", lambda contexts: None)
    whole = generate(model, ctx, params, backend=LargeModelBackend(model, dtype), **kwargs)
    naive = generate(model, ctx, params, backend=FastBackend(model), **kwargs)
    if dtype == torch.float32:
        assert torch.equal(shared.tokens_BT, naive.tokens_BT) and (shared.logp_BT - naive.logp_BT).abs().max() < 1e-5
    # bf16 rounds the two layouts' products alike only up to bf16: the tokens agree, the log-probs within bf16's tolerance
    assert torch.equal(shared.tokens_BT, whole.tokens_BT) and (shared.logp_BT - whole.logp_BT).abs().max() < (1e-5 if dtype == torch.float32 else 0.05)


def test_large_backend_sampling_log_probs_equal_teacher_forcing():
    model = gqa_llama()
    ctx = contexts()
    out = generate(model, ctx, SamplingParams(20, temperature=0.8), eos_ids=[5], pad_id=0, repeats=3,
                   generator=torch.Generator().manual_seed(2), backend=LargeModelBackend(model, torch.float32))
    # The naive reference: one teacher-forced forward of transformers' own model over each finished sequence.
    for row in range(len(out)):
        context, response = ctx[int(out.context_index_B[row])], out.row_tokens(row)
        ids = torch.tensor([context + response])
        with torch.no_grad():
            logits = model(ids).logits[0, len(context) - 1 : -1] / 0.8
        expected = F.log_softmax(logits, -1).gather(-1, torch.tensor(response)[:, None]).squeeze(-1)
        assert (out.logp_BT[row, : len(response)] - expected).abs().max() < 1e-5


def test_bf16_decoding_is_within_its_tolerance_of_float32_on_a_tiny_model():
    model = gqa_llama()
    ctx = contexts()
    sampled = generate(model, ctx, SamplingParams(40), eos_ids=[10**6], pad_id=0, generator=torch.Generator().manual_seed(0),
                       backend=LargeModelBackend(model, torch.float32))
    fp32 = teacher_forced_decode(LargeModelBackend(model, torch.float32), ctx, sampled.tokens_BT)
    bf16 = teacher_forced_decode(LargeModelBackend(model, torch.bfloat16), ctx, sampled.tokens_BT)
    difference = (bf16 - fp32).abs()
    assert 0 < difference.mean() <= 0.01 and difference.max() <= 0.05  # bf16 does round (> 0), within the stated bound
    # The bf16 engine's own sampling log-probs are those of its decode steps.
    own = generate(model, ctx, SamplingParams(40), eos_ids=[10**6], pad_id=0, generator=torch.Generator().manual_seed(0),
                   backend=LargeModelBackend(model, torch.bfloat16))
    assert (teacher_forced_decode(LargeModelBackend(model, torch.bfloat16), ctx, own.tokens_BT) - own.logp_BT).abs().max() < 1e-5


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_block_sampler_draws_the_softmax_distribution(temperature):
    # V = 1000 is not a multiple of the block (256): the last block is padded with zero weights.
    g = torch.Generator().manual_seed(0)
    V, rows, draws = 1000, 500, 120
    logits_V = torch.randn(V, generator=g) * 2.5
    logits_V[7] = float("-inf")  # a token of probability 0 is never drawn
    logits_BV = logits_V.expand(rows, V).contiguous()
    params = SamplingParams(1, temperature=temperature)
    counts_V = torch.zeros(V)
    for _ in range(draws):
        tokens_B, logp_B = sample_next_by_blocks(logits_BV, params, g)
        counts_V += torch.bincount(tokens_B, minlength=V).float()
        expected_logp = F.log_softmax(logits_BV / temperature, -1).gather(-1, tokens_B[:, None]).squeeze(-1)
        assert (logp_B - expected_logp).abs().max() < 1e-5
    assert counts_V[7] == 0
    # Pearson's chi-square over the tokens expected at least 5 times (the rest pooled): with n - 1 degrees of
    # freedom its mean is n - 1 and its standard deviation sqrt(2 (n - 1)); a sampler off by one token, or
    # one that drops a block, lands hundreds of deviations away.
    p_V = F.softmax(logits_V / temperature, -1)
    expected_V = p_V * rows * draws
    big = expected_V >= 5
    observed = torch.cat([counts_V[big], counts_V[~big].sum()[None]])
    expected = torch.cat([expected_V[big], expected_V[~big].sum()[None]])
    chi2, dof = float(((observed - expected) ** 2 / expected).sum()), int(big.sum())
    assert chi2 < dof + 5 * (2 * dof) ** 0.5


def test_block_sampler_falls_back_to_the_exact_sampler_for_greedy_and_top_p():
    logits_BV = torch.randn(4, 600, generator=torch.Generator().manual_seed(0))
    for params in (SamplingParams(1, temperature=0.0), SamplingParams(1, top_p=0.9)):
        a = sample_next_by_blocks(logits_BV, params, torch.Generator().manual_seed(3))
        b = sample_next(logits_BV, params, torch.Generator().manual_seed(3))
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_rollout_dtype_auto_is_bf16_only_for_large_models_on_native_bf16(monkeypatch):
    model = gqa_llama()
    assert resolve_rollout_dtype("float32", model) == torch.float32 and resolve_rollout_dtype("bfloat16", model) == torch.bfloat16
    monkeypatch.setattr(engine, "native_bf16", lambda device: True)
    assert resolve_rollout_dtype("auto", model) == torch.float32  # small: its training dtype, as before
    model.sirl_compute_dtype = torch.bfloat16
    assert resolve_rollout_dtype("auto", model) == torch.bfloat16  # ... which may be bf16
    del model.sirl_compute_dtype
    monkeypatch.setattr(sirl.model, "LARGE_MODEL_PARAMETERS", 1000)
    assert resolve_rollout_dtype("auto", model) == torch.bfloat16
    assert isinstance(pick_backend(model), LargeModelBackend)
    monkeypatch.setattr(engine, "native_bf16", lambda device: False)
    assert resolve_rollout_dtype("auto", model) == torch.float32
    with pytest.raises(ValueError, match="rollout.dtype='float16' is not one of auto, float32, bfloat16"):
        resolve_rollout_dtype("float16", model)


def test_generate_samples_in_the_models_rollout_dtype():
    model = gqa_llama()
    assert rollout_dtype(model) == torch.float32 and pick_backend(model).dtype == torch.float32
    model.sirl_rollout_dtype = torch.bfloat16
    backend = pick_backend(model)
    assert type(backend) is FastBackend and backend.dtype == torch.bfloat16 and backend.cache_dtype == torch.bfloat16
    ctx = contexts()
    bf16 = generate(model, ctx, SamplingParams(12, temperature=0.0), eos_ids=[10**6], pad_id=0)
    del model.sirl_rollout_dtype
    fp32 = generate(model, ctx, SamplingParams(12, temperature=0.0), eos_ids=[10**6], pad_id=0)
    difference = (bf16.logp_BT - fp32.logp_BT).abs()
    assert difference.max() > 0 and (bf16.tokens_BT[:, :3] == fp32.tokens_BT[:, :3]).float().mean() >= 0.75
    assert isinstance(HFBackend(model, torch.bfloat16).autocast(), torch.autocast)


@pytest.mark.real
def test_bf16_decoding_of_smollm2_is_within_its_tolerance_of_float32():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (SMOLLM2 / "config.json").is_file():
        pytest.skip("run `make smollm2` first")
    tokenizer = AutoTokenizer.from_pretrained(SMOLLM2)
    model = AutoModelForCausalLM.from_pretrained(SMOLLM2, dtype=torch.float32).eval()
    questions = [json.loads(line)["question"] for line in (Path(__file__).resolve().parents[1] / "data/gsm8k/test.jsonl").open()][:4]
    ctx = [tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=True) for q in questions]
    ctx = [list(c["input_ids"]) if not isinstance(c, list) else c for c in ctx]
    sampled = generate(model, ctx, SamplingParams(48), eos_ids=[10**6], pad_id=0, generator=torch.Generator().manual_seed(0),
                       backend=LargeModelBackend(model, torch.float32))
    fp32 = teacher_forced_decode(LargeModelBackend(model, torch.float32), ctx, sampled.tokens_BT)
    # The float32 engine against transformers' own forward over the whole sequences (naive, teacher-forced).
    ids = torch.tensor([c + sampled.row_tokens(i) for i, c in enumerate(ctx)][0])[None]
    reference = token_logprobs(model, ids, torch.ones_like(ids))[0][0, len(ctx[0]) - 1 :]
    assert (fp32[0] - reference).abs().max() < 1e-4
    bf16 = teacher_forced_decode(LargeModelBackend(model, torch.bfloat16), ctx, sampled.tokens_BT)
    difference = (bf16 - fp32).abs()
    assert difference.mean() <= 0.05 and difference.max() <= 0.3

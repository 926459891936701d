"""Log-probabilities in chunks, bf16 compute on float32 master weights, micro-batches by tokens, gradient
checkpointing, LoRA (sampling, export merged, exact resume) and checkpoint retention."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from bpe_helpers import bpe_tokenizer, tiny_llama
from sirl import algos
from sirl.batch import PolicyBatch, TokenBatch
from sirl.checkpoint import prune_checkpoints
from sirl.config import AlgoConfig, ModelConfig
from sirl.distributed import Distributed
from sirl.model import add_lora, enable_checkpointing, load_adapter_weights, policy_from_config, save_model, token_logprobs, trainable_parameters
from sirl.rollout import SamplingParams, generate
from sirl.rollout.engine import FastBackend, HFBackend, pick_backend
from sirl.update import auto_micro_batch_tokens, micro_rows, policy_update


def batch_of(tokenizer, seed=0, B=5, T=23):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, len(tokenizer), (B, T), generator=g)
    attention = torch.ones(B, T, dtype=torch.long)
    attention[1, :4] = 0  # left padding
    attention[3, :9] = 0
    ids[attention == 0] = tokenizer.pad_token_id
    mask = torch.zeros(B, T - 1)
    mask[:, 10:] = 1  # the response: the last 12 positions
    mask[2, -3:] = 0
    return ids, attention, mask


def test_chunked_logprobs_equal_the_full_logits_ones_values_and_gradients():
    tokenizer = bpe_tokenizer()
    model = tiny_llama(tokenizer)
    ids, attention, mask = batch_of(tokenizer)
    full_logp, full_entropy = token_logprobs(model, ids, attention, mask, full_logits_max=10**12)
    (full_logp * mask).sum().backward()
    full_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    logp, entropy = token_logprobs(model, ids, attention, mask, full_logits_max=0, chunk=7)  # chunked, several chunks
    (logp * mask).sum().backward()
    on = mask.bool()
    assert torch.allclose(logp[on], full_logp[on], atol=1e-5) and torch.allclose(entropy[on], full_entropy[on], atol=1e-5)
    assert (logp[~on] == 0).all()  # only response positions are scored
    assert all(torch.allclose(p.grad, g, atol=1e-5, rtol=1e-4) for p, g in zip(model.parameters(), full_grads))
    with torch.no_grad():  # no gradient: the same numbers without checkpointed chunks
        assert torch.allclose(token_logprobs(model, ids, attention, mask, full_logits_max=0, chunk=5)[0], logp.detach())


def test_the_chunked_path_never_holds_the_full_logits(monkeypatch):
    tokenizer = bpe_tokenizer()
    model = tiny_llama(tokenizer)
    ids, attention, mask = batch_of(tokenizer, B=8, T=40)
    shapes = []
    real = torch.nn.functional.log_softmax
    monkeypatch.setattr(torch.nn.functional, "log_softmax", lambda x, *a, **k: (shapes.append(tuple(x.shape)), real(x, *a, **k))[1])
    token_logprobs(model, ids, attention, mask, full_logits_max=0, chunk=16)[0].sum().backward()
    assert shapes and all(s[0] <= 16 and len(s) == 2 for s in shapes)


def update_once(model, dtype=None, lr=1e-5, seed=0):
    """One PPO step of lr on a fixed batch; returns the change of every weight."""
    tokenizer = bpe_tokenizer()
    if dtype is not None:
        model.sirl_compute_dtype = dtype
    ids, attention, mask = batch_of(tokenizer, seed)
    with torch.no_grad():
        old = token_logprobs(model, ids, attention, mask)[0]
    adv = torch.randn(mask.shape, generator=torch.Generator().manual_seed(1)) * mask
    batch = PolicyBatch(TokenBatch(ids, attention, mask), old, adv, torch.ones(len(ids)))
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.AdamW(trainable_parameters(model), lr=lr, betas=(0.9, 0.99))
    policy_update(model, optimizer, batch, AlgoConfig(), norm_length=12, micro_batch_size=64, grad_clip=1.0,
                  generator=torch.Generator().manual_seed(0), dist=Distributed.from_env(torch.device("cpu")))
    return torch.cat([(p.detach() - b).flatten().float() for p, b in zip(model.parameters(), before)])


def test_a_bf16_step_moves_the_weights_as_a_float32_step_does():
    tokenizer = bpe_tokenizer()
    fp32 = update_once(tiny_llama(tokenizer))
    bf16 = update_once(tiny_llama(tokenizer), dtype=torch.bfloat16)
    assert (fp32 != 0).float().mean() > 0.9
    assert (bf16 != 0).float().mean() > 0.9  # the master weights are float32: small updates are kept
    assert torch.nn.functional.cosine_similarity(fp32, bf16, dim=0) > 0.95
    assert (bf16.norm() / fp32.norm() - 1).abs() < 0.1
    # What pure bf16 weights did (the old behaviour this replaces): most of the same step is rounded away.
    pure = update_once(tiny_llama(tokenizer).to(torch.bfloat16))
    assert (pure != 0).float().mean() < 0.5


def test_bf16_sampling_runs_under_autocast_and_agrees_with_float32_mostly():
    tokenizer = bpe_tokenizer()
    model = tiny_llama(tokenizer)
    context = [[5, 6, 7, 8], [9, 10]]
    params = SamplingParams(10, temperature=0.0)
    a = generate(model, context, params, eos_ids=[0], pad_id=tokenizer.pad_token_id)
    model.sirl_compute_dtype = torch.bfloat16
    b = generate(model, context, params, eos_ids=[0], pad_id=tokenizer.pad_token_id)
    assert b.tokens_BT.shape == a.tokens_BT.shape and torch.isfinite(b.logp_BT).all()
    assert (a.tokens_BT[:, :3] == b.tokens_BT[:, :3]).float().mean() >= 0.5


def test_micro_batches_are_sized_by_tokens_and_leave_small_policies_as_they_were():
    assert micro_rows(64, None, 300) == 64
    assert micro_rows(64, 1500, 300) == 5 and micro_rows(64, 100, 300) == 1 and micro_rows(4, 10**6, 300) == 4
    tiny = policy_from_config(ModelConfig(size="tiny", device="cpu"), "0123456789+-*=;#", 0)[0]
    assert auto_micro_batch_tokens(tiny) >= 64 * 512  # 64 rows of the longest a tiny policy sees: unchanged
    smollm2 = LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3)
    # SmolLM2-135M's shape and parameter count without its weights: a large model (sirl.update.activation_budget_bytes).
    fake = type("M", (), {"config": smollm2, "parameters": lambda self: iter([torch.empty(134_515_008, device="meta")])})
    tokens = auto_micro_batch_tokens(fake())
    assert 500 < tokens < 700  # two 300-token rows in float32
    assert auto_micro_batch_tokens(fake(), gradient_checkpointing=True) > 5 * tokens


def test_gradient_checkpointing_gives_the_same_gradients():
    tokenizer = bpe_tokenizer()
    ids, attention, mask = batch_of(tokenizer)
    grads = []
    for checkpointing in (False, True):
        model = tiny_llama(tokenizer).train()
        if checkpointing:
            enable_checkpointing(model)
        (token_logprobs(model, ids, attention, mask, full_logits_max=0)[0] * mask).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def lora_model(seed=0):
    tokenizer = bpe_tokenizer()
    model = add_lora(tiny_llama(tokenizer), rank=4, alpha=8.0, target_modules=["q_proj", "v_proj", "gate_proj", "down_proj"])
    with torch.no_grad():  # B starts at 0 (the adapter is a no-op); make it do something
        g = torch.Generator().manual_seed(seed)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model, tokenizer


def test_lora_trains_only_the_adapters_and_sampling_sees_them():
    model, tokenizer = lora_model()
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names)
    assert len(trainable_parameters(model)) == len(names)
    context = [[5, 6, 7, 8, 9]]
    params = SamplingParams(12, temperature=1.0)
    fast = generate(model, context, params, eos_ids=[0], pad_id=tokenizer.pad_token_id, generator=torch.Generator().manual_seed(0))
    assert type(pick_backend(model)) is FastBackend  # a LoRA-wrapped policy decodes on sirl's own backend
    slow = generate(model, context, params, eos_ids=[0], pad_id=tokenizer.pad_token_id, generator=torch.Generator().manual_seed(0),
                    backend=HFBackend(model))
    assert torch.equal(fast.tokens_BT, slow.tokens_BT) and torch.allclose(fast.logp_BT, slow.logp_BT, atol=1e-5)
    # The sampling log-probs are the adapted model's (teacher-forced), not the base model's.
    ids = torch.tensor([context[0] + fast.row_tokens(0)])
    forced = token_logprobs(model, ids, torch.ones_like(ids))[0][0, len(context[0]) - 1 :]
    assert torch.allclose(forced, fast.logp_BT[0, : forced.shape[0]], atol=1e-5)
    with model.disable_adapter():
        base = token_logprobs(model, ids, torch.ones_like(ids))[0][0, len(context[0]) - 1 :]
    assert not torch.allclose(base, forced, atol=1e-3)


def test_a_saved_lora_policy_is_merged_for_transformers_and_its_adapters_reload_exactly(tmp_path):
    model, tokenizer = lora_model()
    save_model(model, tokenizer, tmp_path / "policy")
    assert (tmp_path / "policy" / "adapter" / "adapter_config.json").is_file()
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "policy")  # no peft needed to read it
    assert type(plain).__module__.startswith("transformers.")
    ids = torch.tensor([[5, 6, 7, 8, 9, 10, 11]])
    with torch.no_grad():
        assert torch.allclose(plain(ids).logits, model(input_ids=ids).logits, atol=1e-5)
    other, _ = lora_model(seed=1)
    load_adapter_weights(other, tmp_path / "policy")
    for (n, a), (_, b) in zip(model.named_parameters(), other.named_parameters()):
        assert torch.equal(a, b), n


def test_keep_checkpoints_deletes_the_oldest_step_checkpoints_only(tmp_path):
    root = tmp_path / "checkpoints"
    for name in ("step_2", "step_4", "step_10", "step_6", "final"):
        (root / name).mkdir(parents=True)
    (root / "latest").write_text("step_2\n")  # latest is never deleted, even when old
    deleted = prune_checkpoints(tmp_path, keep=2)
    assert sorted(p.name for p in deleted) == ["step_4"]
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["final", "step_10", "step_2", "step_6"]


def test_a_lora_run_resumes_exactly_and_keeps_few_checkpoints(tmp_path, monkeypatch):
    """LoRA on the shipped arith policy, whose groups have mixed outcomes (a model built from scratch scores 0
    everywhere, its advantages are all 0 and its adapters would never move: nothing to resume)."""
    from test_resume import Killed, crash_at_step, records, shipped_config
    from sirl.train import run_train

    config = shipped_config("grpo", "model.lora_rank=4", "model.lora_target_modules=[q_proj,v_proj]", "train.keep_checkpoints=1",
                            "train.lr=0.01", "train.checkpoint_every=2")
    run_train(config, tmp_path / "whole", quiet=True)
    with monkeypatch.context() as patch:
        crash_at_step(patch, 5)
        with pytest.raises(Killed):
            run_train(config, tmp_path / "resumed", quiet=True)
    assert sorted(p.name for p in (tmp_path / "resumed" / "checkpoints").iterdir() if p.is_dir()) == ["step_4"]
    run_train(config, tmp_path / "resumed", quiet=True, resume=True)
    assert records(tmp_path / "resumed") == records(tmp_path / "whole")
    final = tmp_path / "whole" / "checkpoints" / "final"
    a, b = final / "adapter" / "adapter_model.safetensors", tmp_path / "resumed" / "checkpoints" / "final" / "adapter" / "adapter_model.safetensors"
    assert a.read_bytes() == b.read_bytes()
    assert json.loads((final / "config.json").read_text())["model_type"] == "llama"
    # The merged final loads in plain transformers as the trained policy: the starting policy (zero
    # adapters) with the run's adapters loaded, and not the starting policy itself.
    from sirl.tasks.arith import ArithTask

    policy, _ = policy_from_config(config.model, ArithTask(**config.task.args).alphabet(), config.seed)
    plain = AutoModelForCausalLM.from_pretrained(final)
    ids = torch.tensor([[5, 6, 7, 8, 9, 10, 11]])
    with torch.no_grad():
        before = policy(input_ids=ids).logits
        load_adapter_weights(policy, final)
        assert torch.allclose(plain(ids).logits, policy(input_ids=ids).logits, atol=1e-5)
        assert not torch.allclose(plain(ids).logits, before, atol=1e-4)
    assert sorted(p.name for p in (tmp_path / "whole" / "checkpoints").iterdir() if p.is_dir()) == ["final", "step_4"]

import torch
from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

from sirl.model import load_model, save_model, token_logprobs
from sirl.rollout import SamplingParams, generate
from sirl.tokenizer import build_char_tokenizer


def test_char_tokenizer_round_trip_and_reload(tmp_path):
    tokenizer = build_char_tokenizer("0123456789+-*=;#[]\n?none")
    text = "7+5=2;\n[1]#4?none"
    ids = tokenizer(text)["input_ids"]
    assert len(ids) == len(text)  # one token per character, no special tokens added
    assert tokenizer.decode(ids) == text
    assert tokenizer.decode(ids + [tokenizer.eos_token_id], skip_special_tokens=True) == text
    assert tokenizer.convert_ids_to_tokens(ids[0]) == "7"
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    assert reloaded(text)["input_ids"] == ids
    assert (reloaded.pad_token_id, reloaded.eos_token_id, reloaded.unk_token_id) == (0, 1, 2)
    assert reloaded("x")["input_ids"] == [reloaded.unk_token_id]  # outside the alphabet


def test_a_tiny_random_qwen2_directory_loads_and_generates(tmp_path, arith_tokenizer):
    config = Qwen2Config(
        vocab_size=len(arith_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        pad_token_id=arith_tokenizer.pad_token_id, eos_token_id=arith_tokenizer.eos_token_id,
    )
    save_model(Qwen2ForCausalLM(config), arith_tokenizer, tmp_path / "qwen")
    model, tokenizer = load_model(tmp_path / "qwen")
    assert model.config.model_type == "qwen2"
    prompt = tokenizer("7+5*3-2=")["input_ids"]
    out = generate(model, [prompt], SamplingParams(max_new_tokens=12, temperature=0.0), eos_ids=[1], pad_id=0)
    tokens = out.row_tokens(0)
    assert 1 <= len(tokens) <= 12
    # The engine's greedy tokens are the model's own argmax under teacher forcing.
    full = torch.tensor([prompt + tokens])
    logits = model(full).logits[0, len(prompt) - 1 : -1]
    assert logits.argmax(-1).tolist() == tokens


def test_token_logprobs_ignore_left_padding(nano_llama):
    ids = torch.tensor([[5, 6, 7, 8]])
    lp, entropy = token_logprobs(nano_llama, ids, torch.ones_like(ids))
    padded = torch.tensor([[0, 0, 5, 6, 7, 8]])
    lp_padded, _ = token_logprobs(nano_llama, padded, torch.tensor([[0, 0, 1, 1, 1, 1]]))
    assert torch.allclose(lp, lp_padded[:, 2:], atol=1e-5)
    assert lp.shape == entropy.shape == (1, 3) and (entropy > 0).all()


def test_load_model_explains_a_wrong_directory(tmp_path):
    import pytest

    with pytest.raises(FileNotFoundError, match="not a Hugging Face model directory"):
        load_model(tmp_path)

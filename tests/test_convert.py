"""GGUF conversion without the file: dropping the loader's quantizer, and the errors that name what to do.
(The conversion of the real file is in tests/test_real_model.py, marker ``real``.)"""

from __future__ import annotations

import types

import pytest
import torch
from transformers import AutoModelForCausalLM

from bpe_helpers import bpe_tokenizer, tiny_llama
from sirl.cli import main as cli_main
from sirl.convert import convert_gguf, drop_gguf_quantizer


def quantized_like_gguf(method="gguf"):
    model = tiny_llama(bpe_tokenizer())
    model.hf_quantizer = types.SimpleNamespace(quantization_config=types.SimpleNamespace(quant_method=method))
    model.config.quantization_config = {"quant_method": method}
    return model


def test_a_model_loaded_from_gguf_saves_as_a_plain_model_once_its_quantizer_is_dropped(tmp_path):
    model = quantized_like_gguf()
    drop_gguf_quantizer(model)
    assert model.hf_quantizer is None and not hasattr(model.config, "quantization_config")
    model.save_pretrained(tmp_path)
    assert "quantization_config" not in (tmp_path / "config.json").read_text()
    again = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), model.state_dict().values()))


def test_other_quantizers_and_non_dense_weights_are_refused():
    with pytest.raises(ValueError, match="not loaded from GGUF"):
        drop_gguf_quantizer(quantized_like_gguf("bitsandbytes"))
    model = quantized_like_gguf()
    model.model.embed_tokens.weight = torch.nn.Parameter(torch.zeros(3, 3, dtype=torch.int8), requires_grad=False)
    with pytest.raises(ValueError, match="not dense floating-point"):
        drop_gguf_quantizer(model)


def test_a_missing_file_is_an_error_that_names_it(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        convert_gguf(tmp_path / "none.gguf", tmp_path / "out")
    assert cli_main(["convert-gguf", str(tmp_path / "none.gguf"), str(tmp_path / "out")]) == 2
    assert "does not exist" in capsys.readouterr().err

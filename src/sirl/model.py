"""Build and load Hugging Face causal LMs and their tokenizers; token log-probabilities.

Models are ordinary ``transformers`` models saved as ``save_pretrained`` directories, so a policy trained
here loads anywhere and any local causal LM directory can be trained here. Nothing is downloaded: new
models are built from configs, existing ones load from local folders only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from transformers.utils import logging as hf_logging

from sirl import algos
from sirl.batch import TokenBatch
from sirl.config import ModelConfig
from sirl.paths import resolve_path
from sirl.tokenizer import build_char_tokenizer


hf_logging.disable_progress_bar()  # sirl shows its own progress; per-file bars on save are noise


@dataclass(frozen=True)
class SizePreset:
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int


# Parameter counts are for a 30-character vocabulary with tied embeddings.
SIZE_PRESETS: dict[str, SizePreset] = {
    "nano": SizePreset(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=96),  # ~28k, for tests
    "tiny": SizePreset(hidden_size=96, num_layers=4, num_heads=4, intermediate_size=256),  # ~0.45M
    "small": SizePreset(hidden_size=256, num_layers=6, num_heads=8, intermediate_size=768),  # ~5M
    "base": SizePreset(hidden_size=512, num_layers=8, num_heads=8, intermediate_size=1536),  # ~27M
}

ARCHITECTURES = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM)}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"model.device={device!r} but CUDA is not available; use model.device=cpu")
    return torch.device(device)


def build_model(
    tokenizer: PreTrainedTokenizerBase,
    arch: str,
    size: SizePreset,
    max_position_embeddings: int,
    seed: int,
) -> PreTrainedModel:
    """A randomly initialized causal LM of the given shape, sized to the tokenizer's vocabulary."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; valid: {sorted(ARCHITECTURES)}")
    config_cls, model_cls = ARCHITECTURES[arch]
    config = config_cls(
        vocab_size=len(tokenizer),
        hidden_size=size.hidden_size,
        intermediate_size=size.intermediate_size,
        num_hidden_layers=size.num_layers,
        num_attention_heads=size.num_heads,
        num_key_value_heads=size.num_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_cls(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def model_directory(path: str | Path) -> Path:
    """The local Hugging Face model directory ``path`` names (see :func:`resolve_path`); FileNotFoundError
    when it holds no config.json. Cheap, so commands call it before anything slow starts."""
    directory = resolve_path(path)
    if not (directory / "config.json").is_file():
        raise FileNotFoundError(
            f"{path!s} is not a Hugging Face model directory (no config.json in {directory}); "
            "give a folder written by save_pretrained, e.g. checkpoints/arith-tiny"
        )
    return directory


def load_model(path: str | Path, dtype: torch.dtype = torch.float32) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a local Hugging Face causal LM directory and its tokenizer (never from the network)."""
    directory = model_directory(path)
    tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(directory, local_files_only=True, dtype=dtype)
    if tokenizer.eos_token_id is None:
        raise ValueError(f"the tokenizer in {directory} has no eos_token; sirl needs one to end responses")
    if tokenizer.pad_token_id is None:
        # Padding positions are always masked out, so any id works; EOS is the usual choice.
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return model, tokenizer


def save_model(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, directory: str | Path) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return directory


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def token_logprobs(
    model: PreTrainedModel, input_ids_BT: torch.Tensor, attention_mask_BT: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forced log-probabilities of each next token, and the per-position entropy.

    Returns ``logp_BT`` and ``entropy_BT``, both ``[B, T-1]``: position t scores token t+1 given the tokens
    up to t. Positions are computed from the attention mask so left padding does not shift them.
    """
    position_ids_BT = (attention_mask_BT.long().cumsum(-1) - 1).clamp(min=0)
    logits_BTV = model(input_ids=input_ids_BT, attention_mask=attention_mask_BT, position_ids=position_ids_BT).logits
    logits_BTV = logits_BTV[:, :-1].float()
    log_probs_BTV = F.log_softmax(logits_BTV, dim=-1)
    logp_BT = log_probs_BTV.gather(-1, input_ids_BT[:, 1:, None]).squeeze(-1)
    entropy_BT = algos.entropy(log_probs_BTV.detach())
    return logp_BT, entropy_BT


def supervised_loss(model: PreTrainedModel, batch: TokenBatch, n_targets: float | torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy of the target tokens of ``batch`` (teacher forcing), summed and divided by
    ``n_targets`` (default: this batch's own target count, a token mean; data-parallel callers pass the
    count over every process so the processes' losses add up to the single-process one)."""
    device = next(model.parameters()).device
    input_ids_BT = batch.input_ids_BT.to(device)
    logits_BTV = model(input_ids=input_ids_BT, attention_mask=batch.attention_BT.to(device)).logits
    losses_BT = F.cross_entropy(logits_BTV[:, :-1].float().transpose(1, 2), input_ids_BT[:, 1:], reduction="none")  # [B, T-1]
    mask_BT = batch.target_mask_BT.to(device)
    denominator = mask_BT.sum().clamp(min=1) if n_targets is None else n_targets
    return (losses_BT * mask_BT).sum() / denominator


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str) -> list[int]:
    """Token ids of a prompt, with the tokenizer's own special prefix (a BOS, where it has one)."""
    return tokenizer(prompt, add_special_tokens=True)["input_ids"]


def encode_text(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """Token ids of response text (no special tokens)."""
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def eos_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Every id that ends a response: the tokenizer's EOS and the model's generation-config EOS ids."""
    ids = {tokenizer.eos_token_id}
    configured = getattr(model.generation_config, "eos_token_id", None)
    if configured is not None:
        ids.update([configured] if isinstance(configured, int) else configured)
    return sorted(i for i in ids if i is not None)


def policy_from_config(config: ModelConfig, alphabet: str, seed: int) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load ``config.path`` or build a new character-level policy covering ``alphabet``; move it to its device."""
    dtype = DTYPES[config.dtype]
    if config.path:
        model, tokenizer = load_model(config.path, dtype=dtype)
    else:
        tokenizer = build_char_tokenizer(alphabet)
        preset = SIZE_PRESETS[config.size]
        size = SizePreset(
            hidden_size=config.hidden_size or preset.hidden_size,
            num_layers=config.num_layers or preset.num_layers,
            num_heads=config.num_heads or preset.num_heads,
            intermediate_size=config.intermediate_size or preset.intermediate_size,
        )
        if size.hidden_size % size.num_heads:
            raise ValueError(f"model.hidden_size={size.hidden_size} must be divisible by model.num_heads={size.num_heads}")
        model = build_model(tokenizer, config.arch, size, config.max_position_embeddings, seed).to(dtype)
    return model.to(resolve_device(config.device)), tokenizer

"""Build and load Hugging Face causal LMs and their tokenizers; token log-probabilities.

Models are ordinary ``transformers`` models saved as ``save_pretrained`` directories, so a policy trained
here loads anywhere and any causal LM directory can be trained here. A model is named by a local directory
or by a Hugging Face Hub id (``org/name``, optionally ``org/name@revision``), which resolves to its snapshot
in the local Hugging Face cache (:func:`model_directory`); it is downloaded into that cache only when it is
missing (or incomplete), a network exists and offline mode (``HF_HUB_OFFLINE=1``) is off. New models are
built from configs.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
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
from sirl.config import ConfigError, ModelConfig
from sirl.paths import PROJECT_ROOT, resolve_path
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
        raise ConfigError(f"unknown architecture {arch!r}; valid: {sorted(ARCHITECTURES)}")
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


HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken", "*.jinja", "*.py"]
"""The files of a Hub model repository that loading needs (config, weights, tokenizer, chat template); other
files (GGUF and ONNX copies, training logs) are never downloaded. Repositories without safetensors weights
get ``*.bin`` too (:func:`_download`)."""
WEIGHT_PATTERNS = ("*.safetensors", "*.bin")


class ModelNotFound(FileNotFoundError):
    """``--model`` names neither a local model directory nor a Hub model that can be had."""


def _truthy(value: str | None) -> bool:
    # huggingface_hub.constants._is_true: the values it reads as on
    return (value or "").upper() in {"1", "ON", "YES", "TRUE"}


def hub_offline() -> bool:
    """Offline mode as huggingface_hub reads it (``HF_HUB_OFFLINE``, or ``TRANSFORMERS_OFFLINE``), read now:
    huggingface_hub reads it once, when it is imported, so a later change would otherwise go unseen."""
    from huggingface_hub import constants

    return constants.HF_HUB_OFFLINE or _truthy(os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE"))


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache as huggingface_hub finds it (``HF_HUB_CACHE``, ``HUGGINGFACE_HUB_CACHE``,
    ``HF_HOME``/hub, ``XDG_CACHE_HOME``/huggingface/hub, ~/.cache/huggingface/hub), read from the environment
    now for the same reason as :func:`hub_offline`."""
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface")
    cache = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE") or os.path.join(home, "hub")
    return Path(os.path.expandvars(os.path.expanduser(cache)))


def split_hub_id(name: str) -> tuple[str, str | None] | None:
    """``("org/name", revision or None)`` when ``name`` is shaped like a Hub model id (``name``, ``org/name``,
    either with ``@revision``), else None."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    repo_id, _, revision = name.partition("@")
    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        return None
    return repo_id, revision or None


def _missing_files(snapshot: Path) -> list[str]:
    """What a model snapshot lacks of what loading needs (its config and its weights)."""
    missing = [] if (snapshot / "config.json").is_file() else ["config.json"]
    if not any(next(snapshot.glob(pattern), None) for pattern in WEIGHT_PATTERNS):
        missing.append("the weights (*.safetensors or *.bin)")
    return missing


def _download(repo_id: str, revision: str | None, cache: Path, offline: bool) -> Path:
    """The snapshot folder of ``repo_id`` at ``revision`` in ``cache``. A cached snapshot with a config and
    weights is used as it is, without asking the Hub (``hf download`` refreshes a branch that moved); else,
    unless ``offline``, the files of :data:`HUB_PATTERNS` are downloaded."""
    from huggingface_hub import list_repo_files, snapshot_download

    patterns = list(HUB_PATTERNS)
    try:
        cached = Path(snapshot_download(repo_id, revision=revision, cache_dir=cache, local_files_only=True, allow_patterns=patterns))
    except Exception:  # not cached (huggingface_hub raises one of several types); downloaded below where allowed
        cached = None
    if offline or (cached is not None and not _missing_files(cached)):
        if cached is None:
            raise FileNotFoundError(f"{repo_id} is not in {cache}")
        return cached
    try:
        files = list_repo_files(repo_id, revision=revision)
    except Exception:  # no network, or no such repository: snapshot_download below says which
        files = []
    if files and not any(f.endswith(".safetensors") for f in files):
        patterns.append("*.bin")  # an older repository: PyTorch pickles only
    return Path(snapshot_download(repo_id, revision=revision, cache_dir=cache, allow_patterns=patterns))


def model_directory(path: str | Path) -> Path:
    """The Hugging Face model directory ``path`` names: a local directory (see :func:`resolve_path`), or for a
    Hub id that is not one, its snapshot in the local Hugging Face cache, downloaded first where a network
    exists and offline mode is off. Raises :class:`ModelNotFound` saying what was tried and what was
    missing. Cheap for a local directory or a cached model, so commands call it before anything slow."""
    directory = resolve_path(path)
    if directory.exists():
        if not (directory / "config.json").is_file():
            raise ModelNotFound(
                f"{path!s} is not a Hugging Face model directory (no config.json in {directory}); "
                "give a folder written by save_pretrained, e.g. checkpoints/arith-tiny, or a Hub id such as Qwen/Qwen2.5-0.5B-Instruct"
            )
        return directory
    looked = Path.cwd() if Path.cwd().resolve() == PROJECT_ROOT else f"{Path.cwd()} or {PROJECT_ROOT}"
    local = f"{path!s} is not a Hugging Face model directory (no such directory in {looked})"
    hub = split_hub_id(str(path))
    if hub is None:
        raise ModelNotFound(f"{local}, and {str(path)!r} is not a Hub model id (org/name or org/name@revision) either")
    repo_id, revision = hub
    cache, offline = hub_cache_dir(), hub_offline()
    where = f"the Hugging Face cache {cache / ('models--' + repo_id.replace('/', '--'))}"
    try:
        snapshot = _download(repo_id, revision, cache, offline)
    except Exception as error:  # huggingface_hub raises a dozen types (offline, not found, gated, HTTP); the message says which
        if offline:  # huggingface_hub's own message speaks of its arguments, not of what to do here
            tried = (f"as a Hub id, {repo_id}{'@' + revision if revision else ''} is not in {where}, and offline mode "
                     f"(HF_HUB_OFFLINE=1) allows no download: download it where a network exists "
                     f"(`hf download {repo_id}`) or unset HF_HUB_OFFLINE")
        else:
            reason = str(error).splitlines()[0] if str(error) else ""
            tried = f"as a Hub id, {repo_id}{'@' + revision if revision else ''} could not be downloaded into {where} ({type(error).__name__}: {reason})"
        raise ModelNotFound(f"{local}; {tried}") from None
    missing = _missing_files(snapshot)
    if missing:
        present = sorted(p.name for p in snapshot.iterdir())
        raise ModelNotFound(
            f"{local}; as a Hub id, {repo_id} resolved to {snapshot} in the Hugging Face cache, which lacks {' and '.join(missing)} "
            f"(it holds {present}); {'download the whole model where a network exists (`hf download ' + repo_id + '`)' if offline else 'it is not a transformers model repository'}"
        )
    return snapshot


def load_model(path: str | Path, dtype: torch.dtype = torch.float32) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a Hugging Face causal LM and its tokenizer from a local directory or a Hub id
    (:func:`model_directory` resolves it; loading itself reads that directory only)."""
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


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


LARGE_MODEL_PARAMETERS = 50_000_000
"""From this size on (float32 weights of 200 MB, more than a CPU's caches hold) a model is bound by moving
its weights and activations through memory, and sirl takes its large-model paths: the rollout engine
decodes with sirl.rollout.engine.LargeModelBackend (bf16 where the hardware has it, rollout.dtype=auto),
and the update uses fused AdamW, micro-batches sized to the weights and one forward pass per shared
prompt (sirl.update). sirl's own policies (at most ~27M parameters) keep the paths their recorded runs
used, so their numbers do not change."""


def is_large_model(model: torch.nn.Module) -> bool:
    return count_parameters(model) >= LARGE_MODEL_PARAMETERS


FULL_LOGITS_MAX = 1 << 24
"""Largest [B, T-1, V] logits tensor (elements; 64 MB in float32) that :func:`token_logprobs` builds whole,
as it always did: sirl's own character-level policies (V ~ 30) stay on that path, so their numbers are
unchanged. Above it (a real vocabulary: 64 x 300 x 49,152 is 3.8 GB) it scores response positions only, in
chunks of :data:`LOGPROB_CHUNK` positions, each recomputed in the backward pass rather than kept."""
LOGPROB_CHUNK = 1024
"""Positions per chunk of the chunked path: its logits are [1024, V] (192 MB in float32 at V = 49,152)."""


def token_logprobs(
    model: PreTrainedModel, input_ids_BT: torch.Tensor, attention_mask_BT: torch.Tensor, target_mask_BT: torch.Tensor | None = None,
    *, full_logits_max: int = FULL_LOGITS_MAX, chunk: int = LOGPROB_CHUNK,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forced log-probabilities of each next token, and the per-position entropy.

    Returns ``logp_BT`` and ``entropy_BT``, both ``[B, T-1]``: position t scores token t+1 given the tokens
    up to t. Positions are computed from the attention mask so left padding does not shift them. With a
    ``target_mask_BT`` ([B, T-1], the positions a loss uses) only those positions are guaranteed: a large
    vocabulary scores only them (0 elsewhere), in chunks, so memory never holds [B, T, V] in float32
    (:data:`FULL_LOGITS_MAX`). Forward passes run in the model's compute dtype (:func:`compute_autocast`).
    """
    position_ids_BT = (attention_mask_BT.long().cumsum(-1) - 1).clamp(min=0)
    B, T = input_ids_BT.shape
    decoder, head = _decoder_and_head(model)
    vocab = model.config.vocab_size if head is None else head.weight.shape[0]
    with compute_autocast(model):
        if target_mask_BT is None or head is None or B * (T - 1) * vocab <= full_logits_max:
            logits_BTV = model(input_ids=input_ids_BT, attention_mask=attention_mask_BT, position_ids=position_ids_BT).logits
            logits_BTV = logits_BTV[:, :-1].float()
            log_probs_BTV = F.log_softmax(logits_BTV, dim=-1)
            logp_BT = log_probs_BTV.gather(-1, input_ids_BT[:, 1:, None]).squeeze(-1)
            entropy_BT = algos.entropy(log_probs_BTV.detach())
            return logp_BT, entropy_BT
        hidden_BTH = decoder(
            input_ids=input_ids_BT, attention_mask=attention_mask_BT, position_ids=position_ids_BT, use_cache=False
        ).last_hidden_state
    rows_N, cols_N = target_mask_BT.bool().nonzero(as_tuple=True)
    hidden_NH, targets_N = hidden_BTH[rows_N, cols_N], input_ids_BT[rows_N, cols_N + 1]
    pieces = []
    for start in range(0, len(targets_N), chunk):
        part = (hidden_NH[start : start + chunk], targets_N[start : start + chunk])
        if torch.is_grad_enabled() and hidden_NH.requires_grad:
            # Keep only the hidden states for the backward pass; the chunk's logits are recomputed there.
            pieces.append(torch.utils.checkpoint.checkpoint(_scored_chunk, model, head, *part, use_reentrant=False))
        else:
            pieces.append(_scored_chunk(model, head, *part))
    logp_N = torch.cat([p[0] for p in pieces]) if pieces else hidden_BTH.new_zeros(0, dtype=torch.float32)
    entropy_N = torch.cat([p[1] for p in pieces]) if pieces else logp_N.detach()
    logp_BT = logp_N.new_zeros(B, T - 1).index_put((rows_N, cols_N), logp_N)
    entropy_BT = entropy_N.new_zeros(B, T - 1).index_put((rows_N, cols_N), entropy_N)
    return logp_BT, entropy_BT


def _scored_chunk(model, head, hidden_NH: torch.Tensor, targets_N: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probability of each target and the entropy (no gradient) of its position, logits in float32."""
    with compute_autocast(model):
        logits_NV = head(hidden_NH)
    logits_NV = logits_NV.float()
    log_probs_NV = F.log_softmax(logits_NV, dim=-1)
    logp_N = log_probs_NV.gather(-1, targets_N[:, None]).squeeze(-1)
    return logp_N, algos.entropy(log_probs_NV.detach())


def _decoder_and_head(model: PreTrainedModel) -> tuple[torch.nn.Module | None, torch.nn.Module | None]:
    """The model's decoder (hidden states) and its output projection, or (None, None) when it has no such split."""
    base = base_causal_lm(model)
    try:
        decoder, head = base.get_decoder(), base.get_output_embeddings()
    except (AttributeError, NotImplementedError):
        return None, None
    if decoder is None or head is None or not hasattr(head, "weight"):
        return None, None
    return decoder, head


def base_causal_lm(model: torch.nn.Module) -> PreTrainedModel:
    """The transformers model inside a peft wrapper (LoRA adapters stay injected in its modules), or the model."""
    return model.get_base_model() if is_peft_model(model) else model


def is_peft_model(model: torch.nn.Module) -> bool:
    return type(model).__module__.startswith("peft.")


def compute_dtype(model: torch.nn.Module) -> torch.dtype:
    """The dtype forward passes run in: ``model.sirl_compute_dtype`` when set (weights stay float32), else the weights'."""
    return getattr(model, "sirl_compute_dtype", None) or next(model.parameters()).dtype


def compute_autocast(model: torch.nn.Module):
    """Autocast to the compute dtype when it is not the weights' (bf16 compute on float32 master weights)."""
    dtype = compute_dtype(model)
    weights = next(model.parameters())
    if dtype == weights.dtype:
        return contextlib.nullcontext()
    return torch.autocast(device_type=weights.device.type, dtype=dtype)


def supervised_loss(model: PreTrainedModel, batch: TokenBatch, n_targets: float | torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy of the target tokens of ``batch`` (teacher forcing), summed and divided by
    ``n_targets`` (default: this batch's own target count, a token mean; data-parallel callers pass the
    count over every process so the processes' losses add up to the single-process one)."""
    device = next(model.parameters()).device
    input_ids_BT = batch.input_ids_BT.to(device)
    with compute_autocast(model):
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
    """Load ``config.path`` or build a new character-level policy covering ``alphabet``; move it to its device.

    The weights are float32 whatever ``config.dtype`` says: they are the master copy the optimizer updates
    (its state is float32 too), and bfloat16/float16 is the dtype forward passes run in, under autocast
    (:func:`compute_autocast`). Pure bfloat16 weights lose most updates: at lr 1e-5 a step moved 1.7% of
    SmolLM2-135M's weights in bfloat16 and 99.8% in float32 (their spacing near 0.02 is 1.2e-4).
    With ``config.lora_rank`` > 0 the base weights are frozen and LoRA adapters (peft) are trained."""
    if config.path:
        model, tokenizer = load_model(config.path, dtype=torch.float32)
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
            raise ConfigError(f"model.hidden_size={size.hidden_size} must be divisible by model.num_heads={size.num_heads}")
        model = build_model(tokenizer, config.arch, size, config.max_position_embeddings, seed)
    model = model.to(resolve_device(config.device))
    if config.lora_rank:
        model = add_lora(model, config.lora_rank, config.lora_alpha, config.lora_target_modules)
    if DTYPES[config.dtype] != torch.float32:
        model.sirl_compute_dtype = DTYPES[config.dtype]
    return model, tokenizer


def add_lora(model: PreTrainedModel, rank: int, alpha: float, target_modules: list[str]) -> PreTrainedModel:
    """``model`` with LoRA adapters (Hu et al. 2021, via peft) on ``target_modules``; only they train."""
    try:
        from peft import LoraConfig, get_peft_model
    except ModuleNotFoundError:
        raise ModuleNotFoundError("model.lora_rank > 0 needs peft; install sirl's lora extra: pip install 'sirl[lora]'") from None
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = sorted(set(target_modules) - present)
    if missing:
        raise ConfigError(f"model.lora_target_modules names {missing}, which the model does not have; its modules include "
                         f"{sorted(n for n in present if 'proj' in n)}")
    # Dropout 0: the policy that samples is then exactly the one that is trained.
    lora = LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(target_modules), lora_dropout=0.0, bias="none", task_type="CAUSAL_LM")
    return get_peft_model(model, lora)


def enable_checkpointing(model: PreTrainedModel) -> None:
    """Gradient (activation) checkpointing of every decoder layer, non-reentrant (works with frozen inputs,
    i.e. LoRA). transformers 5 renamed the method and its keyword; either is used."""
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def trainable_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """What the optimizer updates: every parameter, or with LoRA the adapters only."""
    return [p for p in model.parameters() if p.requires_grad]


def save_model(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, directory: str | Path) -> Path:
    """Write ``model`` as a plain Hugging Face directory (``from_pretrained`` loads it without sirl or peft).
    A LoRA model is written merged (a copy: the trained adapters stay separate), with its adapters alone in
    ``adapter/`` (what a resumed run loads back, exactly)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if is_peft_model(model):
        import copy

        model.save_pretrained(directory / ADAPTER_DIR, safe_serialization=True)
        merged = copy.deepcopy(model).merge_and_unload()
        merged.save_pretrained(directory, safe_serialization=True)
        del merged
    else:
        model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return directory


ADAPTER_DIR = "adapter"
"""The sub-folder of a saved LoRA policy that holds its adapters (peft's adapter_config.json and weights)."""


def load_adapter_weights(model: torch.nn.Module, directory: Path) -> None:
    """Load the adapters :func:`save_model` wrote into a LoRA ``model``, in place and exactly."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    path = Path(directory) / ADAPTER_DIR / "adapter_model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the checkpoint was not written by a LoRA run (model.lora_rank > 0)")
    result = set_peft_model_state_dict(model, load_file(str(path)))
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise ValueError(f"{path}: adapter weights that do not fit the model: {unexpected[:5]}")

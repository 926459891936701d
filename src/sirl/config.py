"""Experiment configuration: one dataclass per concern, composed into :class:`ExperimentConfig`.

Resolution order: the dataclass defaults, then a YAML preset (``--config NAME`` reads
``configs/NAME.yaml``; a preset may name a ``base:`` preset it overrides), then dotted command-line
overrides (``--model.hidden_size=128``, ``--task.args.max_ops=16``). Values on the command line are read
as YAML scalars, so ``128`` is an int, ``true`` a bool and ``[1, 4]`` a list. Unknown keys and wrong
types are errors that name the key and the valid choices. Every run folder gets the resolved config.

Each method's settings are declared with the method (sirl.methods.settings) and are the section
``method.<name>`` here (``--method.si.probes=2``). Keys at a place an older sirl had them (the one
``method`` section of every method's knobs, ``internalize``, ``prime``) are read from there
(:func:`read_old_places`), so old presets, plans and run folders load as they did.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from sirl.config_fields import ConfigError, Range, ranged  # noqa: F401  (declared there, imported from here as before)
from sirl.methods.settings import MOVED_KNOBS, MOVED_SECTIONS, SETTINGS, MethodSections
from sirl.paths import resolve_path


_FLOAT_RE = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


@dataclass
class TaskConfig:
    name: str = "arith"
    """Registered task name (see ``sirl tasks``) or an import path ``file.py:Class`` / ``pkg.module:Class``."""
    args: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of the task's constructor (its knobs), checked against its signature."""


@dataclass
class VerifierConfig:
    """Where the task's verifier runs (sirl.verifier): model output is adversarial, and a verifier that
    hangs, eats memory or crashes must cost one sample's reward, never the run."""

    isolation: Literal["auto", "in_process", "workers"] = "auto"
    """in_process: verify in the trainer's process (no deadline); workers: a pool of spawned processes
    with a deadline, a memory cap and a process-group kill per completion; auto: in_process for tasks
    that declare their verifier safe (arith, countdown), workers for the others (gsm8k, code, user tasks)."""
    workers: int | None = ranged(None, 1)
    """Worker processes of the pool; None uses min(4, CPU count)."""
    timeout_s: float = ranged(5.0, 0, low_open=True)
    """Wall-clock deadline per completion in a worker; an overrun scores 0 and counts in verify/timeouts."""
    memory_mb: int = ranged(2048, 64)
    """Address-space cap (RLIMIT_AS) of each worker, in MB; past it, verify raises MemoryError (verify/errors)."""


@dataclass
class ModelConfig:
    path: str | None = None
    """A local Hugging Face causal LM directory to start from; None builds a new model (SFT from scratch)."""
    arch: Literal["llama", "qwen2"] = "llama"
    """Architecture of a newly built model."""
    size: Literal["nano", "tiny", "small", "base"] = "tiny"
    """Size preset of a newly built model (see sirl.model.SIZE_PRESETS); the four fields below override it."""
    hidden_size: int | None = ranged(None, 1)
    num_layers: int | None = ranged(None, 1)
    num_heads: int | None = ranged(None, 1)
    intermediate_size: int | None = ranged(None, 1)
    max_position_embeddings: int = ranged(512, 2)
    """Longest prompt + response a newly built model can see."""
    device: str = "auto"
    """"auto" (CUDA when available, else CPU), "cpu", "cuda" or "cuda:N"."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Compute dtype of training (sirl train): forward passes run under autocast in it, while the weights
    and the optimizer state stay float32 (pure bfloat16 weights lose most small updates). float32 on a CPU;
    bfloat16 is the usual choice on a GPU. float16 has no loss scaling here: prefer bfloat16. sirl eval
    loads the weights in this dtype."""
    lora_rank: int = ranged(0, 0)
    """LoRA rank (peft, the real extra); 0 trains every weight. With LoRA only the adapters train, checkpoints
    keep them in policy/adapter/, and the saved policy is merged (it loads in plain transformers)."""
    lora_alpha: float = ranged(16.0, 0, low_open=True)
    """LoRA scale numerator: the update is (lora_alpha / lora_rank) * B @ A."""
    lora_target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    """Module names that get adapters (Llama/Qwen names; every linear layer of a decoder block by default)."""


@dataclass
class PromptConfig:
    """How a task's prompt is shown to the model (sirl.prompts)."""

    format: Literal["auto", "chat", "raw"] = "auto"
    """chat: the prompt is the user turn of the tokenizer's chat template and generation starts after the
    assistant header; raw: the prompt text as is (sirl's own character-level policies); auto: chat when the
    tokenizer has a chat template, else raw."""
    system: str | None = None
    """A system prompt (chat only); None leaves it to the template (SmolLM2's writes a default one)."""
    few_shot: int = ranged(0, 0, 32)
    """Worked examples from the task's training split shown before the problem (chat: earlier user and
    assistant turns; raw: prompt, solution and a blank line each)."""
    few_shot_seed: int = 0
    """Seed of the draw of the examples (the same examples for every problem of a run)."""


@dataclass
class SFTConfig:
    task_args: dict[str, Any] = field(default_factory=dict)
    """Overrides of task.args for the SFT training distribution (e.g. shorter chains, fewer hard steps)."""
    steps: int = ranged(4000, 1)
    """Most optimizer steps; SFT stops earlier when target_accuracy or max_minutes is reached."""
    batch_size: int = ranged(64, 1)
    lr: float = ranged(3e-3, 0, 1, low_open=True)
    warmup_steps: int = ranged(100, 0)
    """Linear warmup, then cosine decay to 10% of lr over ``steps``."""
    weight_decay: float = ranged(0.01, 0, 1)
    grad_clip: float = ranged(1.0, 0, low_open=True)
    eval_every: int = ranged(250, 1)
    """Greedy held-out evaluation (on the task distribution, i.e. task.args) every this many steps."""
    target_accuracy: float | None = ranged(None, 0, 1)
    """Stop at the first evaluation whose accuracy reaches this; None trains for all ``steps``."""
    max_minutes: float | None = ranged(None, 0, low_open=True)
    """Wall-clock budget; None for no limit."""


@dataclass
class EvalConfig:
    n_problems: int = ranged(500, 1)
    """Size of the fixed held-out set (test split), the same for every run with the same eval.seed."""
    seed: int = 1234
    """Seed of the held-out set; independent of the run seed so runs are compared on the same problems."""
    final_n_problems: int | None = ranged(None, 1)
    """Size of the final evaluation of `sirl train` (a superset of the periodic one, for a tighter
    interval); None uses n_problems."""
    batch_size: int = ranged(256, 1)
    max_new_tokens: int = ranged(160, 1)
    pass_k: list[int] = field(default_factory=lambda: [1, 4])
    """k values for pass@k under sampled decoding (sirl eval); [] skips sampling."""
    n_samples: int = ranged(8, 1)
    """Samples per problem for pass@k (unbiased estimator, needs n_samples >= max(pass_k))."""
    temperature: float = ranged(1.0, 0, 10, low_open=True)
    """Sampling temperature for pass@k."""


@dataclass
class RolloutConfig:
    prompts_per_step: int = ranged(8, 1)
    """Prompts drawn per training step (per process under data parallelism)."""
    group_size: int = ranged(8, 1)
    """Samples per prompt; advantages are relative to the group."""
    temperature: float = ranged(1.0, 0, 10, low_open=True)
    top_p: float = ranged(1.0, 0, 1, low_open=True)
    max_new_tokens: int = ranged(96, 1)
    """Responses longer than this are cut off (truncated) and score what the verifier gives them."""
    batch_size: int = ranged(1024, 1)
    """Most rows the engine decodes at once."""
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """The dtype the engine samples in (rollouts, probes and the run's evaluations), whatever model.dtype
    trains in. auto: bfloat16 for a model of at least 50M parameters on a device with native bf16 (a CPU
    with AVX512-BF16 or AMX, a recent GPU), where decoding is bound by reading the weights; else
    model.dtype (sirl's own small policies sample in float32, as before). The sampling log-probs are
    then bf16's: tests/test_rollout_bf16.py states their tolerance against float32."""
    stop: list[str] = field(default_factory=list)
    """Strings that end a response as soon as it contains one (its tokens stay in the response, the verifier
    scores the text before it); also in evaluations.
    EOS and a chat template's end-of-turn token always end one. E.g. ["\\n\\n"] for a raw few-shot format."""


@dataclass
class AlgoConfig:
    name: str = "si"
    """The method: a name in the methods registry (sirl.methods.METHODS; ``sirl train --help`` lists them, and
    an unknown name is an error that lists them). Its settings, if it has any, are the section method.<name>."""
    outcome_advantage: Literal["grpo", "dr_grpo", "rloo"] = "grpo"
    """Outcome advantages beside the step credit of si, random_reset and vine."""
    clip_low: float = ranged(0.2, 0, 1, high_open=True)
    """PPO ratio clip below 1: the ratio is kept >= 1 - clip_low."""
    clip_high: float = ranged(0.28, 0)
    """PPO ratio clip above 1 (DAPO's clip-higher): the ratio is kept <= 1 + clip_high."""
    loss_agg: Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"] = "token_mean"
    """How per-token losses become one number (sirl.algos.LOSS_AGGREGATIONS)."""
    kl_coef: float = ranged(0.0, 0)
    """Weight of the KL penalty to the frozen starting policy; 0 disables it (and the reference model)."""
    kl_estimator: Literal["k1", "k3"] = "k3"
    ppo_epochs: int = ranged(1, 1)
    """Passes over each step's rollouts; more than 1 makes later passes off-policy (then clipping acts)."""
    minibatches: int = ranged(1, 1)
    """Optimizer steps per epoch; the rollouts are split into this many minibatches."""
    normalization: Literal["additive", "diluting"] = "additive"
    """The loss denominators when a method trains on rows beside its sampled ones (probes, corrections,
    branches, verdicts): additive, they count the sampled rows only, so extra rows add gradient; diluting,
    they count every row, so extra rows shrink the sampled rows' weight."""


@dataclass
class TrainConfig:
    steps: int = ranged(200, 1)
    """Most training steps; a run also stops at max_tokens or max_minutes."""
    max_tokens: int | None = ranged(None, 1)
    """Budget of generated tokens (every kind counted); None for no budget."""
    max_minutes: float | None = ranged(None, 0, low_open=True)
    lr: float = ranged(1e-4, 0, 1, low_open=True)
    warmup_steps: int = ranged(10, 0)
    """Linear warmup, then constant."""
    weight_decay: float = ranged(0.0, 0, 1)
    grad_clip: float = ranged(1.0, 0, low_open=True)
    micro_batch_size: int = ranged(64, 1)
    """Most sequences per forward/backward pass; gradients accumulate up to the minibatch (memory only)."""
    micro_batch_tokens: int | None = ranged(None, 1)
    """Most tokens (rows x padded length) per forward/backward pass, beside micro_batch_size. None sizes it
    from the model (sirl.update.auto_micro_batch_tokens: about 3 GiB of activations), which leaves sirl's own
    small policies at micro_batch_size rows (their numbers unchanged) and gives SmolLM2-135M ~1,500 tokens."""
    gradient_checkpointing: bool = False
    """Recompute each decoder layer's activations in the backward pass instead of keeping them: less memory,
    about a third more update time; the automatic micro-batch then grows accordingly."""
    eval_every: int = ranged(25, 0)
    """Held-out evaluation every this many steps (and before the first update, and at the end); 0 for none
    between the first and the last."""
    eval_every_tokens: int | None = ranged(None, 1)
    """Also evaluate at the first step that crosses each multiple of this many generated tokens (every kind
    counted): methods that spend different tokens per step then get curves on the same token grid."""
    checkpoint_every: int = ranged(100, 0)
    """A Hugging Face checkpoint under checkpoints/step_N every this many steps (and at the end); 0 only at the end."""
    keep_checkpoints: int | None = ranged(None, 1)
    """Keep only the newest this many step_N checkpoints (final and the one `latest` names are always kept);
    None keeps all. A real model's checkpoint is its weights plus twice as much optimizer state."""
    log_samples: int = ranged(4, 0)
    """Sampled trajectories written to samples.jsonl at each evaluation step."""
    report_to: list[str] | str = field(default_factory=lambda: ["tensorboard"])
    """Where the logged numbers go besides metrics.jsonl, which stays the record that compare and the report read
    (sirl.sinks): any of tensorboard (tb/ in the run folder), wandb (the wandb extra), trackio (the trackio extra);
    [] or none for metrics.jsonl alone. Also for sirl sft."""
    report_project: str = "sirl"
    """The wandb or Trackio project the run is logged under; the run's name is its name or its folder's."""


@dataclass
class ExperimentConfig:
    name: str | None = None
    """Run name; the run folder defaults to runs/<name>-<time>."""
    seed: int = 0
    out: str | None = None
    """The run folder; created if missing."""
    task: TaskConfig = field(default_factory=TaskConfig)
    verifier: VerifierConfig = field(default_factory=VerifierConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    method: MethodSections = field(default_factory=MethodSections)
    """Each method's settings, a section per method with any: method.si, method.tree, ... (sirl.methods.settings)."""
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


# --- loading -------------------------------------------------------------------------------------


def preset_path(preset: str) -> Path:
    """``arith`` -> configs/arith.yaml (in the working directory or the project); a path is used as is."""
    candidate = Path(preset)
    if candidate.suffix in (".yaml", ".yml"):
        path = resolve_path(candidate)
    else:
        path = resolve_path(Path("configs") / f"{preset}.yaml")
    if not path.is_file():
        available = sorted(p.stem for p in resolve_path("configs").glob("*.yaml")) if resolve_path("configs").is_dir() else []
        raise ConfigError(f"no preset {preset!r} ({path} does not exist); available presets: {available}")
    return path


def read_preset(preset: str, _seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """The preset's overrides, with its ``base:`` chain applied beneath it."""
    path = preset_path(preset)
    if str(path) in _seen:
        raise ConfigError(f"preset {path} is its own base (cycle: {' -> '.join(_seen)})")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a preset must be a mapping of config sections, got {type(data).__name__}")
    data = read_old_places(data, str(path))
    base = data.pop("base", None)
    if base is None:
        return data
    merged = read_preset(str(base), _seen + (str(path),))
    return deep_merge(merged, data)


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """``["model.hidden_size=128", "task.args.max_ops=16"]`` -> a nested dict."""
    nested: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.removeprefix("--").partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like --section.field=value")
        try:
            value = yaml.safe_load(raw) if raw.strip() else raw
        except yaml.YAMLError:
            value = raw
        node = nested
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} conflicts with another override of {part!r}")
        node[leaf] = value
    return nested


def load_config(preset: str | None = None, overrides: list[str] | None = None) -> ExperimentConfig:
    data = read_preset(preset) if preset else {}
    data = deep_merge(data, read_old_places(parse_overrides(overrides or []), "the overrides"))
    config = from_dict(ExperimentConfig, data, "")
    check_ranges(config)
    return config


def check_ranges(config: Any, prefix: str = "") -> None:
    """Raise a ConfigError naming the first field whose value is outside the range declared beside it
    (:func:`ranged`), then apply the checks that involve several fields (:func:`check_consistency`)."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            check_ranges(value, key + ".")
        elif "range" in f.metadata and not f.metadata["range"].admits(value):
            raise ConfigError(f"{key}={value!r} is out of range: it must be {f.metadata['range'].describe()}")
    if not prefix and isinstance(config, ExperimentConfig):
        check_consistency(config)


def check_consistency(config: ExperimentConfig) -> None:
    """Every check that involves more than one field, in one place."""
    from sirl.sinks import sink_names  # the sinks' registry holds the names train.report_to accepts

    try:
        sink_names(config.train.report_to)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    for section in dataclasses.fields(config.method):  # each method's checks of its own fields
        getattr(config.method, section.name).check(f"method.{section.name}")


def check_group_size(config: ExperimentConfig, min_group_size: int) -> None:
    """A method whose credit compares the samples of one prompt with each other (its registry entry's
    ``min_group_size`` is 2: grpo, dr_grpo, rloo, tree, si) needs two samples per prompt at least: in a group of
    one each sample is its group's mean, every advantage is 0, and the run would train on nothing."""
    if config.rollout.group_size < min_group_size:
        raise ConfigError(
            f"rollout.group_size={config.rollout.group_size} with algo.name={config.algo.name}: its advantages compare the samples "
            f"of one prompt with each other, and a group of one has nothing to compare, so every advantage would be 0 and the "
            f"run would learn nothing; set rollout.group_size to {min_group_size} or more (the smallest valid value is "
            f"{min_group_size}; the default is {RolloutConfig().group_size})"
        )


def from_dict(cls: type, data: dict[str, Any], prefix: str) -> Any:
    """Build dataclass ``cls`` from a (partial) dict, checking every key and value. A whole config
    (ExperimentConfig) is read with its keys at old places moved first (:func:`read_old_places`)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'} must be a mapping, got {data!r}")
    if cls is ExperimentConfig and not prefix:
        data = read_old_places(data, "the config")
    hints = typing.get_type_hints(cls)
    check_keys(cls, data, prefix)
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = from_dict(tp, value, key)
        else:
            kwargs[name] = check_type(value, tp, key)
    return cls(**kwargs)


def check_keys(cls: type, data: dict[str, Any], prefix: str) -> None:
    """Raise a ConfigError naming the first key of ``data`` that dataclass ``cls`` has no field for, with the
    valid keys."""
    fields = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(f"unknown config key {where}{unknown[0]}; valid keys{' of ' + prefix if prefix else ''}: {sorted(fields)}")


def check_type(value: Any, tp: Any, key: str) -> Any:
    """Return ``value`` (ints widened to float where a float is expected) or raise naming ``key``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if tp is type(None):
        if value is None:
            return None
    elif origin in (typing.Union, types.UnionType):
        errors = []
        for option in args:
            try:
                return check_type(value, option, key)
            except ConfigError as error:
                errors.append(error)
    elif origin is Literal:
        if value in args:
            return value
        raise ConfigError(f"{key}={value!r} is not a valid choice; valid choices: {list(args)}")
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _FLOAT_RE.fullmatch(value.strip()):
            return float(value)  # YAML 1.1 reads "1e-3" (no dot) as a string
    elif tp is str:
        if isinstance(value, str):
            return value
    elif origin in (list, tuple) or tp in (list, tuple):
        if isinstance(value, (list, tuple)):
            item_tp = args[0] if args else Any
            return [check_type(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    elif origin is dict or tp is dict:
        if isinstance(value, dict):
            key_tp, value_tp = args if args else (Any, Any)
            return {check_type(k, key_tp, key): check_type(v, value_tp, f"{key}.{k}") for k, v in value.items()}
    else:
        if isinstance(value, tp):
            return value
    raise ConfigError(f"{key}={value!r} has the wrong type: expected {_type_name(tp)}, got {type(value).__name__}")


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def check_task_args(task_class: type, args: dict[str, Any], key: str = "task.args") -> dict[str, Any]:
    """Check task knobs against the constructor's signature and annotations."""
    signature = inspect.signature(task_class.__init__)
    knobs = {n: p for n, p in signature.parameters.items() if n != "self" and p.kind is not p.VAR_KEYWORD}
    unknown = sorted(set(args) - set(knobs))
    if unknown:
        raise ConfigError(
            f"unknown key {key}.{unknown[0]} for task {getattr(task_class, 'name', task_class.__name__)!r}; "
            f"valid keys: {sorted(knobs)}"
        )
    try:
        hints = typing.get_type_hints(task_class.__init__)
    except (NameError, TypeError):  # a user task with unresolvable annotations: check names only
        hints = {}
    return {name: check_type(value, hints[name], f"{key}.{name}") if name in hints else value for name, value in args.items()}


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def to_yaml(config: Any) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False)


def flat_config(data: Any, prefix: str = "") -> dict[str, Any]:
    """A config (dataclass or dict) by dotted key; ``task.args`` stays one value (a task's own arguments are
    compared and shown whole)."""
    data = to_dict(data) if dataclasses.is_dataclass(data) else data
    out: dict[str, Any] = {}
    for name, value in data.items():
        key = f"{prefix}{name}"
        if isinstance(value, dict) and value and key != "task.args":
            out.update(flat_config(value, key + "."))
        else:
            out[key] = value
    return out


def config_differences(saved: Any, current: Any, ignore: tuple[str, ...] = ("out",)) -> list[str]:
    """Dotted keys whose values differ between two configs (dataclasses or dicts), as ``key: a -> b``. A key
    the saved config lacks is no difference while the current value is that field's default: the field
    was added after the save, and a new field's default keeps what came before. A dict is read with its
    keys at old places moved (:func:`read_old_places`), so a config saved by an older sirl compares by
    today's keys."""
    a, b = flat_config(_new_places(saved)), flat_config(_new_places(current))
    defaults = flat_config(ExperimentConfig())
    added_at_default = {key for key in set(b) - set(a) if key in defaults and b[key] == defaults[key]}
    return [f"{key}: {a.get(key)!r} -> {b.get(key)!r}" for key in sorted(set(a) | set(b))
            if key not in ignore and key not in added_at_default and a.get(key) != b.get(key)]


# --- keys at the places an older sirl had them -----------------------------------------------------


def read_old_places(data: dict[str, Any], where: str = "the config") -> dict[str, Any]:
    """``data`` (one preset file, one command line's overrides, or a saved config) with each key at a place
    an older sirl had it moved to where it is read now: a section of sirl.methods.settings.MOVED_SECTIONS
    (``internalize.verify_coef`` -> ``method.si_internal.verify_coef``) and each knob of the one ``method``
    section of before to every place of sirl.methods.settings.MOVED_KNOBS (``method.probes`` -> the probes of
    si, si_internal, random_reset and vine). A value given at the new place in the same ``data`` wins; a
    later layer (a preset over its base, the command line over the preset) wins as for any key."""
    if not isinstance(data, dict):
        return data
    out = copy.deepcopy(data)
    moved: list[tuple[str, Any]] = []
    for old, new in MOVED_SECTIONS.items():
        if old in out:
            section = out.pop(old)
            if not isinstance(section, dict):
                raise ConfigError(f"{where}: {old} must be a mapping, got {section!r} (its keys are read as {new}.KEY)")
            moved += [(f"{new}.{key}", value) for key, value in section.items()]
    method = out.get("method")
    if isinstance(method, dict):
        for knob in [key for key in method if not isinstance(method[key], dict)]:
            if knob not in MOVED_KNOBS:  # neither a method's section nor a knob of before
                raise ConfigError(
                    f"{where}: unknown config key method.{knob}; the method section holds a section per method "
                    f"({', '.join(f'method.{name}' for name in sorted(SETTINGS))}, e.g. method.si.probes), and reads "
                    f"these knobs of before at their new places: {sorted(MOVED_KNOBS)}"
                )
            value = method.pop(knob)
            moved += [(place, value) for place in MOVED_KNOBS[knob]]
    for place, value in moved:
        node = out
        *parents, leaf = place.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{where}: {'.'.join(parents)} must be a mapping to take {place}, got {node!r}")
        node.setdefault(leaf, value)
    return out


def _new_places(config: Any) -> Any:
    return read_old_places(config) if isinstance(config, dict) else config

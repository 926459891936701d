"""Checkpoints a run resumes from exactly: written atomically, loaded without unpickling, checked on load.

A checkpoint is a folder ``RUN/checkpoints/<name>`` (``step_N`` or ``final``)::

    config.json, model.safetensors, tokenizer files   the policy, a Hugging Face directory (``--model`` loads it)
    trainer_state.safetensors                         optimizer tensors (AdamW moments and step counts), and
                                                      the method's own (``method/...``: PRIME's reward model)
    trainer_state.json                                everything else: step, token counters, clock, RNG
                                                      states, scheduler, repair buffer, self-verification
                                                      examples, audit outcomes, guard counters
    manifest.json                                     size and SHA-256 of every file above, written last

It is written into ``checkpoints/.tmp-<name>``, files flushed to disk, the manifest last, then renamed into
place, and only then does ``checkpoints/latest`` (a one-line text file naming it) move to it. A crash at
any point leaves either the previous checkpoint as ``latest`` or the new one complete. On load every file
is checked against the manifest; a checkpoint that is incomplete or altered is refused with a warning and
the next most recent complete one is used.

Nothing is unpickled: tensors come from safetensors and the rest from JSON. Python's ``random`` states and
torch generator states are stored as numbers (see :func:`encode_python_rng`, :func:`encode_torch_rng`).

:class:`TrainerState` is everything a training run carries from one step to the next besides the weights,
the optimizer and the scheduler; :func:`save_training_checkpoint` and :func:`resume_training` write and
restore all of them, so a resumed run continues exactly where it stopped.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from safetensors.torch import load_file, save_file

CHECKPOINTS = "checkpoints"
LATEST = "latest"
MANIFEST = "manifest.json"
STATE_JSON = "trainer_state.json"
STATE_TENSORS = "trainer_state.safetensors"
FORMAT = 1
METHOD_PREFIX = "method/"
"""Names of the method's own tensors in trainer_state.safetensors (the optimizer's are ``optimizer/...``)."""


class CheckpointError(ValueError):
    """No checkpoint a run can resume from, or one that does not fit the run."""


@dataclass(frozen=True)
class LoadedCheckpoint:
    path: Path
    state: dict[str, Any]
    """The contents of trainer_state.json."""
    tensors: dict[str, torch.Tensor]
    """The contents of trainer_state.safetensors."""


# --- writing ---------------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_file(path: Path) -> None:
    with path.open("rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_checkpoint(
    run_dir: Path,
    name: str,
    save_policy: Any,
    state: dict[str, Any],
    tensors: dict[str, torch.Tensor],
) -> Path:
    """Write checkpoint ``name`` of ``run_dir`` atomically and point ``latest`` at it.

    ``save_policy(directory)`` writes the policy's Hugging Face files; ``state`` must be JSON-serializable
    and ``tensors`` a flat name -> tensor dict."""
    root = Path(run_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp-{name}"
    if tmp.exists():  # left by a crash while writing
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_policy(tmp)
    save_file({key: t.detach().cpu().contiguous() for key, t in tensors.items()}, str(tmp / STATE_TENSORS))
    (tmp / STATE_JSON).write_text(json.dumps(state, allow_nan=False))
    files = {}
    for path in sorted(p for p in tmp.rglob("*") if p.is_file()):
        _fsync_file(path)
        files[path.relative_to(tmp).as_posix()] = {"bytes": path.stat().st_size, "sha256": _sha256(path)}
    manifest = {"format": FORMAT, "step": state.get("step"), "files": files}
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
    _fsync_file(tmp / MANIFEST)
    _fsync_dir(tmp)

    final = root / name
    old = root / f".old-{name}"
    if final.exists():  # e.g. "final" written again by a resumed run
        if old.exists():
            shutil.rmtree(old)
        os.rename(final, old)
    os.rename(tmp, final)
    _fsync_dir(root)
    pointer = root / f".{LATEST}.tmp"
    pointer.write_text(name + "\n")
    _fsync_file(pointer)
    os.replace(pointer, root / LATEST)
    _fsync_dir(root)
    if old.exists():
        shutil.rmtree(old)
    return final


# --- reading ---------------------------------------------------------------------------------------


def check_checkpoint(path: Path) -> str | None:
    """Why the checkpoint at ``path`` cannot be used, or None when every file matches its manifest."""
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        return "no manifest.json (the checkpoint was not finished)"
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        return f"unreadable manifest.json ({error})"
    if manifest.get("format") != FORMAT:
        return f"checkpoint format {manifest.get('format')!r}, this version of sirl reads {FORMAT}"
    for required in (STATE_JSON, STATE_TENSORS):
        if required not in files:
            return f"the manifest does not list {required}"
    for relative, expected in files.items():
        file = path / relative
        if not file.is_file():
            return f"{relative} is missing"
        if file.stat().st_size != expected["bytes"]:
            return f"{relative} has {file.stat().st_size} bytes, the manifest says {expected['bytes']} (truncated?)"
        if _sha256(file) != expected["sha256"]:
            return f"{relative} does not match its SHA-256 in the manifest (altered or corrupted)"
    return None


def _manifest_step(path: Path) -> int:
    try:
        return int(json.loads((path / MANIFEST).read_text()).get("step") or -1)
    except (OSError, ValueError, json.JSONDecodeError, AttributeError):
        return -1


def candidates(run_dir: Path) -> list[Path]:
    """Checkpoints of ``run_dir`` to try, best first: the one ``latest`` names, then the others by step,
    most recent first. Folders being written (``.tmp-*``) are never candidates."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    found.sort(key=lambda p: (_manifest_step(p), p.name), reverse=True)
    latest = root / LATEST
    if latest.is_file():
        named = root / latest.read_text().strip()
        if named in found:
            found.remove(named)
            found.insert(0, named)
    return found


def load_checkpoint(run_dir: Path, warn: Any = None) -> LoadedCheckpoint:
    """The most recent complete checkpoint of ``run_dir``; each refused one is reported through
    ``warn(message)`` (stderr by default)."""
    warn = warn or (lambda message: print(f"warning: {message}", file=sys.stderr))
    tried = candidates(run_dir)
    for path in tried:
        problem = check_checkpoint(path)
        if problem is not None:
            warn(f"checkpoint {path} refused: {problem}; trying the previous one")
            continue
        return LoadedCheckpoint(path, json.loads((path / STATE_JSON).read_text()), load_file(str(path / STATE_TENSORS)))
    where = Path(run_dir) / CHECKPOINTS
    if not tried:
        raise CheckpointError(f"no checkpoint to resume from in {where} (was train.checkpoint_every 0, or did the run stop before its first?)")
    raise CheckpointError(f"no complete checkpoint in {where}: all {len(tried)} were refused (see the warnings above)")


def load_policy_weights(model: torch.nn.Module, directory: Path) -> None:
    """Load a checkpoint's model.safetensors (or its shards) into ``model``, in place and exactly; a LoRA
    model (peft) gets its adapters back from ``adapter/`` instead (its frozen base is the run's model.path).

    Only parameters that share storage with another one (tied embeddings, which save_pretrained writes
    once) may be absent from the files; anything else missing or unexpected is an error."""
    from sirl.model import is_peft_model, load_adapter_weights

    if is_peft_model(model):
        load_adapter_weights(model, directory)
        return
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        weights: dict[str, torch.Tensor] = {}
        for shard in shards:
            weights.update(load_file(str(directory / shard)))
    else:
        weights = load_file(str(directory / "model.safetensors"))
    missing, unexpected = model.load_state_dict(weights, strict=False)
    state = model.state_dict()
    stored = {state[k].data_ptr() for k in weights if k in state}
    untied = [k for k in missing if state[k].data_ptr() not in stored]
    if untied or unexpected:
        raise CheckpointError(f"{directory}: the weights do not fit the model (missing {untied[:5]}, unexpected {unexpected[:5]})")


def prune_checkpoints(run_dir: Path, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` step_N checkpoints of ``run_dir`` (by step); ``final`` and the one
    ``latest`` names are never deleted. Returns what was deleted."""
    root = Path(run_dir) / CHECKPOINTS
    latest = (root / LATEST).read_text().strip() if (root / LATEST).is_file() else None
    steps = sorted(
        (p for p in root.glob("step_*") if p.is_dir() and p.name[5:].isdigit()), key=lambda p: int(p.name[5:]), reverse=True
    )
    doomed = [p for p in steps[keep:] if p.name != latest]
    for path in doomed:
        shutil.rmtree(path)
    return doomed


# --- optimizer and random number generators as tensors and JSON --------------------------------


def optimizer_to_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer's state_dict into flat tensors (``optimizer/<param>/<name>``) and JSON."""
    full = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, entries in full["state"].items():
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer/{index}/{key}"] = value
            else:
                scalars[f"{index}/{key}"] = value
    return tensors, {"param_groups": full["param_groups"], "scalars": scalars}


def optimizer_from_tensors(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer/"):
            _, index, name = key.split("/", 2)
            state.setdefault(int(index), {})[name] = value
    for key, value in meta["scalars"].items():
        index, name = key.split("/", 1)
        state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def encode_python_rng(rng: random.Random) -> list:
    version, internal, gauss = rng.getstate()
    return [version, list(internal), gauss]


def decode_python_rng(encoded: list) -> tuple:
    version, internal, gauss = encoded
    return (version, tuple(internal), gauss)


def encode_torch_rng(state: torch.Tensor) -> str:
    return base64.b64encode(state.numpy().tobytes()).decode("ascii")


def decode_torch_rng(encoded: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(encoded)), dtype=torch.uint8).clone()


def encode_numpy_rng() -> list:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)]


def decode_numpy_rng(encoded: list) -> tuple:
    kind, keys, pos, has_gauss, cached = encoded
    return (kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached)


# --- the trainer's state --------------------------------------------------------------------------


@dataclass
class TokenCounts:
    """Generated tokens so far, by kind: the policy's rollouts, probes, and self-verification verdicts."""

    policy: int = 0
    probe: int = 0
    verify: int = 0

    @property
    def total(self) -> int:
        return self.policy + self.probe + self.verify


@dataclass
class RandomStreams:
    """The run's own random streams: prompts, the method's choices, sampling (on the policy's device:
    torch.multinomial needs a generator there) and minibatch shuffles. Each process of a data-parallel run
    has its own."""

    prompts: random.Random
    method: random.Random
    sampling: torch.Generator
    update: torch.Generator

    @classmethod
    def seeded(cls, seed: int, rank: int, device: torch.device) -> RandomStreams:
        return cls(
            prompts=random.Random(f"{seed}-prompts-{rank}"),
            method=random.Random(f"{seed}-method-{rank}"),
            sampling=torch.Generator(device=device).manual_seed(seed * 1009 + rank),
            update=torch.Generator().manual_seed(seed * 2003 + rank),
        )


@dataclass
class TrainerState:
    """What carries over from one training step to the next besides the weights, the optimizer and the
    scheduler. ``memory`` is the method's (sirl.methods.MethodMemory: repair buffer, self-verification
    examples, audits); ``first_eval`` and ``last_eval`` are EvalResults (sirl.evaluate)."""

    random: RandomStreams
    memory: Any
    tokens: TokenCounts
    step: int = 0
    trained_tokens: int = 0
    """Tokens through forward and backward so far: every row's prompt and response, each epoch (the second
    budget axis beside generated tokens)."""
    train_elapsed_s: float = 0.0
    log_elapsed_s: float = 0.0
    skipped_steps: int = 0
    skipped_in_row: int = 0
    first_eval: Any = None
    last_eval: Any = None
    method_state: Any = None
    """The method's own state (sirl.methods.MethodState: PRIME's reward model and its optimizer), or None;
    every process holds the same, so it is saved once, beside the optimizer."""

    def process_json(self) -> dict:
        """This process's own part (data-parallel processes differ in it): random states and the method's memory."""
        return {
            "prompt_rng": encode_python_rng(self.random.prompts),
            "method_rng": encode_python_rng(self.random.method),
            "sample_gen": encode_torch_rng(self.random.sampling.get_state()),
            "update_gen": encode_torch_rng(self.random.update.get_state()),
            "python_global": encode_python_rng(random),  # the module's own generator: random.getstate()
            "numpy_global": encode_numpy_rng(),
            "torch_global": encode_torch_rng(torch.get_rng_state()),
            "repair": self.memory.repair.to_json(),
            "verification": self.memory.verification.to_json(),
            "audits": self.memory.audits.to_json(),
        }

    def load_process_json(self, data: dict) -> None:
        self.random.prompts.setstate(decode_python_rng(data["prompt_rng"]))
        self.random.method.setstate(decode_python_rng(data["method_rng"]))
        self.random.sampling.set_state(decode_torch_rng(data["sample_gen"]))
        self.random.update.set_state(decode_torch_rng(data["update_gen"]))
        random.setstate(decode_python_rng(data["python_global"]))
        np.random.set_state(decode_numpy_rng(data["numpy_global"]))
        torch.set_rng_state(decode_torch_rng(data["torch_global"]))
        self.memory.repair.load_json(data["repair"])
        self.memory.verification.load_json(data["verification"])
        self.memory.audits.load_json(data["audits"])

    def shared_json(self) -> dict:
        """The part every process shares: counters, clocks and evaluations."""
        return {
            "step": self.step,
            "tokens": {"policy": self.tokens.policy, "probe": self.tokens.probe, "verify": self.tokens.verify},
            "trained_tokens": self.trained_tokens,
            "clock": {"log_s": self.log_elapsed_s, "train_s": self.train_elapsed_s},
            "guard": {"skipped_steps": self.skipped_steps, "skipped_in_row": self.skipped_in_row},
            "first_eval": self.first_eval.to_json(),
            "last_eval": self.last_eval.to_json(),
        }

    def load_shared_json(self, data: dict, eval_from_json: Any) -> None:
        self.step = data["step"]
        self.tokens = TokenCounts(**data["tokens"])
        self.trained_tokens = data.get("trained_tokens", 0)
        self.train_elapsed_s, self.log_elapsed_s = data["clock"]["train_s"], data["clock"]["log_s"]
        self.skipped_steps, self.skipped_in_row = data["guard"]["skipped_steps"], data["guard"]["skipped_in_row"]
        self.first_eval, self.last_eval = eval_from_json(data["first_eval"]), eval_from_json(data["last_eval"])


class NonFiniteWeights(RuntimeError):
    """A checkpoint was refused because the model's weights are not all finite."""


def save_training_checkpoint(
    run_dir: Path, name: str, model: torch.nn.Module, save_policy: Any, optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler, state: TrainerState, processes: list[dict], config_yaml: str,
) -> Path:
    """Write a resumable checkpoint of a training run; refuses a model with non-finite weights, so
    ``latest`` only ever names weights that passed the check. ``processes`` holds every process's
    :meth:`TrainerState.process_json`, in rank order."""
    broken = [n for n, p in model.named_parameters() if not torch.isfinite(p).all()]
    if broken:
        raise NonFiniteWeights(f"refusing to save checkpoint {name}: non-finite weights in {broken[:3]}")
    optimizer_tensors, optimizer_meta = optimizer_to_tensors(optimizer)
    trainer_state = {
        **state.shared_json(),
        "scheduler": schedule.state_dict(),
        "optimizer": optimizer_meta,
        "processes": processes,
        "config": config_yaml,
    }
    if state.method_state is not None:
        optimizer_tensors.update({f"{METHOD_PREFIX}{key}": t for key, t in state.method_state.tensors().items()})
        trainer_state["method_state"] = state.method_state.to_json()
    return write_checkpoint(run_dir, name, save_policy, trainer_state, optimizer_tensors)


def resume_training(
    run_dir: Path, state: TrainerState, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler, *, rank: int, world_size: int, changed_config: Any, eval_from_json: Any,
) -> LoadedCheckpoint:
    """Restore ``run_dir``'s most recent complete checkpoint into the model, optimizer, scheduler and
    ``state``. ``changed_config(saved_config_dict)`` returns the differences from the current config (a
    list of strings) and decides, raising, whether they are allowed."""
    loaded = load_checkpoint(run_dir)
    saved = loaded.state
    changed_config(yaml.safe_load(saved["config"]))
    if len(saved["processes"]) != world_size:
        raise CheckpointError(f"{loaded.path} was written by {len(saved['processes'])} process(es); resume it with as many, not {world_size}")
    load_policy_weights(model, loaded.path)
    optimizer_from_tensors(optimizer, loaded.tensors, saved["optimizer"])
    schedule.load_state_dict(saved["scheduler"])
    state.load_process_json(saved["processes"][rank])
    state.load_shared_json(saved, eval_from_json)
    if state.method_state is not None:
        if "method_state" not in saved:
            raise CheckpointError(f"{loaded.path} holds no state of the method (written by a run of another method?)")
        state.method_state.load(
            {key.removeprefix(METHOD_PREFIX): t for key, t in loaded.tensors.items() if key.startswith(METHOD_PREFIX)}, saved["method_state"]
        )
    return loaded

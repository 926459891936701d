"""sirl from Python: build a config, train, evaluate and compare with the objects the command line uses.

    import sirl

    config = sirl.make_config("arith_prime", task={"name": "records", "args": {"path": "rows.jsonl",
                              "reward": "my_rewards.py:final_digit"}}, algo={"name": "grpo"}, train={"steps": 20})
    result = sirl.run_train(config, "runs/mine")      # what `sirl train` does; returns the final EvalResult
    print(result.accuracy, result.ci95)
    final = sirl.run_eval(sirl.make_config(config, model={"path": "runs/mine/checkpoints/final"}))

Each ``run_*`` checks the config as the command line does (ranges, the method, the task's knobs, the model
directory or Hub id, a model that sirl trained on another task) before anything slow starts, and then
calls the same function the command does (sirl.train.run_train, sirl.sft.run_sft, sirl.compare.run_comparison).
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sirl.compare import ComparePlan
from sirl.config import (
    ConfigError, ExperimentConfig, TaskConfig, check_ranges, check_task_args, deep_merge, from_dict, read_old_places, read_preset, to_dict,
)
from sirl.evaluate import EvalResult

if TYPE_CHECKING:
    from sirl.compare.records import Report

__all__ = ["make_config", "run_compare", "run_eval", "run_sft", "run_train"]


def make_config(preset: str | ExperimentConfig | None = None, **sections: Any) -> ExperimentConfig:
    """A checked config: ``preset`` (a name in configs/, a YAML file, or a config to start from), then
    ``sections`` merged over it, each a config section as a dict (``train={"steps": 20}``, nested dicts such
    as ``task.args`` merged key by key) or a top-level field (``seed=1``, ``name="x"``). A ``task`` section
    that names another task than the preset's starts from that task's own knobs.
    Unknown keys, wrong types and values out of range are :class:`~sirl.config.ConfigError` s, as on the
    command line."""
    if isinstance(preset, ExperimentConfig):
        base = to_dict(preset)
    else:
        base = read_preset(preset) if preset else {}
    task = sections.get("task")
    if isinstance(task, dict) and "name" in task and task["name"] != base.get("task", {}).get("name", TaskConfig().name):
        # another task than the preset's starts from its own knobs: the preset's task.args are the other task's
        base = {**base, "task": {k: v for k, v in base.get("task", {}).items() if k != "args"}}
    sections = read_old_places(sections, "make_config's sections")  # method={"localizer": ...} as before: before merging
    config = from_dict(ExperimentConfig, deep_merge(base, sections), "")
    check_ranges(config)
    return config


def _checked(config: ExperimentConfig, allow_task_mismatch: bool, *, model_needed: str | None = None) -> ExperimentConfig:
    """A copy of ``config`` checked as ``sirl.cli.resolve_config`` and the commands check it: ranges, the
    method, the task's knobs, the model path, and the task the model was trained on."""
    from sirl.methods import get_method
    from sirl.model import model_directory
    from sirl.tasks import check_model_task, resolve_task_class

    config = dataclasses.replace(config)
    check_ranges(config)
    get_method(config.algo.name)
    config.task = dataclasses.replace(config.task, args=check_task_args(resolve_task_class(config.task.name), config.task.args))
    if not config.model.path:
        if model_needed:
            raise ConfigError(f"{model_needed} needs a model: model.path (a directory or a Hub id)")
        return config
    directory = model_directory(config.model.path)
    note = check_model_task(directory, config.task.name, config.task.args, allow_mismatch=allow_task_mismatch)
    if note:
        print(f"note: {note}", file=sys.stderr)
    return config


def _run_dir(command: str, config: ExperimentConfig, run_dir: str | Path | None) -> Path:
    from sirl.runlog import default_run_dir

    if run_dir is not None:
        return Path(run_dir)
    return Path(config.out) if config.out else default_run_dir(command, config)


def run_train(config: ExperimentConfig, run_dir: str | Path | None = None, *, quiet: bool = False, resume: bool = False,
              force: bool = False, allow_task_mismatch: bool = False) -> EvalResult:
    """``sirl train``: RL from ``config.model.path`` into ``run_dir`` (default ``config.out``, else
    runs/<name>-<time>); the final held-out evaluation. ``resume`` continues the run in ``run_dir``."""
    from sirl.train import run_train as train

    config = _checked(config, allow_task_mismatch or resume)
    return train(config, _run_dir("train", config, run_dir), quiet=quiet, resume=resume, force=force)


def run_sft(config: ExperimentConfig, run_dir: str | Path | None = None, *, quiet: bool = False, allow_task_mismatch: bool = False):
    """``sirl sft``: a supervised warm start on the task's reference solutions; a :class:`sirl.sft.SFTResult`."""
    from sirl.sft import run_sft as sft

    config = _checked(config, allow_task_mismatch)
    return sft(config, _run_dir("sft", config, run_dir), quiet=quiet, allow_task_mismatch=allow_task_mismatch)


def run_eval(config: ExperimentConfig, *, pass_k: bool = False, quiet: bool = True, allow_task_mismatch: bool = False) -> EvalResult:
    """``sirl eval``: greedy accuracy of ``config.model.path`` on the fixed held-out set of ``config.task``
    (``eval.n_problems`` problems drawn with ``eval.seed``), with pass@k for ``eval.pass_k`` when ``pass_k``."""
    import torch

    from sirl.evaluate import check_pass_k, evaluate, heldout_problems
    from sirl.model import DTYPES, load_model, resolve_device
    from sirl.prompts import prompt_format
    from sirl.tasks import load_task
    from sirl.verifier import verifier_for

    config = _checked(config, allow_task_mismatch, model_needed="run_eval")
    task = load_task(config.task.name, **config.task.args)
    if pass_k:
        check_pass_k(config.eval.pass_k, config.eval.n_samples)
    torch.manual_seed(config.seed)
    model, tokenizer = load_model(config.model.path, dtype=DTYPES[config.model.dtype])
    model = model.to(resolve_device(config.model.device))
    with verifier_for(config.verifier, config.task, task) as verifier:
        return evaluate(
            model, tokenizer, task, heldout_problems(task, config.eval.n_problems, config.eval.seed),
            max_new_tokens=config.eval.max_new_tokens, batch_size=config.eval.batch_size, pass_k=config.eval.pass_k if pass_k else [],
            n_samples=config.eval.n_samples, temperature=config.eval.temperature, seed=config.seed, verifier=verifier,
            progress=None if quiet else "eval", prompt_format=prompt_format(config.prompt, tokenizer, task), stop=config.rollout.stop,
        )


def run_compare(config: ExperimentConfig, plan: ComparePlan, out: str | Path, *, quiet: bool = False) -> Report:
    """``sirl compare``: every method of ``plan`` from ``config.model.path``, ``plan.seeds`` seeds each, at an
    equal generated-token budget, into ``out`` (results.json, results.md, plots); the summary as typed records
    (sirl.compare.ComparisonSummary, whose ``to_json()`` is results.json)."""
    from sirl.compare import run_comparison

    config = _checked(config, False, model_needed="run_compare")
    return run_comparison(config, plan, Path(out), quiet=quiet)

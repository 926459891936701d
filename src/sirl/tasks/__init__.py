"""Task registry: built-in tasks by name, user tasks by import path.

``load_task("arith", min_ops=8)`` builds a registered task; ``load_task("my_tasks.py:MyTask")`` or
``load_task("package.module:MyTask")`` imports a user's class, so a task can be added without touching
sirl. Keyword arguments are checked against the constructor's signature.
"""

from __future__ import annotations

import importlib
import inspect
import json
import types
from pathlib import Path

from sirl.config import ConfigError
from sirl.importing import load_module_file
from sirl.paths import resolve_path
from sirl.tasks.arith import ArithTask
from sirl.tasks.base import NoGroundTruth, Task, split_of
from sirl.tasks.code import CodeTask
from sirl.tasks.countdown import CountdownTask
from sirl.tasks.gsm8k import GSM8KTask
from sirl.tasks.records import RecordsTask

TASKS: dict[str, type[Task]] = {
    ArithTask.name: ArithTask,
    CountdownTask.name: CountdownTask,
    GSM8KTask.name: GSM8KTask,
    CodeTask.name: CodeTask,
    RecordsTask.name: RecordsTask,
}

__all__ = ["OPTIONAL", "REQUIRED", "TASKS", "TASK_RECORD", "NoGroundTruth", "NotATask", "Task", "check_model_task",
           "check_task_class", "load_task", "read_task_record", "resolve_task_class", "split_of", "task_knobs",
           "write_task_record"]


def _import_class(spec: str) -> type:
    module_part, _, class_name = spec.rpartition(":")
    if not module_part or not class_name:
        raise ConfigError(f"task import path {spec!r} must look like 'file.py:Class' or 'package.module:Class'")
    if module_part.endswith(".py"):
        path = Path(module_part).expanduser().resolve()
        if not path.is_file():
            raise FileNotFoundError(f"task file {module_part!r} (from --task {spec!r}) does not exist")
        module = load_module_file(path, f"sirl_user_task_{path.stem}")
    else:
        module = importlib.import_module(module_part)
    try:
        return getattr(module, class_name)
    except AttributeError:
        raise ConfigError(f"{module_part!r} has no attribute {class_name!r} (from --task {spec!r})") from None


REQUIRED = ("sample", "verify", "split_steps", "reference_solution")
"""The methods a task must implement (sirl.tasks.base has their contracts)."""
OPTIONAL = (
    "name", "description", "first_error", "has_ground_truth", "safe_verify", "program_isolation", "difficulty",
    "verification_prompt", "verdict_text", "parse_verdict", "verify_query", "verdict_none", "alphabet",
    "verdict_target", "read_verdict", "step_check", "step_check_pattern", "mark_good", "mark_bad",
)
"""Members with a default in :class:`~sirl.tasks.base.Task`, which a class written to the interface
without subclassing it gets too."""


class NotATask(ValueError):
    """``--task`` names something that does not implement the task interface (a config error)."""


def check_task_class(cls: object, spec: str) -> type[Task]:
    """``cls`` as a task class, checked once, up front: every required method missing is named in one
    error. A class written to the interface without subclassing :class:`Task` is adapted to one (a
    subclass of both), so it takes the base class's defaults for the optional members."""
    if not isinstance(cls, type):
        raise NotATask(f"--task {spec!r} names a value of type {type(cls).__name__}, not a class; give a task class (see README, Adding a task)")
    missing = sorted(cls.__abstractmethods__) if issubclass(cls, Task) else [m for m in REQUIRED if not callable(getattr(cls, m, None))]
    if missing:
        raise NotATask(
            f"task class {cls.__qualname__} (from --task {spec!r}) lacks the required method(s) {missing}; a task "
            f"implements {list(REQUIRED)} and may override {list(OPTIONAL)} (sirl.tasks.base.Task has the contract "
            "and the defaults)"
        )
    if issubclass(cls, Task):
        return cls
    namespace = {"__module__": cls.__module__, "__qualname__": cls.__qualname__, "__doc__": cls.__doc__}
    if "safe_verify" in cls.__dict__:  # the class's own declaration about its own verify still holds
        namespace["safe_verify"] = cls.__dict__["safe_verify"]
    return types.new_class(cls.__name__, (cls, Task), exec_body=lambda ns: ns.update(namespace))


def resolve_task_class(spec: str) -> type[Task]:
    """The task class named by a registry name or an import path (checked by :func:`check_task_class`)."""
    if spec in TASKS:
        return TASKS[spec]
    if ":" not in spec:
        raise ConfigError(f"unknown task {spec!r}; registered tasks: {sorted(TASKS)} (or give 'file.py:Class')")
    return check_task_class(_import_class(spec), spec)


def task_knobs(cls: type[Task]) -> dict[str, inspect.Parameter]:
    """The constructor keyword arguments of a task class (its knobs)."""
    params = inspect.signature(cls.__init__).parameters
    return {name: p for name, p in params.items() if name != "self" and p.kind is not p.VAR_KEYWORD}


def load_task(spec: str, **kwargs) -> Task:
    """Build a task from a registry name or import path, checking the knobs against its signature."""
    cls = resolve_task_class(spec)
    knobs = task_knobs(cls)
    unknown = sorted(set(kwargs) - set(knobs))
    if unknown:
        raise ConfigError(f"task {spec!r} has no knob(s) {unknown}; valid knobs: {sorted(knobs)}")
    try:
        return cls(**kwargs)
    except ValueError as error:
        if type(error) is not ValueError:  # already a typed error (ConfigError, DataError, ...)
            raise
        # A task refuses its knobs (task.args) with a plain ValueError: a config error, not a bug.
        raise ConfigError(f"task {spec!r}: {error}") from error


# --- which task a model directory was trained on ----------------------------------------------------
TASK_RECORD = "sirl_task.json"
"""The file in a model directory written by sirl that names the task it was trained on and its knobs."""


def write_task_record(model_dir: str | Path, spec: str, args: dict) -> Path:
    """Record in ``model_dir`` that its model was trained on task ``spec`` with knobs ``args``: the task's
    ``name`` (compared when the model is loaded again), and the spec and knobs as given (quoted back)."""
    record = {"name": resolve_task_class(spec).name, "task": spec, "args": args}
    path = Path(model_dir) / TASK_RECORD
    path.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return path


def read_task_record(model_dir: str | Path) -> dict | None:
    """The task record of a model directory, or None for one that has none (a model not trained by sirl)."""
    path = resolve_path(model_dir) / TASK_RECORD
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        if not isinstance(record.get("name"), str):
            raise ValueError("no task name")
    except (ValueError, AttributeError) as error:
        raise ConfigError(f"{path}: not a task record ({error}); delete it, or write it again with sirl.tasks.write_task_record") from None
    return record


def _flags(spec: str, args: dict) -> str:
    return " ".join([f"--task {spec}", *(f"--task.args.{key}={json.dumps(value)}" for key, value in sorted(args.items()))])


def check_model_task(model_dir: str | Path, spec: str, args: dict, *, allow_mismatch: bool = False) -> str | None:
    """Refuse to use a model trained by sirl on one task for another: a :class:`ConfigError` that names
    both and what to give, unless ``allow_mismatch`` (then the same message comes back as a note to
    print). Other knobs of the same task are fine (a harder distribution than the model was trained on is
    a normal experiment); a model directory without a record (not written by sirl) is never refused."""
    record = read_task_record(model_dir)
    if record is None:
        return None
    wanted = resolve_task_class(spec).name
    if record["name"] == wanted:
        return None
    trained = _flags(record.get("task", record["name"]), record.get("args") or {})
    message = (f"model {model_dir} was trained on task {record['name']!r} ({trained}), but the task given is "
               f"{wanted!r} ({_flags(spec, args)})")
    if allow_mismatch:
        return f"{message}; using it for {wanted!r} as asked (--allow-task-mismatch)"
    raise ConfigError(f"{message}; give {trained}, or add --allow-task-mismatch to use this model for {wanted!r} anyway")

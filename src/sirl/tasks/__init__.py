"""Task registry: built-in tasks by name, user tasks by import path.

``load_task("arith", min_ops=8)`` builds a registered task; ``load_task("my_tasks.py:MyTask")`` or
``load_task("package.module:MyTask")`` imports a user's class, so a task can be added without touching
sirl. Keyword arguments are checked against the constructor's signature.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from pathlib import Path

from sirl.tasks.arith import ArithTask
from sirl.tasks.base import NoGroundTruth, Task, split_of
from sirl.tasks.code import CodeTask
from sirl.tasks.countdown import CountdownTask
from sirl.tasks.gsm8k import GSM8KTask

TASKS: dict[str, type[Task]] = {
    ArithTask.name: ArithTask,
    CountdownTask.name: CountdownTask,
    GSM8KTask.name: GSM8KTask,
    CodeTask.name: CodeTask,
}

__all__ = ["TASKS", "Task", "NoGroundTruth", "load_task", "resolve_task_class", "task_knobs", "split_of"]


def _import_class(spec: str) -> type:
    module_part, _, class_name = spec.rpartition(":")
    if not module_part or not class_name:
        raise ValueError(f"task import path {spec!r} must look like 'file.py:Class' or 'package.module:Class'")
    if module_part.endswith(".py"):
        path = Path(module_part).expanduser().resolve()
        if not path.is_file():
            raise FileNotFoundError(f"task file {module_part!r} (from --task {spec!r}) does not exist")
        module_name = f"sirl_user_task_{path.stem}"
        module_spec = importlib.util.spec_from_file_location(module_name, path)
        assert module_spec is not None and module_spec.loader is not None
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[module_name] = module
        module_spec.loader.exec_module(module)
    else:
        module = importlib.import_module(module_part)
    try:
        return getattr(module, class_name)
    except AttributeError:
        raise ValueError(f"{module_part!r} has no attribute {class_name!r} (from --task {spec!r})") from None


def resolve_task_class(spec: str) -> type[Task]:
    """The task class named by a registry name or an import path."""
    if spec in TASKS:
        return TASKS[spec]
    if ":" not in spec:
        raise ValueError(f"unknown task {spec!r}; registered tasks: {sorted(TASKS)} (or give 'file.py:Class')")
    cls = _import_class(spec)
    missing = [m for m in ("sample", "verify", "split_steps", "first_error", "reference_solution") if not hasattr(cls, m)]
    if missing:
        raise TypeError(f"{spec!r} is not a task: it lacks {missing}; subclass sirl.tasks.base.Task")
    return cls


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
        raise ValueError(f"task {spec!r} has no knob(s) {unknown}; valid knobs: {sorted(knobs)}")
    return cls(**kwargs)

"""Loading user code named by ``file.py:name`` import paths (tasks, reward functions), and the lazy exports of
sirl's packages."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any


def load_module_file(path: Path, module_name: str) -> ModuleType:
    """Execute the Python file ``path`` as a module named ``module_name`` (registered in ``sys.modules``, so
    the objects it defines pickle by reference into the verifier's worker processes)."""
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module
    module_spec.loader.exec_module(module)
    return module


def lazy_exports(package: str, namespace: dict[str, Any], exports: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """A package's module-level ``__getattr__`` and ``__dir__`` (PEP 562) for ``exports`` (name -> the module
    that defines it): a name is imported when first used and then kept in ``namespace`` (the package's
    globals), so later look-ups skip ``__getattr__`` and importing the package stays cheap."""

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(exports[name]), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(exports))

    return __getattr__, __dir__

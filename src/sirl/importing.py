"""Loading user code named by ``file.py:name`` import paths (tasks, reward functions)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType


def load_module_file(path: Path, module_name: str) -> ModuleType:
    """Execute the Python file ``path`` as a module named ``module_name`` (registered in ``sys.modules``, so
    the objects it defines pickle by reference into the verifier's worker processes)."""
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module
    module_spec.loader.exec_module(module)
    return module

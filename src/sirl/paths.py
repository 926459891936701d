"""Where relative paths in configs and on the command line are looked up."""

from __future__ import annotations

from pathlib import Path

# src/sirl/paths.py -> the repository root, where configs/, checkpoints/ and data/ live in a checkout.
PROJECT_ROOT = Path(__file__).resolve().parents[2]


def resolve_path(path: str | Path) -> Path:
    """A path as given if it exists (absolute, or relative to the working directory), else the same
    relative path under the project root, so presets that name ``checkpoints/arith-tiny`` or
    ``data/gsm8k/test.jsonl`` work from any directory. Returns the working-directory form when neither
    exists, so error messages show what the user wrote."""
    given = Path(path).expanduser()
    if given.exists() or given.is_absolute():
        return given
    in_project = PROJECT_ROOT / given
    return in_project if in_project.exists() else given

"""Helpers shared by the benchmark scripts: resumable `sirl train` runs and reading their logs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path


def train_run(run_dir: Path, overrides: list[str], label: str) -> Path:
    """Run `sirl train` into ``run_dir`` unless it already finished there (eval.json exists); an
    interrupted run is started again from scratch. ``overrides`` are CLI arguments."""
    if (run_dir / "eval.json").is_file():
        return run_dir
    if run_dir.exists():
        shutil.rmtree(run_dir)
    print(f"[{label}] {run_dir}", flush=True)
    subprocess.run([sys.executable, "-m", "sirl.cli", "train", "--out", str(run_dir), "--quiet", *overrides], check=True)
    return run_dir


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def final_eval(run_dir: Path) -> dict:
    return json.loads((run_dir / "eval.json").read_text())

"""Helpers shared by the benchmark scripts: resumable `sirl train` runs and reading their logs."""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
from pathlib import Path


def peak_rss_gb() -> float:
    """This process's peak resident memory so far, in GB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def add_step_arguments(parser: argparse.ArgumentParser, rows: int, new_tokens: int) -> None:
    """What the one-step benchmarks (grpo_step_memory.py, trl_side_by_side.py) share: the model directory,
    the batch (rows sampled for exactly --new-tokens each) and the CPU threads."""
    parser.add_argument("--model", default="models/smollm2-135m-instruct")
    parser.add_argument("--rows", type=int, default=rows)
    parser.add_argument("--new-tokens", type=int, default=new_tokens)
    parser.add_argument("--threads", type=int, default=1)


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

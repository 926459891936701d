"""Bit-for-bit check that a refactor changes no numbers: short training runs of every method, then a comparison.

`run` trains each method (prime with its reward model among them) for a few steps on a fixed seed from the shipped arith mod 7 policy into
FOLDER/<method>; `compare` holds two such folders equal: every metrics.jsonl record the same once its
time fields are removed, and every tensor of the final weights equal (torch.equal).

    PYTHONPATH=/path/to/old/src python benchmarks/bitcheck.py run /tmp/bitcheck/before
    python benchmarks/bitcheck.py run /tmp/bitcheck/after
    python benchmarks/bitcheck.py compare /tmp/bitcheck/before /tmp/bitcheck/after

The runs are serial (one at a time) with OMP_NUM_THREADS=1 so a busy machine gives the same numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

# Each method with the overrides that make it do its work in 10 steps.
METHODS: dict[str, list[str]] = {
    "grpo": ["--algo", "grpo"],
    "si_search": ["--algo", "si", "--method.localizer=search", "--method.error_span=step", "--method.probe_baseline=all"],
    "si_divergence": [
        "--algo", "si", "--method.localizer=divergence", "--method.error_span=first_difference", "--method.probe_baseline=leave_out",
    ],
    "tree": ["--algo", "tree"],
    "tree_branch": ["--algo", "tree_branch"],
    "si_internal": ["--algo", "si_internal"],
    "random_reset": ["--algo", "random_reset", "--method.blind_resets=2"],
    "vine": ["--algo", "vine"],
    "prime": ["--algo", "prime"],
}
TIME_FIELDS = ("time/", "tokens_per_s", "wall", "elapsed")
"""Metric names holding a wall-clock measurement (they differ between any two runs)."""


def run(folder: Path, methods: list[str], steps: int, seed: int) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for name in methods:
        out = folder / name
        command = [
            sys.executable, "-m", "sirl.cli", "train", "--config", "arith_prime", "--seed", str(seed), "--out", str(out), "--quiet",
            *METHODS[name], f"--train.steps={steps}", "--train.eval_every=0", "--eval.final_n_problems=50",
            "--train.checkpoint_every=100000",
        ]
        print(" ".join(command), flush=True)
        subprocess.run(command, env=env, check=True)


def without_times(record: dict) -> dict:
    return {k: v for k, v in record.items() if not any(k.startswith(f) or f in k for f in TIME_FIELDS)}


def final_weights(run_dir: Path) -> Path:
    found = sorted(run_dir.glob("checkpoints/final*/model.safetensors"))
    if not found:
        raise SystemExit(f"{run_dir}: no checkpoints/final*/model.safetensors (did the run finish?)")
    return found[0]


def compare(before: Path, after: Path, methods: list[str]) -> bool:
    from safetensors.torch import load_file
    import torch

    all_equal = True
    print(f"{'method':<15} {'metrics equal':<14} {'weights equal':<14}")
    for name in methods:
        a, b = before / name, after / name
        lines_a = [without_times(json.loads(x)) for x in (a / "metrics.jsonl").read_text().splitlines() if x.strip()]
        lines_b = [without_times(json.loads(x)) for x in (b / "metrics.jsonl").read_text().splitlines() if x.strip()]
        metrics_equal = lines_a == lines_b
        if not metrics_equal:
            for i, (x, y) in enumerate(zip(lines_a, lines_b)):
                differing = sorted(k for k in x.keys() | y.keys() if x.get(k) != y.get(k))
                if differing:
                    print(f"  {name}: record {i} differs in {differing[:8]}", file=sys.stderr)
                    break
            else:
                print(f"  {name}: {len(lines_a)} records before, {len(lines_b)} after", file=sys.stderr)
        wa, wb = load_file(final_weights(a)), load_file(final_weights(b))
        weights_equal = wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
        print(f"{name:<15} {'yes' if metrics_equal else 'NO':<14} {'yes' if weights_equal else 'NO':<14}")
        all_equal &= metrics_equal and weights_equal
    return all_equal


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run_parser = sub.add_parser("run", help="train every method into FOLDER/<method>")
    run_parser.add_argument("folder", type=Path)
    run_parser.add_argument("--steps", type=int, default=10)
    run_parser.add_argument("--seed", type=int, default=3)
    compare_parser = sub.add_parser("compare", help="hold two folders' runs equal")
    compare_parser.add_argument("before", type=Path)
    compare_parser.add_argument("after", type=Path)
    for p in (run_parser, compare_parser):
        p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    args = parser.parse_args()
    if args.command == "run":
        run(args.folder, args.methods, args.steps, args.seed)
    else:
        sys.exit(0 if compare(args.before, args.after, args.methods) else 1)


if __name__ == "__main__":
    main()

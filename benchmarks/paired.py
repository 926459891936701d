"""Paired differences between methods run in different comparison folders.

`sirl compare` measures every method against one reference inside one folder. When variants of a method
are run as separate comparisons (a config override per folder, e.g. `method.failure_choice`), this reads
each variant's runs and prints, for every pair, the difference in final accuracy with the same 95%
bootstrap interval over the paired seeds and the shared held-out problems (sirl.compare.paired_difference);
the final figure is each folder's own (the mean of its last `final_evaluations` evaluations).

METHOD `start` is the folder's starting policy (its one evaluation on the same final problems, in
`start/eval.json`), paired with every seed of the other side: how far a method moved from where it began.

    python benchmarks/paired.py half_solved=runs/compare_prime/rule_half_solved:tree_branch \\
        random=runs/compare_prime/rule_random:tree_branch grpo=runs/compare_prime/rule_random:grpo
    python benchmarks/paired.py start=runs/compare_smollm2/cpu:start grpo=runs/compare_smollm2/cpu:grpo
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
from pathlib import Path

from sirl.compare import RunSpec, final_figure, paired_difference, read_plan_json, run_dir


START = "start"
"""The METHOD that names a folder's starting policy."""


def rewards_of(folder: Path, method: str) -> dict[int, list[float]]:
    """Per seed, the run's reward per final held-out problem, for every finished run of ``method``; for
    ``start``, the starting policy's rewards under every seed of the plan (one evaluation, no spread)."""
    plan = read_plan_json(folder / "compare.json")
    if method == START:
        evaluation = folder / "start" / "eval.json"
        if not evaluation.is_file():
            raise SystemExit(f"{folder}: no starting-policy evaluation at {evaluation}")
        rewards = json.loads(evaluation.read_text())["rewards"]
        return {seed: rewards for seed in range(plan.seeds)}
    found = {}
    for seed in range(plan.seeds):
        run = run_dir(folder, RunSpec(method, seed))
        if (run / "eval.json").is_file():
            found[seed] = final_figure(run, plan).rewards
    if not found:
        raise SystemExit(f"{folder}: no finished run of {method!r} (looked in {folder / 'runs' / method})")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variants", nargs="+", metavar="NAME=FOLDER:METHOD")
    args = parser.parse_args()
    variants, starts = {}, {}
    for text in args.variants:
        name, _, where = text.partition("=")
        folder, _, method = where.rpartition(":")
        if not (name and folder and method):
            parser.error(f"{text!r}: give NAME=FOLDER:METHOD, e.g. random=runs/compare_prime/rule_random:tree_branch")
        variants[name], starts[name] = rewards_of(Path(folder), method), method == START
    print("| variant | final accuracy (mean ± std over seeds) | seeds |")
    print("|---|---:|---:|")
    for name, runs in variants.items():
        accuracies = [statistics.fmean(r) for r in runs.values()]
        if starts[name]:
            print(f"| {name} | {accuracies[0]:.1%} (starting policy) | - |")
            continue
        spread = statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0
        print(f"| {name} | {statistics.fmean(accuracies):.1%} ± {spread:.1%} | {len(runs)} |")
    print("\n| A | B | A - B, points [95% CI] |")
    print("|---|---|---:|")
    for a, b in itertools.combinations(variants, 2):
        diff = paired_difference(variants[a], variants[b])
        if diff is None:
            print(f"| {a} | {b} | no common seed with per-problem rewards |")
            continue
        low, high = diff.ci95
        verdict = " (no difference)" if diff.no_difference else ""
        print(f"| {a} | {b} | {100 * diff.mean:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}]{verdict} |")


if __name__ == "__main__":
    main()

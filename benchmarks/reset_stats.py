"""What a comparison's runs did besides learning: self-localization, resets and probes, per method, read
from each run's metrics.jsonl (sirl.schema names them) and averaged first over a run's steps, then over
its seeds.

`sirl compare`'s results.md gives accuracy; this gives the figures behind it for the methods that localize
or reset (si, si_internal, random_reset): how often the policy's own named step is the ground-truth first
wrong step (``selfloc/accuracy``: over the first 3 steps, the last quarter of the run, and all of it), how
often a reset point lies just before that step (``reset/at_first_error``; for si_internal, whose resets
sit just before the step the policy names, its exact self-localization on the failures it resets), the share of resets whose
continuations hold a success (``reset/opened``: a reset that opens an all-fail group), the groups with no
success a step, and probes per failure. A step that did not produce a metric (no reset that step, say)
does not count in its mean; "-" where no step did.

With ``--against A,B`` it also prints B minus A for every figure both methods have, paired over the seeds
both ran, with the 95% percentile bootstrap interval of sirl.compare.paired_difference over those seeds
(each seed's run mean is one value).

    python benchmarks/reset_stats.py runs/compare_internal/divergence80k
    python benchmarks/reset_stats.py runs/compare_internal/divergence200k --against random_reset,si_internal
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from common import metrics
from sirl import schema
from sirl.compare import paired_difference

FIRST_STEPS = 3
"""The start of a run: its first steps (the policy as it came)."""


def step_mean(records: list[dict], key: str, part: str = "all") -> float | None:
    """The mean of ``key`` over a run's steps that logged it: ``part`` "first" (the first FIRST_STEPS steps of
    the run), "last_quarter" (its last quarter of steps, at least one) or "all"; None if no step logged it."""
    steps = [r for r in records if schema.TOKENS_TRAINED in r]  # training steps (step 0 is the start's evaluation)
    if part == "first":
        steps = steps[:FIRST_STEPS]
    elif part == "last_quarter":
        steps = steps[len(steps) - max(1, len(steps) // 4):]
    values = [r[key] for r in steps if r.get(key) is not None]
    return statistics.fmean(values) if values else None


COLUMNS: list[tuple[str, str, str]] = [
    ("self-localization, first 3 steps", schema.SELFLOC_ACCURACY, "first"),
    ("self-localization, last quarter", schema.SELFLOC_ACCURACY, "last_quarter"),
    ("self-localization, whole run", schema.SELFLOC_ACCURACY, "all"),
    ("resets just before the first wrong step, first 3 steps", schema.RESET_AT_FIRST_ERROR, "first"),
    ("resets just before the first wrong step, last quarter", schema.RESET_AT_FIRST_ERROR, "last_quarter"),
    ("resets just before the first wrong step, whole run", schema.RESET_AT_FIRST_ERROR, "all"),
    ("resets that open an all-fail group", schema.RESET_OPENED, "all"),
    ("resets a step", schema.RESET_RESETS, "all"),
    ("all-fail groups a step, first 3 steps", schema.RESET_BLIND_GROUPS, "first"),
    ("probes per failure", schema.LOC_PROBES_PER_FAILURE, "all"),
]
"""(column, metric, part of the run); shares are printed as percentages, counts as numbers."""

SHARES = {schema.SELFLOC_ACCURACY, schema.RESET_AT_FIRST_ERROR, schema.RESET_OPENED}


def run_figures(folder: Path, method: str) -> dict[int, list[float | None]]:
    """Each finished seed of ``method`` in the comparison ``folder``: its step mean of every column."""
    runs = sorted(p for p in (folder / "runs" / method).glob("seed*") if (p / "eval.json").is_file())
    return {int(run.name.removeprefix("seed")): [step_mean(metrics(run), key, part) for _, key, part in COLUMNS] for run in runs}


def method_figures(folder: Path, method: str) -> tuple[list[float | None], int]:
    """Each column's mean over the finished seeds of ``method`` in the comparison ``folder`` (each seed's step
    mean first), and the number of seeds."""
    per_run = list(run_figures(folder, method).values())
    figures = []
    for column in range(len(COLUMNS)):
        values = [row[column] for row in per_run if row[column] is not None]
        figures.append(statistics.fmean(values) if values else None)
    return figures, len(per_run)


def against_table(folder: Path, first: str, second: str) -> str:
    """``second`` minus ``first`` for every column both methods logged, paired over their shared seeds."""
    runs = {m: run_figures(folder, m) for m in (first, second)}
    lines = [f"| {second} minus {first} | difference [95% CI] | seeds |", "|---|---:|---:|"]
    for column, (name, key, _) in enumerate(COLUMNS):
        # One value a seed: paired_difference's problem axis has a single entry, so it resamples the seeds only.
        values = [{seed: [row[column]] for seed, row in runs[m].items() if row[column] is not None} for m in (second, first)]
        found = paired_difference(*values)
        if found is None:
            continue
        (low, high), scale, unit = found.ci95, *((100, " points") if key in SHARES else (1, ""))
        lines.append(f"| {name} | {scale * found.mean:+.1f} [{scale * low:+.1f}, {scale * high:+.1f}]{unit} | {len(found.seeds)} |")
    return "\n".join(lines)


def table(folder: Path, methods: list[str]) -> str:
    lines = ["| | " + " | ".join(methods) + " |", "|---|" + "---:|" * len(methods)]
    found = {m: method_figures(folder, m) for m in methods}
    lines.append("| seeds | " + " | ".join(str(found[m][1]) for m in methods) + " |")
    for column, (name, key, _) in enumerate(COLUMNS):
        cells = []
        for m in methods:
            value = found[m][0][column]
            cells.append("-" if value is None else f"{value:.1%}" if key in SHARES else f"{value:.2f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="a sirl compare folder")
    parser.add_argument("--methods", default=None, help="comma-separated (default: every method with runs in the folder)")
    parser.add_argument("--against", default=None, metavar="A,B", help="also print B minus A, paired over their seeds")
    args = parser.parse_args()
    if not (args.folder / "runs").is_dir():
        raise SystemExit(f"{args.folder}: no runs/ folder here; give the --out folder of a sirl compare")
    methods = args.methods.split(",") if args.methods else sorted(p.name for p in (args.folder / "runs").iterdir() if p.is_dir())
    print(table(args.folder, methods))
    if args.against:
        pair = args.against.split(",")
        if len(pair) != 2 or any(not (args.folder / "runs" / m).is_dir() for m in pair):
            raise SystemExit(f"--against {args.against}: give two methods with runs in {args.folder}, as A,B")
        print()
        print(against_table(args.folder, *pair))


if __name__ == "__main__":
    main()

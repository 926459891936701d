"""A comparison's report from its summary (sirl.compare.summary): results.md, results.json and the four plots.

Every part says which evaluations it shows: the curves come from the periodic evaluations during training,
the tables, the diamonds and the bars from the final set. A part that fails is named in results.md and
results.json with its error, and the rest is written all the same.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from sirl.compare.stats import MeanStd, PairedDifference
from sirl.compare.records import ComparisonSummary, Machine, MethodSummary, Report
from sirl.compare.summary import LOAD_EVERY_S, report_part, runs_reached
from sirl.runlog import write_atomic
from sirl.tasks.base import difficulty_order


def count_of(n: int, noun: str) -> str:
    """``1 seed``, ``3 seeds``."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def load_text(machine: Machine) -> str:
    """One sentence on the machine's load while the runs' wall-clock was measured."""
    load = machine.load
    own = machine.jobs * machine.threads_per_run
    if not load:
        return "The machine's load was not recorded (no logs/load.jsonl), so the wall-clock figures may include other work."
    parts = []
    if load.before is not None:
        parts.append(f"{load.before:.1f} before the runs")
    if load.during_mean is not None:
        parts.append(f"{load.during_mean:.1f} on average and {load.during_max:.1f} at most during them "
                     f"({count_of(load.during_samples, 'sample')}, {LOAD_EVERY_S:.0f} s apart)")
    if load.after is not None:
        parts.append(f"{load.after:.1f} after")
    return (f"Machine load (1-minute load average): {', '.join(parts)}, on {count_of(load.cpu_count, 'CPU core')}. The "
            f"comparison's own runs use up to {count_of(own, 'thread')}, so load beyond that was other work slowing them down.")


def load_caption(machine: Machine) -> str:
    """The load in a few words, for the wall-clock plot."""
    load = machine.load
    if not load or load.during_mean is None:
        return "machine load not recorded"
    return (f"load avg during runs {load.during_mean:.1f} (max {load.during_max:.1f}) on {load.cpu_count} CPUs; "
            f"own runs: {machine.jobs} x {count_of(machine.threads_per_run, 'thread')}")


# --- cells ---------------------------------------------------------------------------------------


def _pct(stat: MeanStd | None, digits: int = 1) -> str:
    if not stat or stat.mean is None:
        return "-"
    return f"{stat.mean:.{digits}%} ± {stat.std:.{digits}%}" if stat.std else f"{stat.mean:.{digits}%}"


def _number(stat: MeanStd) -> str:
    return "-" if stat.mean is None else f"{stat.mean:.2f}"


def _megabytes(stat: MeanStd | None) -> str:
    return "-" if not stat or stat.mean is None else f"{stat.mean:.1f}"


def _tokens(n: float | None) -> str:
    if n is None:
        return "not reached"
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.0f}k"


def _difference(diff: PairedDifference | None) -> str:
    """A difference from the reference in points with its interval; one inside its interval reads as no difference."""
    if not diff:
        return ""
    low, high = diff.ci95
    return f"{100 * diff.mean:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}]{' (no difference)' if diff.no_difference else ''}"


def _ratio(value: float | None, ci: list[float | None] | None) -> str:
    """A token ratio to the reference's with its interval; None reads as not reached within the budget."""
    def one(v: float | None) -> str:
        return "not reached" if v is None else f"{v:.2f}"

    if ci is None:
        return one(value)
    return f"{one(value)} [{one(ci[0])}, {one(ci[1])}]"


def _setting(key: str, value: Any) -> str:
    return f"`{key}={value if isinstance(value, str) else json.dumps(value)}`"


# --- results.md ----------------------------------------------------------------------------------


def _set_sizes(results: ComparisonSummary) -> tuple[str, str]:
    """How the final and the periodic evaluation sets read in the text: ``n=50``, or their names."""
    sets = results.eval_sets
    final_n = f"n={sets.final_n}" if sets and sets.final_n else "the final set"
    periodic_n = f"n={sets.periodic_n}" if sets and sets.periodic_n else "the periodic set"
    return final_n, periodic_n


def _reference_target(results: ComparisonSummary) -> str:
    ref = results.plan.reference_method
    reference = results.reference
    return f"{ref}'s final accuracy ({reference.final_accuracy:.1%})" if reference else f"{ref}'s final accuracy"


def _introduction(results: ComparisonSummary) -> list[str]:
    """The title and the paragraphs that say what the table's figures are."""
    plan, start, task = results.plan, results.start, results.task
    periodic, final = (results.eval_sets.periodic_n, results.eval_sets.final_n) if results.eval_sets else (None, None)
    final_n, periodic_n = _set_sizes(results)
    ref = plan.reference_method
    same_problems = (", the same problems)." if periodic == final else
                     ", the first of the same problems)." if (periodic or 0) <= (final or 0) else ").")
    return [
        f"# {task['name']}: {', '.join(plan.methods)} at {plan.budget_tokens:,} generated tokens",
        "",
        f"Task `{task['name']}` {json.dumps(task.get('args') or {})}, starting policy `{results.model}`"
        + (f" ({start.accuracy:.1%} on the final set, n={start.n})" if start else "")
        + f". {count_of(plan.seeds, 'seed')} per method; every run generates {plan.budget_tokens:,} tokens (policy samples, "
        "probes and self-verification all counted) and stops at the step that crosses that budget. "
        + (f"A run's final accuracy is the mean of its last {count_of(plan.final_evaluations, 'evaluation')} on the final "
           f"held-out set ({final_n}), problem by problem; " if plan.final_evaluations > 1 else
           f"Final accuracies are on the final held-out set ({final_n}); ")
        + f"the curves come from the periodic evaluations during training ({periodic_n}" + same_problems,
        "",
        f"The difference from {ref} is in points of final accuracy, with a 95% bootstrap interval that resamples the "
        "seeds both methods ran (paired) and the final held-out problems (the same for every run); a difference "
        "whose interval holds 0 is no difference.",
        "",
        f"Tokens to reach {_reference_target(results)}: where a method's mean accuracy curve first crosses it, as a ratio to "
        f"where {ref}'s own mean curve does, in generated tokens and in trained tokens (every row's tokens through forward "
        "and backward), with 95% bootstrap intervals over the seeds both ran (paired); \"not reached\" means not within the budget.",
        "",
    ]


def _main_table(results: ComparisonSummary) -> list[str]:
    """One row per method: final accuracy, the difference from the reference, tokens to reach it, cost."""
    ref, target = results.plan.reference_method, _reference_target(results)
    final_n, _ = _set_sizes(results)
    spread = "mean ± std over seeds" if results.plan.seeds > 1 else "1 seed"
    lines = [
        f"| method | final accuracy ({final_n}; {spread}) | difference from {ref} (95% CI) | seeds | tokens to reach {target} | "
        f"generated-token ratio to {ref} (95% CI) | trained-token ratio to {ref} (95% CI) | learning rate | wall-clock (min) | "
        "steps | trained tokens | probe tokens | localization accuracy | probes per failure (last quarter) | "
        "self-localization accuracy (last quarter) | method's model memory (MB) |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in results.methods.items():
        seeds = ", ".join(f"{v:.1%}" for v in row.final_accuracy.values)
        reach = row.versus.tokens_to_reach if row.versus else None
        difference = row.versus.difference if row.versus else None
        lr = f"{row.learning_rate.lr:g}" if row.learning_rate else f"{'-' if results.learning_rate is None else results.learning_rate}"
        trained = row.trained_tokens.mean if row.trained_tokens else None
        lines.append(
            f"| {name} | {_pct(row.final_accuracy)} | {_difference(difference)} | {seeds} | "
            f"{_tokens(reach.generated_tokens) if reach else '-'} | "
            f"{_ratio(reach.generated_ratio, reach.generated_ratio_ci95) if reach else '-'} | "
            f"{_ratio(reach.trained_ratio, reach.trained_ratio_ci95) if reach else '-'} | "
            f"{lr} | {row.timing.wall_clock_s.mean / 60:.1f} | "
            f"{row.steps.mean:.0f} | {'-' if trained is None else _tokens(trained)} | {row.probe_share.mean:.0%} | "
            f"{_pct(row.localization_accuracy)} | {_number(row.probes_per_failure)} | "
            f"{_pct(row.selfloc_accuracy)} | {_megabytes(row.method_state_mb)} |"
        )
    return lines + ["", "Trained tokens count every token through a forward and backward pass: the policy's rows each epoch, and "
                    "those of a model the method trains itself (PRIME's reward model). A method's model memory is the state it "
                    "holds besides the policy and its optimizer (PRIME: its reward model's weights, gradients and AdamW moments, "
                    "and the frozen reference); - for none."]


def _learning_rate_table(methods: dict[str, MethodSummary]) -> list[str]:
    """Each method's final accuracy at every learning rate tried, its choice in bold; nothing without choices."""
    chosen = {name: row.learning_rate for name, row in methods.items() if row.learning_rate}
    if not chosen:
        return []
    rates = sorted({float(lr) for c in chosen.values() for lr in c.accuracy_by_lr})
    lines = ["", f"Learning rate per method: the final accuracy of one run at each rate on seed {next(iter(chosen.values())).seed}, "
             "which the table does not use; the best (bold) ran the table's seeds.", "",
             "| method | " + " | ".join(f"lr {lr:g}" for lr in rates) + " |", "|---|" + "---:|" * len(rates)]
    for name, c in chosen.items():
        cells = []
        for lr in rates:
            value = c.accuracy_by_lr.get(f"{lr:g}")
            text = "-" if value is None else f"{value:.1%}"
            cells.append(f"**{text}**" if lr == c.lr else text)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def _difficulty_table(results: ComparisonSummary) -> list[str]:
    """Final accuracy by difficulty level, the starting policy first; nothing without levels."""
    start, methods = results.start, results.methods
    levels = sorted({str(level) for row in methods.values() for level in row.by_difficulty}
                    | (set(start.by_difficulty) if start else set()), key=difficulty_order)
    if not levels:
        return []
    counts = start.by_difficulty if start else {}
    header = [f"{level}" + (f" (n={counts[level].n})" if level in counts else "") for level in levels]
    lines = ["", f"Final accuracy by difficulty on the final set (`{results.task['name']}`'s difficulty level; mean over seeds, n per "
             "level in the header):", "", "| method | " + " | ".join(header) + " |", "|---|" + "---:|" * len(levels)]
    if start:
        lines.append("| starting policy | " + " | ".join(
            f"{counts[level].accuracy:.1%}" if level in counts else "-" for level in levels) + " |")
    for name, row in methods.items():
        by_level = {str(level): stat for level, stat in row.by_difficulty.items()}
        lines.append(f"| {name} | " + " | ".join(_pct(by_level.get(level), 1) for level in levels) + " |")
    return lines


def _bands_table(results: ComparisonSummary) -> list[str]:
    """Accuracy pooled over the hard band and over the rest, with the differences from the reference there."""
    bands, start, ref = results.difficulty_bands, results.start, results.plan.reference_method
    if not (bands and bands.hard and bands.other):
        return []
    lines = ["", f"Pooled over the levels where the starting policy is below {results.plan.hard_below:.0%} (hard: {bands.hard}) and "
             f"over the others ({bands.other}), each level weighted by its problem count; mean ± std over seeds:", "",
             f"| method | hard levels | hard, difference from {ref} | other levels | other, difference from {ref} |",
             "|---|---:|---:|---:|---:|"]
    if start:
        lines.append(f"| starting policy | {start.pooled(bands.hard):.1%} | | {start.pooled(bands.other):.1%} | |")
    for name, row in results.methods.items():
        by_band = (row.versus.band_differences if row.versus else None) or {}
        cells = ["" if name == ref else _difference(by_band.get(b)) for b in ("hard", "other")]
        lines.append(f"| {name} | {_pct(row.hard_levels_accuracy)} | {cells[0]} | {_pct(row.other_levels_accuracy)} | {cells[1]} |")
    return lines + ["", "Differences by band: paired over the seeds both ran and the band's final problems, 95% bootstrap "
                    "interval (blank without per-problem levels in the starting policy's evaluation)."]


def _figures_and_machine(results: ComparisonSummary) -> list[str]:
    """The plots with what each shows, and the machine the wall-clock figures were measured on."""
    final_n, periodic_n = _set_sizes(results)
    machine = results.machine
    return [
        "",
        f"![accuracy against generated tokens](accuracy_vs_tokens.png) Lines: the periodic evaluations ({periodic_n}) "
        f"interpolated onto the token grid; diamonds: the final set ({final_n}), as in the table.",
        f"![accuracy against wall-clock](accuracy_vs_time.png) The periodic evaluations ({periodic_n}) against wall-clock.",
        "![probes per failure](probes_per_failure.png)",
        f"![accuracy by difficulty](accuracy_by_difficulty.png) The final set ({final_n}), as in the table by difficulty.",
        "",
        f"Machine: {machine.processor}, {count_of(machine.cpu_count, 'CPU core')}{', GPU ' + machine.gpu if machine.gpu else ''}; "
        f"{machine.jobs} run(s) at a time with {count_of(machine.threads_per_run, 'thread')} each; Python {machine.python}, "
        f"torch {machine.torch}. Wall-clock includes the periodic held-out evaluations (the same number for every method). "
        + load_text(machine),
        "",
    ]


def results_markdown(results: ComparisonSummary) -> str:
    missing = ["", f"Runs not finished (left out of the table): {', '.join(results.missing_runs)}."] if results.missing_runs else []
    return "\n".join([
        *_introduction(results), *_main_table(results), *_learning_rate_table(results.methods), *_difficulty_table(results),
        *_bands_table(results), *missing, *_figures_and_machine(results), *what_ran_markdown(results),
    ])


def what_ran_markdown(results: ComparisonSummary) -> list[str]:
    """The results.md section that lets a reader rerun the comparison: its command lines with the sirl
    commit of each, and every method's settings that differ from sirl's defaults (shared ones once)."""
    lines = ["## What ran", ""]
    if results.commands:
        calls = "The command" if len(results.commands) == 1 else "The commands, in the order they ran"
        lines += [f"{calls} (`commands.jsonl` holds every call on this folder, with its full argv):", ""]
        for entry in results.commands:
            state = ", with uncommitted changes to tracked files" if entry.sirl.dirty else ""
            lines += [f"    {entry.command}", "",
                      f"(in `{entry.cwd or '?'}`, {entry.time}; sirl commit {entry.sirl.commit}{state})", ""]
    else:
        lines += ["The command line was not recorded (the folder predates commands.jsonl).", ""]
    settings = {name: row.settings for name, row in results.methods.items()}
    known = {name: s for name, s in settings.items() if s}
    if not known:
        return lines + ["The runs' settings were not recorded (no config.yaml in their folders).", ""]
    common = {k: v for k, v in next(iter(known.values())).shared.items()
              if all(k in s.shared and s.shared[k] == v for s in known.values())}
    lines += [
        "Settings that differ from sirl's defaults (each run's config.yaml against `ExperimentConfig()`); every method's runs "
        "share these:",
        "",
        ", ".join(_setting(k, v) for k, v in common.items()) or "(none)",
        "",
        "and each method adds its own (a variant: its method and overrides):",
        "",
        "| method | settings besides the shared ones |",
        "|---|---|",
    ]
    for name, s in settings.items():
        if not s:
            lines.append(f"| {name} | not recorded |")
            continue
        own = [_setting(k, v) for k, v in s.shared.items() if k not in common]
        own += [f"`{k}` by seed: {json.dumps(by_seed)}" for k, by_seed in s.by_seed.items()]
        lines.append(f"| {name} | {', '.join(own) or '(none)'} |")
    return lines + [""]


def _bare_markdown(out: Path) -> str:
    """results.md when its tables could not be built: each finished run's final accuracy, from its eval.json."""
    lines = [f"# Comparison in {out}: the summary tables could not be built (see below)", "",
             "Each finished run's final accuracy (its eval.json; the last evaluation only):", ""]
    for name, run in runs_reached(out).items():
        label = " ".join(part.replace("seed", "seed ", 1) if part.startswith("seed") else part for part in name.split("/"))
        if run.error:
            lines.append(f"- {label}: unreadable eval.json ({run.error})")
        else:
            tokens = f" after {run.tokens:,} generated tokens" if isinstance(run.tokens, int) else ""
            lines.append(f"- {label}: {run.accuracy:.1%}{tokens}")
    return "\n".join(lines) + "\n"


def write_outputs(out: Path, results: Report) -> Report:
    """results.json, results.md and the plots; returns ``results`` with the parts that failed here added. A
    part that fails (sirl.compare.summary.report_part) is named in both files with its exception, and
    everything else is written all the same; where results.md's tables fail, it lists each finished run's
    final accuracy instead."""
    failed = dict(results.failed_parts)
    markdown = None
    if isinstance(results, ComparisonSummary):  # a summary, not the bare report summarize_or_report falls back to
        markdown = report_part(failed, "results.md's tables", lambda: results_markdown(results))
    if results.methods:
        report_part(failed, "plots", lambda: plot_comparison(out, results))
    if markdown is None:
        markdown = _bare_markdown(out)
    if failed:
        markdown += "\n## Report parts that could not be built\n\n" + "".join(f"- {name}: {error}\n" for name, error in failed.items())
        markdown += ("\nEverything else in this report is complete; the traceback of each failure is in the command's error output. "
                     "Rerunning the same command on this folder rewrites the report and keeps the runs.\n")
    results = replace(results, failed_parts=failed)
    write_atomic(out / "results.json", json.dumps(results.to_json(), indent=2, default=str) + "\n")
    write_atomic(out / "results.md", markdown)
    return results


# --- plots ---------------------------------------------------------------------------------------


def plot_comparison(out: Path, results: ComparisonSummary) -> None:
    """The four PNGs. Each says which evaluations it shows: the curves come from the periodic set, the
    diamonds and the bars from the final set of the tables. Spread is drawn only where there are at least
    two seeds (one seed has none to draw)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {name: plt.cm.tab10(i % 10) for i, name in enumerate(results.methods)}
    sets = results.eval_sets
    periodic = f"periodic evaluations, n={sets.periodic_n}" if sets and sets.periodic_n else "periodic evaluations"
    final = f"final set, n={sets.final_n}" if sets and sets.final_n else "final set"
    _plot_accuracy_vs_tokens(out, results, colors, periodic, final)
    _plot_accuracy_vs_time(out, results, colors, periodic)
    _plot_probes(out, results, colors)
    _plot_by_difficulty(out, results, colors, final)


def _plot_accuracy_vs_tokens(out: Path, results: ComparisonSummary, colors: dict, periodic: str, final: str) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    for name, row in results.methods.items():
        xs = [t / 1e3 for t in row.curve.tokens]
        mean, std = row.curve.mean, row.curve.std
        seeds = len(row.seeds)
        ax.plot(xs, [100 * m for m in mean], label=f"{name} ({count_of(seeds, 'seed')})", color=colors[name], lw=2)
        if seeds > 1:
            ax.fill_between(xs, [100 * (m - s) for m, s in zip(mean, std)], [100 * (m + s) for m, s in zip(mean, std)],
                            color=colors[name], alpha=0.15)
        accuracy, tokens = row.final_accuracy, row.tokens
        ax.errorbar([tokens.mean / 1e3], [100 * accuracy.mean], yerr=[100 * accuracy.std] if accuracy.std else None,
                    marker="D", ms=6, color=colors[name], mec="black", mew=0.6, capsize=3, ls="none")
    if results.start:
        ax.plot([0], [100 * results.start.accuracy], marker="D", ms=6, color="0.6", mec="black", mew=0.6, ls="none",
                label=f"starting policy ({final})")
    k = results.plan.final_evaluations
    marker = f"final figure: mean of the last {k} evaluations" if k > 1 else "end of each run"
    ax.plot([], [], marker="D", color="white", mec="black", ls="none", label=f"{marker} ({final}, as in the table)")
    spread = " ± std over seeds" if any(len(row.seeds) > 1 for row in results.methods.values()) else ""
    ax.set(xlabel="generated tokens (thousands; samples + probes + verification)", ylabel="held-out accuracy (%)")
    ax.set_title(f"{results.task['name']}: accuracy at equal generated tokens\nlines: {periodic}, mean{spread}\ndiamonds: {final}",
                 fontsize=10)
    _save(fig, ax, out / "accuracy_vs_tokens.png", legend_size=8)


def _plot_accuracy_vs_time(out: Path, results: ComparisonSummary, colors: dict, periodic: str) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.8))
    for name, row in results.methods.items():
        for i, points in enumerate(row.timing.eval_points):
            ax.plot([p[0] / 60 for p in points], [100 * p[1] for p in points], color=colors[name], lw=1.5, alpha=0.8,
                    label=name if i == 0 else None)
    ax.set(xlabel="wall-clock (minutes, one line per seed)", ylabel="held-out accuracy (%)",
           title=f"{results.task['name']}: accuracy against wall-clock ({periodic})\n{load_caption(results.machine)}")
    _save(fig, ax, out / "accuracy_vs_time.png")


def _plot_probes(out: Path, results: ComparisonSummary, colors: dict) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    drawn = False
    for name, row in results.methods.items():
        if row.probes_curve is None:
            continue
        points = [(t / 1e3, v) for t, v in zip(row.probes_curve.tokens, row.probes_curve.mean) if v is not None]
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", color=colors[name], label=name)
        drawn = True
    title = results.task["name"]
    ax.set(xlabel="generated tokens (thousands)", ylabel="probes per localized failure",
           title=f"{title}: probes per failure (mean over seeds)" if drawn else f"{title}: no method localized failures")
    _save(fig, ax, out / "probes_per_failure.png", legend=drawn)


def _plot_by_difficulty(out: Path, results: ComparisonSummary, colors: dict, final: str) -> None:
    import matplotlib.pyplot as plt

    methods, start = results.methods, results.start
    levels = sorted({str(level) for row in methods.values() for level in row.by_difficulty}, key=difficulty_order)
    fig, ax = plt.subplots(figsize=(7, 4.8))
    width = 0.8 / (len(methods) + (1 if start else 0))
    series = ([("starting policy", {k: MeanStd(v.accuracy, None, [v.accuracy]) for k, v in start.by_difficulty.items()}, "0.6")]
              if start else [])
    series += [(f"{name} ({count_of(len(row.seeds), 'seed')})", {str(k): v for k, v in row.by_difficulty.items()}, colors[name])
               for name, row in methods.items()]
    for i, (name, by_level, color) in enumerate(series):
        xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(levels))]
        stats = [by_level.get(level) for level in levels]
        means = [100 * stat.mean if stat and stat.mean is not None else 0 for stat in stats]
        ax.bar(xs, means, width, color=color, label=name)
        spread = [(x, m, 100 * stat.std) for x, m, stat in zip(xs, means, stats) if stat and stat.std]  # none of one seed
        if spread:
            ax.errorbar([x for x, _, _ in spread], [m for _, m, _ in spread], yerr=[e for _, _, e in spread], fmt="none",
                        ecolor="black", elinewidth=1, capsize=2)
    ax.set_xticks(range(len(levels)), [str(level) for level in levels])
    bars = "mean ± std over seeds" if any(len(row.seeds) > 1 for row in methods.values()) else "one seed: no error bars"
    ax.set(xlabel="difficulty", ylabel="final held-out accuracy (%)",
           title=f"{results.task['name']}: final accuracy by difficulty\n{final}; {bars}")
    _save(fig, ax, out / "accuracy_by_difficulty.png", grid_axis="y", legend_size=8)


def _save(fig, ax, path: Path, legend: bool = True, grid_axis: str = "both", legend_size: float | None = None) -> None:
    """The finish every comparison plot shares: a light grid, the legend, tight layout, PNG, figure closed."""
    import matplotlib.pyplot as plt

    ax.grid(alpha=0.3, axis=grid_axis)
    if legend:
        ax.legend(fontsize=legend_size)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

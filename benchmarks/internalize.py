"""Does the policy learn to localize its own errors, and does that make localization cheaper?

Runs `sirl train` from the shipped arith policy for the same number of steps with ``--algo si`` and with
``--algo si_internal`` under each way of teaching self-verification (an auxiliary loss, ``sft``; a reward
for agreeing with the oracle, ``rl``; both), over several seeds. It prints a table (final held-out accuracy on
``--final-problems`` problems, probes per failure and self-localization accuracy early and late in the
run, confirmed share, audit share, tokens spent on verdicts) and writes ``internalize.png`` with the
curves of self-localization accuracy, probes per failure and held-out accuracy.

    python benchmarks/internalize.py --out runs/internalize --steps 100 --seeds 2 \\
        --runs "si,si_internal (sft),si_internal (sft; coef 0.5),si_internal (rl; coef 0.5)"
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from common import final_eval, metrics, train_run

RUNS: dict[str, list[str]] = {
    "si": ["--algo", "si", "--method.localizer=search", "--method.error_span=step", "--method.probe_baseline=all"],  # si as measured then
    "si_internal (sft)": ["--algo", "si_internal", "--internalize.verify_loss=sft"],
    "si_internal (sft; no reuse)": ["--algo", "si_internal", "--internalize.verify_loss=sft", "--internalize.reuse_samples=false"],
    "si_internal (sft; coef 0.5)": ["--algo", "si_internal", "--internalize.verify_loss=sft", "--internalize.verify_coef=0.5"],
    "si_internal (rl; coef 0.5)": ["--algo", "si_internal", "--internalize.verify_loss=rl", "--internalize.verify_coef=0.5"],
    "si_internal (both)": ["--algo", "si_internal", "--internalize.verify_loss=both"],
}


def window_mean(records: list[dict], key: str, first: bool, width: int = 10) -> float | None:
    values = [r[key] for r in records if key in r]
    values = values[:width] if first else values[-width:]
    return statistics.mean(values) if values else None


def fmt(value: float | None, percent: bool = True) -> str:
    if value is None:
        return "-"
    return f"{value:.1%}" if percent else f"{value:.2f}"


def plot(curves: dict[str, list[list[dict]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("selfloc/accuracy", "self-localization accuracy (vs ground truth)", 10),
              ("loc/probes_per_failure", "probes per localized failure", 10),
              ("eval/accuracy", "held-out accuracy (greedy)", 1)]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, (key, title, smooth) in zip(axes, panels):
        for name, runs in curves.items():
            for seed, records in enumerate(runs):
                points = [(r["step"], r[key]) for r in records if key in r]
                if not points:
                    continue
                steps, values = zip(*points)
                if smooth > 1:  # running mean over `smooth` steps: per-step values are noisy
                    values = [statistics.mean(values[max(0, i - smooth + 1) : i + 1]) for i in range(len(values))]
                ax.plot(steps, values, color=f"C{list(curves).index(name)}", alpha=0.8, label=name if seed == 0 else None)
        ax.set_title(title)
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
    axes[2].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/internalize"))
    parser.add_argument("--config", default="arith")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--runs", default=",".join(RUNS), help="comma-separated names from RUNS in this file")
    parser.add_argument("--eval-every", type=int, default=20)
    parser.add_argument("--final-problems", type=int, default=2000)
    args = parser.parse_args()

    curves: dict[str, list[list[dict]]] = {}
    finals: dict[str, list[dict]] = {}
    for name in args.runs.split(","):
        dirs = [
            train_run(
                args.out / "".join(c if c.isalnum() else "_" for c in name).strip("_") / f"seed{seed}",
                ["--config", args.config, "--seed", str(seed), f"--train.steps={args.steps}", f"--train.eval_every={args.eval_every}",
                 "--train.checkpoint_every=0", f"--eval.final_n_problems={args.final_problems}", *RUNS[name]],
                label=f"internalize {name} seed {seed}",
            )
            for seed in range(args.seeds)
        ]
        curves[name] = [metrics(d) for d in dirs]
        finals[name] = [final_eval(d) for d in dirs]

    print(f"\narith, {args.steps} steps from checkpoints/arith-tiny, {args.seeds} seeds; first/last = mean of the first/last "
          f"10 steps; final accuracy on {args.final_problems} held-out problems\n")
    print("| method | final accuracy (seeds) | probes/failure first -> last | self-localization accuracy first -> last "
          "| confirmed (last) | audit share (last) | verdict tokens share | probe tokens share |")
    print("|---|---|---|---|---:|---:|---:|---:|")
    for name, runs in curves.items():
        accuracy = ", ".join(f"{f['accuracy']:.1%}" for f in finals[name])
        mean = statistics.mean(f["accuracy"] for f in finals[name])

        def across(key: str, first: bool) -> float | None:
            values = [window_mean(r, key, first) for r in runs]
            return statistics.mean(values) if None not in values else None

        last = [r[-1] for r in runs]
        verify_share = statistics.mean(r["tokens/verify"] / r["tokens/total"] for r in last)
        probe_share = statistics.mean(r["tokens/probe"] / r["tokens/total"] for r in last)
        print(
            f"| {name} | {mean:.1%} ({accuracy}) | {fmt(across('loc/probes_per_failure', True), False)} -> "
            f"{fmt(across('loc/probes_per_failure', False), False)} | {fmt(across('selfloc/accuracy', True))} -> "
            f"{fmt(across('selfloc/accuracy', False))} | {fmt(across('selfloc/confirmed_frac', False))} "
            f"| {fmt(across('selfloc/audit_frac', False))} | {verify_share:.1%} | {probe_share:.1%} |"
        )
    plot(curves, args.out / "internalize.png")
    print(f"\ncurves: {args.out / 'internalize.png'}")


if __name__ == "__main__":
    main()

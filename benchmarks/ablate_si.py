"""Ablations of the method's details on arith, at an equal budget of generated tokens (every kind counted).

Each variant is one `sirl train` run per (learning rate, seed), from the shipped arith policy, stopped at
``--budget`` generated tokens (policy samples + probes). Accuracy is measured on the fixed held-out set
every few steps (``eval.n_problems``) and, at the end, on ``--final-problems`` problems. The table gives
the final accuracy (mean over seeds, with the 95% interval of the pooled correct count), the seeds' own
values, generated tokens per step, and the tokens each variant needed to reach the final accuracy of grpo
at the same learning rate (first periodic evaluation at or above it).

Runs land in ``--out/<lr>/<variant>/seed<k>`` and are skipped when already finished, so a killed ablation
continues where it stopped.

    python benchmarks/ablate_si.py --out runs/ablate --budget 250000 --seeds 2 --lr 1e-4 --second-lr 4e-4
    python benchmarks/ablate_si.py --variants "grpo,si K=1" --seeds 4 --jobs 8   # several runs at a time
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import final_eval, metrics, train_run

from sirl.evaluate import wilson_interval

SI_BASE = ["method.probes=2", "method.localizer=search", "method.error_span=step", "method.probe_baseline=all"]
"""The configuration the ablation was run around (then the defaults); each si variant changes one knob of
it. K=1, the measured best, has since become the default, and si's default localizer is now divergence
(no probes), so the search and its credit settings of then are named here."""

VARIANTS: dict[str, list[str]] = {
    "grpo": ["algo.name=grpo"],
    "si (K=2 base)": SI_BASE,
    "si K=1": [*SI_BASE, "method.probes=1"],
    "si K=4": [*SI_BASE, "method.probes=4"],
    "si K=1 settle 3": [*SI_BASE, "method.probes=1", "method.settle_probes=3"],
    "si K=2 settle 6": [*SI_BASE, "method.settle_probes=6"],
    "si K=1 post-error outcome": [*SI_BASE, "method.probes=1", "method.post_error=outcome"],
    "si K=1 probes not trained on": [*SI_BASE, "method.probes=1", "method.train_on_probes=false"],
    "si K=1 repair share 0": [*SI_BASE, "method.probes=1", "method.repair_share=0.0"],
    "si K=1 error scale 0.5": [*SI_BASE, "method.probes=1", "method.error_scale=0.5"],
    "si K=1 post-error outcome + probes not trained on": [
        *SI_BASE, "method.probes=1", "method.post_error=outcome", "method.train_on_probes=false",
    ],
    "si without free evidence": [*SI_BASE, "method.free_evidence=false", "method.first_check=bisect"],
    "si drop 0 (V > 0 rule)": [*SI_BASE, "method.drop=0.0"],
    "si error scale 0.5": [*SI_BASE, "method.error_scale=0.5"],
    "si error scale 2": [*SI_BASE, "method.error_scale=2.0"],
    "si post-error credit = outcome": [*SI_BASE, "method.post_error=outcome"],
    "si probes not trained on": [*SI_BASE, "method.train_on_probes=false"],
    "si diluting normalization": [*SI_BASE, "method.normalization=diluting"],
    "si repair share 0": [*SI_BASE, "method.repair_share=0.0"],
    "si repair share 0.5": [*SI_BASE, "method.repair_share=0.5"],
    # A diagnostic, not a method: the task's ground-truth first wrong step in place of the search, to
    # measure what the search's mistakes cost (docs/method.md keeps ground truth out of training).
    "si K=1 ground-truth localizer": [*SI_BASE, "method.probes=1", "method.localizer=ground_truth"],
}


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_")


def run_one(out: Path, variant: str, lr: str, seed: int, args) -> Path:
    return train_run(
        out / lr / slug(variant) / f"seed{seed}",
        [
            "--config", args.config, *(["--model", args.model] if args.model else []), "--seed", str(seed),
            f"--train.lr={lr}", f"--train.max_tokens={args.budget}",
            "--train.steps=100000", f"--train.eval_every={args.eval_every}", "--train.checkpoint_every=0",
            f"--eval.n_problems={args.eval_problems}", f"--eval.final_n_problems={args.final_problems}",
            *[f"--{o}" for o in VARIANTS[variant]],
        ],
        label=f"ablate {lr} {variant} seed {seed}",
    )


def summarize(run_dirs: list[Path]) -> dict:
    finals = [final_eval(d) for d in run_dirs]
    curves = [metrics(d) for d in run_dirs]
    correct = sum(f["accuracy"] * f["n"] for f in finals)
    trials = sum(f["n"] for f in finals)
    steps = [c[-1]["step"] for c in curves]
    return {
        "accuracies": [f["accuracy"] for f in finals],
        "mean": statistics.mean(f["accuracy"] for f in finals),
        "ci95": wilson_interval(correct, trials),
        "tokens_per_step": statistics.mean(c[-1]["tokens/total"] / s for c, s in zip(curves, steps)),
        "probe_share": statistics.mean(c[-1]["tokens/probe"] / c[-1]["tokens/total"] for c in curves),
        "curves": [[(r["tokens/total"], r["eval/accuracy"]) for r in c if "eval/accuracy" in r] for c in curves],
    }


def tokens_to_reach(curves: list[list[tuple[int, float]]], target: float) -> str:
    reached = [next((tokens for tokens, acc in curve if acc >= target), None) for curve in curves]
    if any(r is None for r in reached):
        return f"not reached ({sum(r is not None for r in reached)}/{len(reached)} seeds)"
    return f"{statistics.mean(reached) / 1000:,.0f}k"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/ablate"))
    parser.add_argument("--config", default="arith")
    parser.add_argument("--model", help="start every run from this policy instead of the preset's (model.path)")
    parser.add_argument("--budget", type=int, default=250_000, help="generated tokens per run, every kind counted")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--lr", default="1e-4", help="the learning rate of the full grid")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated names from the list in this file")
    parser.add_argument("--second-lr", default="4e-4", help="a second learning rate, run for grpo and si only ('' for none)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at the same time")
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--eval-problems", type=int, default=500)
    parser.add_argument("--final-problems", type=int, default=2000)
    args = parser.parse_args()
    variants = [v.strip() for v in args.variants.split(",")]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; known: {list(VARIANTS)}")

    plan = [(args.lr, v) for v in variants] + ([(args.second_lr, v) for v in ("grpo", "si (K=2 base)")] if args.second_lr else [])
    if args.jobs > 1:  # share the cores between the runs unless told otherwise
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // args.jobs)))
    with ThreadPoolExecutor(args.jobs) as pool:  # each run is its own `sirl train` process
        dirs = {
            (lr, variant): [pool.submit(run_one, args.out, variant, lr, seed, args) for seed in range(args.seeds)]
            for lr, variant in plan
        }
        results = {key: summarize([future.result() for future in futures]) for key, futures in dirs.items()}

    start = f" from {args.model}" if args.model else ""
    print(f"\n{args.config}{start}, budget {args.budget:,} generated tokens per run, {args.seeds} seeds, final accuracy "
          f"on {args.final_problems} held-out problems (95% interval of the pooled count)\n")
    print("| lr | variant | final accuracy | seeds | tokens/step | probe share | tokens to reach grpo's final accuracy |")
    print("|---|---|---:|---|---:|---:|---:|")
    for lr, variant in plan:
        target = results[(lr, "grpo")]["mean"] if (lr, "grpo") in results else None
        r = results[(lr, variant)]
        lo, hi = r["ci95"]
        reach = tokens_to_reach(r["curves"], target) if target is not None else "-"
        seeds = ", ".join(f"{a:.1%}" for a in r["accuracies"])
        print(f"| {lr} | {variant} | {r['mean']:.1%} [{lo:.1%}, {hi:.1%}] | {seeds} | {r['tokens_per_step']:,.0f} "
              f"| {r['probe_share']:.0%} | {reach} |")
    summary = {f"{lr}|{v}": {k: x for k, x in r.items() if k != "curves"} for (lr, v), r in results.items()}
    (args.out / "results.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()

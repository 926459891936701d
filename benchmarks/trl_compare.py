"""TRL with sirl's divergence credit (with and without continuing good prefixes) against TRL's own GRPO on
arith mod 7, at equal generated tokens.

    python benchmarks/trl_compare.py --seeds 8 --out runs/trl_compare/arith_prime
    python benchmarks/trl_compare.py --seeds 16 --out runs/trl_compare/arith_prime   # grows the same folder

Three methods, each one TRL ``GRPOTrainer`` run per seed from ``checkpoints/arith7-tiny``:

    trl_grpo               trl.GRPOTrainer, TRL's per-completion advantage
    trl_divergence         sirl.integrations.trl.CreditGRPOTrainer(credit="divergence"): the
                           credit alone; the task's own steps (``ArithTask.split_steps``: "7+5=2;" ...), the
                           credit settings of sirl's si-divergence (``SI_DIVERGENCE``: the error penalty from
                           the first token that left every success, 0 after the error step, up to 64
                           failures localized per step)
    trl_divergence_repair  the same credit, and a quarter of each batch's groups continue good prefixes
                           found earlier (``repair_share=0.25``, as sirl's si)

Everything else is shared and taken from sirl's config (``--config arith_prime`` plus ``--set`` overrides):
task (arith mod 7, 8-12 operations, operators equally likely), ``rollout.prompts_per_step`` x
``rollout.group_size`` completions per step (TRL's ``num_generations``), ``rollout.max_new_tokens``,
``rollout.temperature``/``top_p``, sirl's optimizer and schedule (AdamW, betas (0.9, 0.99),
``train.weight_decay``; ``train.lr`` after ``train.warmup_steps`` of linear warmup, as ``sirl.train``),
``train.grad_clip``, PPO clip ``algo.clip_low``/``algo.clip_high``, ``algo.kl_coef``, one update per
batch, TRL's "dapo" loss (token mean over the batch, sirl's ``token_mean``). A run stops at the end of the step whose completions (TRL's completion tokens,
EOS included) reach ``--budget-tokens``. It is evaluated with sirl's own evaluation (``sirl.evaluate``:
greedy, ``eval.max_new_tokens``, the prompt format sirl uses) on the held-out problems ``sirl compare``
uses for this config (``heldout_problems(task, --final-problems, eval.seed)``) at the first step that
crosses each multiple of ``--eval-every-tokens`` and at the end; a run's final figure is the mean of its
last ``--final-evaluations`` evaluations, problem by problem (``sirl.compare.final_figure``).

The folder is a comparison folder as ``sirl compare`` writes one, so ``benchmarks/paired.py`` reads it:
``compare.json`` (the plan; the two methods are named as variants of sirl's nearest methods, which
``sirl.compare.ComparePlan`` requires), ``trl_plan.json`` (what this script ran), ``start/eval.json``
(the starting policy), ``runs/<method>/seed<k>/{eval.json,evals.jsonl,metrics.jsonl}`` and
``logs/<method>-seed<k>.log``; ``results.json``/``results.md`` hold the table. Runs go ``--jobs`` at a
time with ``--threads`` threads each; a rerun skips finished runs (eval.json) and restarts unfinished ones.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("trl_grpo", "trl_divergence", "trl_divergence_repair")
REFERENCE = "trl_grpo"
SI_DIVERGENCE = {"error_span": "first_difference", "post_error": "zero", "error_scale": 1.0, "max_localizations": 64,
                 "failure_choice": "half_solved"}
"""The credit settings of sirl's si-divergence as it beat grpo on arith mod 7 (method.localizer=divergence,
method.error_span=first_difference, the other knobs at their defaults)."""
NEAREST_SIRL_METHOD = {"trl_grpo": "grpo", "trl_divergence": "si", "trl_divergence_repair": "si"}
"""compare.json names each method as a variant of a registered sirl method (sirl.compare.ComparePlan checks
names); trl_divergence is si's credit without si's repair buffer, trl_divergence_repair si's credit and
repair buffer (si-divergence draws no probes)."""
REPAIR_SHARE = {"trl_divergence": 0.0, "trl_divergence_repair": 0.25}


@dataclass(frozen=True)
class TRLPlan:
    """What a comparison runs; stored as trl_plan.json, so that a rerun continues the same comparison."""

    seeds: int = 8
    budget_tokens: int = 200_000
    eval_every_tokens: int = 40_000
    final_problems: int = 2000
    final_evaluations: int = 3
    config: str = "arith_prime"
    overrides: list[str] = field(default_factory=list)
    credit_options: dict = field(default_factory=lambda: dict(SI_DIVERGENCE))
    jobs: int = 2
    threads: int = 1

    def same_runs_as(self, other: TRLPlan) -> list[str]:
        """Settings whose change would change the runs (jobs and threads change speed only; seeds may grow)."""
        mine, theirs = asdict(self), asdict(other)
        changed = [f"{k}: {theirs[k]} -> {mine[k]}" for k in mine if k not in ("jobs", "threads", "seeds") and mine[k] != theirs[k]]
        if self.seeds < other.seeds:
            changed.append(f"seeds: {other.seeds} -> {self.seeds} (a comparison can grow, not shrink)")
        return changed


def compare_json(plan: TRLPlan) -> dict:
    """The plan as sirl.compare.ComparePlan reads it (benchmarks/paired.py, final_figure)."""
    return {
        "methods": list(METHODS), "seeds": plan.seeds, "budget_tokens": plan.budget_tokens, "eval_every_tokens": plan.eval_every_tokens,
        "final_problems": plan.final_problems, "jobs": plan.jobs, "threads": plan.threads, "final_evaluations": plan.final_evaluations,
        "reference": REFERENCE,
        "variants": {m: {"method": NEAREST_SIRL_METHOD[m], "overrides": {}} for m in METHODS},
    }


def run_folder(out: Path, method: str, seed: int) -> Path:
    return out / "runs" / method / f"seed{seed}"


def experiment(plan: TRLPlan):
    """sirl's config, task, held-out problems and model directory for ``plan``."""
    from sirl.config import load_config
    from sirl.evaluate import heldout_problems
    from sirl.tasks import load_task

    config = load_config(plan.config, plan.overrides)
    task = load_task(config.task.name, **config.task.args)
    heldout = heldout_problems(task, plan.final_problems, config.eval.seed)
    model_dir = Path(config.model.path)
    return config, task, heldout, model_dir if model_dir.is_absolute() else ROOT / model_dir


def evaluate_policy(model, tokenizer, config, task, heldout):
    """sirl's own held-out evaluation (greedy), as `sirl train` runs it."""
    from sirl.evaluate import evaluate
    from sirl.prompts import prompt_format

    was_training = model.training
    model.eval()
    try:
        return evaluate(model, tokenizer, task, heldout, max_new_tokens=config.eval.max_new_tokens, batch_size=config.eval.batch_size,
                        prompt_format=prompt_format(config.prompt, tokenizer, task), stop=config.rollout.stop)
    finally:
        model.train(was_training)


def append_jsonl(path: Path, record: dict) -> None:
    with path.open("a") as handle:
        handle.write(json.dumps(record) + "\n")


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)  # a reader never sees half a file: eval.json marks a finished run


# --- one run (its own process) ----------------------------------------------------------------------


def start_evaluation(out: Path, plan: TRLPlan) -> None:
    """The starting policy on the held-out set (every run starts from it; greedy, so one evaluation)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config, task, heldout, model_dir = experiment(plan)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    result = evaluate_policy(model, AutoTokenizer.from_pretrained(model_dir), config, task, heldout)
    (out / "start").mkdir(parents=True, exist_ok=True)
    write_json(out / "start" / "eval.json", {"step": 0, "tokens/total": 0, **result.to_json()})


def train_run(out: Path, plan: TRLPlan, method: str, seed: int) -> None:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from sirl.integrations.trl import CreditGRPOTrainer
    from sirl.types import Problem

    config, task, heldout, model_dir = experiment(plan)
    folder = run_folder(out, method, seed)
    if folder.exists():  # an unfinished run starts over
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    rollout, train, algo = config.rollout, config.train, config.algo
    torch.manual_seed(seed)
    rng = random.Random(seed)
    # Enough prompts for the budget at 10 tokens per completion (arith completions are ~50); TRL's sampler
    # shuffles them with the run's seed.
    n_prompts = max(rollout.prompts_per_step, plan.budget_tokens // (10 * rollout.group_size))
    problems = [task.sample(rng, "train") for _ in range(n_prompts)]
    dataset = Dataset.from_list([{"prompt": p.prompt, "problem": json.dumps(p.to_json())} for p in problems])

    generated = {"tokens": 0}

    def correct(completions, problem, completion_ids, **kwargs):
        # TRL's completion tokens, EOS included; a continued good prefix was given, not generated
        given = kwargs.get("sirl_prefix_tokens") or [0] * len(completion_ids)
        generated["tokens"] += sum(len(ids) - n for ids, n in zip(completion_ids, given))
        return [task.verify(Problem.from_json(json.loads(p)), c) for p, c in zip(problem, completions)]

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    args = GRPOConfig(
        output_dir=str(folder / "trl"), seed=seed, data_seed=seed, use_cpu=True, bf16=False, gradient_checkpointing=False,
        per_device_train_batch_size=rollout.prompts_per_step * rollout.group_size, num_generations=rollout.group_size,
        max_completion_length=rollout.max_new_tokens, temperature=rollout.temperature, top_p=rollout.top_p,
        learning_rate=train.lr, max_grad_norm=train.grad_clip, epsilon=algo.clip_low, epsilon_high=algo.clip_high,
        beta=algo.kl_coef, num_iterations=algo.ppo_epochs, loss_type="dapo", scale_rewards="group",
        max_steps=10**6, logging_steps=1, report_to=[], save_strategy="no", disable_tqdm=True, dataloader_num_workers=0,
    )
    # sirl's optimizer and schedule (sirl.train): AdamW with betas (0.9, 0.99), and warmup_constant, whose first
    # step already has lr / warmup_steps (transformers' constant_with_warmup starts at 0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=train.lr, weight_decay=train.weight_decay, betas=(0.9, 0.99))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / max(1, train.warmup_steps)))
    common = dict(model=model, reward_funcs=correct, args=args, train_dataset=dataset, processing_class=tokenizer,
                  optimizers=(optimizer, schedule))
    if method == "trl_grpo":
        trainer = GRPOTrainer(**common)
    else:
        trainer = CreditGRPOTrainer(**common, credit="divergence", step_splitter=task.split_steps, success_threshold=1.0,
                                    credit_options=plan.credit_options, repair_share=REPAIR_SHARE[method])

    class Schedule(TrainerCallback):
        """Evaluate at each crossed multiple of eval_every_tokens and at the end; stop at the budget."""

        def __init__(self):
            self.before = 0

        def on_step_end(self, args, state, control, model=None, **kwargs):
            total = generated["tokens"]
            crossed = total // plan.eval_every_tokens > self.before // plan.eval_every_tokens
            self.before = total
            finishing = total >= plan.budget_tokens
            if crossed or finishing:
                result = evaluate_policy(trainer.model, tokenizer, config, task, heldout)
                record = {"step": state.global_step, "tokens/total": total, "tokens/trained": total}
                append_jsonl(folder / "evals.jsonl", {**record, "rewards": result.rewards})
                append_jsonl(folder / "metrics.jsonl", {**record, "eval/accuracy": result.accuracy})
                if finishing:
                    write_json(folder / "eval.json", {"step": state.global_step, "tokens/total": total, **result.to_json()})
                    control.should_training_stop = True
            return control

        def on_log(self, args, state, control, logs=None, **kwargs):
            scalars = {k: v for k, v in (logs or {}).items() if isinstance(v, (int, float))}
            append_jsonl(folder / "metrics.jsonl", {"step": state.global_step, "tokens/total": generated["tokens"],
                                                    "tokens/trained": generated["tokens"], **scalars})

    trainer.add_callback(Schedule())
    start = time.time()
    trainer.train()
    if not (folder / "eval.json").is_file():
        raise RuntimeError(f"{folder}: training ended before the budget of {plan.budget_tokens} tokens ({generated['tokens']} generated)")
    shutil.rmtree(folder / "trl", ignore_errors=True)
    print(f"{method} seed {seed}: {json.loads((folder / 'eval.json').read_text())['accuracy']:.1%} after "
          f"{generated['tokens']:,} tokens in {time.time() - start:.0f} s", flush=True)


# --- the comparison ---------------------------------------------------------------------------------


def execute(command: list[str], log: Path, threads: int) -> int:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as handle:
        handle.write(f"$ {' '.join(command)}\n")
        handle.flush()
        return subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=ROOT).returncode


def run_all(out: Path, plan: TRLPlan) -> list[str]:
    """Every unfinished run (and the starting policy's evaluation), ``plan.jobs`` at a time; returns the
    failures."""
    todo = [("start", None)] if not (out / "start" / "eval.json").is_file() else []
    todo += [(m, s) for s in range(plan.seeds) for m in METHODS if not (run_folder(out, m, s) / "eval.json").is_file()]
    failed = []

    def one(job) -> None:
        method, seed = job
        name = "start" if method == "start" else f"{method}-seed{seed}"
        command = [sys.executable, str(Path(__file__).resolve()), "--out", str(out), "--job", method]
        command += [] if seed is None else ["--seed", str(seed)]
        t0 = time.time()
        print(f"  {name}: started (log {out / 'logs' / f'{name}.log'})", flush=True)
        code = execute(command, out / "logs" / f"{name}.log", plan.threads)
        print(f"  {name}: {'done' if code == 0 else f'failed (exit {code})'} in {time.time() - t0:.0f} s", flush=True)
        if code != 0:
            failed.append(name)

    with ThreadPoolExecutor(max_workers=plan.jobs) as pool:
        list(pool.map(one, todo))
    return failed


def run_curve(folder: Path, start: dict, plan, grid: list[float]):
    """A finished run as sirl.compare reads it: accuracy on the token grid (from the starting policy and
    its evaluations, linear between them), its final figure and per-problem rewards."""
    import numpy as np

    from sirl.compare import RunCurve, final_figure

    evals = [json.loads(line) for line in (folder / "evals.jsonl").read_text().splitlines() if line.strip()]
    tokens = [0] + [r["tokens/total"] for r in evals]
    accuracy = [start["accuracy"]] + [statistics.fmean(r["rewards"]) for r in evals]
    figure = final_figure(folder, plan)
    return RunCurve(np.interp(grid, tokens, accuracy).tolist(), None, figure.accuracy, figure.rewards)


def summarize(out: Path, plan: TRLPlan) -> dict:
    from sirl.compare import paired_difference, read_plan_json, tokens_to_reach
    from sirl.compare.records import to_json

    compare_plan = read_plan_json(out / "compare.json")
    start = json.loads((out / "start" / "eval.json").read_text())
    grid = [float(t) for t in range(0, plan.budget_tokens + 1, plan.eval_every_tokens)]
    curves = {m: {s: run_curve(run_folder(out, m, s), start, compare_plan, grid) for s in range(plan.seeds)
                  if (run_folder(out, m, s) / "eval.json").is_file()} for m in METHODS}
    results = {"start": start["accuracy"], "methods": {}}
    for method in METHODS:
        finals = [c.final_accuracy for c in curves[method].values()]
        entry = {"seeds": sorted(curves[method]), "final_accuracy": statistics.fmean(finals) if finals else None,
                 "std": statistics.stdev(finals) if len(finals) > 1 else None}
        if method != REFERENCE:
            entry["difference"] = to_json(paired_difference({s: c.rewards for s, c in curves[method].items()},
                                                            {s: c.rewards for s, c in curves[REFERENCE].items()}))
            entry["tokens_to_reach"] = to_json(tokens_to_reach(curves[method], curves[REFERENCE], grid))
        results["methods"][method] = entry
    write_json(out / "results.json", results)
    (out / "results.md").write_text(table(results, plan) + "\n")
    return results


def _points(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:+.1f}"


def _ratio(value: float | None) -> str:
    return "not reached" if value is None or math.isinf(value) else f"{value:.2f}"


def table(results: dict, plan: TRLPlan) -> str:
    overrides = f" ({', '.join(plan.overrides)})" if plan.overrides else ""
    lines = [
        f"TRL on {plan.config}{overrides}, {plan.budget_tokens:,} generated tokens per run, final figure the mean "
        f"of the last {plan.final_evaluations} evaluations on {plan.final_problems:,} held-out problems; starting policy "
        f"{results['start']:.1%}.", "",
        f"| method | seeds | final accuracy (mean ± std) | difference from {REFERENCE}, points [95% CI] | "
        f"generated tokens to reach {REFERENCE}'s final accuracy, ratio [95% CI] |",
        "|---|---:|---:|---:|---:|",
    ]
    for method, entry in results["methods"].items():
        accuracy = "n/a" if entry["final_accuracy"] is None else f"{entry['final_accuracy']:.1%}"
        if entry["std"] is not None:
            accuracy += f" ± {entry['std']:.1%}"
        diff = entry.get("difference")
        difference = "" if method == REFERENCE else ("no common seed" if not diff else
                                                    f"{_points(diff['mean'])} [{_points(diff['ci95'][0])}, {_points(diff['ci95'][1])}]")
        reach = entry.get("tokens_to_reach")
        ratio = "1.00" if method == REFERENCE else ("n/a" if not reach else
                                                   f"{_ratio(reach['generated_ratio'])} "
                                                   f"[{', '.join(_ratio(v) for v in reach['generated_ratio_ci95'] or [None, None])}]")
        lines.append(f"| {method} | {len(entry['seeds'])} | {accuracy} | {difference} | {ratio} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = TRLPlan()
    parser.add_argument("--out", required=True, type=Path, help="the comparison folder (created, or continued)")
    parser.add_argument("--seeds", type=int, default=defaults.seeds)
    parser.add_argument("--budget-tokens", type=int, default=defaults.budget_tokens)
    parser.add_argument("--eval-every-tokens", type=int, default=defaults.eval_every_tokens)
    parser.add_argument("--final-problems", type=int, default=defaults.final_problems)
    parser.add_argument("--final-evaluations", type=int, default=defaults.final_evaluations)
    parser.add_argument("--config", default=defaults.config, help="sirl's training preset (configs/NAME.yaml)")
    parser.add_argument("--set", nargs="*", default=defaults.overrides, metavar="KEY=VALUE",
                        help="overrides of the preset, e.g. rollout.prompts_per_step=2")
    parser.add_argument("--jobs", type=int, default=defaults.jobs)
    parser.add_argument("--threads", type=int, default=defaults.threads)
    parser.add_argument("--job", help=argparse.SUPPRESS)  # one run, in its own process: a method or "start"
    parser.add_argument("--seed", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    out = args.out.resolve()
    plan_path = out / "trl_plan.json"
    if args.job:
        plan = TRLPlan(**json.loads(plan_path.read_text()))
        start_evaluation(out, plan) if args.job == "start" else train_run(out, plan, args.job, args.seed)
        return
    plan = TRLPlan(args.seeds, args.budget_tokens, args.eval_every_tokens, args.final_problems, args.final_evaluations,
                   args.config, list(args.set), dict(SI_DIVERGENCE), args.jobs, args.threads)
    if plan.eval_every_tokens > plan.budget_tokens or min(plan.seeds, plan.jobs, plan.threads, plan.final_evaluations) < 1:
        parser.error("need seeds, jobs, threads and final evaluations >= 1 and eval_every_tokens <= budget_tokens")
    if plan_path.is_file():
        changed = plan.same_runs_as(TRLPlan(**json.loads(plan_path.read_text())))
        if changed:
            raise SystemExit(f"{out} holds a comparison with other settings ({'; '.join(changed)}); rerun with the same ones or give a new --out")
    experiment(plan)  # a bad preset or override fails here, before any run
    out.mkdir(parents=True, exist_ok=True)
    write_json(plan_path, asdict(plan))
    write_json(out / "compare.json", compare_json(plan))
    runs = plan.seeds * len(METHODS)
    print(f"trl_compare: {runs} runs ({len(METHODS)} methods x {plan.seeds} seeds) of {plan.budget_tokens:,} tokens, {plan.jobs} at a "
          f"time with {plan.threads} thread(s) each; folder {out}", flush=True)
    start = time.time()
    failed = run_all(out, plan)
    print(f"trl_compare: runs took {time.time() - start:.0f} s", flush=True)
    if (out / "start" / "eval.json").is_file():  # the table from the finished runs, failed ones aside
        print(table(summarize(out, plan), plan))
    if failed:
        raise SystemExit(f"{len(failed)} job(s) failed: {', '.join(failed)}; see {out / 'logs'}. Rerun the same command to retry them.")


if __name__ == "__main__":
    main()

"""Can the shipped policy learn self-verification at all, given far more supervision than training gives it?

An upper bound for si_internal's self-localization. The policy samples solutions to training problems,
each labelled with the task's ground-truth first wrong step (or "none" when it verified), and is then
trained on the self-verification format alone, as a supervised task, at a learning rate and weight far
above what RL's auxiliary loss uses (lr 1e-3, weight 1, against 1e-4 and 0.01). Its own verified
solutions are trained on beside it (``--solver-mix``), so that the solver survives on the shared weights.

Every ``--eval-every`` steps it prints the greedy verdict's exact accuracy on the failures of a fixed
held-out sample, beside what guessing scores on the same failures (always the most common wrong step, or
a step at random), the share of verified solutions it calls correct, the share of verdicts that do not
parse, and the solver's greedy accuracy on held-out problems.

``--formats`` compares verdict formats (sirl.tasks.base.Task.verdict_target) under the same budget: each
format starts from the same weights and trains on the same solutions, labels and batches, in turn; a
closing table puts their final figures side by side. ``index`` names the first wrong step in one token;
``judgments`` marks each step ("++-"); ``rederive`` recomputes each step beside its written result and
marks it ("7+5=2?2+2*3=6?5-"), so that every judgment compares two adjacent values.

    python benchmarks/verify_capacity.py                  # arith, 500 steps
    python benchmarks/verify_capacity.py --task countdown --steps 300
    python benchmarks/verify_capacity.py --model runs/sft-small --device cuda --train-problems 20000 --steps 1000
    python benchmarks/verify_capacity.py --model checkpoints/arith7-tiny --config arith_prime --formats index,rederive --steps 1500

``--save DIR`` writes the policy as the last step left it (one format only): a starting policy that already
writes the format, for runs of si_internal (and the methods it is compared with, from the same weights).
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import torch

from localization import SHIPPED, task_from_preset
from sirl.config import load_config
from sirl.evaluate import complete, evaluate, guessing_baselines, heldout_problems, wilson_interval
from sirl.internalize.selfverify import propose
from sirl.model import count_parameters, encode_prompt, encode_text, load_model, resolve_device, save_model, supervised_loss
from sirl.rollout import SamplingParams
from sirl.batch import collate_supervised
from sirl.tasks import read_task_record, write_task_record
from sirl.tasks.base import VERDICT_FORMATS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="arith", choices=sorted(SHIPPED))
    parser.add_argument("--model", help="a policy directory trained on the task (default: the task's shipped policy)")
    parser.add_argument("--config", help="the RL preset whose task distribution to use (default: the shipped policy's)")
    parser.add_argument("--formats", default="index", help=f"comma-separated verdict formats, each trained from the same weights: {','.join(VERDICT_FORMATS)}")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--batch", type=int, default=256, help="sequences per generation batch")
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--failures-per-step", type=int, default=48)
    parser.add_argument("--successes-per-step", type=int, default=16, help="verified solutions with the verdict 'none'")
    parser.add_argument("--solver-mix", type=float, default=1.0, help="weight of the solver's cross-entropy on its own verified solutions (0: none)")
    parser.add_argument("--train-problems", type=int, default=6000)
    parser.add_argument("--test-problems", type=int, default=1500)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--max-new-tokens", type=int, default=None, help="solution length limit (default: the preset's rollout.max_new_tokens)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save", type=Path, help="write the trained policy here (a model directory; one format only)")
    args = parser.parse_args()
    formats = args.formats.split(",")
    unknown = [f for f in formats if f not in VERDICT_FORMATS]
    if unknown:
        parser.error(f"--formats: unknown {unknown}; valid: {list(VERDICT_FORMATS)}")
    if args.save and len(formats) != 1:
        parser.error(f"--save keeps one policy: give one format with it (--formats {formats[0]}), not {len(formats)}")

    torch.manual_seed(args.seed)
    device = resolve_device(args.device)
    policy = args.model or SHIPPED[args.task][0]
    model, tokenizer = load_model(policy)
    model.to(device)
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
    task = task_from_preset(args.task, args.config)
    max_new_tokens = args.max_new_tokens or (load_config(args.config).rollout.max_new_tokens if args.config else 96)
    rng = random.Random(args.seed)
    params = SamplingParams(max_new_tokens, temperature=1.0)
    start = time.time()

    def own_solutions(problems, seed):
        generator = torch.Generator(device=device).manual_seed(seed)
        completions, _ = complete(model, tokenizer, task, problems, params, batch_size=args.batch, generator=generator)
        return completions

    train = own_solutions([task.sample(rng, "train") for _ in range(args.train_problems)], args.seed + 1)
    failures = [c for c in train if c.reward < 1]
    successes = [c for c in train if c.reward >= 1]
    test = own_solutions(heldout_problems(task, args.test_problems, seed=args.seed), args.seed + 2)
    test_failures = [c for c in test if c.reward < 1]
    test_successes = [c for c in test if c.reward >= 1]
    truth = [task.first_error(c.problem, c.text) for c in test_failures]
    most_common, uniform = guessing_baselines(truth, [len(task.split_steps(c.text)) for c in test_failures])
    solver_problems = heldout_problems(task, 500, seed=args.seed + 7)
    print(f"{args.task}: policy {policy} ({count_parameters(model):,} parameters, {device}), task {task.name} {vars(task)}, "
          f"{len(failures)} failures and {len(successes)} verified solutions to train on, "
          f"{len(test_failures)} held-out failures (guessing: most common step {most_common:.1%}, uniform {uniform:.1%}), "
          f"{time.time() - start:.0f} s", flush=True)

    def verification_pairs(completions, fmt):
        # Labels from the ground truth: a failure's first wrong step, "none" for a verified solution.
        return [
            (encode_prompt(tokenizer, task.verification_prompt(c.problem, c.text)),
             encode_text(tokenizer, task.verdict_target(c.problem, c.text, None if c.reward >= 1 else task.first_error(c.problem, c.text), fmt))
             + [tokenizer.eos_token_id])
            for c in completions
        ]

    def score(step: int, fmt: str) -> dict:
        model.eval()
        verdicts = propose(model, tokenizer, task, [(c.problem, c.text) for c in test_failures + test_successes], args.batch, fmt)
        on_failures, on_successes = verdicts[: len(test_failures)], verdicts[len(test_failures) :]
        right = sum(v.valid and v.step == e for v, e in zip(on_failures, truth))
        said_none = sum(v.valid and v.step is None for v in on_successes) / max(len(on_successes), 1)
        invalid = sum(not v.valid for v in verdicts) / len(verdicts)
        tokens = sum(v.n_tokens for v in verdicts) / len(verdicts)
        solver = evaluate(model, tokenizer, task, solver_problems, max_new_tokens=max_new_tokens, batch_size=args.batch).accuracy
        model.train()
        row = dict(step=step, exact=right / len(test_failures), ci=wilson_interval(right, len(test_failures)), none=said_none,
                   invalid=invalid, solver=solver, tokens=tokens, seconds=time.time() - start)
        print(f"| {fmt} | {step} | {row['exact']:.1%} | {said_none:.1%} | {invalid:.1%} | {tokens:.1f} | {solver:.1%} | {row['seconds']:.0f} s |", flush=True)
        return row

    finals = {}
    for fmt in formats:
        model.load_state_dict(initial)  # every format starts from the same weights,
        batches = random.Random(args.seed + 11)  # and trains on the same batches
        print(f"\n| format | step | self-localization accuracy | 'none' on verified | unparsable | verdict tokens | solver (greedy) | time |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
        model.train()
        for step in range(args.steps + 1):
            if step % args.eval_every == 0 or step == args.steps:
                finals[fmt] = score(step, fmt)
            if step == args.steps:
                break
            batch = batches.sample(failures, args.failures_per_step) + batches.sample(successes, args.successes_per_step)
            loss = supervised_loss(model, collate_supervised(verification_pairs(batch, fmt), tokenizer.pad_token_id))
            if args.solver_mix > 0:
                solved = [(encode_prompt(tokenizer, c.problem.prompt), encode_text(tokenizer, c.text) + [tokenizer.eos_token_id])
                          for c in batches.sample(successes, 32)]
                loss = loss + args.solver_mix * supervised_loss(model, collate_supervised(solved, tokenizer.pad_token_id))
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
        if args.save:
            save_model(model, tokenizer, args.save)
            record = read_task_record(policy)  # the task the policy was trained on, as its own directory says
            if record is not None:
                write_task_record(args.save, record["task"], record["args"])
            print(f"saved the policy trained on {fmt} verdicts in {args.save}", flush=True)

    print(f"\nAfter {args.steps} steps of {args.failures_per_step} failures + {args.successes_per_step} verified solutions, "
          f"on {len(test_failures)} held-out failures:")
    print("\n| format | exact first-error accuracy (95% CI) | most common step | random step | 'none' on verified | unparsable | verdict tokens | solver |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for fmt, row in finals.items():
        lo, hi = row["ci"]
        print(f"| {fmt} | {row['exact']:.1%} [{lo:.1%}, {hi:.1%}] | {most_common:.1%} | {uniform:.1%} | {row['none']:.1%} | "
              f"{row['invalid']:.1%} | {row['tokens']:.1f} | {row['solver']:.1%} |")


if __name__ == "__main__":
    main()

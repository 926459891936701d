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

    python benchmarks/verify_capacity.py                  # arith, 500 steps
    python benchmarks/verify_capacity.py --task countdown --steps 300
    python benchmarks/verify_capacity.py --model runs/sft-small --device cuda --train-problems 20000 --steps 1000
"""

from __future__ import annotations

import argparse
import random
import time

import torch

from localization import SHIPPED, task_from_preset
from sirl.evaluate import complete, evaluate, guessing_baselines, heldout_problems
from sirl.internalize.selfverify import propose
from sirl.model import count_parameters, encode_prompt, encode_text, load_model, resolve_device, supervised_loss
from sirl.rollout import SamplingParams
from sirl.batch import collate_supervised


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="arith", choices=sorted(SHIPPED))
    parser.add_argument("--model", help="a policy directory trained on the task (default: the task's shipped policy)")
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
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    device = resolve_device(args.device)
    model, tokenizer = load_model(args.model or SHIPPED[args.task][0])
    model.to(device)
    task = task_from_preset(args.task)
    rng = random.Random(args.seed)
    params = SamplingParams(96, temperature=1.0)
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
    print(f"{args.task}: policy {args.model or SHIPPED[args.task][0]} ({count_parameters(model):,} parameters, {device}), "
          f"{len(failures)} failures and {len(successes)} verified solutions to train on, "
          f"{len(test_failures)} held-out failures (guessing: most common step {most_common:.1%}, uniform {uniform:.1%}), "
          f"{time.time() - start:.0f} s", flush=True)

    def verification_pairs(completions):
        return [
            (encode_prompt(tokenizer, task.verification_prompt(c.problem, c.text)),
             encode_text(tokenizer, task.verdict_text(None if c.reward >= 1 else task.first_error(c.problem, c.text)))
             + [tokenizer.eos_token_id])
            for c in completions
        ]

    def score(step: int) -> None:
        model.eval()
        verdicts = propose(model, tokenizer, task, [(c.problem, c.text) for c in test_failures + test_successes])
        on_failures, on_successes = verdicts[: len(test_failures)], verdicts[len(test_failures) :]
        right = sum(v.valid and v.step == e for v, e in zip(on_failures, truth)) / len(test_failures)
        said_none = sum(v.valid and v.step is None for v in on_successes) / max(len(on_successes), 1)
        invalid = sum(not v.valid for v in verdicts) / len(verdicts)
        solver = evaluate(model, tokenizer, task, solver_problems, max_new_tokens=96, batch_size=args.batch).accuracy
        model.train()
        print(f"| {step} | {right:.1%} | {said_none:.1%} | {invalid:.1%} | {solver:.1%} | {time.time() - start:.0f} s |", flush=True)

    print("\n| step | self-localization accuracy | 'none' on verified | unparsable | solver (greedy) | time |")
    print("|---:|---:|---:|---:|---:|---:|")
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    model.train()
    for step in range(args.steps + 1):
        if step % args.eval_every == 0 or step == args.steps:
            score(step)
        if step == args.steps:
            break
        batch = rng.sample(failures, args.failures_per_step) + rng.sample(successes, args.successes_per_step)
        loss = supervised_loss(model, collate_supervised(verification_pairs(batch), tokenizer.pad_token_id))
        if args.solver_mix > 0:
            solved = [(encode_prompt(tokenizer, c.problem.prompt), encode_text(tokenizer, c.text) + [tokenizer.eos_token_id])
                      for c in rng.sample(successes, 32)]
            loss = loss + args.solver_mix * supervised_loss(model, collate_supervised(solved, tokenizer.pad_token_id))
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()


if __name__ == "__main__":
    main()

"""How well the oracle localizer finds the first wrong step, and what it costs, on the shipped policies.

For each task: sample groups from its shipped policy on fixed test prompts, keep the failures (the
localizable ones: their group holds a success), and localize each with the rollout engine as training
does. Against the task's ground truth it reports:

- exact first-error accuracy of the localizer (free evidence + divergence check, the default), and of
  plain bisection without free evidence;
- probe continuations per failure for both, against the bisection bound K * ceil(log2(n+1)) and against a
  linear scan (probe k = 1, 2, ... until a prefix fails: K * t*);
- the monotone-value assumption: with M probes at every prefix, how often the estimated value comes back
  above 0 after having been 0 along a failed trajectory, and how the localizer's misses split into
  "earlier than the truth" (a correct prefix the policy already cannot finish) and "later than the truth"
  (the wrong step was still recoverable: a later answer verified), with the mean M-probe value of the
  prefix that ends with the true wrong step in those cases;
- agreement with the first irrecoverable step found by that exhaustive M-probe scan, which is what the
  method defines t* to be (the ground truth is the first *wrong* step, and a wrong step can be recoverable).

    python benchmarks/localization.py                       # arith and countdown, K=2, 200 failures each
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

from sirl.evaluate import heldout_problems
from sirl.internalize import PrefixBook, localize, prefix_ids
from sirl.model import load_model
from sirl.paths import resolve_path
from sirl.rollout import SamplingParams, sample_trajectories
from sirl.tasks import load_task

SHIPPED = {"arith": ("checkpoints/arith-tiny", "configs/arith.yaml"), "countdown": ("checkpoints/countdown-tiny", "configs/countdown.yaml")}


def task_from_preset(name: str):
    import yaml

    args = yaml.safe_load(resolve_path(SHIPPED[name][1]).read_text())["task"].get("args", {})
    return load_task(name, **args)


def run(name: str, k: int, n_failures: int, profile_probes: int, group: int, seed: int, drop: float) -> dict:
    model, tokenizer = load_model(SHIPPED[name][0])
    task = task_from_preset(name)
    params = SamplingParams(96, temperature=1.0)
    generator = torch.Generator().manual_seed(seed)
    spent = {"continuations": 0}

    def probe(requests, count):
        found = sample_trajectories(
            model, tokenizer, task, [t.problem for t, _ in requests], params, group_size=count,
            prefixes=[prefix_ids(t, s) for t, s in requests], groups=[t.group for t, _ in requests], generator=generator,
        )
        spent["continuations"] += len(found)
        return [found[i * count : (i + 1) * count] for i in range(len(requests))]

    # Failures of localizable groups, from fixed held-out prompts.
    problems = heldout_problems(task, 4 * n_failures, seed=seed)
    samples = sample_trajectories(model, tokenizer, task, problems, params, group_size=group, generator=generator)
    book = PrefixBook(samples)
    failures = [t for t in samples if t.reward < 1]
    localizable = [t for t in failures if book.certified(t.group, [])][:n_failures]
    truth = [task.first_error(t.problem, t.text) for t in localizable]

    start = time.time()
    default = localize(localizable, PrefixBook(samples), lambda r: probe(r, k), free_evidence=True, first_check="divergence", drop=drop)
    seconds = time.time() - start
    plain = localize(localizable, PrefixBook(samples), lambda r: probe(r, k), free_evidence=False, first_check="bisect")

    # Linear scan and the value profile: M probes at every prefix k = 1..n-1 (V(0) > 0 is known, V(n) = 0).
    profiles = []
    for t in localizable:
        n = len(t.step_spans)
        found = probe([(t, s) for s in range(1, n)], profile_probes) if n > 1 else []
        profiles.append([1.0] + [sum(p.reward >= 1 for p in probes) / profile_probes for probes in found] + [0.0])
    # t* by an exhaustive scan of the profile: the first prefix with no success in M probes
    first_dead = [next(s for s, v in enumerate(profile) if v == 0) for profile in profiles]
    linear_cost = [k * t_star for t_star in first_dead]
    later_values = [profile[e + 1] for loc, e, profile in zip(default, truth, profiles) if loc.error_step > e]
    non_monotone = sum(any(profile[j] == 0 and profile[i] > 0 for j in range(len(profile)) for i in range(j + 1, len(profile))) for profile in profiles)
    earlier = sum(loc.error_step < e for loc, e in zip(default, truth))
    later = sum(loc.error_step > e for loc, e in zip(default, truth))
    bound = [k * math.ceil(math.log2(len(t.step_spans) + 1)) for t in localizable]
    return {
        "task": name,
        "failures": len(failures),
        "localizable": len(localizable),
        "accuracy": sum(loc.error_step == e for loc, e in zip(default, truth)) / len(localizable),
        "accuracy_bisect": sum(loc.error_step == e for loc, e in zip(plain, truth)) / len(localizable),
        "agree_scan": sum(loc.error_step == t_star - 1 for loc, t_star in zip(default, first_dead)) / len(localizable),
        "later_value": statistics.mean(later_values) if later_values else float("nan"),
        "probes": statistics.mean(loc.probes for loc in default),
        "probes_bisect": statistics.mean(loc.probes for loc in plain),
        "bound": statistics.mean(bound),
        "linear": statistics.mean(linear_cost),
        "earlier": earlier,
        "later": later,
        "non_monotone": non_monotone,
        "steps": statistics.mean(len(t.step_spans) for t in localizable),
        "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default="arith,countdown")
    parser.add_argument("-k", type=int, default=2, help="probes per checked prefix")
    parser.add_argument("--failures", type=int, default=200)
    parser.add_argument("--profile-probes", type=int, default=8, help="probes per prefix for the value profile")
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--drop", type=float, default=0.0, help="the localizer's value-drop rule (0: V > 0)")
    args = parser.parse_args()
    rows = [run(name, args.k, args.failures, args.profile_probes, args.group, args.seed, args.drop) for name in args.tasks.split(",")]
    print(f"K = {args.k}, drop = {args.drop}; value profiles from {args.profile_probes} probes per prefix; groups of {args.group}; seed {args.seed}\n")
    print("| task | failures localized | mean steps | exact accuracy (default) | exact accuracy (bisect, no free evidence) "
          "| agreement with exhaustive-scan t* | probes/failure (default) | probes/failure (bisect) | K*ceil(log2(n+1)) "
          "| linear scan K*t* | localized earlier / later than truth | value after the true error, in later cases "
          "| non-monotone value profiles | search time |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['task']} | {r['localizable']} of {r['failures']} | {r['steps']:.1f} | {r['accuracy']:.1%} | {r['accuracy_bisect']:.1%} "
            f"| {r['agree_scan']:.1%} | {r['probes']:.2f} | {r['probes_bisect']:.2f} | {r['bound']:.2f} | {r['linear']:.2f} "
            f"| {r['earlier']} / {r['later']} | {r['later_value']:.2f} | {r['non_monotone']} ({r['non_monotone'] / r['localizable']:.0%}) "
            f"| {r['seconds']:.1f} s |"
        )


if __name__ == "__main__":
    main()

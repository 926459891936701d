"""How well the oracle localizer finds the first wrong step, and what it costs, on the shipped policies.

For each task: sample groups from its shipped policy on fixed test prompts, keep the failures (the
localizable ones: their group holds a success), and localize the same failures with each localizer
setting (K probes per check, the drop rule, settle probes), through the rollout engine as training does.
Against the task's ground truth it reports, per setting:

- exact first-error accuracy (free evidence + divergence check, as in training), and for the first
  setting also plain bisection without free evidence;
- probe continuations per failure, against the bisection bound K * ceil(log2(n+1)) and against a linear
  scan (probe k = 1, 2, ... until a prefix fails: K * t*);
- how many verified samples hold a wrong step (a later error landed on the right answer by chance, or,
  on arith, a slip: a wrong result the next step does not carry): the free evidence counts them as good,
  and every failure that shares their wrong step is then localized late;
- on arith, the accuracy against the first wrong step the chain never recovers from
  (ArithTask.first_lasting_error), which skips such slips;
- how the misses split into "earlier than the truth" (a correct prefix the policy already cannot finish)
  and "later than the truth" (a probe verified after the wrong step: the step was recoverable, or the
  final answer right by luck);
- agreement with the first irrecoverable step found by an exhaustive scan with M probes at every prefix,
  which is docs/method.md's t* (the ground truth is the first *wrong* step, and a wrong step can be recoverable);
- for the first setting, si_internal's floor: what self-localization with confirmation would spend if the
  policy always named the ground-truth step (10% still audited), with and without reusing siblings'
  samples in the checks.

Per task, from the same M-probe value profiles: how often the monotone-value assumption fails (the value
comes back above 0 after having been 0), and the mean value of the prefix ending with the true wrong step.

    python benchmarks/localization.py          # arith and countdown, 200 failures each, the settings below
    python benchmarks/localization.py --settings "k=1,drop=0.5,settle=3;k=4,drop=0.5"
    python benchmarks/localization.py --tasks arith --model runs/grpo-15min/checkpoints/final   # another policy
    python benchmarks/localization.py --tasks arith --config arith_mul                          # another distribution
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import time

import torch

from sirl.config import load_config
from sirl.evaluate import heldout_problems
from sirl.internalize import PrefixBook, certified_prefix_steps, localize, prefix_ids
from sirl.internalize.credit import SearchSettings
from sirl.internalize.selfverify import AuditSchedule
from sirl.methods.si_internal import localize_with_proposals
from sirl.model import load_model
from sirl.paths import resolve_path
from sirl.rollout import SamplingParams, sample_trajectories
from sirl.tasks import load_task
from sirl.types import Verdict
from sirl.verifier import verify_trajectories

SHIPPED = {"arith": ("checkpoints/arith-tiny", "configs/arith.yaml"), "countdown": ("checkpoints/countdown-tiny", "configs/countdown.yaml")}


def task_from_preset(name: str, preset: str | None = None):
    """The task of the shipped policy's RL preset, or of ``preset`` (a name in configs/ or a YAML file)."""
    config = load_config(preset or str(resolve_path(SHIPPED[name][1])))
    if config.task.name != name:
        raise SystemExit(f"--config {preset}: its task is {config.task.name!r}, not {name!r}")
    return load_task(name, **config.task.args)


DEFAULT_SETTINGS = "k=2,drop=0;k=1,drop=0.5;k=1,drop=0.5,settle=3;k=2,drop=0.5;k=2,drop=0.5,settle=6;k=4,drop=0.5"


def parse_settings(text: str) -> list[dict]:
    settings = []
    for item in text.split(";"):
        fields = dict(part.split("=") for part in item.split(","))
        unknown = set(fields) - {"k", "drop", "settle"}
        if unknown:
            raise SystemExit(f"--settings: unknown field(s) {sorted(unknown)} in {item!r}; use k=, drop=, settle=")
        setting = {"k": int(fields["k"]), "drop": float(fields.get("drop", 0)), "settle": int(fields.get("settle", 0))}
        if setting["settle"] and not setting["drop"]:
            raise SystemExit(f"--settings: {item!r} has settle probes but drop=0, where they change nothing; give drop > 0")
        settings.append(setting)
    return settings


def run(
    name: str, settings: list[dict], n_failures: int, profile_probes: int, group: int, seed: int,
    policy: str | None = None, preset: str | None = None,
) -> list[dict]:
    model, tokenizer = load_model(policy or SHIPPED[name][0])
    task = task_from_preset(name, preset)
    # the preset's response length (long chains need more than the shipped presets' 96 tokens)
    params = SamplingParams(load_config(preset).rollout.max_new_tokens if preset else 96, temperature=1.0)
    generator = torch.Generator().manual_seed(seed)

    def probe(requests, count):
        found = verify_trajectories(task, sample_trajectories(
            model, tokenizer, task, [t.problem for t, _ in requests], params, group_size=count,
            prefixes=[prefix_ids(t, s) for t, s in requests], groups=[t.group for t, _ in requests], generator=generator,
        ))
        return [found[i * count : (i + 1) * count] for i in range(len(requests))]

    # Failures of localizable groups, from fixed held-out prompts.
    problems = heldout_problems(task, 4 * n_failures, seed=seed)
    samples = verify_trajectories(task, sample_trajectories(model, tokenizer, task, problems, params, group_size=group, generator=generator))
    book = PrefixBook(samples)
    failures = [t for t in samples if t.reward < 1]
    localizable = [t for t in failures if book.certified(t.group, [])][:n_failures]
    truth = [task.first_error(t.problem, t.text) for t in localizable]
    # Where the task can tell (arith), the first wrong step the chain never recovers from: a wrong result
    # the next step does not carry is a slip that a verified sibling may share.
    lasting_of = getattr(task, "first_lasting_error", None)
    lasting = [lasting_of(t.problem, t.text) for t in localizable] if lasting_of else None
    # Where free evidence starts each search: the failure's longest prefix shared with a verified sample,
    # against the wrong step (after it: a sibling made the same wrong step and still verified).
    starts = [certified_prefix_steps(book, t, below=len(t.step_spans)) for t in localizable]
    divergence = [sum(c < e for c, e in zip(starts, truth)), sum(c == e for c, e in zip(starts, truth)), sum(c > e for c, e in zip(starts, truth))]

    # The value profile: M probes at every prefix k = 1..n-1 (V(0) > 0 is known, V(n) = 0).
    profiles = []
    for t in localizable if profile_probes else []:
        n = len(t.step_spans)
        found = probe([(t, s) for s in range(1, n)], profile_probes) if n > 1 else []
        solve_rate = book.value(t.group, [])[0]  # V(0) from the prompt's group
        profiles.append([solve_rate] + [sum(p.reward >= 1 for p in probes) / profile_probes for probes in found] + [0.0])
    # t* by an exhaustive scan of the profile: the first prefix with no success in M probes
    first_dead = [next(s for s, v in enumerate(profile) if v == 0) for profile in profiles]
    non_monotone = math.nan if not profiles else sum(any(profile[j] == 0 and profile[i] > 0 for j in range(len(profile)) for i in range(j + 1, len(profile))) for profile in profiles)
    # What the exhaustive scan itself localizes: its first dead prefix (docs/method.md's t*), and the step with
    # the largest value drop V(k) - V(k+1) (the most destructive step, as full Monte-Carlo values see it).
    largest_drop = [max(range(len(p) - 1), key=lambda k: p[k] - p[k + 1]) for p in profiles]
    task_row = {
        "divergence": divergence,
        "divergence_lasting": sum(c == e for c, e in zip(starts, lasting)) / len(localizable) if lasting else math.nan,
        "slips": sum(lasting_of(t.problem, t.text) is None and task.first_error(t.problem, t.text) is not None
                     for t in samples if t.reward >= 1) if lasting_of else math.nan,
        "scan_accuracy": sum(t_star - 1 == e for t_star, e in zip(first_dead, truth)) / len(profiles) if profiles else math.nan,
        "drop_accuracy": sum(k == e for k, e in zip(largest_drop, truth)) / len(profiles) if profiles else math.nan,
        "task": name, "failures": len(failures), "localizable": len(localizable),
        # Successes whose chain holds a wrong step (a later one landed on the right answer by chance, or a slip): the
        # free evidence treats them as good, so a failure that shares their wrong step looks right there.
        "successes": len(samples) - len(failures),
        "lucky": sum(task.first_error(t.problem, t.text) is not None for t in samples if t.reward >= 1),
        "steps": statistics.mean(len(t.step_spans) for t in localizable), "non_monotone": non_monotone,
        "value_after_error": statistics.mean(p[e + 1] for p, e in zip(profiles, truth) if e + 1 < len(p)) if profiles else math.nan,
    }

    rows = []
    for index, setting in enumerate(settings):
        k, drop, settle = setting["k"], setting["drop"], setting["settle"]
        start = time.time()
        found = localize(
            localizable, PrefixBook(samples), lambda r: probe(r, k), free_evidence=True, first_check="divergence", drop=drop,
            settle=(lambda r: probe(r, settle)) if settle else None,
        )
        seconds = time.time() - start
        row = {
            **task_row, **setting, "seconds": seconds,
            "accuracy": sum(loc.error_step == e for loc, e in zip(found, truth)) / len(localizable),
            "accuracy_lasting": sum(loc.error_step == e for loc, e in zip(found, lasting)) / len(localizable) if lasting else math.nan,
            "agree_scan": sum(loc.error_step == t_star - 1 for loc, t_star in zip(found, first_dead)) / len(profiles) if profiles else math.nan,
            "probes": statistics.mean(loc.probes for loc in found),
            "bound": statistics.mean(k * math.ceil(math.log2(len(t.step_spans) + 1)) for t in localizable),
            "linear": statistics.mean(k * t_star for t_star in first_dead) if profiles else math.nan,
            "earlier": sum(loc.error_step < e for loc, e in zip(found, truth)),
            "later": sum(loc.error_step > e for loc, e in zip(found, truth)),
        }
        if index == 0:
            plain = localize(localizable, PrefixBook(samples), lambda r: probe(r, k), free_evidence=False, first_check="bisect", drop=drop)
            row["accuracy_bisect"] = sum(loc.error_step == e for loc, e in zip(plain, truth)) / len(localizable)
            row["probes_bisect"] = statistics.mean(loc.probes for loc in plain)
            # si_internal's floor: the policy names the ground-truth step every time, a tenth of the
            # failures are still audited (internalize.audit_min), the rest confirmed by the two checks,
            # with and without reusing siblings' samples (internalize.reuse_samples).
            for reuse in (False, True):
                proposals = [Verdict(task.verdict_text(e), e, True, 1) for e in truth]
                confirmed, _ = localize_with_proposals(
                    localizable, proposals, PrefixBook(samples), probe, SearchSettings(probes=k, drop=drop, reuse_samples=reuse),
                    AuditSchedule(0.1, 0.1, 256), random.Random(seed), truth,
                )
                row[f"oracle_proposals_reuse_{reuse}"] = (
                    sum(loc.error_step == e for loc, e in zip(confirmed, truth)) / len(localizable),
                    statistics.mean(loc.probes for loc in confirmed),
                )
        rows.append(row)
    return rows


def shown(value: float, spec: str) -> str:
    """A figure, or "-" where it was not measured (the columns from the value profile, without one)."""
    return "-" if math.isnan(value) else format(value, spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default="arith,countdown")
    parser.add_argument("--settings", default=DEFAULT_SETTINGS, help="localizer settings, ';'-separated: k=K,drop=D,settle=S")
    parser.add_argument("--failures", type=int, default=200)
    parser.add_argument("--profile-probes", type=int, default=8, help="probes per prefix for the value profile (0: skip it, and the columns from it)")
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", help="localize the failures of this policy instead of the shipped one (one task in --tasks)")
    parser.add_argument("--config", help="sample problems from this preset's task instead of the shipped policy's (one task in --tasks)")
    args = parser.parse_args()
    settings = parse_settings(args.settings)
    tasks = args.tasks.split(",")
    if (args.model or args.config) and len(tasks) != 1:
        parser.error(f"--model and --config name one task's policy or preset; give one task in --tasks (got {args.tasks!r})")
    results = [run(name, settings, args.failures, args.profile_probes, args.group, args.seed, args.model, args.config) for name in tasks]
    print(f"policy: {args.model or ', '.join(SHIPPED[t][0] for t in tasks)}; task from {args.config or 'the shipped presets'}")
    print(f"value profiles from {args.profile_probes} probes per prefix; groups of {args.group}; seed {args.seed}\n")
    for rows in results:
        r = rows[0]
        print(f"{r['task']}: {r['successes']} of {r['successes'] + r['failures']} samples verified; {r['lucky']} "
              f"({r['lucky'] / max(r['successes'], 1):.1%}) of those hold a wrong step")
        if not math.isnan(r["slips"]):
            print(f"  of which {r['slips']:.0f} are slips the chain recovered from (a wrong result the next step does not carry)")
            print(f"  the divergence step against the first wrong step the chain never recovers from: {r['divergence_lasting']:.1%} exact")
        print()
    print("| task | failures localized | mean steps | non-monotone value profiles | mean value after the true wrong step "
          "| exhaustive scan: exact accuracy of its first dead prefix | of its largest value drop | probes/failure of the scan "
          "| failure leaves every verified sibling before / at / after the wrong step |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for rows in results:
        r = rows[0]
        print(
            f"| {r['task']} | {r['localizable']} of {r['failures']} | {r['steps']:.1f} "
            f"| {shown(r['non_monotone'], '.0f')} ({shown(r['non_monotone'] / r['localizable'], '.0%')}) "
            f"| {shown(r['value_after_error'], '.2f')} | {shown(r['scan_accuracy'], '.1%')} | {shown(r['drop_accuracy'], '.1%')} "
            f"| {shown(args.profile_probes * (r['steps'] - 1) if args.profile_probes else math.nan, '.1f')} "
            f"| {' / '.join(map(str, r['divergence']))} |"
        )
    print("\n| task | K | drop | settle | exact accuracy | agreement with exhaustive-scan t* | localized earlier / later than truth "
          "| probes/failure | K*ceil(log2(n+1)) | linear scan K*t* | search time | exact accuracy against the first lasting error |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for rows in results:
        for r in rows:
            print(
                f"| {r['task']} | {r['k']} | {r['drop']:g} | {r['settle']} | {r['accuracy']:.1%} | {shown(r['agree_scan'], '.1%')} "
                f"| {r['earlier']} / {r['later']} | {r['probes']:.2f} | {r['bound']:.2f} | {shown(r['linear'], '.2f')} | {r['seconds']:.1f} s "
                f"| {shown(r['accuracy_lasting'], '.1%')} |"
            )
    print("\nPlain bisection without free evidence, first setting:")
    for rows in results:
        r = rows[0]
        print(f"- {r['task']}: exact accuracy {r['accuracy_bisect']:.1%}, {r['probes_bisect']:.2f} probes/failure")
    print("\nsi_internal's floor, first setting: every proposal the ground-truth step, 10% audited, the rest confirmed "
          "(exact accuracy, probes/failure), against the search's probes/failure:")
    for rows in results:
        r = rows[0]
        (plain_accuracy, plain_probes), (reuse_accuracy, reuse_probes) = r["oracle_proposals_reuse_False"], r["oracle_proposals_reuse_True"]
        print(f"- {r['task']}: {plain_accuracy:.1%} at {plain_probes:.2f} probes/failure; with reuse_samples {reuse_accuracy:.1%} at "
              f"{reuse_probes:.2f}; the search {r['probes']:.2f}")


if __name__ == "__main__":
    main()

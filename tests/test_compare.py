"""`sirl compare`: the summary's arithmetic on a hand-built folder, plan files, equal-budget accounting and
an interrupted comparison resumed to the same results as an uninterrupted one."""

import json
import random
import os
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sirl.compare import (
    ComparePlan, RunSpec, load_sample, plot_comparison, read_plan_file, results_markdown, summarize, tokens_done,
)
from sirl.compare.stats import MeanStd, PairedDifference
from sirl.compare.records import EvalSets, LevelAccuracy, MachineLoad
from sirl.config import ConfigError, load_config, to_yaml

ROOT = Path(__file__).resolve().parents[1]


# --- the summary, by hand ------------------------------------------------------------------------


def write_run(folder: Path, evals: list[tuple[int, float]], final: float, probe: int = 0, loc: list[float] = ()):
    """A finished run: eval points (tokens, accuracy), 100 tokens per step, ``probe`` of them probes."""
    folder.mkdir(parents=True)
    rows = []
    for step in range(0, evals[-1][0] // 100 + 1):
        row = {"step": step, "time/elapsed_s": float(step), "tokens/total": step * 100}
        if step:
            row.update({"tokens/policy": step * (100 - probe), "tokens/probe": step * probe, "tokens/verify": 0})
            if loc:
                row["loc/accuracy"] = loc[(step - 1) % len(loc)]
        for tokens, accuracy in evals:
            if tokens == step * 100:
                row["eval/accuracy"] = accuracy
        rows.append(row)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    by_difficulty = {"1": {"n": 10, "accuracy": final + 0.1}, "2": {"n": 10, "accuracy": final - 0.1}}
    (folder / "eval.json").write_text(json.dumps({"step": len(rows) - 1, "tokens/total": evals[-1][0], "n": 20, "accuracy": final,
                                                  "by_difficulty": by_difficulty}))


@pytest.fixture
def hand_built(tmp_path):
    plan = ComparePlan(methods=["grpo", "si"], seeds=2, budget_tokens=400, eval_every_tokens=200)
    (tmp_path / "compare.json").write_text(json.dumps(plan.__dict__))
    (tmp_path / "base.yaml").write_text(to_yaml(load_config("arith")))
    # grpo's evaluations land exactly on the grid; si's are off it and need interpolation.
    write_run(tmp_path / "runs/grpo/seed0", [(0, 0.5), (200, 0.6), (400, 0.7)], final=0.70)
    write_run(tmp_path / "runs/grpo/seed1", [(0, 0.5), (200, 0.8), (400, 0.7)], final=0.72)
    write_run(tmp_path / "runs/si/seed0", [(0, 0.5), (100, 0.7), (300, 0.9), (400, 0.9)], final=0.80, probe=20, loc=[1.0, 0.5])
    write_run(tmp_path / "runs/si/seed1", [(0, 0.5), (300, 0.8), (400, 0.8)], final=0.76, probe=20, loc=[0.5])
    (tmp_path / "start").mkdir()
    start_levels = {"1": {"n": 10, "accuracy": 0.1}, "2": {"n": 10, "accuracy": 0.5}, "3": {"n": 30, "accuracy": 0.9}}
    (tmp_path / "start/eval.json").write_text(json.dumps({"accuracy": 0.7, "n": 50, "by_difficulty": start_levels}))
    return tmp_path


def test_the_summary_matches_hand_computed_values(hand_built):
    results = summarize(hand_built)
    grpo, si = results.methods["grpo"], results.methods["si"]
    assert grpo.curve.tokens == [0, 200, 400]
    # grpo: mean of (0.6, 0.8) at 200 -> 0.7; the sample std of two values d apart is d/sqrt(2)
    assert grpo.curve.mean == pytest.approx([0.5, 0.7, 0.7])
    assert grpo.curve.std[1] == pytest.approx(0.2 / 2**0.5)
    # si seed0 at 200: halfway between (100, 0.7) and (300, 0.9) -> 0.8; seed1: two thirds of the way from 0.5 to 0.8 -> 0.7
    assert si.curve.mean[1] == pytest.approx((0.8 + 0.7) / 2)
    # grpo's final accuracy is (0.70 + 0.72) / 2 = 0.71 (no evals.jsonl: each run's final evaluation alone). Its
    # own mean curve peaks at 0.70, so no ratio to it exists; si's mean curve (0.5, 0.75, 0.85) crosses 0.71 at
    # 200 * 0.21 / 0.25 = 168 tokens.
    assert results.reference.method == "grpo" and results.reference.final_accuracy == pytest.approx(0.71)
    assert grpo.versus.tokens_to_reach.generated_tokens is None and grpo.versus.tokens_to_reach.generated_ratio is None
    assert si.versus.tokens_to_reach.generated_tokens == pytest.approx(168)
    assert grpo.final_accuracy.mean == pytest.approx(0.71) and grpo.final_accuracy.values == [0.70, 0.72]
    assert si.probe_share.mean == pytest.approx(0.2) and grpo.probe_share.mean == 0
    # loc/accuracy means per seed: (1.0, 0.5, 1.0, 0.5) -> 0.75 and 0.5; over seeds 0.625
    assert si.localization_accuracy.mean == pytest.approx(0.625) and grpo.localization_accuracy.mean is None
    assert si.by_difficulty[1].mean == pytest.approx(0.88) and si.by_difficulty[2].mean == pytest.approx(0.68)
    assert si.max_step_tokens == 100 and results.missing_runs == []
    # level 1 starts below 15%: the hard band. The runs know levels 1 and 2 only, so the other band (2, 3)
    # cannot be pooled; si's hard-band accuracy is its level-1 accuracy (0.90, 0.86).
    assert (results.difficulty_bands.hard, results.difficulty_bands.other) == ([1], [2, 3])
    assert si.hard_levels_accuracy.values == pytest.approx([0.90, 0.86]) and si.other_levels_accuracy.mean is None
    text = results_markdown(results)
    assert "| si | 88.0% ± 2.8% |  | - |  |" in text  # no per-problem levels: no band differences
    # the table by difficulty, levels 1 and 2 (si: seed 0 0.80 + 0.1 and 0.80 - 0.1, seed 1 0.76 + 0.1 and 0.76 - 0.1)
    assert "| si | 88.0% ± 2.8% | 68.0% ± 2.8% | - |" in text


def test_the_hard_band_follows_the_plans_threshold(hand_built):
    plan = json.loads((hand_built / "compare.json").read_text())
    (hand_built / "compare.json").write_text(json.dumps({**plan, "hard_below": 0.6}))
    results = summarize(hand_built)
    # levels 1 (10%) and 2 (50%) start below 60%; si's pooled hard accuracy weighs them by their 10 problems
    # each: seed 0 (0.90 + 0.70) / 2, seed 1 (0.86 + 0.66) / 2
    assert (results.difficulty_bands.hard, results.difficulty_bands.other) == ([1, 2], [3])
    assert results.methods["si"].hard_levels_accuracy.values == pytest.approx([0.80, 0.76])
    assert "starting policy is below 60% (hard: [1, 2])" in results_markdown(results)
    assert ComparePlan(methods=["grpo"], budget_tokens=400, eval_every_tokens=200, hard_below=0.6).same_results_as(ComparePlan(methods=["grpo"], budget_tokens=400, eval_every_tokens=200)) == []
    with pytest.raises(ConfigError, match="hard_below"):
        ComparePlan(methods=["grpo"], budget_tokens=400, eval_every_tokens=200, hard_below=1.5)


def test_the_reference_method_is_a_report_setting(hand_built):
    plan = json.loads((hand_built / "compare.json").read_text())
    (hand_built / "compare.json").write_text(json.dumps({**plan, "reference": "si"}))
    results = summarize(hand_built)
    grpo, si = results.methods["grpo"], results.methods["si"]
    # si's final accuracy is (0.80 + 0.76) / 2 = 0.78; its own mean curve (0.5, 0.75, 0.85) crosses it at
    # 200 + 200 * 0.03 / 0.10 = 260 tokens; grpo's (0.5, 0.7, 0.7) never does
    assert results.reference.method == "si" and results.reference.final_accuracy == pytest.approx(0.78)
    assert si.versus.tokens_to_reach.generated_tokens == pytest.approx(260) and si.versus.tokens_to_reach.generated_ratio == pytest.approx(1.0)
    assert grpo.versus.tokens_to_reach.generated_tokens is None
    text = results_markdown(results)
    assert "The difference from si is in points" in text and "| difference from si (95% CI) |" in text and "grpo's final" not in text
    same = dict(methods=["grpo", "si"], budget_tokens=400, eval_every_tokens=200)
    assert ComparePlan(**same, reference="si").same_results_as(ComparePlan(**same)) == []
    with pytest.raises(ConfigError, match="reference 'dr_grpo' is not one of the methods"):
        ComparePlan(**same, reference="dr_grpo")


def test_unreached_targets_and_missing_runs_are_reported(hand_built):
    (hand_built / "runs/si/seed1/eval.json").unlink()
    write_run(hand_built / "runs/grpo/seed2", [(0, 0.5), (400, 0.99)], final=0.99)  # beyond the plan's seeds: ignored
    results = summarize(hand_built)
    assert results.missing_runs == ["si-seed1"]
    assert results.methods["si"].seeds == [0] and results.methods["grpo"].seeds == [0, 1]


def test_one_seed_has_no_spread_and_reads_as_one_seed(hand_built, monkeypatch):
    import matplotlib.axes

    for method in ("grpo", "si"):
        for path in (hand_built / f"runs/{method}/seed1").iterdir():
            path.unlink()
        (hand_built / f"runs/{method}/seed1").rmdir()
    plan = json.loads((hand_built / "compare.json").read_text())
    (hand_built / "compare.json").write_text(json.dumps({**plan, "seeds": 1}))
    results = summarize(hand_built)
    assert results.methods["grpo"].final_accuracy == MeanStd(0.70, None, [0.70])
    text = results_markdown(results)
    assert "1 seed per method" in text and "1 seeds" not in text and "final accuracy (n=50; 1 seed)" in text
    error_bars = []
    original = matplotlib.axes.Axes.errorbar
    monkeypatch.setattr(matplotlib.axes.Axes, "errorbar", lambda self, *a, **k: (error_bars.append(k.get("yerr")), original(self, *a, **k))[1])
    plot_comparison(hand_built, results)
    assert error_bars and all(e is None for e in error_bars)  # the final-set markers, without bars: n=1


def test_plots_and_tables_say_which_evaluations_they_show(hand_built):
    results = summarize(hand_built)
    assert results.eval_sets == EvalSets(periodic_n=500, final_n=50)  # base.yaml's eval.n_problems; start/eval.json's n
    # with a final set and a final figure of several evaluations, every evaluation of a run is on the final set
    plan = json.loads((hand_built / "compare.json").read_text())
    (hand_built / "compare.json").write_text(json.dumps({**plan, "final_problems": 50, "final_evaluations": 3}))
    assert summarize(hand_built).eval_sets == EvalSets(periodic_n=50, final_n=50)
    assert "(n=50, the same problems)" in results_markdown(summarize(hand_built))
    (hand_built / "compare.json").write_text(json.dumps(plan))
    text = results_markdown(results)
    assert "final accuracy (n=50; mean ± std over seeds)" in text and "grpo's final accuracy (71.0%)" in text
    assert "Lines: the periodic evaluations (n=500) interpolated onto the token grid; diamonds: the final set (n=50)" in text


def test_machine_load_is_recorded_beside_wall_clock(hand_built):
    assert "load was not recorded" in results_markdown(summarize(hand_built))
    sample = load_sample("during", 1, 2)
    assert sample is not None and len(sample["load"]) == 3 and sample["cpu_count"] == os.cpu_count()
    (hand_built / "logs").mkdir()
    rows = [{**sample, "phase": phase, "load": [load, 0, 0]} for phase, load in [("before", 0.5), ("during", 2.0), ("during", 3.0), ("after", 1.0)]]
    (hand_built / "logs/load.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    load = summarize(hand_built).machine.load
    assert load == MachineLoad(cpu_count=os.cpu_count(), before=0.5, during_mean=2.5, during_max=3.0, during_samples=2, after=1.0)
    assert "0.5 before the runs, 2.5 on average and 3.0 at most during them (2 samples, 30 s apart), 1.0 after" in results_markdown(summarize(hand_built))


def test_progress_counts_every_runs_tokens_up_to_the_budget(hand_built):
    runs = [RunSpec(m, s) for m in ("grpo", "si") for s in (0, 1, 2)]
    assert tokens_done(hand_built, runs, 400) == 4 * 400  # four finished runs, two never started
    partial = hand_built / "runs/grpo/seed2"
    partial.mkdir()
    (partial / "metrics.jsonl").write_text('{"step": 1, "tokens/total": 150}\n{"step": 2, "tokens/tot')  # torn last line
    assert tokens_done(hand_built, runs, 400) == 4 * 400 + 150


def test_the_summary_reads_back_from_results_json_as_it_was(hand_built):
    """results.json is the summary's to_json(); read back, it gives the same records and the same results.md."""
    from sirl.compare import ComparisonSummary

    results = summarize(hand_built)
    saved = json.loads(json.dumps(results.to_json(), default=str))
    assert ComparisonSummary.from_json(saved) == results
    assert results_markdown(ComparisonSummary.from_json(saved)) == results_markdown(results)
    assert list(saved["methods"]["si"]) == [  # the shape benchmarks/ and earlier folders read
        "seeds", "final_accuracy", "final_evaluations", "last_evaluation_accuracy", "final_n", "steps", "tokens", "tokens_per_step",
        "trained_tokens", "max_step_tokens", "probe_share", "verify_share", "localization_accuracy", "probes_per_failure",
        "selfloc_accuracy", "method_state_mb", "settings", "by_difficulty", "curve", "probes_curve", "timing", "hard_levels_accuracy",
        "other_levels_accuracy", "difference_from_reference", "band_difference_from_reference", "tokens_to_reference",
    ]
    assert "difference_from_reference" not in saved["methods"]["grpo"] and saved["methods"]["si"]["by_difficulty"]["1"]["mean"] == pytest.approx(0.88)


COMMITTED = sorted(p.parent for p in (ROOT / "benchmarks/results").glob("**/results.json") if "plan" in json.loads(p.read_text()))
"""The committed folders `sirl compare` wrote (benchmarks/trl_compare.py writes a results.json of its own)."""


@pytest.mark.parametrize("folder", COMMITTED, ids=[str(f.relative_to(ROOT / "benchmarks/results")) for f in COMMITTED])
def test_committed_results_read_back_and_render_their_own_numbers(folder):
    """Every committed comparison's results.json reads as today's records (or, of the first design, is refused by
    name); each table row of its committed results.md is a row of the results.md rendered from it now (rows gained
    columns at their end since, and sections after the tables)."""
    from sirl.compare import read_results
    from sirl.compare.records import UnreadableResults

    saved = json.loads((folder / "results.json").read_text())
    if "best_accuracy" in (saved.get("reference") or {}):
        with pytest.raises(UnreadableResults, match="first design of sirl compare"):
            read_results(folder)
        return
    results = read_results(folder)
    again = json.loads(json.dumps(results.to_json(), default=str))
    assert {k: again[k] for k in saved if k not in ("methods", "plan")} == {k: v for k, v in saved.items() if k not in ("methods", "plan")}
    assert {k: again["plan"][k] for k in saved["plan"]} == saved["plan"]
    for name, row in saved["methods"].items():
        assert {k: again["methods"][name][k] for k in row} == row, name
    rendered = results_markdown(results).splitlines()
    for line in (folder / "results.md").read_text().splitlines():
        if line.startswith("| ") or line.startswith("|---"):
            assert any(r.startswith(line) for r in rendered), line


# --- plans ---------------------------------------------------------------------------------------


def test_plan_files_are_read_and_their_mistakes_named(tmp_path):
    preset, overrides, settings = read_plan_file(ROOT / "benchmarks/compare_cpu.yaml", "arith")
    assert preset == "arith" and "task.args.max_ops=18" in overrides
    assert ComparePlan(**settings).methods == ["grpo", "random_reset", "si", "si_internal"]
    bad = tmp_path / "plan.yaml"
    bad.write_text("methods: [grpo]\nbudget: 5\ntasks: {arith: {config: arith}}\n")
    with pytest.raises(ConfigError, match=r"plan.yaml: unknown config key budget; valid keys: \['budget_tokens', 'checkpoint_every', "):
        read_plan_file(bad, "arith")
    with pytest.raises(ConfigError, match=r"no task 'countdown' under 'tasks:'; it has \['arith'\]"):
        read_plan_file(bad, "countdown")
    with pytest.raises(ConfigError, match="unknown method"):
        ComparePlan(methods=["grpo", "ppo"])
    with pytest.raises(ConfigError, match="larger than budget_tokens"):
        ComparePlan(methods=["grpo"], budget_tokens=10, eval_every_tokens=20)


def test_a_plan_is_read_by_the_config_loader_with_its_ranges(tmp_path):
    """Plan settings are the dataclass's fields, checked as every config is: unknown keys with the valid ones, wrong
    types and ranges named by key."""
    from sirl.compare import load_plan

    with pytest.raises(ConfigError, match=r"^unknown config key budget; valid keys: \['budget_tokens', "):
        load_plan({"budget": 5})
    with pytest.raises(ConfigError, match=r"^seeds='3' has the wrong type: expected int, got str"):
        load_plan({"seeds": "3"})
    with pytest.raises(ConfigError, match=r"^seeds=0 is out of range: it must be at least 1"):
        load_plan({"seeds": 0})
    with pytest.raises(ConfigError, match=r"^hard_below=1.0 is out of range: it must be in \(0, 1\)"):
        load_plan({"hard_below": 1})
    with pytest.raises(ConfigError, match=r"^final_problems=0 is out of range"):
        load_plan({"final_problems": 0})
    with pytest.raises(ConfigError, match=r"compare.json: jobs=0 is out of range"):
        load_plan({"jobs": 0}, "compare.json")
    plan = load_plan({"methods": ["grpo"], "budget_tokens": 400, "eval_every_tokens": 200, "hard_below": 1 / 2})
    assert plan == ComparePlan(methods=["grpo"], budget_tokens=400, eval_every_tokens=200, hard_below=0.5)
    from sirl.methods import METHODS

    assert ComparePlan().methods == list(METHODS)  # every registered method unless told


def test_the_compare_flags_are_generated_from_the_plans_fields():
    from dataclasses import fields

    from sirl.cli import build_parsers, plan_flags, plan_settings

    assert [f.name for f in plan_flags()] == [f.name for f in fields(ComparePlan) if f.name != "variants"]  # variants: plan files only
    parser = build_parsers().commands["compare"]
    args, _ = parser.parse_known_args(["--task", "arith", "--methods", "grpo,si", "--seeds", "2", "--learning-rates", "1e-4,2e-4",
                                       "--hard-below", "0.3", "--reference", "si", "--threads", "1"])
    assert plan_settings(args) == {"methods": ["grpo", "si"], "seeds": 2, "learning_rates": [1e-4, 2e-4], "hard_below": 0.3,
                                   "reference": "si", "threads": 1}
    text = " ".join(parser.format_help().split())
    assert "--seeds N seeds per method (default 3)" in text and "--hard-below X" in text and "(default 0.15)" in text
    assert "--budget-tokens N generated tokens per run (required without a --plan that sets it)" in text


# --- end to end: sirl compare in a subprocess ----------------------------------------------------

TINY = [
    "--task", "arith", "--methods", "grpo,si", "--seeds", "1", "--budget-tokens", "2500", "--eval-every-tokens", "1000",
    "--final-problems", "16", "--checkpoint-every", "1", "--jobs", "1", "--threads", "1", "--quiet",
    "--eval.n_problems=8", "--rollout.prompts_per_step=2", "--rollout.group_size=4", "--model.device=cpu",
    "--method.si.localizer=search",  # probes, so that a resume must restore their random state too
]


HOOKS = Path(__file__).resolve().parent / "hooks"


def compare(out: Path, kill_at: tuple[Path, str] | None = None, **popen) -> subprocess.Popen:
    """``sirl compare`` with the TINY settings into ``out``; ``kill_at=(run_dir, checkpoint)`` SIGKILLs the
    comparison's process group once that run's ``latest`` names that checkpoint (tests/hooks/sitecustomize.py)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    if kill_at is not None:
        env["PYTHONPATH"] += os.pathsep + str(HOOKS)
        env["SIRL_TEST_KILL_AT_CHECKPOINT"] = f"{kill_at[0]}:{kill_at[1]}"
    return subprocess.Popen([sys.executable, "-m", "sirl.cli", "compare", *TINY, "--out", str(out)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


def without_timing(results: dict) -> dict:
    """Wall-clock figures differ between any two runs; everything else must not."""
    results = json.loads(json.dumps(results))
    results.pop("machine")
    results.pop("commands")  # each call's own command line and time
    for row in results["methods"].values():
        row.pop("timing")
    return results


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare") / "cmp"
    process = compare(out)
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output
    return out


def test_no_run_exceeds_the_budget_by_more_than_one_step(uninterrupted):
    results = json.loads((uninterrupted / "results.json").read_text())
    assert set(results["methods"]) == {"grpo", "si"}
    for name, row in results["methods"].items():
        for seed in row["seeds"]:
            rows = [json.loads(line) for line in (uninterrupted / f"runs/{name}/seed{seed}/metrics.jsonl").read_text().splitlines()]
            totals = [r["tokens/total"] for r in rows]
            assert totals[-2] < 2500 <= totals[-1] <= 2500 + row["max_step_tokens"], (name, totals)
            assert rows[-1]["tokens/total"] == rows[-1]["tokens/policy"] + rows[-1]["tokens/probe"] + rows[-1]["tokens/verify"]
            checkpoints = uninterrupted / f"runs/{name}/seed{seed}/checkpoints"
            assert (checkpoints / "final").is_dir() and not list(checkpoints.glob("step_*"))  # pruned once finished
    assert results["methods"]["si"]["probe_share"]["mean"] > 0
    for name in ("results.md", "accuracy_vs_tokens.png", "accuracy_vs_time.png", "probes_per_failure.png", "accuracy_by_difficulty.png"):
        assert (uninterrupted / name).stat().st_size > 0, name
    assert "| grpo |" in (uninterrupted / "results.md").read_text()


def test_a_killed_comparison_resumes_to_the_same_results(uninterrupted, tmp_path):
    out = tmp_path / "cmp"
    # The second run, part-way through: SIGKILL to the comparison and the run the moment si's step-2
    # checkpoint is complete (a session of its own, so the kill takes nothing else).
    process = compare(out, kill_at=(out / "runs/si/seed0", "step_2"), start_new_session=True)
    output, _ = process.communicate(timeout=600)
    assert process.returncode == -signal.SIGKILL, output
    assert (out / "runs/si/seed0/checkpoints/latest").read_text().strip() == "step_2"
    assert not (out / "runs/si/seed0/eval.json").exists() and (out / "runs/grpo/seed0/eval.json").exists()
    resumed = compare(out)
    output, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, output
    assert "--resume" in (out / "logs/si-seed0.log").read_text()
    assert without_timing(json.loads((out / "results.json").read_text())) == without_timing(
        json.loads((uninterrupted / "results.json").read_text())
    )


def test_a_rerun_with_other_settings_is_refused(uninterrupted, tmp_path):
    out = tmp_path / "cmp"
    shutil.copytree(uninterrupted, out)  # the shared comparison stays as the other tests read it
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    args = [a if a != "2500" else "3000" for a in TINY]
    done = subprocess.run([sys.executable, "-m", "sirl.cli", "compare", *args, "--out", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "budget_tokens: 2500 -> 3000" in done.stderr and "give a new --out" in done.stderr
    assert without_timing(json.loads((out / "results.json").read_text())) == without_timing(
        json.loads((uninterrupted / "results.json").read_text())
    )  # refused before anything was rewritten


def test_the_paired_difference_by_hand_and_its_interval():
    from sirl.compare import paired_difference

    # the same runs: a difference of exactly 0, with a zero-width interval
    same = {0: [1.0, 0.0, 1.0, 1.0], 1: [0.0, 1.0, 1.0, 0.0]}
    assert paired_difference(same, same) == PairedDifference(mean=0.0, ci95=[0.0, 0.0], seeds=[0, 1], problems=4)
    # A solves every problem B solves and one more in each run (of 4): +25 points, and every resample
    # keeps A ahead, so the interval excludes 0
    better = {0: [1.0, 1.0, 1.0, 1.0], 1: [1.0, 1.0, 1.0, 0.0]}
    diff = paired_difference(better, same)
    assert diff.mean == pytest.approx(0.25) and diff.ci95[0] >= 0.0
    # noise: on 2,000 problems two runs of independent coin flips differ by nothing the interval excludes
    rng = random.Random(0)
    coins = lambda: {s: [float(rng.random() < 0.5) for _ in range(2000)] for s in range(4)}  # noqa: E731
    low, high = paired_difference(coins(), coins()).ci95
    assert low < 0 < high
    # only the seeds both methods ran are paired
    assert paired_difference({0: [1.0], 3: [1.0]}, {1: [1.0]}) is None


def test_differences_by_band_use_only_the_bands_problems():
    from sirl.compare import band_differences

    # problems 0-1 are level 1 (the hard band), 2-4 level 2 and 3 (the rest). A gains both hard problems in
    # each seed and loses one of the three others: +100 points on the hard band, -33.3 on the other.
    difficulties = [1, 1, 2, 3, 3]
    bands = {"hard": [1], "other": [2, 3]}
    a = {0: [1.0, 1.0, 0.0, 1.0, 1.0], 1: [1.0, 1.0, 1.0, 0.0, 1.0]}
    b = {0: [0.0, 0.0, 1.0, 1.0, 1.0], 1: [0.0, 0.0, 1.0, 1.0, 1.0]}
    out = band_differences(a, b, difficulties, bands)
    assert out["hard"].mean == pytest.approx(1.0) and out["hard"].ci95 == [1.0, 1.0] and out["hard"].problems == 2
    assert out["other"].mean == pytest.approx(-1 / 3) and out["other"].problems == 3
    # a starting evaluation written before per-problem levels were kept: nothing to pick the problems by
    assert band_differences(a, b, None, bands) is None


# --- the final figure, tokens to reach grpo, learning-rate choice ---------------------------------


def test_first_crossing_interpolates_between_grid_points():
    from sirl.compare import first_crossing

    grid = [0, 100, 200, 300]
    assert first_crossing(grid, [0.2, 0.4, 0.8, 0.9], 0.6) == pytest.approx(150)  # halfway from 0.4 to 0.8
    assert first_crossing(grid, [0.2, 0.4, 0.8, 0.9], 0.2) == 0  # already there at the start
    assert first_crossing(grid, [0.2, 0.9, 0.5, 0.95], 0.9) == pytest.approx(100)  # the first crossing, not the last
    assert first_crossing(grid, [0.2, 0.4, 0.8, 0.9], 0.95) is None


def test_tokens_to_reach_grpo_by_hand():
    from sirl.compare import RunCurve, tokens_to_reach

    grid = [0, 100, 200, 300, 400]
    # grpo: both seeds climb 0.1 per 100 tokens to 0.9 and end at 0.9: it first reaches its final 0.9 at 400.
    # trained tokens 1 per generated token.
    grpo = {s: RunCurve([0.5, 0.6, 0.7, 0.8, 0.9], [0, 100, 200, 300, 400], 0.9, []) for s in (0, 1)}
    # fast: 0.9 at 200 on both seeds, training 3 tokens per generated one -> ratio 200/400 generated,
    # 600/400 trained.
    fast = {s: RunCurve([0.5, 0.7, 0.9, 0.9, 0.9], [0, 300, 600, 900, 1200], 0.9, []) for s in (0, 1)}
    reach = tokens_to_reach(fast, grpo, grid, n_boot=200)
    assert reach.target == pytest.approx(0.9) and reach.generated_tokens == pytest.approx(200)
    assert reach.generated_ratio == pytest.approx(0.5) and reach.trained_ratio == pytest.approx(1.5)
    assert reach.generated_ratio_ci95 == pytest.approx([0.5, 0.5])  # no seed-to-seed spread: a point interval
    assert tokens_to_reach(grpo, grpo, grid, n_boot=50).generated_ratio == pytest.approx(1.0)
    # a method that never gets there: "not reached", and the interval's upper end with it
    slow = {s: RunCurve([0.5, 0.5, 0.6, 0.6, 0.7], [0, 100, 200, 300, 400], 0.7, []) for s in (0, 1)}
    never = tokens_to_reach(slow, grpo, grid, n_boot=50)
    assert never.generated_tokens is None and never.generated_ratio is None and never.generated_ratio_ci95 == [None, None]
    # one seed of two reaches it at 200, the other never: the mean curve (0.5, 0.6, 0.75, 0.75, 0.8) never
    # does, resamples of seed 0 alone give 0.5: the interval runs from 0.5 to "not reached"
    mixed = {0: fast[0], 1: slow[1]}
    spread = tokens_to_reach(mixed, grpo, grid, n_boot=400)
    assert spread.generated_ratio is None and spread.generated_ratio_ci95 == [pytest.approx(0.5), None]
    assert tokens_to_reach(fast, {5: grpo[0]}, grid) is None  # no common seed


def write_evals(folder: Path, evals: list[tuple[int, int, list[float]]]) -> None:
    (folder / "evals.jsonl").write_text("".join(
        json.dumps({"step": step, "tokens/total": tokens, "tokens/trained": tokens, "rewards": rewards}) + "\n" for step, tokens, rewards in evals))


def test_the_final_figure_averages_the_last_evaluations_problem_by_problem(tmp_path):
    from sirl.compare import final_figure

    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "eval.json").write_text(json.dumps({"step": 4, "tokens/total": 400, "n": 2, "accuracy": 1.0, "rewards": [1.0, 1.0]}))
    write_evals(folder, [(0, 0, [0.0, 0.0]), (2, 200, [1.0, 0.0]), (3, 300, [0.0, 1.0]), (4, 400, [1.0, 1.0])])
    figure = final_figure(folder, ComparePlan(methods=["grpo"], final_evaluations=3))
    # problem 1: (1 + 0 + 1) / 3, problem 2: (0 + 1 + 1) / 3
    assert figure.rewards == pytest.approx([2 / 3, 2 / 3]) and figure.accuracy == pytest.approx(2 / 3)
    assert [e.step for e in figure.evaluations] == [2, 3, 4]
    assert final_figure(folder, ComparePlan(methods=["grpo"], final_evaluations=1)).accuracy == 1.0
    # periodic evaluations on another set than the final one (other n): the final evaluation alone
    write_evals(folder, [(2, 200, [1.0, 0.0, 0.0]), (4, 400, [1.0, 0.0, 0.0])])
    assert final_figure(folder, ComparePlan(methods=["grpo"], final_evaluations=3)).accuracy == 1.0


def test_the_table_by_difficulty_uses_the_same_final_figure_as_the_headline(tmp_path):
    from sirl.compare import figure_by_difficulty, final_figure

    folder = tmp_path / "run"
    folder.mkdir()
    last = {"1": {"n": 2, "accuracy": 1.0}, "2": {"n": 1, "accuracy": 0.0}}  # the last evaluation's own table
    final = {"step": 4, "tokens/total": 400, "n": 3, "accuracy": 2 / 3, "rewards": [1.0, 1.0, 0.0],
             "difficulties": [1, 1, 2], "by_difficulty": last}
    (folder / "eval.json").write_text(json.dumps(final))
    write_evals(folder, [(2, 200, [0.0, 1.0, 1.0]), (3, 300, [0.0, 0.0, 1.0]), (4, 400, [1.0, 1.0, 0.0])])
    figure = final_figure(folder, ComparePlan(methods=["grpo"], final_evaluations=3))
    table = figure_by_difficulty(figure, final)
    # level 1: problems 1 and 2, (0+0+1)/3 and (1+0+1)/3 -> 1/2; level 2: problem 3, (1+1+0)/3 -> 2/3
    assert table["1"] == LevelAccuracy(2, pytest.approx(1 / 2)) and table["2"] == LevelAccuracy(1, pytest.approx(2 / 3))
    assert sum(v.n * v.accuracy for v in table.values()) / 3 == pytest.approx(figure.accuracy)
    assert figure_by_difficulty(figure, {**final, "difficulties": []}) == {"1": LevelAccuracy(2, 1.0), "2": LevelAccuracy(1, 0.0)}  # older runs: their own table


def test_each_method_runs_the_table_at_the_learning_rate_its_held_out_seed_chose(tmp_path):
    from sirl.compare import chosen_learning_rates, lr_runs, run_dir
    from sirl.compare.runner import _train_command
    from sirl.compare.records import LearningRateChoice

    plan = ComparePlan(methods=["grpo", "si"], seeds=2, learning_rates=[1e-4, 2e-4], lr_seed=7, final_evaluations=1)
    assert [r.name for r in lr_runs(plan)] == ["grpo-lr0.0001-seed7", "si-lr0.0001-seed7", "grpo-lr0.0002-seed7", "si-lr0.0002-seed7"]
    accuracy = {("grpo", 1e-4): 0.6, ("grpo", 2e-4): 0.7, ("si", 1e-4): 0.5, ("si", 2e-4): 0.5}
    for run in lr_runs(plan)[:3]:
        folder = run_dir(tmp_path, run)
        folder.mkdir(parents=True)
        (folder / "eval.json").write_text(json.dumps({"step": 1, "tokens/total": 1, "n": 1, "accuracy": accuracy[run.method, run.lr]}))
    assert chosen_learning_rates(tmp_path, plan) == {"grpo": LearningRateChoice(lr=2e-4, accuracy_by_lr={"0.0001": 0.6, "0.0002": 0.7}, seed=7)}
    folder = run_dir(tmp_path, lr_runs(plan)[3])
    folder.mkdir(parents=True)
    (folder / "eval.json").write_text(json.dumps({"step": 1, "tokens/total": 1, "n": 1, "accuracy": 0.5}))
    assert chosen_learning_rates(tmp_path, plan)["si"].lr == 1e-4  # a tie goes to the smaller rate
    command = _train_command(tmp_path, RunSpec("grpo", 0), plan, lr=2e-4)
    assert "--train.lr=0.0002" in command and "--seed" in command
    assert "--train.lr=0.0001" in _train_command(tmp_path, lr_runs(plan)[0], plan)
    with pytest.raises(ConfigError, match="lr_seed"):
        ComparePlan(methods=["grpo"], seeds=8, learning_rates=[1e-4], lr_seed=3)
    with pytest.raises(ConfigError, match="learning_rates"):
        ComparePlan(methods=["grpo"], learning_rates=[1e-4, 1e-4])


def test_the_paired_script_compares_variants_across_folders(tmp_path):
    # two folders, one variant each; per-problem rewards by hand (a reward per problem may be a mean over
    # samples): A 0.5 and B 0.25 on every problem of both seeds, so A - B = +25 points on every resample of
    # seeds and problems, and the interval is that point
    import subprocess
    import sys

    for name, rewards in (("a", ([0.5] * 4, [0.5] * 4)), ("b", ([0.25] * 4, [0.25] * 4))):
        folder = tmp_path / name
        plan = ComparePlan(methods=["tree_branch"], seeds=2, budget_tokens=400, eval_every_tokens=200, final_evaluations=1)
        folder.mkdir()
        (folder / "compare.json").write_text(json.dumps(plan.__dict__))
        for seed, r in enumerate(rewards):
            run = folder / f"runs/tree_branch/seed{seed}"
            run.mkdir(parents=True)
            (run / "eval.json").write_text(json.dumps({"step": 4, "tokens/total": 400, "n": 4, "accuracy": sum(r) / 4, "rewards": r}))
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks/paired.py"), f"A={tmp_path / 'a'}:tree_branch",
                          f"B={tmp_path / 'b'}:tree_branch"], capture_output=True, text=True, check=True).stdout
    assert "| A | 50.0% ± 0.0% | 2 |" in out and "| B | 25.0% ± 0.0% | 2 |" in out
    assert "| A | B | +25.0 [+25.0, +25.0] |" in out
    missing = subprocess.run([sys.executable, str(ROOT / "benchmarks/paired.py"), f"A={tmp_path / 'a'}:grpo"], capture_output=True, text=True)
    assert missing.returncode != 0 and "no finished run of 'grpo'" in missing.stderr
    # the starting policy of folder a scored 0.25 on problems 0-1 and 0 on 2-3 (mean 12.5%); A's runs score
    # 0.5 everywhere, so A - start is +37.5 points, and resampling seeds and problems gives means of 0.5
    # minus a mean of {0.25, 0} draws: the interval spans [+25, +50] (all 0.25 drawn / none drawn)
    (tmp_path / "a" / "start").mkdir()
    (tmp_path / "a" / "start" / "eval.json").write_text(json.dumps({"n": 4, "accuracy": 0.125, "rewards": [0.25, 0.25, 0.0, 0.0]}))
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks/paired.py"), f"S={tmp_path / 'a'}:start", f"A={tmp_path / 'a'}:tree_branch"],
                         capture_output=True, text=True, check=True).stdout
    assert "| S | 12.5% (starting policy) | - |" in out
    assert "| S | A | -37.5 [-50.0, -25.0] |" in out
    no_start = subprocess.run([sys.executable, str(ROOT / "benchmarks/paired.py"), f"S={tmp_path / 'b'}:start"], capture_output=True, text=True)
    assert no_start.returncode != 0 and "no starting-policy evaluation" in no_start.stderr


def test_the_reset_script_averages_over_steps_then_seeds(tmp_path):
    # Two seeds of si_internal, hand-written steps. Seed 0: 4 training steps, self-localization 1, 0, 0, 1 ->
    # first 3 steps 1/3, last quarter (1 step) 1, whole run 1/2; resets opened 0.5 on the two steps that
    # reset (the others log none). Seed 1: 8 steps, self-localization 0.5 each, opened 0 on one step -> 0.5
    # everywhere and opened 0. Means over the seeds: (1/3 + 1/2) / 2, (1 + 1/2) / 2, (1/2 + 1/2) / 2, opened
    # (0.5 + 0) / 2. A third seed without eval.json (unfinished) is left out.
    import subprocess
    import sys

    def write(seed: int, steps: list[dict], finished: bool = True) -> None:
        run = tmp_path / f"runs/si_internal/seed{seed}"
        run.mkdir(parents=True)
        rows = [{"step": 0, "eval/accuracy": 0.3, "tokens/total": 0}]
        rows += [{"step": i + 1, "tokens/trained": 100, **s} for i, s in enumerate(steps)]
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        if finished:
            (run / "eval.json").write_text("{}")

    write(0, [{"selfloc/accuracy": 1.0, "reset/opened": 0.5}, {"selfloc/accuracy": 0.0}, {"selfloc/accuracy": 0.0, "reset/opened": 0.5},
              {"selfloc/accuracy": 1.0}])
    write(1, [{"selfloc/accuracy": 0.5}] * 7 + [{"selfloc/accuracy": 0.5, "reset/opened": 0.0}])
    write(2, [{"selfloc/accuracy": 0.0, "reset/opened": 1.0}], finished=False)
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks/reset_stats.py"), str(tmp_path)], capture_output=True, text=True, check=True).stdout
    lines = {line.split(" | ")[0].strip("| "): line.split(" | ")[1].strip(" |") for line in out.splitlines()[2:]}
    assert lines["seeds"] == "2"
    assert lines["self-localization, first 3 steps"] == f"{(1 / 3 + 1 / 2) / 2:.1%}"
    assert lines["self-localization, last quarter"] == "75.0%" and lines["self-localization, whole run"] == "50.0%"
    assert lines["resets that open an all-fail group"] == "25.0%" and lines["resets just before the first wrong step, whole run"] == "-"



def test_the_reset_script_pairs_two_methods_over_their_shared_seeds(tmp_path):
    # random_reset seeds 0-2 open 0.2, 0.4, 0.1 of their resets; si_internal seeds 0, 1 and 3 open 0.5, 0.5, 0.9.
    # Shared seeds 0 and 1: differences +0.3 and +0.1 -> mean +20.0 points; every bootstrap resample of
    # the two seeds averages to +10, +20 or +30, so the interval lies in [+10, +30] and both ends are hit
    # (one resample in four is each extreme). Seed 2 and seed 3 are not paired and do not count.
    import subprocess
    import sys

    def write(method: str, seed: int, opened: float) -> None:
        run = tmp_path / f"runs/{method}/seed{seed}"
        run.mkdir(parents=True)
        rows = [{"step": 0, "tokens/total": 0}, {"step": 1, "tokens/trained": 100, "reset/opened": opened}]
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (run / "eval.json").write_text("{}")

    for seed, opened in enumerate([0.2, 0.4, 0.1]):
        write("random_reset", seed, opened)
    for seed, opened in [(0, 0.5), (1, 0.5), (3, 0.9)]:
        write("si_internal", seed, opened)
    script = [sys.executable, str(ROOT / "benchmarks/reset_stats.py"), str(tmp_path), "--against", "random_reset,si_internal"]
    out = subprocess.run(script, capture_output=True, text=True, check=True).stdout
    assert "| resets that open an all-fail group | +20.0 [+10.0, +30.0] points | 2 |" in out
    assert "self-localization" not in out.split("si_internal minus random_reset")[1]  # neither logged it: no row
    wrong = subprocess.run(script[:-1] + ["grpo,si_internal"], capture_output=True, text=True)
    assert wrong.returncode != 0 and "give two methods with runs in" in wrong.stderr


def test_a_comparison_grows_by_seeds_and_methods_but_does_not_shrink():
    base = dict(budget_tokens=400, eval_every_tokens=200)
    saved = ComparePlan(methods=["grpo", "si"], seeds=8, **base)
    assert ComparePlan(methods=["grpo", "si"], seeds=16, **base).same_results_as(saved) == []
    assert ComparePlan(methods=["grpo", "si", "tree"], seeds=8, **base).same_results_as(saved) == []
    assert ComparePlan(methods=["si", "grpo"], seeds=8, **base).same_results_as(saved) == []
    assert ComparePlan(methods=["grpo", "si"], seeds=4, **base).same_results_as(saved) == [
        "seeds: 8 -> 4 (a comparison can grow, not shrink; give a new --out for fewer)"
    ]
    assert ComparePlan(methods=["grpo"], seeds=8, **base).same_results_as(saved) == [
        "methods: ['grpo', 'si'] -> ['grpo'] drops ['si'] (add methods, or give a new --out)"
    ]


def test_more_seeds_on_a_finished_comparison_adds_only_the_new_runs(uninterrupted, tmp_path):
    out = tmp_path / "cmp"
    shutil.copytree(uninterrupted, out)
    kept = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/seed0/eval.json")}
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    args = [a if a != "1" or TINY[i - 1] != "--seeds" else "2" for i, a in enumerate(TINY)]
    done = subprocess.run([sys.executable, "-m", "sirl.cli", "compare", *args, "--out", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert len(kept) == 2 and all(p.stat().st_mtime_ns == t for p, t in kept.items())  # seed 0's runs were not redone
    results = json.loads((out / "results.json").read_text())
    assert {name: row["seeds"] for name, row in results["methods"].items()} == {"grpo": [0, 1], "si": [0, 1]}
    first = json.loads((uninterrupted / "results.json").read_text())
    assert results["methods"]["grpo"]["final_accuracy"]["values"][0] == first["methods"]["grpo"]["final_accuracy"]["values"][0]


def test_rerunning_a_finished_comparison_rewrites_the_report_and_keeps_the_runs_load_record(uninterrupted, tmp_path):
    out = tmp_path / "cmp"
    shutil.copytree(uninterrupted, out)
    load_record = (out / "logs/load.jsonl").read_text()
    (out / "results.md").unlink()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run([sys.executable, "-m", "sirl.cli", "compare", *TINY, "--out", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert (out / "results.md").is_file()
    # nothing ran, so the load beside the wall-clock is still the one measured while the runs went
    assert (out / "logs/load.jsonl").read_text() == load_record


# --- what ran: the command, the sirl commit and every method's settings ----------------------------


def test_method_settings_are_the_differences_from_the_defaults_shared_or_by_seed(tmp_path):
    from sirl.compare import method_settings

    for seed, lr in ((0, 2e-4), (1, 3e-4)):
        folder = tmp_path / f"seed{seed}"
        folder.mkdir()
        config = load_config("arith", [f"seed={seed}", f"train.lr={lr}", "algo.name=grpo", f"out={folder}"])
        (folder / "config.yaml").write_text(to_yaml(config))
    settings = method_settings([tmp_path / "seed0", tmp_path / "seed1"])
    # the arith preset's own changes and grpo are shared; the seed and the folder are left out; the learning rate
    # differs by seed (the default 1e-4 is the preset's too, so it is no setting of its own)
    assert settings.shared["algo.name"] == "grpo" and settings.shared["model.path"] == "checkpoints/arith-tiny"
    assert "seed" not in settings.shared and "out" not in settings.shared and "rollout.group_size" not in settings.shared
    assert settings.by_seed == {"train.lr": {"0": 2e-4, "1": 3e-4}}
    assert method_settings([tmp_path / "nothing"]) is None


def test_the_settings_of_a_run_saved_before_the_method_sections_read_at_todays_keys(tmp_path):
    """A run folder written when every method knob was in one method section (and si_internal's in
    internalize): its settings are named by today's keys, each old value at every place it is read now."""
    import shutil

    from sirl.compare import method_settings

    folder = tmp_path / "seed0"
    folder.mkdir()
    shutil.copy(ROOT / "benchmarks/results/internalize_hard/si_internal-seed0/config.yaml", folder / "config.yaml")
    shared = method_settings([folder]).shared
    assert not any(key.startswith(("internalize.", "prime.")) or key.count(".") == 1 and key.startswith("method.") for key in shared)
    # method.error_span, method.blind_resets and internalize.verdict_format of the file, at their places now
    assert shared["method.si_internal.error_span"] == "first_difference"
    assert "method.si.error_span" not in shared  # first_difference is si's default now
    # the file's localizer=search (si's default then) differs from today's default, so it is named
    assert shared["method.si.localizer"] == "search"
    assert shared["method.si_internal.blind_resets"] == shared["method.random_reset.blind_resets"] == 8
    assert shared["method.si_internal.verdict_format"] == "rederive" and shared["algo.name"] == "si_internal"
    assert "method.si_internal.probes" not in shared  # 1, the default


def test_the_results_say_what_ran(tmp_path):
    """A tiny comparison of grpo and a variant of it: results.json and results.md record the command line, the
    sirl commit, and each method's settings that differ from the defaults, the variant's override among them."""
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        "methods: [grpo, grpo_hot]\n"
        "variants: {grpo_hot: {method: grpo, overrides: {rollout.temperature: 1.5}}}\n"
        "seeds: 1\njobs: 1\nthreads: 1\nfinal_evaluations: 1\ncheckpoint_every: 1\n"
        "tasks:\n  arith:\n    config: arith\n    budget_tokens: 1500\n    eval_every_tokens: 1500\n    final_problems: 50\n"
        "    overrides: {rollout.prompts_per_step: 2, rollout.group_size: 4, eval.n_problems: 8, model.device: cpu}\n"
    )
    out = tmp_path / "cmp"
    args = ["compare", "--plan", str(plan), "--task", "arith", "--out", str(out), "--quiet", "--train.lr=2e-4"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run([sys.executable, "-m", "sirl.cli", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    results = json.loads((out / "results.json").read_text())
    (call,) = results["commands"]
    assert call["command"] == shlex.join(["sirl", *args]) and call["argv"][1:] == args
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    assert call["sirl"]["commit"] == head and isinstance(call["sirl"]["dirty"], bool)
    grpo, hot = results["methods"]["grpo"]["settings"], results["methods"]["grpo_hot"]["settings"]
    assert grpo["shared"]["algo.name"] == hot["shared"]["algo.name"] == "grpo"
    assert hot["shared"]["rollout.temperature"] == 1.5 and "rollout.temperature" not in grpo["shared"]
    assert grpo["shared"]["train.lr"] == 2e-4 and grpo["shared"]["rollout.group_size"] == 4 and grpo["shared"]["train.max_tokens"] == 1500
    assert grpo["by_seed"] == {} and "seed" not in grpo["shared"]
    md = (out / "results.md").read_text()
    assert f"    {call['command']}" in md and f"sirl commit {head}" in md
    assert "| grpo_hot | `rollout.temperature=1.5` |" in md and "| grpo | (none) |" in md and "`train.lr=0.0002`" in md
    assert "| method's model memory (MB) |" in md.splitlines()[next(i for i, l in enumerate(md.splitlines()) if l.startswith("| method | final"))]

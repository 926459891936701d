"""The HTML run report: read from a run folder built by hand, checked in the HTML, in headless Chromium
(DOM and screenshot), and written by a real short `sirl train` run."""

from __future__ import annotations

import html
import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

from sirl.cli import main
from sirl.report import ReportError, advantage_color, load_run, write_report, write_report_or_warn
from sirl.report.page import tokens_by_step
from sirl.report.svg import nice_ticks

NAN = math.nan


def chars(text: str) -> list[str]:
    return [*text, "<eos>"]


# Hand-made trajectories covering every case the viewer distinguishes.
SAMPLES = [
    {  # localized at the ground-truth step; the prompt tries to inject markup
        "step": 2, "prompt": '<script>alert("x")</script>&1+2*3=', "steps": ["1+2=4;", "4*3=2;", "#2"],
        "reward": 0.0, "truncated": False, "prefix_len": 0, "tokens": chars("1+2=4;4*3=2;#2"),
        "token_advantages": [-1.0] * 6 + [0.0] * 9, "localized_step": 0, "probes": 1,
        "correction": "1+2=3;3*3=9;#9", "first_error": 0, "self_verdict": "1",
    },
    {  # localized one step after the ground truth, no correction, a verdict that is not one
        "step": 4, "prompt": "7-2+5=", "steps": ["7-2=4;", "4+5=9;", "#9"],
        "reward": 0.0, "truncated": False, "prefix_len": 0, "tokens": chars("7-2=4;4+5=9;#9"),
        "token_advantages": [0.0] * 6 + [-1.0] * 6 + [0.0] * 3, "localized_step": 1, "probes": 2,
        "correction": None, "first_error": 0, "self_verdict": "e#;",
    },
    {  # a success, with markup in its prompt
        "step": 4, "prompt": "<b>3*3</b>=", "steps": ["3*3=9;", "#9"],
        "reward": 1.0, "truncated": False, "prefix_len": 0, "tokens": chars("3*3=9;#9"),
        "token_advantages": [1.0] * 9, "first_error": None,
    },
    {  # an unlocalized failure continuing a given prefix of 4 tokens
        "step": 4, "prompt": "9+9=", "steps": ["9+9=7;", "#7"],
        "reward": 0.0, "truncated": True, "prefix_len": 4, "tokens": chars("9+9=7;#7"),
        "token_advantages": [0.0] * 4 + [-0.5] * 5, "first_error": 0,
    },
]


def metric(step: int, **values: float) -> dict:
    return {"step": step, "time/elapsed_s": 3.0 * step, **{k.replace("__", "/"): v for k, v in values.items()}}


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({
        "name": "hand-made", "seed": 3, "task": {"name": "arith", "args": {"min_ops": 2}},
        "model": {"path": None}, "algo": {"name": "si_internal"},
    }))
    records = [{"step": 0, "time/elapsed_s": 1.0, "eval/accuracy": 0.5, "tokens/total": 0}]
    for step in (1, 2, 3, 4):
        records.append(metric(
            step, tokens__total=300 * step, tokens__policy=200 * step, tokens__probe=80 * step, tokens__verify=20 * step,
            reward__mean=NAN if step == 3 else 0.25 * step, loss__policy=-0.1 * step, loss__verify=2.0 / step,
            entropy=0.5, grad_norm=math.inf if step == 2 else 1.0,
            loc__localized_frac=0.5, loc__probes_per_failure=1.5, loc__accuracy=NAN, loc__unlocalizable_frac=0.5,
            repair__added=1, repair__buffer_draws=0, selfloc__agreement=0.0, selfloc__accuracy=0.0,
            selfloc__confirmed_frac=0.0, selfloc__audit_frac=1.0, **({"eval__accuracy": 0.5 + 0.1 * step} if step % 2 == 0 else {}),
        ))
    (run / "metrics.jsonl").write_text("".join(json.dumps(r, allow_nan=True) + "\n" for r in records))
    (run / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in SAMPLES))
    (run / "eval.json").write_text(json.dumps({
        "step": 4, "tokens/total": 1200, "n": 8, "accuracy": 0.75, "ci95": [0.41, 0.93],
        "by_difficulty": {"2": {"n": 5, "accuracy": 0.8}, "10": {"n": 3, "accuracy": 0.6667}}, "first_error_histogram": {"0": 2},
    }))
    (run / "isolation.json").write_text(json.dumps({"level": "in_process"}))
    return run


def trajectories(page: str) -> dict[str, str]:
    """Each trajectory's HTML by its id (t<step>-<position>)."""
    return dict(re.findall(r'<article class="trajectory[^"]*" id="([^"]+)".*?>(.*?)</article>', page, re.S))


def test_every_trajectory_is_shown_with_its_prompt_escaped(run_dir):
    page = write_report(run_dir).read_text()
    assert len(trajectories(page)) == len(SAMPLES)
    for sample in SAMPLES:
        assert html.escape(sample["prompt"]) in page
    assert "<script>alert" not in page and "<b>3*3</b>" not in page
    assert 'data-step="2"' in page and page.count('data-step="4" data-kind=') == 3


def test_the_summary_shows_final_accuracy_with_its_interval_and_the_difficulty_table(run_dir):
    page = write_report(run_dir).read_text()
    assert "hand-made" in page and "si_internal" in page and "arith" in page
    assert "75%" in page and "95% CI 41%–93%" in page and "n=8" in page
    table = re.search(r'<table class="by-difficulty">.*?</table>', page, re.S).group(0)
    assert table.index("<td>2</td>") < table.index("<td>10</td>")  # levels in numeric order


def test_localized_and_ground_truth_steps_are_marked_and_compared(run_dir):
    shown = trajectories(write_report(run_dir).read_text())
    # step 2's failure: localized at 0-based step 0 = the ground truth, shown as step 1
    agree = shown["t2-0"]
    assert re.search(r'<li class="step localized first-error"><span class="step-no">1</span>', agree)
    assert "localized: step 1" in agree and "ground truth: step 1" in agree and "agrees with ground truth" in agree
    assert 'self-verdict <code>&quot;1&quot;</code>: step 1, agrees with the localizer' in agree
    assert '<span class="label">corrected</span><code>1+2=3;3*3=9;#9</code>' in agree
    # step 4's localized failure (listed first in its step): the localizer says step 2, the truth step 1
    differ = shown["t4-0"]
    assert re.search(r'<li class="step first-error"><span class="step-no">1</span>', differ)
    assert re.search(r'<li class="step localized"><span class="step-no">2</span>', differ)
    assert "disagrees with ground truth" in differ and "2 probes" in differ and "not a verdict" in differ
    assert "No corrected continuation logged from the good prefix (step 1)" in differ
    # then the failure (given prefix, truncated), then the success
    assert "continues a given prefix of 4 tokens" in shown["t4-1"] and "truncated" in shown["t4-1"]
    assert shown["t4-1"].count('class="tok given"') == 4
    assert "success · reward 1" in shown["t4-2"] and "localized" not in shown["t4-2"]


def test_advantage_colors_by_hand():
    # linear in RGB between NEUTRAL #f7f7f7 (247,247,247) and the ends, t = clip(value / scale, -1, 1)
    assert advantage_color(0.0, 2.0) == "#f7f7f7"
    assert advantage_color(-2.0, 2.0) == "#d73027"  # NEGATIVE (215,48,39)
    assert advantage_color(2.0, 2.0) == "#1a9850"  # POSITIVE (26,152,80)
    assert advantage_color(-9.0, 2.0) == "#d73027"  # clipped
    # t = -0.5: 247 + (215-247)/2 = 231 = e7; 247 + (48-247)/2 = 147.5 -> 148 = 94; 247 + (39-247)/2 = 143 = 8f
    assert advantage_color(-1.0, 2.0) == "#e7948f"
    # t = +0.5: 247 + (26-247)/2 = 136.5 -> 137 = 89; (247+152)/2 = 199.5 -> 200 = c8; (247+80)/2 = 163.5 -> 164 = a4
    assert advantage_color(0.25, 0.5) == "#89c8a4"
    assert advantage_color(NAN, 1.0) == "#999999"


def test_tokens_carry_their_advantage_color_and_value(run_dir):
    success = trajectories(write_report(run_dir).read_text())["t4-2"]
    assert f'style="background:{advantage_color(1.0, 1.0)}" title="&#x27;3&#x27; advantage +1"' in success
    red, green = advantage_color(-0.3, 1.0), advantage_color(0.3, 1.0)
    assert int(red[1:3], 16) > int(red[3:5], 16)  # more red than green for a negative advantage
    assert int(green[3:5], 16) > int(green[1:3], 16)  # and the other way round for a positive one


def test_tokens_are_grouped_by_the_step_they_start_in():
    assert tokens_by_step(["ab;", "c;"], ["a", "b;", "c", ";", "<eos>"]) == [[0, 1], [2, 3, 4]]
    assert tokens_by_step(["ab;"], ["x", "y"]) is None  # decoded pieces that do not spell the text
    assert tokens_by_step([], ["<eos>"]) is None


def test_no_external_urls(run_dir):
    page = write_report(run_dir).read_text()
    assert "http://" not in page and "https://" not in page
    for attribute in re.findall(r'\b(?:src|href)\s*=\s*"([^"]*)"', page):
        assert attribute.startswith("#"), attribute


def test_nan_and_inf_metrics_leave_gaps_not_broken_charts(run_dir):
    page = write_report(run_dir).read_text()
    curves = re.search(r'<section id="curves">.*?</section>', page, re.S).group(0)
    assert curves.count("<svg") >= 8
    points = re.findall(r'points="([^"]*)"', curves)
    assert points and not any(re.search(r"nan|inf", p, re.I) for p in points)
    assert not re.search(r'c[xy]="[^"]*(nan|inf)', curves, re.I)
    # reward/mean is NaN at step 3: a line through steps 1-2, a gap, and step 4 as a lone dot
    reward = re.search(r'aria-label="Training reward".*?</svg>', curves, re.S).group(0)
    assert reward.count("<polyline") == 1 and reward.count("<circle") == 3


def test_an_unfinished_run_without_samples_still_reports(run_dir):
    (run_dir / "eval.json").unlink()
    (run_dir / "samples.jsonl").unlink()
    page = write_report(run_dir).read_text()
    assert "run not finished" in page and "70%" in page  # the latest held-out accuracy, step 4
    assert "No samples logged yet" in page


def test_a_malformed_metrics_line_is_an_error_naming_file_and_line(run_dir, capsys):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    lines[2] = lines[2][:40]  # torn
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(ReportError, match=rf"{re.escape(str(run_dir / 'metrics.jsonl'))}, line 3: not JSON"):
        load_run(run_dir)
    assert main(["report", str(run_dir)]) == 2
    assert f"{run_dir / 'metrics.jsonl'}, line 3" in capsys.readouterr().err


def test_a_record_still_being_written_is_left_out_but_a_torn_last_line_with_its_newline_is_an_error(run_dir):
    text = (run_dir / "metrics.jsonl").read_text()
    n = len(text.splitlines())
    (run_dir / "metrics.jsonl").write_text(text + '{"step": 99, "tokens/to')  # a training process mid-write
    assert len(load_run(run_dir).metrics) == n
    (run_dir / "metrics.jsonl").write_text(text + '{"step": 99, "tokens/to\n')
    with pytest.raises(ReportError, match=f"line {n + 1}: not JSON"):
        load_run(run_dir)


def test_cli_writes_the_report_and_names_missing_folders(run_dir, tmp_path, capsys):
    assert main(["report", str(run_dir), "--out", str(tmp_path / "out" / "r.html")]) == 0
    assert (tmp_path / "out" / "r.html").is_file() and str(tmp_path / "out" / "r.html") in capsys.readouterr().out
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    assert f"{tmp_path / 'nowhere'}: no such folder" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "out")]) == 2
    assert "has no metrics.jsonl" in capsys.readouterr().err


def test_a_report_that_fails_after_training_only_warns(tmp_path, capsys):
    assert write_report_or_warn(tmp_path / "nowhere") is None
    err = capsys.readouterr().err
    assert "warning: could not write the run report" in err and f"sirl report {tmp_path / 'nowhere'}" in err


def test_ticks_are_round_and_cover_the_data():
    assert nice_ticks(0.0, 0.87) == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert nice_ticks(1, 12, integer=True) == [0, 5, 10, 15]
    assert nice_ticks(1, 3, integer=True) == [1, 2, 3]  # never a step below 1
    single = nice_ticks(5.0, 5.0)  # a single value gets a range around it
    assert single[0] < 5.0 < single[-1]


# Exact token end colours; the page uses them for full-scale tokens only.
RED, GREEN = (215, 48, 39), (26, 152, 80)


def test_report_renders_in_headless_chromium(run_dir, tmp_path):
    """The real browser: the DOM after the script ran, and pixels of the screenshot."""
    from PIL import Image  # comes with matplotlib

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("headless Chromium not found; `.ci/run` installs Debian's chromium package (apt-get install chromium)")
    url = write_report(run_dir).as_uri()

    def browse(*args: str, profile: str) -> str:
        command = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                   "--force-color-profile=srgb", f"--user-data-dir={tmp_path / profile}", "--window-size=1200,3200", *args, url]
        return subprocess.run(command, capture_output=True, text=True, timeout=90, check=True).stdout

    dom = browse("--dump-dom", profile="dom")
    curves = re.search(r'<section id="curves">.*?</section>', dom, re.S).group(0)
    assert curves.count("<svg") >= 8 and curves.count("<polyline") >= 8 and "<polygon" in curves
    shown = re.findall(r'<article class="trajectory[^"]*" id="([^"]+)" data-step="(\d+)"([^>]*)>(.*?)</article>', dom, re.S)
    assert len(shown) == len(SAMPLES)
    visible = [(id_, body) for id_, step, rest, body in shown if "hidden" not in rest]
    assert [id_ for id_, _ in visible] == ["t4-0", "t4-1", "t4-2"]  # the script shows the latest step first
    assert all(body.count('<li class="step') >= 2 for _, body in visible)
    assert '<div id="filters" class="filters">' in dom and "3 shown" in dom  # the filters came alive

    screenshot = tmp_path / "report.png"
    browse(f"--screenshot={screenshot}", profile="shot")
    pixels = np.asarray(Image.open(screenshot).convert("RGB")).reshape(-1, 3).astype(int)
    assert len(pixels) == 1200 * 3200
    colors, counts = np.unique(pixels[::101], axis=0, return_counts=True)
    background = colors[counts.argmax()]
    drawn = (np.abs(pixels - background).sum(axis=1) > 60).sum()
    assert drawn > 0.03 * len(pixels), f"only {drawn} pixels differ from the page background"
    for color in (RED, GREEN):  # token backgrounds at the ends of the scale
        assert (pixels == color).all(axis=1).sum() > 200, f"no token of colour {color} on screen"


def test_sirl_train_writes_the_report(tmp_path):
    from sirl.config import load_config
    from sirl.train import run_train

    config = load_config("arith", [
        "model.path=null", "model.size=nano", "model.device=cpu", "algo.name=grpo", "train.steps=1", "train.eval_every=1",
        "rollout.prompts_per_step=2", "rollout.group_size=2", "rollout.max_new_tokens=20", "eval.n_problems=4",
        "eval.max_new_tokens=20",
    ])
    run_train(config, tmp_path / "run", quiet=True)
    page = (tmp_path / "run" / "report.html").read_text()
    samples = (tmp_path / "run" / "samples.jsonl").read_text().splitlines()
    assert len(trajectories(page)) == len(samples) > 0
    assert "final held-out accuracy" in page and 'id="curves"' in page


# --- what the viewer shows depends on what the run has -------------------------------------------


def write_samples(run: Path, samples: list[dict], algo: str | None = None) -> None:
    (run / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    if algo is not None:
        config = yaml.safe_load((run / "config.yaml").read_text())
        (run / "config.yaml").write_text(yaml.safe_dump({**config, "algo": {"name": algo}}))


def legend(page: str) -> str:
    return re.search(r'<div class="legend">.*?</div></div>', page, re.S).group(0)


def test_a_grpo_run_without_ground_truth_gets_no_legend_or_notes_for_marks_it_lacks(run_dir):
    plain = [{  # the shape of an outcome-only run of a task without ground truth: no localization fields, no first_error
        "step": 1, "prompt": "q=", "steps": ["ab;", "#c"], "reward": reward, "truncated": False, "prefix_len": 0,
        "tokens": chars("ab;#c"), "token_advantages": [value] * 6,
    } for reward, value in ((0.0, -0.7), (1.0, 0.7))]
    write_samples(run_dir, plain, algo="grpo")
    page = write_report(run_dir).read_text()
    keys = legend(page)
    assert "localized" not in keys and "ground truth" not in keys and 'class="tok given"' not in keys
    assert "steps are numbered from 1" in keys
    assert "No corrected continuation" not in page and '<option value="localized">' not in page
    # a localized failure (the records show that a localizer ran) without a correction says so, whatever
    # the method is called: the report reads the run's records, not a list of method names
    write_samples(run_dir, [SAMPLES[1]], algo="my_method")
    assert "No corrected continuation logged" in write_report(run_dir).read_text()


def test_the_colour_scale_is_per_trajectory_so_small_step_advantages_show(run_dir):
    big = {**SAMPLES[2], "token_advantages": [2.47] * 9}
    small = {**SAMPLES[1], "token_advantages": [0.0] * 6 + [-0.14] * 6 + [0.0] * 3}  # the error step, on its own scale
    write_samples(run_dir, [big, small], algo="si")
    shown = trajectories(write_report(run_dir).read_text())
    failure, success = shown["t4-0"], shown["t4-1"]
    assert f'style="background:{advantage_color(-1, 1)}" title="&#x27;4&#x27; advantage -0.14"' in failure
    assert "colours ±0.14" in failure and "colours ±2.47" in success
    assert f'background:{advantage_color(0.0, 1)}' in failure  # the zeros stay neutral
    write_samples(run_dir, [{**big, "token_advantages": [0.0] * 9}])  # a group whose rewards were all equal
    assert "advantage 0 on every token" in write_report(run_dir).read_text()


def test_new_records_with_kinds_and_untrained_given_tokens(run_dir):
    """The records sirl train writes now: a kind, and null advantages on the tokens that were given."""
    failure = {**SAMPLES[1], "kind": "sample", "correction": None}  # localized at step 2 (0-based 1), good prefix "7-2=4;"
    correction = {
        "kind": "correction", "step": 4, "prompt": "7-2+5=", "steps": ["7-2=4;", "4+5=9;", "#9"], "reward": 1.0,
        "truncated": False, "prefix_len": 6, "tokens": chars("7-2=4;4+5=9;#9"), "token_advantages": [None] * 6 + [0.5] * 9,
    }
    branch = {**correction, "kind": "branch", "prompt": "9+9=", "steps": ["9+9=8;", "#8"], "reward": 1.0, "prefix_len": 4,
              "tokens": chars("9+9=8;#8"), "token_advantages": [None] * 4 + [0.25] * 5}
    old = SAMPLES[3]  # an old record: numbers on its given prefix too
    write_samples(run_dir, [failure, correction, branch, old], algo="si")
    page = write_report(run_dir).read_text()
    shown = trajectories(page)
    assert [shown[k].count('class="tok given"') for k in ("t4-0", "t4-1", "t4-2", "t4-3")] == [0, 4, 6, 4]
    records = re.findall(r'<article class="trajectory[^"]*" id="(t4-\d)"[^>]*data-record="(\w+)"', page)
    assert records == [("t4-0", "sample"), ("t4-1", "sample"), ("t4-2", "correction"), ("t4-3", "branch")]
    # the localized failure links its correction record instead of saying none was logged
    assert '<a href="#t4-2">the correction record below</a>' in shown["t4-0"] and "No corrected" not in page
    assert "advantage None" not in page and "given, not sampled" in shown["t4-2"]
    assert 'id="record-filter"' in page and '<option value="branch">branches</option>' in page
    assert "given</span> context" in legend(page)


def test_axis_tick_labels_are_never_repeated():
    from sirl.report.svg import Series, format_percent, line_chart, tick_labels

    ticks = nice_ticks(0.995, 0.9962)
    assert len(set(tick_labels(ticks, format_percent))) == len(ticks)
    assert tick_labels([0.995, 0.99525, 0.9955], format_percent) == ["99.500%", "99.525%", "99.550%"]
    assert tick_labels([0.0, 0.5, 1.0], format_percent) == ["0%", "50%", "100%"]  # distinct already: unchanged
    chart = line_chart("acc", [Series("eval/accuracy", [0, 1, 2], [0.9955, 0.9958, 0.9962])], x_label="x", y_label="y",
                       y_format=format_percent)
    labels = re.findall(r'text-anchor="end" fill="#444">([^<]*)</text>', chart)
    assert len(labels) == len(set(labels)) >= 3


def test_eval_and_the_report_number_the_first_wrong_steps_alike(run_dir):
    """`sirl eval` prints and the report shows the same 1-based steps for the same eval.json."""
    from sirl.evaluate import EvalResult, format_result

    result = EvalResult(n=10, accuracy=0.6, ci95=(0.3, 0.85), by_difficulty={}, first_error_histogram={0: 3, 2: 1},
                        mean_response_tokens=5.0, truncated_frac=0.0, tokens_per_second=1.0)
    printed = re.findall(r"step +(\d+) +(\d+)", format_result(result))
    (run_dir / "eval.json").write_text(json.dumps({"step": 4, **result.to_json()}))
    table = re.search(r'<table class="first-errors">.*?</table>', write_report(run_dir).read_text(), re.S).group(0)
    head = re.findall(r"<th>(\d+)</th>", table)
    counts = re.findall(r"<td>(\d+)</td>", table)
    assert printed == [("1", "3"), ("3", "1")] == list(zip(head, counts))

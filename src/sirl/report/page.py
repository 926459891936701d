"""The HTML page of a run report: one self-contained file (inline CSS, SVG and a small script, nothing
fetched), every value from the logs escaped. It reads fully without JavaScript; the script only filters
the trajectory viewer by training step and outcome."""

from __future__ import annotations

import bisect
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from typing import Any

import yaml

from sirl.report.runfiles import RECORD_KINDS, Run, Sample
from sirl.report.svg import Formatter, Series, format_number, format_percent, line_chart
from sirl.schema import (
    ELAPSED_S, ENTROPY, EVAL_ACCURACY, GRAD_NORM, LOC_ACCURACY, LOC_LOCALIZED_FRAC, LOC_PROBES_PER_FAILURE,
    LOC_PROBES_PER_TRAJECTORY, LOC_UNLOCALIZABLE_FRAC, LOSS_KL, LOSS_POLICY, LOSS_VERIFY, REPAIR_ADDED, REPAIR_BUFFER_DRAWS,
    RESET_AT_FIRST_ERROR, RESET_OPENED, RESET_SOLVE_RATE, REWARD_MEAN, REWARD_VERIFY, SELFLOC_ACCURACY, SELFLOC_AGREEMENT,
    SELFLOC_AUDIT_FRAC, SELFLOC_CONFIRMED_FRAC, SELFLOC_VALID_FRAC, STEP, TOKENS_POLICY, TOKENS_PROBE, TOKENS_TOTAL,
    TOKENS_VERIFY,
)

# Token colours: ColorBrewer's RdYlGn ends and its neutral grey. Zero advantage stays nearly invisible,
# so the tokens that received credit stand out.
NEGATIVE = (215, 48, 39)  # #d73027
NEUTRAL = (247, 247, 247)  # #f7f7f7
POSITIVE = (26, 152, 80)  # #1a9850


def advantage_color(value: float, scale: float) -> str:
    """Background colour of a token with advantage ``value``: linear in RGB from NEUTRAL at 0 to NEGATIVE
    at -scale and POSITIVE at +scale, clipped beyond; a non-finite value is mid grey."""
    if not math.isfinite(value):
        return "#999999"
    t = max(-1.0, min(1.0, value / scale))
    end = NEGATIVE if t < 0 else POSITIVE
    rgb = (int(n + (e - n) * abs(t) + 0.5) for n, e in zip(NEUTRAL, end))
    return "#" + "".join(f"{c:02x}" for c in rgb)


@dataclass(frozen=True)
class Chart:
    """A chart of the metrics in ``keys`` that the run logged (charts of keys it never logged are left out)."""

    title: str
    keys: tuple[str, ...]
    y_label: str
    y_format: Formatter = format_number
    stacked: bool = False


# Keys differ by algorithm; each chart appears when its run logged any of its keys.
STEP_CHARTS = (
    Chart("Training reward", (REWARD_MEAN,), "mean reward of fresh prompts (0-1)"),
    Chart("Generated tokens by use", (TOKENS_POLICY, TOKENS_PROBE, TOKENS_VERIFY), "tokens (cumulative)", stacked=True),
    Chart("Localization", (LOC_LOCALIZED_FRAC, LOC_ACCURACY, LOC_UNLOCALIZABLE_FRAC), "share of failures", format_percent),
    Chart("Probe cost", (LOC_PROBES_PER_FAILURE, LOC_PROBES_PER_TRAJECTORY), "probe continuations"),
    Chart("Repair buffer", (REPAIR_ADDED, REPAIR_BUFFER_DRAWS), "prefixes per step"),
    Chart(
        "Self-localization",
        (SELFLOC_AGREEMENT, SELFLOC_ACCURACY, SELFLOC_CONFIRMED_FRAC, SELFLOC_AUDIT_FRAC, SELFLOC_VALID_FRAC),
        "share", format_percent,
    ),
    Chart(
        "Resets from groups with no success",
        (RESET_OPENED, RESET_SOLVE_RATE, RESET_AT_FIRST_ERROR),
        "share", format_percent,
    ),
    Chart("Policy loss", (LOSS_POLICY, LOSS_KL), "loss"),
    Chart("Self-verification", (LOSS_VERIFY, REWARD_VERIFY), "loss / reward"),
    Chart("Entropy", (ENTROPY,), "nats per token"),
    Chart("Gradient norm", (GRAD_NORM,), "L2 norm (before clipping)"),
)


def render(run: Run) -> str:
    """The whole page for ``run``."""
    # Corrections are news only on runs whose method localizes (its records carry localized_step) or logs them.
    corrections_expected = any(s.localized or s.correction is not None or s.kind == "correction" for s in run.samples)
    body = "".join([_summary(run), _curves(run), _viewer(run.samples, corrections_expected), _config(run)])
    title = f"sirl run report: {run.name}"
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{CSS}</style></head>\n<body><main>{body}</main>"
        f"<script>{SCRIPT}</script></body></html>\n"
    )


# --- header -----------------------------------------------------------------------------------------

def _summary(run: Run) -> str:
    algo, task, model = run.section("algo").get("name", "?"), run.section("task"), run.section("model")
    task_args = ", ".join(f"{k}={v}" for k, v in (task.get("args") or {}).items() if not isinstance(v, (dict, list)))
    facts = [
        f"algo <b>{escape(str(algo))}</b>",
        f"task <b>{escape(str(task.get('name', '?')))}</b>" + (f" ({escape(task_args)})" if task_args else ""),
        f"seed {escape(str(run.config.get('seed', '?')))}",
        f"model {escape(str(model.get('path') or 'built from config'))}",
    ]
    if run.isolation:
        facts.append(f"verifier {escape(str(run.isolation.get('level', '?')))}")
    last = run.metrics[-1] if run.metrics else {}
    evals = [r for r in run.metrics if _finite(r.get(EVAL_ACCURACY))]
    cards = [_accuracy_card(run.final_eval, evals)]
    if evals and evals[0][STEP] == 0:
        cards.append(_card("before training", format_percent(evals[0][EVAL_ACCURACY]), "held-out accuracy at step 0"))
    cards.append(_card("steps", str(last.get(STEP, 0)), _duration(last.get(ELAPSED_S))))
    split = ", ".join(
        f"{use} {format_number(last[f'tokens/{use}'])}" for use in ("policy", "probe", "verify") if _finite(last.get(f"tokens/{use}"))
    )
    cards.append(_card("generated tokens", format_number(_num(last.get(TOKENS_TOTAL, 0))), split))
    config_link = ' · <a href="#config">Config</a>' if run.config else ""
    return (
        f'<header id="summary"><h1>{escape(run.name)}</h1><p class="facts">{" · ".join(facts)}</p>'
        f'<p class="path">{escape(str(run.path))}</p>'
        f'<nav><a href="#curves">Curves</a> · <a href="#trajectories">Trajectories</a>{config_link}</nav>'
        f'<div class="cards">{"".join(cards)}</div>'
        f"{_eval_tables(run.final_eval)}</header>"
    )


def _accuracy_card(final: dict[str, Any] | None, evals: list[dict[str, Any]]) -> str:
    if final and _finite(final.get("accuracy")):
        ci = final.get("ci95") or []
        interval = f"95% CI {format_percent(_num(ci[0]))}–{format_percent(_num(ci[1]))} · " if len(ci) == 2 else ""
        return _card("final held-out accuracy", format_percent(final["accuracy"]), f"{interval}n={final.get('n', '?')} · step {final.get('step', '?')}")
    if evals:
        latest = evals[-1]
        return _card("held-out accuracy (run not finished)", format_percent(latest[EVAL_ACCURACY]), f"latest, at step {latest[STEP]}; no eval.json yet")
    return _card("held-out accuracy", "n/a", "no evaluation logged yet")


def _card(label: str, value: str, detail: str) -> str:
    return f'<div class="card"><div class="label">{escape(label)}</div><div class="value">{escape(value)}</div><div class="detail">{escape(detail)}</div></div>'


def _duration(seconds: Any) -> str:
    if not _finite(seconds):
        return ""
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m wall clock" if hours else f"{minutes}m {secs:02d}s wall clock"


def _eval_tables(final: dict[str, Any] | None) -> str:
    """Accuracy by difficulty and the ground-truth first wrong step of the failures, from eval.json."""
    if not final:
        return ""
    tables = []
    levels = final.get("by_difficulty") or {}
    if levels:
        rows = "".join(
            f"<tr><td>{escape(str(level))}</td><td>{escape(str(v.get('n', '')))}</td><td>{escape(format_percent(v.get('accuracy', math.nan)))}</td></tr>"
            for level, v in sorted(levels.items(), key=lambda kv: _sort_key(kv[0]))
        )
        tables.append(f'<table class="by-difficulty"><caption>Accuracy by difficulty</caption><tr><th>difficulty</th><th>n</th><th>accuracy</th></tr>{rows}</table>')
    histogram = final.get("first_error_histogram") or {}
    if histogram:
        ordered = sorted(histogram.items(), key=lambda kv: _sort_key(kv[0]))
        head = "".join(f"<th>{_step_number(k)}</th>" for k, _ in ordered)
        counts = "".join(f"<td>{escape(str(v))}</td>" for _, v in ordered)
        tables.append(
            f'<table class="first-errors"><caption>Failures by ground-truth first wrong step (from 1)</caption>'
            f"<tr><th>step</th>{head}</tr><tr><th>failures</th>{counts}</tr></table>"
        )
    return f'<div class="tables">{"".join(tables)}</div>' if tables else ""


def _step_number(index: Any) -> str:
    """Steps are shown 1-based, as in the self-verification prompt; the logs count from 0."""
    try:
        return str(int(index) + 1)
    except (TypeError, ValueError):
        return escape(str(index))


def _sort_key(key: str) -> tuple[int, float | str]:
    try:
        return (0, float(key))
    except ValueError:
        return (1, key)


# --- curves -----------------------------------------------------------------------------------------

def _curves(run: Run) -> str:
    figures = []
    evals = [r for r in run.metrics if EVAL_ACCURACY in r]
    if evals:
        figures.append(line_chart(
            "Held-out accuracy", [Series(EVAL_ACCURACY, [_num(r.get(TOKENS_TOTAL)) for r in evals], [_num(r[EVAL_ACCURACY]) for r in evals])],
            x_label="generated tokens (policy + probe + verify)", y_label="greedy accuracy", y_format=format_percent,
        ))
    for chart in STEP_CHARTS:
        keys = [k for k in chart.keys if any(k in r for r in run.metrics)]
        if not keys:
            continue
        records = [r for r in run.metrics if any(k in r for k in keys)]
        series = [Series(k, [r[STEP] for r in records], [_num(r.get(k)) for r in records]) for k in keys]
        figures.append(line_chart(
            chart.title, series, x_label="training step", y_label=chart.y_label, y_format=chart.y_format, stacked=chart.stacked, integer_x=True,
        ))
    content = "".join(f"<figure>{f}</figure>" for f in figures) if figures else '<p class="empty">No steps logged yet.</p>'
    return f'<section id="curves"><h2>Curves</h2><div class="charts">{content}</div></section>'


def _num(value: Any) -> float:
    """A metric as a float; absent, null and non-numeric values are NaN (a gap in the curve)."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def _finite(value: Any) -> bool:
    return math.isfinite(_num(value))


# --- trajectory viewer ------------------------------------------------------------------------------


def _outcome(sample: Sample) -> str:
    return "success" if sample.success else "localized" if sample.localized else "failed"


OUTCOME_ORDER = {"localized": 0, "failed": 1, "success": 2}


def _record_order(kind: str) -> int:
    return RECORD_KINDS.index(kind) if kind in RECORD_KINDS else len(RECORD_KINDS)


def trajectory_scale(sample: Sample) -> float:
    """The colour scale of one trajectory: the largest |advantage| among its trained tokens (1 when all are
    0). Per trajectory, so that a localized failure's small step-level values (an error step at -0.14)
    show at full colour even when other trajectories carry outcome advantages of ±2.5; each card says its
    scale, and hovering a token gives its value."""
    values = [abs(a) for i in range(len(sample.tokens)) if (a := sample.advantage(i)) is not None and math.isfinite(a)]
    return max(values, default=0.0) or 1.0


def _given(sample: Sample, index: int) -> bool:
    """Context, not a trained token: given rather than sampled, or logged without an advantage."""
    return index < sample.prefix_len or sample.advantage(index) is None


@dataclass(frozen=True)
class ViewerKeys:
    """What the legend explains: only marks the run's trajectories show."""

    localized: bool
    ground_truth: bool
    given: bool

    @classmethod
    def of(cls, samples: Sequence[Sample]) -> ViewerKeys:
        return cls(
            localized=any(s.localized and s.localized_step is not None for s in samples),
            ground_truth=any(s.first_error is not None and not s.success for s in samples),
            given=any(_given(s, i) for s in samples for i in range(len(s.tokens))),
        )


def _viewer(samples: list[Sample], corrections_expected: bool) -> str:
    if not samples:
        return (
            '<section id="trajectories"><h2>Trajectories</h2><p class="empty">No samples logged yet: samples.jsonl '
            "gets a few trajectories at every evaluation step (train.eval_every).</p></section>"
        )
    steps = sorted({s.step for s in samples}, reverse=True)
    groups = []
    for step in steps:
        # samples first (localized failures, failures, successes), then corrections, branches, probes; log order within
        chosen = sorted((s for s in samples if s.step == step), key=lambda s: (_record_order(s.kind), OUTCOME_ORDER[_outcome(s)]))
        anchors = [f"t{step}-{i}" for i in range(len(chosen))]
        corrections = [(a, s) for a, s in zip(anchors, chosen) if s.kind == "correction"]
        cards = "".join(_trajectory(s, a, corrections_expected, corrections) for a, s in zip(anchors, chosen))
        groups.append(f'<section class="step-group" data-step="{step}"><h3>Training step {step}</h3>{cards}</section>')
    options = "".join(f'<option value="{step}"{" selected" if i == 0 else ""}>step {step}</option>' for i, step in enumerate(steps))
    outcomes = {_outcome(s) for s in samples}
    offered = {"failures": bool(outcomes - {"success"}), "localized": "localized" in outcomes, "success": "success" in outcomes}
    outcome_options = [("all", "all")] + [
        (value, label) for value, label in (("failures", "failures"), ("localized", "localized failures"), ("success", "successes"))
        if offered[value]
    ]
    kinds = sorted({s.kind for s in samples}, key=_record_order)
    record_filter = (
        '<label>record <select id="record-filter"><option value="all">all</option>'
        + "".join(f'<option value="{escape(k)}">{escape(k + ("es" if k.endswith("ch") else "s"))}</option>' for k in kinds)
        + "</select></label>"
    ) if len(kinds) > 1 else ""
    filters = (
        '<div id="filters" class="filters" hidden>'
        f'<label>training step <select id="step-filter"><option value="all">all steps</option>{options}</select></label>'
        '<label>outcome <select id="kind-filter">'
        + "".join(f'<option value="{value}">{label}</option>' for value, label in outcome_options)
        + f"</select></label>{record_filter}"
        f'<span id="shown-count"></span></div>'
    )
    return (
        f'<section id="trajectories"><h2>Trajectories</h2>{_viewer_legend(ViewerKeys.of(samples))}{filters}{"".join(groups)}</section>'
    )


def _viewer_legend(keys: ViewerKeys) -> str:
    stops = ", ".join(f"{advantage_color(v, 1.0)} {int((v + 1) * 50)}%" for v in (-1, -0.5, 0, 0.5, 1))
    marks = []
    if keys.localized:
        marks.append('<span class="badge loc">localized</span> the first wrong step the localizer found')
    if keys.ground_truth:
        marks.append('<span class="badge truth">ground truth</span> the task\'s first wrong step')
    if keys.given:
        marks.append('<span class="tok given">given</span> context: a given prefix, not sampled in this trajectory and not trained on')
    marks.append("steps are numbered from 1, as in the self-verification prompt")
    return (
        '<div class="legend">'
        f'<div class="scale"><span>−max</span><span class="bar" style="background: linear-gradient(to right, {stops})"></span>'
        '<span>+max</span><span class="muted">token advantage, scaled per trajectory to its largest |value| (each card '
        "states it; hover a token for its value)</span></div>"
        f'<div class="keys">{" · ".join(marks)}</div>'
        "</div>"
    )


def _trajectory(sample: Sample, anchor: str, corrections_expected: bool, corrections: Sequence[tuple[str, Sample]]) -> str:
    outcome = _outcome(sample)
    scale = trajectory_scale(sample)
    token_groups = tokens_by_step(sample.steps, sample.tokens)
    rows = []
    for index, text in enumerate(sample.steps):
        classes = ["step"]
        marks = []
        if sample.localized and sample.localized_step == index:
            classes.append("localized")
            marks.append('<span class="badge loc">localized</span>')
        if sample.first_error == index:
            classes.append("first-error")
            marks.append('<span class="badge truth">ground truth</span>')
        content = _tokens(sample, token_groups[index], scale) if token_groups else escape(text)
        rows.append(
            f'<li class="{" ".join(classes)}"><span class="step-no">{index + 1}</span>'
            f'<span class="step-text">{content}</span><span class="marks">{"".join(marks)}</span></li>'
        )
    strip = "" if token_groups else f'<div class="token-strip"><span class="label">tokens</span>{_tokens(sample, range(len(sample.tokens)), scale)}</div>'
    return (
        f'<article class="trajectory {outcome} record-{escape(sample.kind)}" id="{anchor}" data-step="{sample.step}" '
        f'data-kind="{outcome}" data-record="{escape(sample.kind)}">'
        f"{_trajectory_header(sample, outcome, scale)}"
        f'<div class="prompt"><span class="label">prompt</span><code>{escape(sample.prompt)}</code></div>'
        f"{_prompt_text(sample)}"
        f'<ol class="steps">{"".join(rows)}</ol>{strip}{_correction(sample, corrections_expected, corrections)}</article>'
    )


def _prompt_text(sample: Sample) -> str:
    """The text the model saw, when it is more than the task's prompt (a chat template, worked examples)."""
    if not sample.prompt_text or sample.prompt_text == sample.prompt:
        return ""
    return f'<details class="prompt"><summary>as the model saw it</summary><code>{escape(sample.prompt_text)}</code></details>'


def tokens_by_step(steps: Sequence[str], tokens: Sequence[str]) -> list[list[int]] | None:
    """The indices of the tokens in each step, by where each token starts in the response text; tokens
    after the text (end of sequence) join the last step. None when the tokens do not spell out the steps
    (a tokenizer whose decoded pieces differ from the text), in which case the viewer shows them apart."""
    text = "".join(steps)
    if not steps or not "".join(tokens).startswith(text):
        return None
    ends = []
    for step in steps:
        ends.append((ends[-1] if ends else 0) + len(step))
    groups: list[list[int]] = [[] for _ in steps]
    position = 0
    for index, token in enumerate(tokens):
        step = min(bisect.bisect_right(ends, position), len(steps) - 1)
        groups[step].append(index)
        position += len(token)
    return groups


def _tokens(sample: Sample, indices: Sequence[int], scale: float) -> str:
    spans = []
    for i in indices:
        token = sample.tokens[i]
        if _given(sample, i):
            why = "given, not sampled" if i < sample.prefix_len else "no advantage logged"
            spans.append(f'<span class="tok given" title="{escape(repr(token))} {why}">{escape(token)}</span>')
            continue
        advantage = sample.advantage(i)
        color = advantage_color(advantage, scale)
        dark = math.isfinite(advantage) and abs(advantage) / scale > 0.55
        spans.append(
            f'<span class="tok{" dark" if dark else ""}" style="background:{color}" '
            f'title="{escape(repr(token))} advantage {advantage:+.4g}">{escape(token)}</span>'
        )
    return "".join(spans)


def _trajectory_header(sample: Sample, kind: str, scale: float) -> str:
    outcome = "success" if kind == "success" else "failed"
    items = [f'<span class="outcome {outcome}">{outcome} · reward {format_number(sample.reward)}</span>']
    if sample.kind != "sample":
        items.insert(0, f'<span class="badge record">{escape(sample.kind)}</span>')
    if sample.truncated:
        items.append('<span class="note">truncated</span>')
    if sample.prefix_len:
        items.append(f'<span class="note">continues a given prefix of {sample.prefix_len} tokens</span>')
    if sample.localized:
        where = "not localized" if sample.localized_step is None else f"localized: step {sample.localized_step + 1}"
        items.append(f'<span class="badge loc">{where}</span>')
        if sample.probes is not None:
            items.append(f"<span>{sample.probes} probe{'s' if sample.probes != 1 else ''}</span>")
    if sample.has_ground_truth and not sample.success:
        truth = "none known" if sample.first_error is None else f"step {sample.first_error + 1}"
        items.append(f'<span class="badge truth">ground truth: {truth}</span>')
        if sample.localized and sample.first_error is not None and sample.localized_step is not None:
            agree = sample.localized_step == sample.first_error
            items.append(f'<span class="agreement {"yes" if agree else "no"}">{"agrees" if agree else "disagrees"} with ground truth</span>')
    if sample.self_verdict is not None:
        items.append(_verdict(sample))
    trained = [sample.advantage(i) for i in range(len(sample.tokens)) if not _given(sample, i)]
    if trained and all(a == 0 for a in trained):
        items.append('<span class="muted scale-note">advantage 0 on every token</span>')
    elif trained:
        items.append(f'<span class="muted scale-note">colours ±{escape(format_number(scale))}</span>')
    return f'<div class="meta">{"".join(items)}</div>'


def _verdict(sample: Sample) -> str:
    """The policy's own answer to "which step is wrong?" (si_internal), read as a verdict where it is one."""
    said = f"self-verdict <code>{escape(json.dumps(sample.self_verdict))}</code>"
    answer = sample.self_verdict.strip()
    if re.fullmatch(r"[1-9][0-9]*", answer):
        named = int(answer) - 1
        if sample.localized_step is None:
            return f'<span class="verdict">{said}: step {named + 1}</span>'
        agree = named == sample.localized_step
        return f'<span class="verdict agreement {"yes" if agree else "no"}">{said}: step {named + 1}, {"agrees" if agree else "disagrees"} with the localizer</span>'
    if answer == "none":
        return f'<span class="verdict agreement no">{said}: no wrong step</span>'
    return f'<span class="verdict">{said}: not a verdict</span>'


def _correction(sample: Sample, expected: bool, corrections: Sequence[tuple[str, Sample]]) -> str:
    """The corrected continuation of a localized failure's good prefix: written into the failure's own
    record (older logs), or a record of kind "correction" of the same step and prompt that continues that
    prefix (linked). Its absence is said only for a method that makes corrections."""
    if not sample.localized or sample.localized_step is None:
        return ""
    good = "".join(sample.steps[: sample.localized_step])
    source = {0: "the prompt alone", 1: "step 1"}.get(sample.localized_step, f"steps 1–{sample.localized_step}")
    if sample.correction is None:
        linked = [a for a, c in corrections if c.prompt == sample.prompt and c.text.startswith(good)]
        if linked:
            return (f'<div class="correction"><span class="label">corrected</span><a href="#{linked[0]}">the correction record below</a>'
                    f'<span class="muted">continued from the good prefix ({escape(source)})</span></div>')
        if not expected:
            return ""
        return f'<div class="correction none">No corrected continuation logged from the good prefix ({escape(source)}).</div>'
    shown = (
        f'<span class="given">{escape(good)}</span>{escape(sample.correction[len(good):])}'
        if good and sample.correction.startswith(good) else escape(sample.correction)
    )
    return (
        f'<div class="correction"><span class="label">corrected</span><code>{shown}</code>'
        f'<span class="muted">continued from the good prefix ({escape(source)}, greyed)</span></div>'
    )


def _config(run: Run) -> str:
    if not run.config:
        return ""
    text = yaml.safe_dump(run.config, sort_keys=False)
    return f'<section id="config"><details><summary>Resolved config (config.yaml)</summary><pre>{escape(text)}</pre></details></section>'


CSS = """
:root { --ink: #1f2328; --muted: #667085; --line: #e4e7ec; --loc: #c2410c; --truth: #1d4ed8; }
* { box-sizing: border-box; }
[hidden] { display: none !important; }
body { margin: 0; color: var(--ink); background: #f8f9fb; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; }
main { max-width: 1280px; margin: 0 auto; padding: 20px 24px 48px; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 18px; margin: 28px 0 10px; } h3 { font-size: 15px; margin: 18px 0 8px; }
.facts { margin: 0; } .path, .muted, .empty { color: var(--muted); } .path { margin: 2px 0 12px; font-size: 12px; }
nav { margin: 0 0 12px; } a { color: var(--truth); }
.cards { display: flex; flex-wrap: wrap; gap: 10px; }
.card { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 10px 14px; min-width: 170px; }
.card .label { color: var(--muted); font-size: 12px; } .card .value { font-size: 24px; font-weight: 600; } .card .detail { color: var(--muted); font-size: 12px; }
.tables { display: flex; flex-wrap: wrap; gap: 24px; margin-top: 14px; align-items: flex-start; }
table { border-collapse: collapse; background: #fff; font-size: 13px; }
caption { text-align: left; font-weight: 600; padding-bottom: 4px; white-space: nowrap; }
th, td { border: 1px solid var(--line); padding: 3px 9px; text-align: right; } th { background: #f2f4f7; font-weight: 600; }
.charts { display: grid; grid-template-columns: repeat(auto-fill, minmax(340px, 1fr)); gap: 12px; }
figure { margin: 0; background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 6px; }
svg.chart { width: 100%; height: auto; display: block; }
.legend { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 8px 12px; margin-bottom: 10px; font-size: 13px; }
.scale { display: flex; align-items: center; gap: 8px; margin-bottom: 4px; }
.scale .bar { display: inline-block; width: 220px; height: 12px; border-radius: 3px; border: 1px solid var(--line); }
.filters { display: flex; gap: 18px; align-items: center; margin: 8px 0; }
select { font: inherit; padding: 2px 4px; }
.trajectory { background: #fff; border: 1px solid var(--line); border-left: 4px solid #98a2b3; border-radius: 8px; padding: 10px 14px; margin-bottom: 10px; }
/* outcome stripes in tones the token scale does not use, so its end colours mark tokens only */
.trajectory.success { border-left-color: #32d583; } .trajectory.localized, .trajectory.failed { border-left-color: #f97066; }
.meta { display: flex; flex-wrap: wrap; gap: 6px 14px; align-items: center; font-size: 13px; margin-bottom: 6px; }
.outcome { font-weight: 600; } .outcome.failed { color: #b42318; } .outcome.success { color: #067647; }
.note { color: var(--muted); font-style: italic; }
.badge { display: inline-block; border-radius: 10px; padding: 0 8px; font-size: 12px; font-weight: 600; color: #fff; }
.badge.loc { background: var(--loc); } .badge.truth { background: var(--truth); } .badge.record { background: #475467; }
.scale-note { font-size: 12px; }
.agreement.yes { color: #067647; } .agreement.no { color: #b54708; }
.label { color: var(--muted); font-size: 12px; margin-right: 8px; }
code, .steps, .token-strip { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace; font-size: 13px; }
.prompt code, .correction code { white-space: pre-wrap; word-break: break-all; }
.steps { list-style: none; margin: 6px 0; padding: 0; display: flex; flex-wrap: wrap; gap: 4px 6px; }
.step { display: inline-flex; gap: 5px; align-items: baseline; padding: 2px 6px; border-radius: 4px; border: 1px solid var(--line); max-width: 100%; }
.step.localized { border: 2px solid var(--loc); } .step.first-error { box-shadow: inset 0 -3px 0 var(--truth); }
.step-no { color: var(--muted); font-size: 11px; user-select: none; }
.step-text { white-space: pre-wrap; word-break: break-all; }
.marks { display: flex; gap: 4px; }
.tok { padding: 1px 0; border-radius: 2px; } .tok.dark { color: #fff; }
.tok.given { color: var(--muted); background: repeating-linear-gradient(45deg, #f2f4f7, #f2f4f7 3px, #e4e7ec 3px, #e4e7ec 5px); }
.token-strip { margin-top: 6px; white-space: pre-wrap; word-break: break-all; }
.correction { margin-top: 6px; padding: 6px 8px; background: #f0fdf4; border-radius: 6px; }
.correction.none { background: #f8f9fb; color: var(--muted); font-size: 13px; }
.correction .given { color: var(--muted); }
.correction .muted { display: block; font-size: 12px; }
details pre { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 10px; font-size: 12px; }
"""

SCRIPT = """
(() => {
  const filters = document.getElementById('filters');
  if (!filters) return;
  const step = document.getElementById('step-filter'), kind = document.getElementById('kind-filter');
  const record = document.getElementById('record-filter');  // only when the run logged more than one kind of record
  const matches = (t) => (step.value === 'all' || t.dataset.step === step.value) &&
    (kind.value === 'all' || t.dataset.kind === kind.value || (kind.value === 'failures' && t.dataset.kind !== 'success')) &&
    (!record || record.value === 'all' || t.dataset.record === record.value);
  const apply = () => {
    let shown = 0;
    for (const group of document.querySelectorAll('.step-group')) {
      let any = false;
      for (const t of group.querySelectorAll('.trajectory')) {
        t.hidden = !matches(t);
        if (!t.hidden) { any = true; shown += 1; }
      }
      group.hidden = !any;
    }
    document.getElementById('shown-count').textContent = shown + ' shown';
  };
  filters.hidden = false;
  step.addEventListener('change', apply);
  kind.addEventListener('change', apply);
  if (record) record.addEventListener('change', apply);
  apply();
})();
"""

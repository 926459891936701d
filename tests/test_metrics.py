"""What a step logs: the samples.jsonl selection (distinct, across prompts, failures and successes, with
their corrections) and given-prefix tokens shown as context."""

import pytest
import torch

from sirl.metrics import pick_sample_rows, sample_records
from sirl.tasks.base import Task, split_on_separator
from sirl.types import Credit, Localization, LocalizedFailure, Problem, Trajectory


class Semis(Task):
    name = "semis"

    def sample(self, rng, split):
        return Problem("q", "a")

    def verify(self, problem, completion):
        return float(completion.endswith("#z"))

    def split_steps(self, completion):
        return split_on_separator(completion, ";")

    def reference_solution(self, problem):
        return "a;#z"


class Chars:
    """A tokenizer stand-in: one character per token id."""

    def batch_decode(self, rows, skip_special_tokens=False):
        return ["".join(map(chr, row)) for row in rows]

    def decode(self, ids, skip_special_tokens=False):
        return "".join(map(chr, ids))


def row(text: str, group: int, prefix_len: int = 0) -> Trajectory:
    ids = [ord(c) for c in text]
    return Trajectory(
        Problem(f"prompt {group}", "a"), [1], ids, [0.0] * len(ids), text, float(text.endswith("#z")), False, group,
        [(0, len(text))], prefix_len,
    )


def credit_of(rows, localizations=(), kinds=()) -> Credit:
    return Credit(
        rows=tuple(rows), token_advantages=tuple(torch.full((len(r.response_ids),), 0.5) for r in rows),
        reference=(True,) * len(rows), localizations=tuple(localizations), row_kinds=tuple(kinds),
    )


def test_logged_rows_are_distinct_span_prompts_and_mix_failures_with_successes():
    # prompt 0: three identical failures and a success; prompt 1: a failure and two successes; prompt 2: one failure
    rows = [row("a;b", 0), row("a;b", 0), row("a;b", 0), row("a;#z", 0), row("x;y", 1), row("a;#z", 1), row("b;#z", 1), row("c;d", 2)]
    picked = pick_sample_rows(credit_of(rows), 5)
    texts = [(rows[i].group, rows[i].text) for i in picked]
    assert len(set(texts)) == len(texts) == 5  # no duplicates
    assert {g for g, _ in texts} == {0, 1, 2}  # every prompt before any prompt's second
    assert picked[:3] == [0, 4, 7] and {rows[i].reward for i in picked[3:]} == {1.0}  # then their successes


def test_a_localized_failure_comes_first_with_its_correction_and_given_tokens_carry_no_advantage():
    failure, other, success = row("a;b", 0), row("c;d", 1), row("e;#z", 1)
    correction = row("a;#z", 0, prefix_len=2)  # continues the good prefix "a;"
    found = LocalizedFailure(row=2, localization=Localization(0, 1, value_before=0.5, probes=1), correction_row=3)
    credit = credit_of([other, success, failure, correction], [found], ["sample"] * 3 + ["correction"])
    records = sample_records(7, Semis(), Chars(), credit, 2)
    assert [(r["kind"], r["prompt"]) for r in records] == [("sample", "prompt 0"), ("correction", "prompt 0"), ("sample", "prompt 1")]
    assert records[0]["localized_step"] == 1 and records[0]["correction"] == "a;#z"
    assert records[1]["token_advantages"] == [None, None, 0.5, 0.5]  # the given "a;" is context
    assert "first_error" not in records[0]  # Semis has no ground truth


# --- the schema: every logged name is declared once (sirl.schema) -------------------------------------


def logged_names(run) -> tuple[set[str], set[str]]:
    """The keys of every metrics.jsonl and evals.jsonl record of the run folder ``run``."""
    import json

    def keys(name):
        path = run / name
        return {k for line in path.read_text().splitlines() for k in json.loads(line)} if path.is_file() else set()

    return keys("metrics.jsonl"), keys("evals.jsonl")


# What makes each method log the names it can: verdicts sampled and blind resets (si_internal), blind resets
# (random_reset); the others log theirs as they are.
MORE = {
    "si_internal": ["method.si_internal.verify_loss=both", "method.si_internal.verify_batch=4", "method.si_internal.blind_resets=2"],
    "random_reset": ["method.random_reset.blind_resets=2"],
}


SHOWN = {  # a name of each method's own that the run must log, so that its names are among those checked
    "si": "loc/probes_per_failure", "si_internal": "selfloc/audit_frac", "random_reset": "reset/blind_groups", "vine": "loc/probes_per_trajectory",
    "tree": "tree/zero_frac", "tree_branch": "branch/solve_rate", "prime": "prime/kept_frac",
}


def method_names():
    from sirl.methods import METHODS

    return sorted(METHODS)


@pytest.mark.parametrize("algo", method_names())
def test_every_name_a_short_run_of_each_method_logs_is_declared(tmp_path, algo):
    """Two steps of each registered method from the shipped mod-7 policy (the methods find failures and
    successes to work with, and the task has ground truth): every key of metrics.jsonl and evals.jsonl is a
    name of sirl.schema, and the run logged the names every run logs."""
    from sirl.config import load_config
    from sirl.schema import EVAL_ACCURACY, METRICS, REWARDS, STEP, TOKENS_TOTAL, TOKENS_TRAINED
    from sirl.train import run_train

    config = load_config("arith_prime", [
        "model.device=cpu", f"algo.name={algo}", "seed=2", "train.steps=2", "train.eval_every=2", "train.checkpoint_every=0",
        "rollout.max_new_tokens=48", "rollout.prompts_per_step=3", "rollout.group_size=4", "eval.n_problems=4", "eval.max_new_tokens=48",
        "train.report_to=[]", *MORE.get(algo, []),
    ])
    run_train(config, tmp_path / "run", quiet=True)
    metrics, evals = logged_names(tmp_path / "run")
    assert metrics - set(METRICS) == set() and evals - set(METRICS) == set()
    assert {STEP, TOKENS_TOTAL, TOKENS_TRAINED, EVAL_ACCURACY} <= metrics and evals == {STEP, TOKENS_TOTAL, TOKENS_TRAINED, REWARDS}
    assert SHOWN.get(algo, STEP) in metrics


def test_every_name_a_short_sft_run_logs_is_declared(tmp_path):
    from sirl.config import load_config
    from sirl.schema import EVAL_ACCURACY, LOSS_SFT, METRICS
    from sirl.sft import run_sft

    config = load_config("arith_sft", [
        "model.size=nano", "model.device=cpu", "sft.steps=2", "sft.eval_every=2", "sft.batch_size=4", "eval.n_problems=4",
        "eval.max_new_tokens=16", "train.report_to=[]",
    ])
    run_sft(config, tmp_path / "run", quiet=True)
    metrics, _ = logged_names(tmp_path / "run")
    assert metrics - set(METRICS) == set() and {LOSS_SFT, EVAL_ACCURACY} <= metrics


def test_the_writers_and_readers_name_metrics_through_the_schema_only():
    """No module of sirl but sirl.schema spells a declared ``section/name`` as a bare string (docstrings
    aside): the writers (sirl.metrics, sirl.update, the loop, the methods), compare and the report use its
    constants, so a name cannot change on one side only."""
    import ast
    from pathlib import Path

    import sirl
    from sirl.schema import METRICS

    bare = []
    for path in sorted(Path(sirl.__file__).parent.rglob("*.py")):
        if path.name == "schema.py":
            continue
        tree = ast.parse(path.read_text())
        docstrings = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)}
        bare += [f"{path.name}:{n.lineno} {n.value}" for n in ast.walk(tree)
                 if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings and "/" in n.value and n.value in METRICS]
    assert bare == []
    # and the readers do read through it: the report's charts and compare's summaries name declared metrics
    from sirl.report.page import STEP_CHARTS

    charted = {key for chart in STEP_CHARTS for key in chart.keys}
    assert charted and charted <= set(METRICS)


def test_each_name_is_declared_once_with_a_unit_and_a_meaning():
    from sirl.schema import METRICS, aux_loss, LOSS_VERIFY

    assert len(METRICS) > 40 and all(m.unit and m.meaning.endswith(".") for m in METRICS.values())
    assert aux_loss("verify") == LOSS_VERIFY  # si_internal's auxiliary loss is logged under its declared name

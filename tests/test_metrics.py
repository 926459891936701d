"""What a step logs: the samples.jsonl selection (distinct, across prompts, failures and successes, with
their corrections) and given-prefix tokens shown as context."""

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

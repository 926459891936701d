import json
import math
import random
from itertools import combinations

import pytest

from sirl.cli import main as cli_main
from sirl.evaluate import guessing_baselines, heldout_problems, pass_at_k, wilson_interval
from sirl.tasks.arith import ArithTask


def test_wilson_interval_against_hand_computed_values():
    # p = 0.5, n = 100, z = 1.96: centre = (0.5 + 1.9208/100) / (1 + 3.8416/100) = 0.5,
    # half = 1.96 * sqrt(0.0025 + 0.00009604) / 1.038416 = 1.96 * 0.0509513 / 1.038416 = 0.0961701
    lo, hi = wilson_interval(50, 100)
    assert lo == pytest.approx(0.5 - 0.0961701, abs=1e-6) and hi == pytest.approx(0.5 + 0.0961701, abs=1e-6)
    # 0 of 10: the lower end is 0 and the upper end z^2/(n+z^2) = 3.8416/13.8416 = 0.27754
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.277540, abs=1e-5)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_pass_at_k_equals_enumeration():
    """The closed form against the definition: the share of k-subsets of the n samples with a success."""
    for n, c, k in [(8, 0, 1), (8, 1, 1), (8, 3, 4), (8, 8, 2), (6, 2, 5), (5, 1, 5)]:
        samples = [1] * c + [0] * (n - c)
        subsets = list(combinations(samples, k))
        expected = sum(any(s) for s in subsets) / len(subsets)
        assert pass_at_k(n, c, k) == pytest.approx(expected)
    assert pass_at_k(8, 2, 1) == pytest.approx(0.25)


def test_heldout_set_is_fixed_distinct_and_from_the_test_split():
    task = ArithTask()
    a = heldout_problems(task, 200, seed=3)
    assert [p.prompt for p in a] == [p.prompt for p in heldout_problems(task, 200, seed=3)]
    assert len({p.prompt for p in a}) == 200
    rng = random.Random(0)
    train = {task.sample(rng, "train").prompt for _ in range(5000)}
    assert not train & {p.prompt for p in a}


def test_heldout_set_stops_when_the_split_runs_out():
    task = ArithTask(min_ops=1, max_ops=1)  # 300 prompts in all, about 30 of them in the test split
    problems = heldout_problems(task, 500, seed=0)
    assert 10 < len(problems) < 60
    assert math.isclose(len({p.prompt for p in problems}), len(problems))


def test_guessing_baselines_by_hand():
    # first wrong steps 2, 2, 5, 0: always answering 2 is right on 2 of 4; a random step among 4, 4, 8 and 2
    # steps is right with probability 1/4, 1/4, 1/8, 1/2: mean 9/32
    assert guessing_baselines([2, 2, 5, 0], [4, 4, 8, 2]) == (0.5, 9 / 32)


def test_eval_verify_reports_self_localization_beside_guessing(capsys, monkeypatch):
    import sirl.evaluate

    seen = []  # the failures' ground-truth first wrong steps and step counts, as the evaluation found them
    real = sirl.evaluate.guessing_baselines
    monkeypatch.setattr(sirl.evaluate, "guessing_baselines", lambda truth, steps: seen.append((truth, steps)) or real(truth, steps))
    args = ["eval", "--config", "arith", "--eval.n_problems=8", "--eval.n_samples=2", "--verify", "--json", "--quiet"]
    assert cli_main(args) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["self_verification"]
    assert report["n_failures"] + report["n_successes"] == 16
    [(truth, steps)] = seen
    assert len(truth) == len(steps) == report["n_failures"] > 0
    # naive: the share of the most frequent first wrong step, and the mean chance 1/n of a random step
    assert report["most_common_step"] == pytest.approx(max(truth.count(e) for e in truth) / len(truth))
    assert report["uniform_step"] == pytest.approx(sum(1 / max(n, 1) for n in steps) / len(steps))  # an empty one: 1
    right = round(report["failure_accuracy"] * report["n_failures"])
    assert report["failure_ci95"] == list(wilson_interval(right, report["n_failures"]))
    assert cli_main(args[:-2]) == 0
    printed = capsys.readouterr().out
    assert "names the first wrong step" in printed and "guessing would score" in printed


def test_decoding_chunk_by_chunk_samples_what_one_call_does(nano_llama, arith_tokenizer):
    """complete() decodes in chunks to show progress; the chunks are generate's own, so a sampling
    generator gives the same completions as one generate call over all problems."""
    import torch

    from sirl.evaluate import complete, problem_chunks
    from sirl.model import encode_prompt, eos_ids
    from sirl.rollout import SamplingParams, generate

    assert [list(c) for c in problem_chunks(5, 2, 4)] == [[0, 1], [2, 3], [4]]
    assert [list(c) for c in problem_chunks(3, 8, 4)] == [[0], [1], [2]]  # at least one problem a chunk
    task = ArithTask(min_ops=1, max_ops=2)
    problems = heldout_problems(task, 5, seed=0)
    params = SamplingParams(12, temperature=1.0)
    done, _ = complete(nano_llama, arith_tokenizer, task, problems, params, repeats=2, batch_size=4,
                       generator=torch.Generator().manual_seed(7), progress="test")
    whole = generate(nano_llama, [encode_prompt(arith_tokenizer, p.prompt) for p in problems], params,
                     eos_ids=eos_ids(nano_llama, arith_tokenizer), pad_id=arith_tokenizer.pad_token_id, repeats=2,
                     generator=torch.Generator().manual_seed(7), max_batch=4)
    expected = [arith_tokenizer.decode(whole.row_tokens(row), skip_special_tokens=True) for row in range(len(whole))]
    assert [c.text for c in done] == expected
    assert [c.problem.prompt for c in done] == [p.prompt for p in problems for _ in range(2)]

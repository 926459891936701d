"""The task contract, for every registered task and for a user's task loaded by import path."""

import random
import textwrap

import pytest

from sirl.tasks import TASKS, load_task
from sirl.verifier.sandbox import bwrap_path
from sirl.tasks.base import NoGroundTruth, partition_check


@pytest.fixture(params=sorted(TASKS))
def task(request):
    if request.param == "code" and bwrap_path() is None:
        pytest.skip("the code task needs bubblewrap (apt-get install -y bubblewrap)")
    return load_task(request.param)


def test_reference_solutions_verify_and_partition(task):
    rng = random.Random(0)
    for split in ("train", "test"):
        for _ in range(20):
            p = task.sample(rng, split)
            solution = task.reference_solution(p)
            assert task.verify(p, solution) == 1.0
            partition_check(solution, task.split_steps(solution))
            if task.has_ground_truth:
                assert task.first_error(p, solution) is None
            else:
                with pytest.raises(NoGroundTruth):
                    task.first_error(p, solution)


def test_verification_prompt_and_verdict_round_trip(task):
    rng = random.Random(1)
    p = task.sample(rng, "train")
    solution = task.reference_solution(p)
    prompt = task.verification_prompt(p, solution)
    assert prompt.startswith(p.prompt) and "[1]" in prompt
    n_steps = len(task.split_steps(solution))
    for verdict in [None, *range(n_steps)]:
        assert task.parse_verdict(task.verdict_text(verdict)) == verdict
    for junk in ["", "0", "x", "-1", "1 2", "nonee"]:
        with pytest.raises(ValueError):
            task.parse_verdict(junk)


def test_a_users_task_loads_by_file_path_with_knobs(tmp_path):
    source = textwrap.dedent(
        '''
        from sirl.tasks.base import Task, split_on_separator
        from sirl.types import Problem

        class Echo(Task):
            name = "echo"
            description = "repeat the word"

            def __init__(self, word: str = "abc"):
                self.word = word

            def sample(self, rng, split):
                return Problem(prompt=self.word + ">", answer=self.word, meta={})

            def verify(self, problem, completion):
                return float(completion == problem.answer)

            def split_steps(self, completion):
                return split_on_separator(completion, "|")

            def reference_solution(self, problem):
                return problem.answer
        '''
    )
    path = tmp_path / "my_tasks.py"
    path.write_text(source)
    task = load_task(f"{path}:Echo", word="xyz")
    p = task.sample(random.Random(0), "train")
    assert p.prompt == "xyz>" and task.verify(p, "xyz") == 1.0
    assert set("xyz>[]none?") <= set(task.alphabet(n_samples=4))
    with pytest.raises(ValueError, match="valid knobs: \\['word'\\]"):
        load_task(f"{path}:Echo", wrd="q")
    with pytest.raises(ValueError, match="no attribute 'Nope'"):
        load_task(f"{path}:Nope")
    with pytest.raises(FileNotFoundError, match="missing.py"):
        load_task(f"{tmp_path}/missing.py:Echo")


def test_a_task_loads_by_module_path():
    assert type(load_task("sirl.tasks.arith:ArithTask")).__name__ == "ArithTask"


def test_unknown_task_lists_the_registered_ones():
    with pytest.raises(ValueError, match="registered tasks: \\['arith', 'code', 'countdown', 'gsm8k'\\]"):
        load_task("arithmetic")

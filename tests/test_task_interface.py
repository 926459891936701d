"""The task contract, for every registered task and for a user's task loaded by import path."""

import random
import textwrap

import pytest

from sirl.tasks import TASKS, NotATask, Task, load_task
from sirl.verifier.sandbox import bwrap_path
from sirl.tasks.base import NoGroundTruth, NoStepCheck, partition_check, supports_step_check


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


def test_step_by_step_verdicts_round_trip_and_malformed_ones_raise_value_errors(task):
    rng = random.Random(2)
    p = task.sample(rng, "train")
    solution = task.reference_solution(p)
    n_steps = len(task.split_steps(solution))
    formats = ["judgments"] + (["rederive"] if supports_step_check(task) else [])
    for fmt in formats:
        for verdict in [None, *range(n_steps)]:
            text = task.verdict_target(p, solution, verdict, fmt)
            assert task.read_verdict(p, solution, text, fmt) == verdict
        all_right = task.verdict_target(p, solution, None, fmt)
        # fewer judgments than steps without a wrong one, junk, a negative mark past the last step
        for junk in [all_right[:-1] if fmt == "judgments" else "", "x", "none", "+" * (n_steps + 1) + "-"]:
            if fmt == "judgments" and junk == "":
                continue  # an empty verdict judges 0 steps: covered by the shortened one
            with pytest.raises(ValueError):
                task.read_verdict(p, solution, junk, fmt)
        # what follows the first negative mark is not read
        first_wrong = task.verdict_target(p, solution, 0, fmt)
        assert task.read_verdict(p, solution, first_wrong + "garbage", fmt) == 0
    if not supports_step_check(task):
        with pytest.raises(NoStepCheck, match="use method.si_internal.verdict_format=index or judgments"):
            task.verdict_target(p, solution, None, "rederive")


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
    with pytest.raises(ValueError, match="registered tasks: \\['arith', 'code', 'countdown', 'gsm8k', 'records'\\]"):
        load_task("arithmetic")


# --- what a task class says about itself, derived from the class --------------------------------------
def _write(tmp_path, source: str, name: str = "user_tasks.py"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(source))
    return path


def test_ground_truth_is_recognised_from_the_class(tmp_path):
    """A task that leaves first_error has no ground truth: calling it raises NoGroundTruth, and everything
    that reads has_ground_truth (evaluation's first-error histogram, loc/accuracy) must skip it."""
    path = _write(tmp_path, '''
        from sirl.tasks.arith import ArithTask
        from sirl.tasks.base import Task

        class Plain(Task):
            def sample(self, rng, split): ...
            def verify(self, problem, completion): ...
            def split_steps(self, completion): ...
            def reference_solution(self, problem): ...

        class Knows(Plain):
            def first_error(self, problem, completion):
                return None

        class Harder(ArithTask):  # inherits arith's first_error
            pass
    ''')
    assert load_task(f"{path}:Plain").has_ground_truth is False
    assert load_task(f"{path}:Knows").has_ground_truth is True
    assert load_task(f"{path}:Harder").has_ground_truth is True
    assert [TASKS[n].has_ground_truth for n in ("arith", "countdown", "gsm8k", "code")] == [True, True, False, False]
    with pytest.raises(TypeError, match="declares has_ground_truth = True but does not implement first_error"):
        _write(tmp_path, '''
            from sirl.tasks.base import Task
            class Liar(Task):
                has_ground_truth = True
        ''', "liar.py")
        load_task(f"{tmp_path}/liar.py:Liar")


def test_safe_verify_holds_only_for_the_class_that_declares_it(tmp_path, capsys):
    from sirl.verifier import make_verifier, resolve_isolation
    from sirl.verifier.pool import TaskSpec

    path = _write(tmp_path, '''
        from sirl.tasks.arith import ArithTask

        class NanArith(ArithTask):  # its own verify, which arith's declaration says nothing about
            def verify(self, problem, completion):
                return float("nan")

        class StillSafe(ArithTask):
            safe_verify = True
    ''')
    assert resolve_isolation("auto", load_task("arith")) == "in_process"
    assert resolve_isolation("auto", load_task(f"{path}:NanArith")) == "workers"
    assert resolve_isolation("auto", load_task(f"{path}:StillSafe")) == "in_process"
    task = load_task(f"{path}:NanArith")
    with make_verifier(task, TaskSpec.of(f"{path}:NanArith", {}), workers=1, timeout_s=5, memory_mb=1024) as verifier:
        assert verifier.isolation.level == "workers" and "worker processes" in verifier.isolation.describe()
        problem = task.sample(random.Random(0), "train")
        assert verifier.score([problem], ["x"]) == [0.0] and verifier.counts.errors == 1


INTERFACE_ONLY = '''
    from sirl.tasks.base import split_on_separator
    from sirl.types import Problem

    class AddTask:  # the interface, without subclassing Task
        name = "add"

        def __init__(self, top: int = 9):
            self.top = top

        def sample(self, rng, split):
            a, b = rng.randint(0, self.top), rng.randint(0, self.top)
            return Problem(prompt=f"{a}+{b}=", answer=str(a + b), meta={"difficulty": 1})

        def verify(self, problem, completion):
            return float(completion == problem.answer)

        def split_steps(self, completion):
            return split_on_separator(completion, ";")

        def reference_solution(self, problem):
            return problem.answer

    class Half:
        def sample(self, rng, split): ...
        def verify(self, problem, completion): ...
'''


def test_a_class_written_to_the_interface_takes_the_base_defaults(tmp_path):
    from sirl.verifier import make_verifier
    from sirl.verifier.pool import TaskSpec

    path = _write(tmp_path, INTERFACE_ONLY)
    task = load_task(f"{path}:AddTask", top=5)
    assert isinstance(task, Task) and task.name == "add" and task.top == 5
    assert task.safe_verify is False and task.program_isolation() is None and task.has_ground_truth is False
    problem = task.sample(random.Random(0), "train")
    assert task.parse_verdict(task.verdict_text(0)) == 0 and task.verification_prompt(problem, "1;2").endswith("[1]1;[2]2\n?")
    with make_verifier(task, TaskSpec.of(f"{path}:AddTask", {"top": 5}), workers=1, timeout_s=5, memory_mb=1024) as verifier:
        assert verifier.isolation.level == "workers"  # not declared safe: a user task runs in workers
        assert verifier.score([problem, problem], [problem.answer, "no"]) == [1.0, 0.0]


def test_a_class_missing_required_members_is_named_in_one_error(tmp_path):
    path = _write(tmp_path, INTERFACE_ONLY)
    with pytest.raises(NotATask) as error:
        load_task(f"{path}:Half")
    text = str(error.value)
    assert "Half" in text and "lacks the required method(s) ['split_steps', 'reference_solution']" in text
    assert "may override" in text and "safe_verify" in text
    _write(tmp_path, '''
        from sirl.tasks.base import Task
        class Abstract(Task):
            def sample(self, rng, split): ...
    ''', "abstract.py")
    with pytest.raises(NotATask, match=r"lacks the required method\(s\) \['reference_solution', 'split_steps', 'verify'\]"):
        load_task(f"{tmp_path}/abstract.py:Abstract")
    _write(tmp_path, "not_a_class = 3\n", "value.py")
    with pytest.raises(NotATask, match="names a value of type int, not a class"):
        load_task(f"{tmp_path}/value.py:not_a_class")

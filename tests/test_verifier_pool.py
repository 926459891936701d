"""The verifier pool: deadlines, memory caps, crashes and process-group kills cost one sample, never the run.

Deadlines that must fire are short (1 s) so the whole file runs in well under a minute on two cores; where
a deadline must not fire, it is long (``PATIENT`` seconds times SIRL_TEST_TIME_FACTOR), and no test reads
a clock to judge the pool: what happened is read from its counts, its workers' pids and files the
verifiers write. Every test checks that nothing is left behind: no process below this one, no extra file
descriptor.
"""

from __future__ import annotations

import random
import subprocess
import sys
import textwrap
import time

import pytest

from sirl.config import ConfigError, load_config
from sirl.tasks import load_task
from sirl.tasks.arith import ArithTask
from sirl.verifier import Isolation, TaskSpec, Verifier, VerifierPool, VerifierStartupError, make_verifier, resolve_isolation
from conftest import scaled
from verifier_helpers import HERE, HostileTask, descendants, open_fds, running, wait_until_gone

DEADLINE = 1.0
PATIENT = 20.0
"""Seconds (times SIRL_TEST_TIME_FACTOR) of a deadline that must not fire: far beyond what the work takes."""
HOSTILE = TaskSpec(f"{HERE}:HostileTask")
OK = HostileTask().sample(random.Random(0), "train")


@pytest.fixture
def no_leaks():
    """Fails the test if it leaves a process below this one or an open file descriptor."""
    before_fds, before = open_fds(), descendants()
    yield
    assert wait_until_gone(descendants() - before) == set(), "processes left behind"
    assert open_fds() == before_fds, "file descriptors left open"


@pytest.fixture(scope="module")
def gsm8k_pool():
    with VerifierPool(TaskSpec("gsm8k"), workers=2, timeout_s=scaled(PATIENT), memory_mb=1024) as pool:
        pool.wait_ready()
        yield pool


# --- math: adversarial answers ----------------------------------------------------------------------
MATH_INPUTS = {  # name: (completion, its score against the gold answer 18)
    "power tower": ("\\boxed{5^{5^{5^{5^5}}}}", 0.0),  # never evaluated (it has about 10^2184 digits), not 18
    "100,000 digits": ("A: " + "7" * 100_000, 0.0),
    "10 MB string": ("x" * 10_000_000 + "\nA: 18", 1.0),  # the answer line after 10 MB of junk still counts
    "10,000 nested braces": ("\\boxed{" + "{" * 10_000 + "18" + "}" * 10_000 + "}", 0.0),  # too deep to read: no answer
    "NUL bytes": ("so\x00 the answer\x00\nA: 18\x00", 1.0),
    "lone surrogates": ("\ud800\udfff\udc00 A: \ud83d", 0.0),
}


@pytest.mark.parametrize("name", list(MATH_INPUTS))
def test_math_adversarial_input_gets_its_verdict_from_verify_not_from_the_deadline(gsm8k_pool, name):
    problem = load_task("gsm8k").problem(0)  # gold answer 18
    before, counts = gsm8k_pool.pids(), (gsm8k_pool.counts.timeouts, gsm8k_pool.counts.errors)
    completion, expected = MATH_INPUTS[name]
    assert gsm8k_pool.score([problem], [completion]) == [expected]
    assert (gsm8k_pool.counts.timeouts, gsm8k_pool.counts.errors) == counts  # verify answered, nothing killed it
    assert gsm8k_pool.pids() == before  # the same workers, none replaced


def test_math_pool_still_scores_ordinary_answers(gsm8k_pool):
    problem = load_task("gsm8k").problem(0)
    assert gsm8k_pool.score([problem] * 3, ["A: 18", "#### $18.00", "A: 19"]) == [1.0, 1.0, 0.0]


def test_math_pool_leaves_no_worker_behind(no_leaks):
    with VerifierPool(TaskSpec("gsm8k"), workers=2, timeout_s=scaled(PATIENT), memory_mb=1024) as pool:
        problem = load_task("gsm8k").problem(0)
        completions, expected = zip(*MATH_INPUTS.values())
        assert pool.score([problem] * len(MATH_INPUTS), list(completions)) == list(expected)
        workers = set(pool.pids())
    assert wait_until_gone(workers) == set()


# --- hostile verifiers ------------------------------------------------------------------------------
@pytest.mark.parametrize("completion, counted", [("hang", "timeouts"), ("sleep", "timeouts"), ("helper", "timeouts"),
                                                 ("raise", "errors"), ("exit", "errors"), ("allocate", "errors"),
                                                 ("nonsense", "errors")])
def test_a_failing_verify_scores_zero_and_is_counted(no_leaks, completion, counted):
    with VerifierPool(HOSTILE, workers=1, timeout_s=DEADLINE, memory_mb=512) as pool:
        pool.wait_ready()
        workers = pool.pids()
        first = set(workers) | descendants(workers[0])
        assert pool.score([OK, OK], [completion, "ok"]) == [0.0, 1.0]  # the next completion still scores
        restarted = counted == "timeouts" or completion == "exit"  # a new worker (and its guardian) had to start
        if not restarted:  # the error came back from the worker that was already running, which goes on
            assert pool.pids() == workers
        # That the hanging verify (it would sleep for 11 days) ended at all and a new worker took over is
        # what shows the deadline acted; how long the restart took is the machine's, so it is not timed.
        assert getattr(pool.counts, counted) == 1 and pool.counts.calls == 2
        assert pool.counts.timeouts + pool.counts.errors == 1
        if counted == "timeouts":  # the worker and its helper process were killed, a new worker took over
            assert wait_until_gone(first) == set() and set(pool.pids()).isdisjoint(first)
        if completion == "raise":
            assert pool.first_error == "RuntimeError: verifier bug"


@pytest.mark.parametrize("mode", ["return", "daemon", "hang", "exit"])
def test_a_helper_that_left_the_session_dies_with_the_pool(no_leaks, mode):
    """setsid takes a helper out of the worker's process group, so a group kill misses it; the worker's
    guardian (a child subreaper) still finds and kills it, on close, on a deadline and when the worker dies."""
    seconds = f"{1000 + 0.001 * random.Random().randrange(10**6):.3f}"  # a command line no other test uses
    argv = ["sleep", seconds]
    with VerifierPool(HOSTILE, workers=1, timeout_s=DEADLINE, memory_mb=512) as pool:
        pool.wait_ready()
        scores = pool.score([OK, OK], [f"escape-{mode}-{seconds}", "ok"])
        assert scores == [1.0 if mode in ("return", "daemon") else 0.0, 1.0]
        if mode in ("return", "daemon"):  # alive until the pool closes (setsid -f execs it a moment later)
            deadline = time.monotonic() + scaled(PATIENT)
            while not running(argv) and time.monotonic() < deadline:
                time.sleep(0.02)
            assert len(running(argv)) == 1
        else:  # the worker overran or died: its helper went with it before the next worker took over
            assert wait_until_gone(running(argv)) == set()
    assert wait_until_gone(running(argv)) == set()


def test_helpers_die_when_the_trainer_is_killed(tmp_path):
    """SIGKILL to the process that owns the pool: its guardians get SIGTERM (PR_SET_PDEATHSIG) and clean up."""
    seconds = f"{1000 + 0.001 * random.Random().randrange(10**6):.3f}"
    script = tmp_path / "owner.py"
    script.write_text(textwrap.dedent(f"""
        import random, sys, time
        from sirl.verifier import TaskSpec, VerifierPool
        sys.path.insert(0, {str(HERE.parent)!r})
        from verifier_helpers import HostileTask
        pool = VerifierPool(TaskSpec({str(HOSTILE.name)!r}), workers=1, timeout_s=5, memory_mb=512)
        pool.wait_ready()
        print(pool.score([HostileTask().sample(random.Random(0), "train")], ["escape-return-{seconds}"]), flush=True)
        time.sleep(1e6)
    """))
    owner = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout.readline().strip() == "[1.0]"
        assert len(running(["sleep", seconds])) == 1
    finally:
        owner.kill()
        owner.wait()
        owner.stdout.close()
    assert wait_until_gone(running(["sleep", seconds]), 5.0) == set()


def test_each_completion_has_its_own_deadline(no_leaks, tmp_path):
    """While one worker waits on its completion, the other scores the rest, one of which releases the
    wait: the first completion scores 1.0 only if the second worker went on meanwhile. A hang later in the
    batch costs its own completion only."""
    signal_file = tmp_path / "released"
    completions = [f"wait-for {signal_file}", "ok", f"create {signal_file}", "ok", "hang", "ok"]
    with VerifierPool(HOSTILE, workers=2, timeout_s=scaled(3.0), memory_mb=512) as pool:
        pool.wait_ready()
        assert pool.score([OK] * len(completions), completions) == [1.0, 1.0, 1.0, 1.0, 0.0, 1.0]
        assert (pool.counts.timeouts, pool.counts.errors) == (1, 0)


def test_a_task_that_cannot_be_built_is_an_error_not_a_hang(no_leaks):
    with pytest.raises(VerifierStartupError, match="no knob"):
        VerifierPool(TaskSpec("arith", {"no_such_knob": 1}), workers=1, timeout_s=1, memory_mb=512).wait_ready()


def _mixed_inputs(n: int, seed: int) -> list[tuple[str, float]]:
    """Mostly ordinary completions and some hostile ones, with the score each must get."""
    rng = random.Random(seed)
    hostile = [("hang", 0.0), ("raise", 0.0), ("exit", 0.0), ("allocate", 0.0), ("nonsense", 0.0), ("sleep", 0.0)]
    ordinary = [("ok", 1.0), ("no", 0.0), ("", 0.0), ("ok\x00", 0.0), ("\ud800", 0.0)]
    return [rng.choice(hostile) if rng.random() < 0.03 else rng.choice(ordinary) for _ in range(n)]


def _survives(n: int, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    before_fds, before = open_fds(), descendants()
    inputs = _mixed_inputs(n, seed=n)
    with VerifierPool(HOSTILE, workers=2, timeout_s=0.5, memory_mb=512) as pool:
        pool.wait_ready()
        fds_alive = open_fds()
        scores = []
        for start in range(0, n, 50):  # batches, as the trainer sends them
            chunk = inputs[start : start + 50]
            scores += pool.score([OK] * len(chunk), [text for text, _ in chunk])
        assert scores == [want for _, want in inputs]
        failures = sum(text in ("hang", "sleep", "raise", "exit", "allocate", "nonsense") for text, _ in inputs)
        assert pool.counts.timeouts + pool.counts.errors == failures
        assert open_fds() == fds_alive  # replaced workers left no descriptor behind
    assert wait_until_gone(descendants() - before) == set()
    assert open_fds() == before_fds
    assert list(tmp_path.iterdir()) == []


def test_pool_survives_1000_mixed_adversarial_inputs(tmp_path, monkeypatch):  # about 15 s on two cores
    _survives(1000, tmp_path, monkeypatch)


# --- the Verifier facade and its configuration ----------------------------------------------------------
def test_auto_isolation_keeps_safe_tasks_in_process():
    assert resolve_isolation("auto", ArithTask()) == "in_process"
    assert resolve_isolation("auto", HostileTask()) == "workers"
    assert resolve_isolation("workers", ArithTask()) == "workers"
    with pytest.raises(ValueError, match="verifier.isolation"):
        resolve_isolation("sandbox", ArithTask())


def test_in_process_verifier_counts_errors_and_scores_zero(capsys):
    verifier = Verifier(HostileTask(), Isolation("in_process"))
    assert verifier.score([OK] * 4, ["ok", "raise", "nonsense", "raise"]) == [1.0, 0.0, 0.0, 0.0]
    assert verifier.take_counts().errors == 3 and verifier.take_counts().errors == 0
    assert capsys.readouterr().err.count("verifier bug") == 1  # the first error, shown once


def test_make_verifier_describes_what_it_built(no_leaks):
    task = ArithTask()
    in_process = make_verifier(task, TaskSpec("arith"))
    assert in_process.isolation == Isolation("in_process") and "in process" in in_process.isolation.describe()
    with make_verifier(task, TaskSpec("arith"), isolation="workers", workers=1, timeout_s=2.0, memory_mb=512) as pooled:
        assert pooled.isolation.to_json() == {"level": "workers", "workers": 1, "timeout_s": 2.0, "memory_mb": 512, "programs": None}
        problem = task.sample(random.Random(0), "train")
        assert pooled.score([problem], [task.reference_solution(problem)]) == [1.0]


def test_verifier_config_fields_and_overrides():
    config = load_config(None, ["verifier.isolation=workers", "verifier.workers=3", "verifier.timeout_s=2", "verifier.memory_mb=1024"])
    assert (config.verifier.isolation, config.verifier.workers, config.verifier.timeout_s, config.verifier.memory_mb) == ("workers", 3, 2.0, 1024)
    default = load_config().verifier
    assert (default.isolation, default.workers, default.timeout_s, default.memory_mb) == ("auto", None, 5.0, 2048)
    with pytest.raises(ConfigError, match=r"verifier.isolation='bwrap' is not a valid choice"):
        load_config(None, ["verifier.isolation=bwrap"])

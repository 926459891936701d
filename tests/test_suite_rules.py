"""The suite's own rules, run in a pytest session of their own with this folder's conftest and the project's
pytest settings: skip reasons are printed, CI's switch fails a skip for want of a system tool (and only
such a skip), the thread count a test sets does not reach the next test, and wall-clock bounds scale by
one factor."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REQUIRE_TOOLS_ENV, TIME_FACTOR_ENV, missing_tool, scaled

ROOT = Path(__file__).resolve().parents[1]

INNER = '''
import os
import pytest
import torch

def test_needs_the_sandbox():
    pytest.skip("bubblewrap is not installed (apt-get install -y bubblewrap)")

@pytest.mark.skipif(True, reason="headless Chromium not found")
def test_needs_the_browser():
    pass

@pytest.mark.skipif(True, reason="needs a CUDA GPU")
def test_needs_a_gpu():
    pass

def test_a_sets_one_thread():
    torch.set_num_threads(1)

def test_b_gets_the_session_thread_count_back():
    assert torch.get_num_threads() == int(os.environ["OMP_NUM_THREADS"]) == 2
'''


def inner_session(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    shutil.copy(Path(__file__).with_name("conftest.py"), tmp_path / "conftest.py")
    (tmp_path / "test_inner.py").write_text(INNER)
    environment = {k: v for k, v in os.environ.items() if k not in (REQUIRE_TOOLS_ENV, TIME_FACTOR_ENV)}
    environment.update({"PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "2", **env})
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-c", str(ROOT / "pyproject.toml"), "--rootdir", str(tmp_path), "-p", "no:cacheprovider",
         str(tmp_path / "test_inner.py")],
        cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=300,
    )


def test_ci_fails_a_skip_for_want_of_a_system_tool_prints_every_skip_and_restores_the_thread_count(tmp_path):
    done = inner_session(tmp_path, **{REQUIRE_TOOLS_ENV: "1"})
    assert done.returncode == 1, done.stdout + done.stderr
    assert "1 failed, 2 passed, 1 skipped, 1 error" in done.stdout  # the sandbox (call), the browser (setup)
    assert f"{REQUIRE_TOOLS_ENV}=1 and this test was skipped for want of bubblewrap" in done.stdout
    assert f"{REQUIRE_TOOLS_ENV}=1 and this test was skipped for want of chromium" in done.stdout
    assert "SKIPPED [1] test_inner.py" in done.stdout and "needs a CUDA GPU" in done.stdout  # -rs; a GPU is no CI tool
    assert "system tools: bubblewrap" in done.stdout and "required" in done.stdout  # the header says what it has


def test_a_skip_reason_names_its_tool():
    assert missing_tool("bubblewrap is not installed (apt-get install -y bubblewrap)") == "bubblewrap"
    assert missing_tool("the code task needs bubblewrap (apt-get install -y bubblewrap)") == "bubblewrap"
    assert missing_tool("headless Chromium not found; `.ci/run` installs Debian's chromium package") == "chromium"
    assert missing_tool("needs a CUDA GPU (run `pytest -m gpu` on a machine with one)") is None


def test_wall_clock_bounds_scale_by_one_factor(monkeypatch):
    monkeypatch.delenv(TIME_FACTOR_ENV, raising=False)
    assert scaled(2.0) == 2.0
    monkeypatch.setenv(TIME_FACTOR_ENV, "3")
    assert scaled(2.0) == 6.0
    for bad in ("fast", "0", "-1"):
        monkeypatch.setenv(TIME_FACTOR_ENV, bad)
        with pytest.raises(pytest.UsageError, match=TIME_FACTOR_ENV):
            scaled(1.0)


def test_ci_installs_the_tools_or_stops_and_requires_them():
    script = (ROOT / ".ci" / "run").read_text()
    assert "|| echo" not in script and "|| true" not in script  # a failed install stops CI (set -e)
    assert f"export {REQUIRE_TOOLS_ENV}=1" in script and script.index(f"export {REQUIRE_TOOLS_ENV}=1") < script.index("make test")

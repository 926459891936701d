"""Shared fixtures: tiny models built from configs (no downloads), on the CPU; the one time factor of the
suite's wall-clock bounds; the thread count each test gets back; and CI's switch that turns a missing
system tool into a failure instead of a skip.

Environment switches:

- ``SIRL_TEST_TIME_FACTOR`` (default 1): every wall-clock bound a test asserts is multiplied by it
  (:func:`scaled`). The bounds only catch hangs and runaway work (each is several times what the work takes
  on a loaded 2-core machine); raise it on a slower or busier machine instead of editing a test. Where an
  event can stand in for a clock (a hook at a fixed step, a file a process writes), the tests use the event.
- ``SIRL_REQUIRE_SYSTEM_TOOLS=1`` (``.ci/run`` sets it): a test skipped because a system tool it needs
  (:data:`SYSTEM_TOOLS`) is missing fails instead, so CI cannot go green with the sandbox or the browser
  check untested.
"""

from __future__ import annotations

import os
import shutil

import pytest
import torch

TIME_FACTOR_ENV = "SIRL_TEST_TIME_FACTOR"
REQUIRE_TOOLS_ENV = "SIRL_REQUIRE_SYSTEM_TOOLS"
SYSTEM_TOOLS = {"bubblewrap": ("bwrap",), "chromium": ("chromium", "chromium-browser")}
"""Debian package -> the executables that provide it. A skip whose reason names the package (any case) is
a skip for want of that tool."""


def time_factor() -> float:
    text = os.environ.get(TIME_FACTOR_ENV, "1")
    try:
        factor = float(text)
    except ValueError:
        raise pytest.UsageError(f"{TIME_FACTOR_ENV}={text!r} is not a number (e.g. {TIME_FACTOR_ENV}=3 on a slow machine)") from None
    if not factor > 0:
        raise pytest.UsageError(f"{TIME_FACTOR_ENV}={text!r} must be > 0")
    return factor


def scaled(seconds: float) -> float:
    """A wall-clock bound of ``seconds`` on this machine: ``seconds * SIRL_TEST_TIME_FACTOR``."""
    return seconds * time_factor()


def missing_tool(reason: str) -> str | None:
    """The system tool (Debian package) a skip reason says is missing, if any."""
    lowered = reason.lower()
    return next((package for package in SYSTEM_TOOLS if package in lowered), None)


def pytest_report_header(config):
    found = {package: any(shutil.which(name) for name in names) for package, names in SYSTEM_TOOLS.items()}
    tools = ", ".join(f"{package} {'found' if ok else 'MISSING'}" for package, ok in found.items())
    required = "required" if os.environ.get(REQUIRE_TOOLS_ENV) == "1" else f"skips allowed ({REQUIRE_TOOLS_ENV}=1 fails them)"
    return f"system tools: {tools}; {required}; {TIME_FACTOR_ENV}={time_factor():g}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not report.skipped or os.environ.get(REQUIRE_TOOLS_ENV) != "1" or not isinstance(report.longrepr, tuple):
        return
    reason = str(report.longrepr[2])
    package = missing_tool(reason)
    if package is not None:
        report.outcome = "failed"
        report.longrepr = f"{REQUIRE_TOOLS_ENV}=1 and this test was skipped for want of {package}: {reason}"


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _threads_restored():
    """Whatever a test does to torch's thread count (``torch.set_num_threads(1)`` for a run that must be the
    same on every CPU), the next test starts with the count the session started with."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture
def one_thread():
    """One intra-op thread for this test (so a run's numbers are the same on every CPU); restored after."""
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def arith_tokenizer():
    from sirl.tasks.arith import ArithTask  # imported here, so that a session that needs no model loads no model code
    from sirl.tokenizer import build_char_tokenizer

    return build_char_tokenizer(ArithTask().alphabet())


@pytest.fixture(scope="session")
def nano_llama(arith_tokenizer):
    from sirl.model import SIZE_PRESETS, build_model

    return build_model(arith_tokenizer, "llama", SIZE_PRESETS["nano"], 256, seed=0).eval()

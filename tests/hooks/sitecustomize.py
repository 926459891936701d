"""Imported at start-up by every Python process a test starts with this folder on PYTHONPATH (Python's
``site`` module imports ``sitecustomize``; tests/test_compare.py puts it there).

With ``SIRL_TEST_KILL_AT_CHECKPOINT=RUN_DIR:NAME`` in the environment, the process that points
``RUN_DIR/checkpoints/latest`` at checkpoint ``NAME`` SIGKILLs its whole process group right after, as a
machine that loses power would: a comparison (the group's leader) and the run it is running die at a fixed
point of that run, so no test has to race a run with a clock to interrupt it."""

import os

_SPEC = os.environ.get("SIRL_TEST_KILL_AT_CHECKPOINT")
if _SPEC:
    import signal

    _run_dir, _, _name = _SPEC.rpartition(":")
    _latest = os.path.join(os.path.realpath(_run_dir), "checkpoints", "latest")
    _replace = os.replace

    def _replace_then_kill(src, dst, *args, **kwargs):
        _replace(src, dst, *args, **kwargs)
        if os.path.realpath(dst) == _latest:
            with open(dst) as pointer:
                if pointer.read().strip() == _name:
                    os.killpg(os.getpgrp(), signal.SIGKILL)

    os.replace = _replace_then_kill

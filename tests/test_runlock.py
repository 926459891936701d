"""One writer per run folder and per comparison folder: a second writer is refused with the holder named,
a lock left by a process that died is taken over with a message, and the lock goes when its holder ends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from sirl.cli import main
from sirl.config import to_yaml
from sirl.runlock import LOCK_FILE, FolderInUse, FolderLock
from test_resume import nano_config, records

ROOT = Path(__file__).resolve().parents[1]
NANO = ["--config", "arith", "--model.path=null", "--model.size=nano", "--model.device=cpu", "--algo", "grpo", "--train.steps=2",
        "--rollout.prompts_per_step=2", "--rollout.group_size=2", "--rollout.max_new_tokens=12", "--eval.n_problems=4",
        "--eval.max_new_tokens=12", "--quiet"]


def child_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}


def wait_for(path: Path, process: subprocess.Popen) -> None:
    """Until ``path`` exists (an event the child announces), failing if the child ended first."""
    deadline = time.time() + 300
    while not path.exists():
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.time() < deadline
        time.sleep(0.05)


def test_a_second_writer_of_a_run_folder_is_refused_and_the_first_run_is_intact(tmp_path, capsys):
    """Two `sirl train --out run` at once: the second is refused, naming the first's pid and command; the
    first, held inside its step 1 until then, finishes with its own steps only, and releases the lock."""
    run, paused, go = tmp_path / "run", tmp_path / "paused", tmp_path / "go"
    (tmp_path / "config.yaml").write_text(to_yaml(nano_config()))
    script = textwrap.dedent(f"""
        import pathlib, sys, time
        import sirl.train
        from sirl.cli import main

        real, calls = sirl.train.sample_trajectories, [0]
        def sample(*args, **kwargs):
            if kwargs.get("group_size") and not kwargs.get("groups"):
                calls[0] += 1
                if calls[0] == 1:  # inside step 1: say so, and wait for the test
                    pathlib.Path({str(paused)!r}).touch()
                    while not pathlib.Path({str(go)!r}).exists():
                        time.sleep(0.05)
            return real(*args, **kwargs)
        sirl.train.sample_trajectories = sample
        sys.exit(main(["train", "--config", {str(tmp_path / "config.yaml")!r}, "--out", {str(run)!r}, "--quiet"]))
    """)
    first = subprocess.Popen([sys.executable, "-c", script], env=child_env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(paused, first)
        assert main(["train", "--out", str(run), *NANO]) == 2
        error = capsys.readouterr().err
        assert str(run) in error and f"pid {first.pid}" in error and "another process" in error
        holder = json.loads((run / LOCK_FILE).read_text())
        assert holder["pid"] == first.pid and "--out" in holder["command"]
    finally:
        go.touch()
        out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-3000:]
    assert [r["step"] for r in records(run)] == list(range(7))  # one run's steps, each once
    assert not (run / LOCK_FILE).exists()


def test_a_lock_left_by_a_killed_process_is_taken_over_with_a_message(tmp_path, capsys):
    run = tmp_path / "run"
    script = f"import os, signal\nfrom sirl.runlock import FolderLock\nFolderLock({str(run)!r}, command='sirl train (killed)').acquire()\nos.kill(os.getpid(), signal.SIGKILL)"
    killed = subprocess.run([sys.executable, "-c", script], env=child_env(), timeout=120)
    assert killed.returncode == -signal.SIGKILL
    stale = json.loads((run / LOCK_FILE).read_text())
    assert stale["command"] == "sirl train (killed)"
    assert main(["train", "--out", str(run), *NANO]) == 0
    error = capsys.readouterr().err
    assert f"took over the lock of a process that is no longer running (pid {stale['pid']} on {stale['host']}" in error
    assert "sirl train (killed)" in error
    assert [r["step"] for r in records(run)] == [0, 1, 2] and not (run / LOCK_FILE).exists()


def test_a_lock_from_another_host_is_never_taken_over(tmp_path):
    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": 1, "host": "elsewhere", "command": "sirl train", "started": 0}))
    with pytest.raises(FolderInUse, match=rf"another host \(pid 1 on elsewhere.*delete {tmp_path / LOCK_FILE}"):
        FolderLock(tmp_path).acquire()


def test_the_lock_is_released_however_the_holder_ends_and_a_new_folder_is_not_left_behind(tmp_path):
    with pytest.raises(RuntimeError), FolderLock(tmp_path / "new"):
        assert (tmp_path / "new" / LOCK_FILE).is_file()
        raise RuntimeError("the run failed before writing anything")
    assert not (tmp_path / "new").exists()
    with FolderLock(tmp_path / "kept"):
        (tmp_path / "kept" / "metrics.jsonl").write_text("")
    assert sorted(p.name for p in (tmp_path / "kept").iterdir()) == ["metrics.jsonl"]


def test_a_second_comparison_in_the_same_folder_is_refused(tmp_path, capsys):
    out = tmp_path / "cmp"
    with FolderLock(out, command="sirl compare --out cmp (the first)"):
        code = main(["compare", "--task", "arith", "--methods", "grpo", "--seeds", "1", "--budget-tokens", "100", "--out", str(out), "--quiet"])
        assert code == 2
        assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]  # nothing of a comparison was written
    error = capsys.readouterr().err
    assert f"pid {os.getpid()}" in error and "sirl compare --out cmp (the first)" in error


# --- `--out` of an existing run --------------------------------------------------------------------


def snapshot(folder: Path) -> dict:
    """Every path under ``folder`` (and the folder) with its size, modification time and bytes."""
    found = {".": folder.stat().st_mtime_ns}
    for path in sorted(folder.rglob("*")):
        stat = path.stat()
        found[path.relative_to(folder).as_posix()] = (stat.st_size, stat.st_mtime_ns, path.read_bytes() if path.is_file() else None)
    return found


def test_train_out_an_existing_run_is_refused_with_the_choices_and_touches_nothing(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), *NANO]) == 0
    before = snapshot(run)
    capsys.readouterr()
    assert main(["train", "--out", str(run), *NANO, "--train.steps=3"]) == 2
    error = capsys.readouterr().err
    assert f"{run} holds a run already" in error and "nothing was changed" in error
    assert f"sirl train --resume {run}" in error and "another folder" in error and "--overwrite" in error
    assert snapshot(run) == before
    assert main(["train", "--resume", str(run), "--overwrite", "--quiet"]) == 2  # one or the other
    assert snapshot(run) == before

    (run / "notes.txt").write_text("the old run's notes")
    assert main(["train", "--out", str(run), *NANO, "--train.steps=3", "--overwrite"]) == 0
    assert [r["step"] for r in records(run)] == [0, 1, 2, 3]  # a new run, each step once
    assert not (run / "notes.txt").exists() and not (run / LOCK_FILE).exists()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["final", "latest"]


def test_sft_out_an_existing_run_is_refused_and_eval_out_has_one_writer(tmp_path, capsys):
    sft = tmp_path / "sft"
    args = ["sft", "--config", "arith_sft", "--model.size=nano", "--model.device=cpu", "--sft.steps=2", "--sft.eval_every=2",
            "--sft.batch_size=4", "--sft.target_accuracy=null", "--eval.n_problems=4", "--out", str(sft), "--quiet"]
    assert main(args) == 0
    before = snapshot(sft)
    capsys.readouterr()
    assert main(args) == 2
    error = capsys.readouterr().err
    assert f"{sft} holds a run already" in error and "--overwrite" in error and "sirl train --resume" not in error
    assert snapshot(sft) == before
    assert main([*args, "--overwrite"]) == 0
    assert [json.loads(line)["step"] for line in (sft / "metrics.jsonl").read_text().splitlines()] == [1, 2]

    out = tmp_path / "eval"
    with FolderLock(out, command="sirl eval --out eval (the first)"):
        assert main(["eval", "--model", str(sft), "--config", "arith", "--model.device=cpu", "--eval.n_problems=4", "--out", str(out), "--quiet"]) == 2
        assert not (out / "eval.json").exists()
    assert "sirl eval --out eval (the first)" in capsys.readouterr().err



def test_a_comparison_never_deletes_or_resumes_a_run_folder_another_process_writes(tmp_path, capsys):
    """A run of a killed comparison can outlive it (a SIGKILL reaches the comparison only). Rerun, the
    comparison used to delete that run's folder (started, no checkpoint yet) under it and start again."""
    out = tmp_path / "cmp"
    folder = out / "runs" / "grpo" / "seed0"
    with FolderLock(folder, command="sirl train (a run still going)"):
        code = main(["compare", "--task", "arith", "--methods", "grpo", "--seeds", "1", "--budget-tokens", "100", "--final-problems", "4",
                     "--jobs", "1", "--threads", "1", "--out", str(out), "--eval.n_problems=4", "--model.device=cpu", "--quiet"])
        assert code == 1
        assert (folder / LOCK_FILE).is_file()  # not deleted under its writer
    error = capsys.readouterr().err
    assert "grpo-seed0" in error and "sirl train (a run still going)" in error and "rerun the same command" in error

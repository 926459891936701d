"""The run folder's logs after a resume: each step once, in metrics.jsonl and in TensorBoard."""

from __future__ import annotations

import json
import time

from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

from sirl.config import load_config
from sirl.runlog import RunLog


def tensorboard_steps(tb_dir, tag: str) -> list[tuple[int, float]]:
    """(step, value) of every ``tag`` scalar in every event file, read record by record as tbparse or
    TensorBoard's fast loader do (no purge markers honoured)."""
    found = []
    for path in sorted(tb_dir.iterdir()):
        for event in EventFileLoader(str(path)).Load():
            found += [(event.step, value.tensor.float_val[0] if value.HasField("tensor") else value.simple_value)
                      for value in event.summary.value if value.tag == tag]
    return found


def test_a_resumed_runs_tensorboard_holds_each_step_once(tmp_path):
    """Killed after step 7 with the checkpoint at step 5, then resumed: steps 6 and 7 are logged again."""
    config = load_config()
    log = RunLog(tmp_path, config)
    for step in range(1, 8):
        log.log(step, {"loss": float(step)})
    log.close()
    with (tmp_path / "tb").iterdir().__next__().open("ab") as handle:
        handle.write(b"\x10\x00\x00")  # a torn last record: the process died while writing it
    time.sleep(1.1)  # event files are named by the second they were opened
    log = RunLog(tmp_path, config, resume_step=5, write_config=False)
    for step in range(6, 10):
        log.log(step, {"loss": 100.0 + step})
    log.close()
    assert tensorboard_steps(tmp_path / "tb", "loss") == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 4.0), (5, 5.0),
                                                         (6, 106.0), (7, 107.0), (8, 108.0), (9, 109.0)]
    assert [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == list(range(1, 10))
    assert len(list((tmp_path / "tb").iterdir())) == 2 and not list(tmp_path.glob(".*tmp"))

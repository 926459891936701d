"""Logging sinks (train.report_to): TensorBoard by default, wandb (offline) and Trackio mirror what
metrics.jsonl records, none at all on request, and a missing package names the extra to install."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sirl.config import ConfigError, load_config
from sirl.runlog import RunLog
from test_runlog import tensorboard_steps

STEPS = {1: {"loss": 0.5, "eval/accuracy": 0.25, "flag": True, "nan": math.nan, "note": "text"},
         2: {"loss": 0.25, "tokens/total": 96}}
"""What a run logs; only finite numbers (not the bool, the NaN or the text) reach a sink."""


def log_steps(run_dir: Path, overrides: list[str], steps=STEPS, resume_step: int | None = None) -> list[dict]:
    log = RunLog(run_dir, load_config(None, overrides), resume_step=resume_step, write_config=resume_step is None)
    records = [log.log(step, metrics) for step, metrics in steps.items()]
    log.close()
    return records


def test_tensorboard_is_the_default_and_none_logs_metrics_jsonl_alone(tmp_path):
    log_steps(tmp_path / "default", [])
    assert tensorboard_steps(tmp_path / "default" / "tb", "loss") == [(1, 0.5), (2, 0.25)]
    assert tensorboard_steps(tmp_path / "default" / "tb", "flag") == []
    for value in ([], "none"):
        run = tmp_path / f"none-{value}"
        log_steps(run, [f"train.report_to={json.dumps(value)}"])
        assert not (run / "tb").exists()
        assert [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [0.5, 0.25]


def test_unknown_sinks_are_config_errors():
    with pytest.raises(ConfigError, match=r"train.report_to names \['mlflow'\], which are not sinks; valid: \['tensorboard', 'trackio', 'wandb'\]"):
        load_config(None, ["train.report_to=[tensorboard, mlflow]"])
    with pytest.raises(ConfigError, match="'none' cannot go with other sinks"):
        load_config(None, ["train.report_to=[none, wandb]"])


def test_a_missing_package_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed
    with pytest.raises(ModuleNotFoundError, match=r"train.report_to names wandb, which needs the wandb package: pip install 'sirl\[wandb\]'"):
        log_steps(tmp_path, ["train.report_to=wandb"])


def wandb_history(run_dir: Path) -> list[dict]:
    """The history rows of the offline wandb runs under ``run_dir``, read from their ``.wandb`` files: a 7-byte
    header (":W&B", magic, version), then LevelDB log records (CRC 4 bytes, length 2 bytes little-endian,
    type 1 byte: 1 full, 2 first, 3 middle, 4 last) in 32 KiB blocks, each payload a wandb Record protobuf."""
    from wandb.proto import wandb_internal_pb2

    rows = []
    for path in sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb")):
        data, position, pending = path.read_bytes(), 7, b""
        assert data[:4] == b":W&B"
        while position + 7 <= len(data):
            left = 32768 - position % 32768
            if left < 7:  # a block's tail too short for a header is padding
                position += left
                continue
            length, kind = int.from_bytes(data[position + 4:position + 6], "little"), data[position + 6]
            pending += data[position + 7:position + 7 + length]
            position += 7 + length
            if kind in (1, 4):
                record = wandb_internal_pb2.Record()
                record.ParseFromString(pending)
                pending = b""
                if record.WhichOneof("record_type") == "history":
                    rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item})
    return rows


def test_wandb_offline_mirrors_metrics_and_resumes_the_same_run(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    for name, value in {"WANDB_MODE": "offline", "WANDB_DIR": tmp_path / "wandb-home", "WANDB_CONFIG_DIR": tmp_path / "wandb-config",
                        "WANDB_CACHE_DIR": tmp_path / "wandb-cache", "WANDB_SILENT": "true"}.items():
        monkeypatch.setenv(name, str(value))
    run = tmp_path / "run"
    try:
        log_steps(run, ["train.report_to=[wandb, tensorboard]", "name=wandb-test"])
        run_id = json.loads((run / "sinks.json").read_text())["wandb_id"]
        log_steps(run, ["train.report_to=[wandb, tensorboard]", "name=wandb-test"], steps={2: {"loss": 0.25}, 3: {"loss": 0.125}}, resume_step=1)
    finally:
        wandb.teardown()  # the wandb service process ends with the test
    assert json.loads((run / "sinks.json").read_text())["wandb_id"] == run_id  # the resumed run is the same wandb run
    # offline-run-<date>_<time>-<run id>, and "-1" after it when the resumed run starts in the same second
    assert {re.fullmatch(r"offline-run-\d{8}_\d{6}-([^-]+)(-\d+)?", p.name).group(1)
            for p in (run / "wandb").glob("offline-run-*")} == {run_id}
    history = [{k: v for k, v in row.items() if not k.startswith("_") or k == "_step"} for row in wandb_history(run)]
    assert history[:2] == [{"_step": 1, "loss": 0.5, "eval/accuracy": 0.25, "time/elapsed_s": history[0]["time/elapsed_s"]},
                           {"_step": 2, "loss": 0.25, "tokens/total": 96, "time/elapsed_s": history[1]["time/elapsed_s"]}]
    assert [row["_step"] for row in history] == [1, 2, 2, 3]  # the resumed run logged steps 2 and 3 again
    assert tensorboard_steps(run / "tb", "loss") == [(1, 0.5), (2, 0.25), (3, 0.125)]


TRACKIO_RUN = """
import json, sys
from pathlib import Path
from sirl.config import load_config
from sirl.runlog import RunLog
from trackio.sqlite_storage import SQLiteStorage

log = RunLog(Path(sys.argv[1]), load_config(None, ["train.report_to=trackio", "name=trackio-test", "train.report_project=sirl-test"]))
log.log(1, {"loss": 0.5, "flag": True})
log.log(2, {"loss": 0.25})
log.close()
print("ROWS", json.dumps([{k: v for k, v in row.items() if k in ("step", "loss", "flag")} for row in SQLiteStorage.get_logs("sirl-test", "trackio-test")]))
"""


def test_trackio_mirrors_metrics(tmp_path):
    pytest.importorskip("trackio")
    # Trackio reads TRACKIO_DIR when it is imported, so the run goes in a fresh interpreter
    env = dict(os.environ, TRACKIO_DIR=str(tmp_path / "trackio"), HF_HOME=str(tmp_path / "hf"), OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-c", TRACKIO_RUN, str(tmp_path / "run")], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    [rows] = [line.removeprefix("ROWS ") for line in result.stdout.splitlines() if line.startswith("ROWS ")]  # Trackio prints too
    assert json.loads(rows) == [{"step": 1, "loss": 0.5}, {"step": 2, "loss": 0.25}]

"""Models by name: ``--model`` takes a local directory or a Hub id, and a Hub id resolves through the local
Hugging Face cache with no network (``HF_HUB_OFFLINE=1``), from a cache laid out as huggingface_hub lays it:
``models--org--name/{blobs,refs,snapshots}``, each snapshot file a symlink to its blob."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch

from sirl.cli import main
from sirl.model import ModelNotFound, load_model, model_directory
from sirl.paths import PROJECT_ROOT

TINY = PROJECT_ROOT / "checkpoints" / "arith7-tiny"
MODEL_FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "sirl_task.json")
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def cache_model(cache: Path, repo_id: str, files: tuple[str, ...] = MODEL_FILES, commit: str = COMMIT, source: Path = TINY) -> Path:
    """Lay ``files`` of ``source`` into ``cache`` as huggingface_hub does for ``repo_id`` at ``commit`` (the
    ``main`` ref): content-addressed blobs, a snapshot of symlinks to them, refs/main holding the commit."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    for name in files:
        data = (source / name).read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / name).symlink_to(os.path.relpath(blob, snapshot))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hf" / "hub"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)  # no local folder of the Hub id's name can be found
    return cache


def test_a_hub_id_loads_from_the_offline_cache_the_same_weights(offline_cache):
    snapshot = cache_model(offline_cache, "sirl-test/arith7-tiny")
    assert model_directory("sirl-test/arith7-tiny") == snapshot
    assert model_directory(f"sirl-test/arith7-tiny@{COMMIT}") == snapshot  # a revision by commit hash
    assert model_directory("sirl-test/arith7-tiny@main") == snapshot  # a revision by branch, through refs/main
    model, tokenizer = load_model("sirl-test/arith7-tiny")
    reference, reference_tokenizer = load_model(TINY)
    assert tokenizer.get_vocab() == reference_tokenizer.get_vocab()
    for (name, p), (_, q) in zip(model.state_dict().items(), reference.state_dict().items(), strict=True):
        assert torch.equal(p, q), name


def test_a_hub_id_missing_from_the_cache_says_what_was_tried(offline_cache):
    with pytest.raises(ModelNotFound) as error:
        model_directory("sirl-test/not-there")
    message = str(error.value)
    assert "sirl-test/not-there is not a Hugging Face model directory (no such directory" in message  # tried as a directory
    assert str(offline_cache / "models--sirl-test--not-there") in message  # and in the cache
    assert "HF_HUB_OFFLINE=1" in message and "hf download sirl-test/not-there" in message  # why not downloaded, what to do


def test_a_cached_snapshot_without_weights_names_what_is_missing(offline_cache):
    cache_model(offline_cache, "sirl-test/config-only", files=("config.json",))
    with pytest.raises(ModelNotFound, match=r"lacks the weights \(\*\.safetensors or \*\.bin\).*\['config\.json'\]"):
        model_directory("sirl-test/config-only")


def test_a_path_that_is_no_hub_id_and_no_directory(offline_cache):
    with pytest.raises(ModelNotFound, match=r"./missing/model/x is not a Hugging Face model directory \(no such directory.*not a Hub model id"):
        model_directory("./missing/model/x")
    (offline_cache.parent.parent / "not-a-model").mkdir()
    with pytest.raises(ModelNotFound, match="no config.json"):  # a directory that exists is never looked up on the Hub
        model_directory("not-a-model")


def test_cli_eval_takes_a_hub_id(offline_cache, capsys):
    cache_model(offline_cache, "sirl-test/arith7-tiny")
    code = main(["eval", "--config", str(PROJECT_ROOT / "configs" / "arith_prime.yaml"), "--model", "sirl-test/arith7-tiny",
                 "--eval.n_problems=4", "--eval.max_new_tokens=40", "--json", "--quiet"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n"] == 4


def test_cli_refuses_a_hub_model_trained_on_another_task(offline_cache, capsys):
    cache_model(offline_cache, "sirl-test/arith7-tiny")  # its sirl_task.json names arith
    code = main(["eval", "--task", "countdown", "--model", "sirl-test/arith7-tiny", "--eval.n_problems=2", "--quiet"])
    assert code == 2
    assert "was trained on task 'arith'" in capsys.readouterr().err


def test_online_a_cached_model_is_used_without_asking_the_hub(offline_cache, monkeypatch):
    import huggingface_hub

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    asked = []
    monkeypatch.setattr(huggingface_hub, "list_repo_files", lambda *a, **k: asked.append(a) or [])
    snapshot = cache_model(offline_cache, "sirl-test/arith7-tiny")
    assert model_directory("sirl-test/arith7-tiny") == snapshot and asked == []

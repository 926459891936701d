import json

import torch

from sirl.config import load_config
from sirl.model import load_model
from sirl.batch import collate_supervised
from sirl.model import supervised_loss
from sirl.sft import run_sft, warmup_cosine


def test_collate_masks_exactly_the_response_predictions():
    batch = collate_supervised([([5, 6], [7, 8, 1]), ([9], [3, 1])], pad_id=0)
    assert batch.input_ids_BT.tolist() == [[5, 6, 7, 8, 1], [9, 3, 1, 0, 0]]
    assert batch.attention_BT.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    # position t predicts token t+1: row 0 predicts 7, 8, 1 from positions 1, 2, 3
    assert batch.target_mask_BT.tolist() == [[0, 1, 1, 1], [1, 1, 0, 0]]


def test_the_supervised_loss_is_the_token_mean_cross_entropy_of_the_targets(nano_llama):
    batch = collate_supervised([([5, 6], [7, 8, 1]), ([9], [3, 1])], pad_id=0)
    # naive: each row on its own, the log-prob of each target given everything before it
    terms = []
    for prompt, response in [([5, 6], [7, 8, 1]), ([9], [3, 1])]:
        ids = torch.tensor([prompt + response])
        logp = torch.log_softmax(nano_llama(ids).logits[0].float(), -1)
        terms += [-logp[len(prompt) - 1 + j, token] for j, token in enumerate(response)]
    with torch.no_grad():
        assert torch.allclose(supervised_loss(nano_llama, batch), torch.stack(terms).mean(), atol=1e-5)


def test_warmup_cosine_schedule():
    assert warmup_cosine(0, 10, 100) == 0.1
    assert warmup_cosine(9, 10, 100) == 1.0
    assert warmup_cosine(100, 10, 100) == 0.1
    assert 0.1 < warmup_cosine(55, 10, 100) < 1.0


def test_a_short_sft_run_lowers_the_loss_and_saves_a_loadable_model(tmp_path):
    config = load_config(
        "arith_sft",
        [
            "model.size=nano", "model.device=cpu", "sft.steps=60", "sft.eval_every=30", "sft.warmup_steps=5",
            "sft.batch_size=32", "sft.target_accuracy=null", "eval.n_problems=16", "eval.max_new_tokens=80",
        ],
    )
    result = run_sft(config, tmp_path / "run", quiet=True)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    first = sum(r["loss/sft"] for r in records[:5]) / 5
    last = sum(r["loss/sft"] for r in records[-5:]) / 5
    assert last < 0.8 * first, (first, last)
    assert result.steps == 60 and "eval/accuracy" in records[29]
    for name in ["config.json", "model.safetensors", "tokenizer.json", "config.yaml", "eval.json"]:
        assert (tmp_path / "run" / name).is_file(), name
    model, tokenizer = load_model(tmp_path / "run")
    assert sum(p.numel() for p in model.parameters()) < 50_000
    assert tokenizer("7+5=2;")["input_ids"] == [tokenizer.convert_tokens_to_ids(c) for c in "7+5=2;"]
    assert torch.isfinite(next(model.parameters())).all()

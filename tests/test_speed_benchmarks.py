"""The speed benchmarks' arithmetic against hand-derived numbers, and gpu_speed.py run end to end on a tiny model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import LlamaConfig

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

from bounds import Machine, Workload, decode_step_bound, update_flops  # noqa: E402
from common import ModelCosts  # noqa: E402

SMOLLM2 = LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                      head_dim=64, vocab_size=49152)


def test_smollm2_costs_per_token():
    costs = ModelCosts.of(SMOLLM2)
    # Per layer: q, k, v = 576 x 64 x (9 + 3 + 3) = 552,960; o = 576 x 576 = 331,776; gate, up, down =
    # 3 x 576 x 1,536 = 2,654,208; 3,538,944 in all, x 30 layers = 106,168,320. Head: 49,152 x 576.
    assert costs.body_parameters == 106_168_320 and costs.head_parameters == 28_311_552
    # Keys and values: 2 x 30 layers x 3 heads x 64 = 11,520 numbers a token; attention: q.k and p.v, 2 FLOPs
    # each per head dimension, 9 heads, 30 layers = 4 x 30 x 9 x 64 = 69,120 FLOPs a (query, key) pair.
    assert costs.kv_bytes_per_token == 11_520 and costs.attention_flops_per_pair == 69_120


def test_a_decode_step_is_bound_by_the_slower_of_reading_and_multiplying():
    costs = ModelCosts.of(SMOLLM2)
    m = Machine(threads=1, read_gb_s=25.0, gflops={"float32": 100.0, "bfloat16": 200.0})
    # Batch 8, context 100, bf16: reads 134,479,872 x 2 + 8 x 100 x 11,520 x 2 = 287,391,744 bytes = 11.50 ms at
    # 25 GB/s; computes 2 x 134,479,872 x 8 + 69,120 x 800 = 2,207,973,888 FLOPs = 11.04 ms at 200 GFLOPS.
    assert decode_step_bound(m, costs, 8, 100, "bfloat16") == pytest.approx(287_391_744 / 25e9)
    # Batch 64: 17.66 GFLOPs = 88.3 ms of arithmetic against 20.2 ms of reading.
    assert decode_step_bound(m, costs, 64, 100, "bfloat16") == pytest.approx((2 * 134_479_872 * 64 + 69_120 * 6400) / 200e9)


def test_sharing_a_prompt_removes_its_repeats_from_the_update():
    costs = ModelCosts.of(SMOLLM2)
    w = Workload(rows=8, new_tokens=128, prompt_tokens=140)
    whole, shared = update_flops(costs, w, False), update_flops(costs, w, True)
    # The decoder's share: 6 FLOPs per weight per token, over 8 x 268 tokens whole and 140 + 8 x 128 shared.
    decoder_saving = 6 * costs.body_parameters * (8 * 268 - (140 + 8 * 128))
    attention_saving = 3 * costs.attention_flops_per_pair * (8 * 268**2 / 2 - (140**2 / 2 + 8 * 128 * (140 + 64)))
    assert whole - shared == pytest.approx(decoder_saving + attention_saving)


@pytest.mark.slow
def test_gpu_speed_runs_on_a_cpu_at_a_tiny_size(tmp_path):
    out = tmp_path / "gpu.jsonl"
    subprocess.run([sys.executable, str(BENCHMARKS / "gpu_speed.py"), "--device", "cpu", "--tiny", "--repeats", "1", "--out", str(out)],
                   check=True, cwd=BENCHMARKS.parent, capture_output=True, text=True, timeout=600)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["label"] for r in rows] == ["sirl", "HF generate (bf16)", "sirl grpo step"]
    assert all(r["tiny"] and 0 < r["share_of_bound"] and r["bound_s"] > 0 for r in rows)
    assert rows[0]["tokens_per_s"] > 0 and rows[2]["step_s"] == pytest.approx(rows[2]["rollout_s"] + rows[2]["update_s"], abs=0.002)

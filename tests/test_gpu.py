"""The same code on a CUDA device: sampling, evaluation and every training algorithm. Skipped without a
GPU; run on one with `pytest -m gpu`."""

import json

import pytest
import torch

from sirl.config import load_config
from sirl.evaluate import evaluate, heldout_problems
from sirl.model import encode_prompt, eos_ids, load_model
from sirl.rollout import SamplingParams, generate
from sirl.rollout.engine import FastBackend, HFBackend
from sirl.tasks.arith import ArithTask
from sirl.train import run_train

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run `pytest -m gpu` on a machine with one)"),
]


@pytest.fixture(scope="module")
def policies():
    cpu, tokenizer = load_model("checkpoints/arith-tiny")
    gpu, _ = load_model("checkpoints/arith-tiny")
    return cpu.eval(), gpu.to("cuda").eval(), tokenizer


def contexts(tokenizer, n=16):
    task = ArithTask(min_ops=8, max_ops=12)
    return [encode_prompt(tokenizer, p.prompt) for p in heldout_problems(task, n, seed=0)]


@pytest.mark.parametrize("backend", [FastBackend, HFBackend])
def test_greedy_on_the_gpu_equals_greedy_on_the_cpu(policies, backend):
    cpu, gpu, tokenizer = policies
    prompts = contexts(tokenizer)
    eos = eos_ids(cpu, tokenizer)
    params = SamplingParams(96, temperature=0.0)
    on_cpu = generate(cpu, prompts, params, eos_ids=eos, pad_id=tokenizer.pad_token_id, backend=backend(cpu))
    on_gpu = generate(gpu, prompts, params, eos_ids=eos, pad_id=tokenizer.pad_token_id, backend=backend(gpu))
    assert [on_gpu.row_tokens(i) for i in range(len(on_gpu))] == [on_cpu.row_tokens(i) for i in range(len(on_cpu))]


def test_sampling_on_the_gpu_uses_a_device_generator_and_logprobs_match_teacher_forcing(policies):
    _, gpu, tokenizer = policies
    prompts = contexts(tokenizer, 8)
    generator = torch.Generator(device="cuda").manual_seed(0)
    out = generate(gpu, prompts, SamplingParams(64), eos_ids=eos_ids(gpu, tokenizer), pad_id=tokenizer.pad_token_id,
                   repeats=4, generator=generator)
    for row in range(len(out)):
        context, new = prompts[int(out.context_index_B[row])], out.row_tokens(row)
        with torch.no_grad():
            logits = gpu(torch.tensor([context + new], device="cuda")).logits[0, len(context) - 1 : -1].float()
        expected = torch.log_softmax(logits, -1).gather(-1, torch.tensor(new, device="cuda")[:, None]).squeeze(-1)
        torch.testing.assert_close(out.logp_BT[row, : len(new)].cpu(), expected.cpu(), atol=1e-4, rtol=1e-4)


def test_evaluation_on_the_gpu_matches_the_cpu(policies):
    cpu, gpu, tokenizer = policies
    task = ArithTask(min_ops=8, max_ops=12)
    problems = heldout_problems(task, 64, seed=1234)
    a = evaluate(cpu, tokenizer, task, problems, max_new_tokens=96)
    b = evaluate(gpu, tokenizer, task, problems, max_new_tokens=96, pass_k=[1, 4], n_samples=4)
    assert a.accuracy == b.accuracy and a.rewards == b.rewards
    # four samples per problem, c_i of them right: pass@1 = sum(c_i) / 256 and pass@4 = #(c_i > 0) / 64, so
    # 256 pass@1 and 64 pass@4 are whole numbers with pass@4 / 4 <= pass@1 <= pass@4
    p1, p4 = b.pass_at_k[1], b.pass_at_k[4]
    assert 256 * p1 == pytest.approx(round(256 * p1)) and 64 * p4 == pytest.approx(round(64 * p4)) and p4 / 4 <= p1 <= p4


@pytest.mark.parametrize("algo", ["grpo", "si", "si_internal", "random_reset", "vine"])
def test_every_algorithm_trains_on_the_gpu(tmp_path, algo):
    config = load_config("arith", [
        "model.device=cuda", f"algo.name={algo}", "train.steps=3", "train.eval_every=3", "rollout.prompts_per_step=6",
        "rollout.group_size=4", "eval.n_problems=16", "train.checkpoint_every=2",
    ])
    before, _ = load_model("checkpoints/arith-tiny")
    run_train(config, tmp_path / "run", quiet=True)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == 3
    for r in records[1:]:
        assert r["tokens/total"] == r["tokens/policy"] + r["tokens/probe"] + r["tokens/verify"] > 0
        assert torch.isfinite(torch.tensor(r["loss/policy"]))
    after, _ = load_model(tmp_path / "run" / "checkpoints" / "final")
    changed = any(not torch.equal(p, q) for p, q in zip(before.parameters(), after.parameters()))
    assert changed
    # and it resumes on the GPU from its step-2 checkpoint
    config.train.steps = 4
    run_train(config, tmp_path / "run", quiet=True, resume=True, force=True)
    assert json.loads((tmp_path / "run" / "eval.json").read_text())["step"] == 4

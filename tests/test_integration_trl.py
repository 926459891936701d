"""sirl.integrations.trl: TRL's GRPOTrainer with sirl's per-token credit.

- on a fixed batch, the trainer's token advantages equal sirl's own credit exactly: the credit core
  (sirl.credit.divergence_credit) and sirl's si with the divergence localizer on the same rows;
- an end-to-end TRL run on the CPU from checkpoints/arith7-tiny: finite loss, parameters moved, TRL's own
  advantage on rows the credit leaves alone, zero advantage on the tokens a failure shares with a success;
- two processes (gloo, spawned on the CPU) whose groups straddle the processes give the credit of one
  process on the gathered rows;
- the README's example runs.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import re
import time
from pathlib import Path

import pytest
import torch

trl = pytest.importorskip("trl")

from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from bpe_helpers import bpe_tokenizer  # noqa: E402
from trl_helpers import POLICY, ROOT, TASK, arith_dataset, arith_reward, grpo_config, make_trainer  # noqa: E402
from sirl.credit import divergence_credit, outcome_credit, tree_credit  # noqa: E402
from sirl.credit.steps import split_steps, token_step_ends  # noqa: E402
from sirl.integrations.tokens import completion_step_ends, decoded_offsets, mapped_offsets  # noqa: E402
from sirl.integrations.trl import (  # noqa: E402
    GOOD_PREFIXES_FILE, CreditGRPOTrainer, continued_groups, credit_options_of, good_prefix, group_token_advantages,
)
from sirl.rollout.steps import char_spans_to_token_spans, token_char_offsets  # noqa: E402
from sirl.types import Problem, Trajectory  # noqa: E402

HANG_S = 600
"""The two-process run's workers are stopped (and asked for their stacks) after this long: about 30 s on 2
idle cores, minutes on a machine oversubscribed several times."""
PROBLEM = Problem("3+4*2-1=", "6", {"numbers": [3, 4, 2, 1], "ops": "+*-", "difficulty": 3})  # 3+4=0; 0*2=0; 0-1=6 (mod 7)

# Two groups of four arith completions (prompt 3+4*2-1=, answer 6). Group 0: two successes; "...0-1=5;#5"
# leaves them at its third step's result, "3+4=1;..." at its first. Group 1: one success, a failure that
# leaves it at the answer step, and a half reward that is a failure for the credit (threshold 1.0).
GROUPS = [
    [("3+4=0;0*2=0;0-1=6;#6", 1.0), ("3+4=0;0*2=0;0-1=5;#5", 0.0), ("3+4=1;1*2=2;2-1=1;#1", 0.0), ("3+4=0;0*2=0;0-1=6;#6", 1.0)],
    [("3+4=0;0*2=0;0-1=6;#6", 1.0), ("3+4=0;0*2=0;0-1=6;#5", 0.0), ("3+4=0;0*2=1;1-1=0;#0", 0.5), ("3+4=2;2*2=4;4-1=3;#3", 0.0)],
]


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(POLICY)


def encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


def fixed_batch(tokenizer):
    texts = [text for group in GROUPS for text, _ in group]
    rewards = [reward for group in GROUPS for _, reward in group]
    return [encode(tokenizer, t) for t in texts], texts, rewards


# --- step boundaries ------------------------------------------------------------------------------


def test_completion_step_ends_hand_derived(tokenizer):
    # one token per character: "7+5=2;" tokens 0-5, "2*3=6;" 6-11, "#6" 12-13, EOS (no text) joins the last step
    ids = encode(tokenizer, "7+5=2;2*3=6;#6")
    assert completion_step_ends(tokenizer, ids, "regex:;") == [6, 12, 15]
    assert completion_step_ends(tokenizer, ids, "lines") == [15]


@pytest.mark.parametrize("text", [
    "Janet has 16 eggs.\n\nShe eats 3.\n 13 are left.\n\n#### 13\n",
    "Le café coûte 3 €.\n\nDeux cafés: 6 €.\n 日本 😀\n\n",
    "First, 7+5=2;\n\n then 2*3=6;\n  so #6",
])
def test_offset_mapping_and_decoding_give_sirls_step_ends(text):
    """A BPE tokenizer with merged-whitespace and multi-byte tokens: the fast offset mapping, the decoding
    path and sirl's own rollout mapping (sirl.rollout.steps) give the same step ends."""
    tokenizer = bpe_tokenizer()
    ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    mapped, decoded = mapped_offsets(tokenizer, ids), decoded_offsets(tokenizer, ids)
    assert mapped is not None and mapped[0] == decoded[0] == text
    spans = split_steps(text, "lines")
    _, starts = token_char_offsets(tokenizer, ids)
    sirl_ends = [end for _, end in char_spans_to_token_spans(spans, starts, len(text))]
    assert token_step_ends(spans, mapped[1]) == token_step_ends(spans, decoded[1]) == sirl_ends
    assert len(sirl_ends) > 2


def test_a_segmentation_the_tokenizer_would_not_make_falls_back_to_decoding():
    tokenizer = bpe_tokenizer()
    ids = [tokenizer.convert_tokens_to_ids(c) for c in "Janet"]  # one byte token per letter: not its own encoding
    assert tokenizer("Janet", add_special_tokens=False)["input_ids"] != ids
    assert mapped_offsets(tokenizer, ids) is None
    assert decoded_offsets(tokenizer, ids)[1] == [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5)]


# --- the credit on a fixed batch ------------------------------------------------------------------


def sirl_si_credit(tokenizer, texts, responses, rewards, group_size, outcome_advantage):
    """sirl's own si with the divergence localizer on the same rows (Trajectories built as sirl's rollout
    engine builds them: the task's steps mapped onto tokens by sirl.rollout.steps)."""
    from sirl.methods.base import MethodContext, MethodMemory
    from sirl.methods.settings import SiSettings
    from sirl.methods.si import si_credit

    settings = SiSettings(localizer="divergence", error_span="first_difference")
    rows = []
    for i, (text, ids, reward) in enumerate(zip(texts, responses, rewards)):
        decoded, starts = token_char_offsets(tokenizer, ids)
        rows.append(Trajectory(
            problem=PROBLEM, prompt_ids=[0], response_ids=ids, logprobs=[0.0] * len(ids), text=decoded,
            reward=reward, truncated=False, group=i // group_size,
            step_spans=char_spans_to_token_spans(TASK.split_steps(decoded), starts, len(decoded)),
        ))

    class NoProbes:
        def probe(self, *args, **kwargs):
            raise AssertionError("the divergence localizer draws no probe")

    context = MethodContext(task=TASK, settings=settings, outcome_advantage=outcome_advantage, sampler=NoProbes(),
                            rng=random.Random(0), memory=MethodMemory.of(settings), step=1)
    return si_credit(rows, context).token_advantages


@pytest.fixture(scope="module")
def fixed_trainer(tmp_path_factory):
    return make_trainer(tmp_path_factory.mktemp("fixed"), credit="divergence", step_splitter="regex:;",
                        credit_options={"error_span": "first_difference"})


def test_fixed_batch_equals_sirls_credit_exactly(fixed_trainer, tokenizer):
    """scale_rewards="none": the trainer's advantages are the credit core's with dr_grpo and sirl's si
    (algo.outcome_advantage=dr_grpo) on the same rows, bit for bit."""
    responses, texts, rewards = fixed_batch(tokenizer)
    fixed_trainer.scale_rewards = "none"
    width = max(map(len, responses)) + 3
    got_BT, metrics = fixed_trainer.token_advantages(responses, torch.tensor(rewards)[:, None], 4, width)
    step_ends = [[end for _, end in char_spans_to_token_spans(TASK.split_steps(t), token_char_offsets(tokenizer, ids)[1], len(t))]
                 for t, ids in zip(texts, responses)]
    core = divergence_credit(responses, rewards, [i // 4 for i in range(8)], step_ends, estimator="dr_grpo", error_span="first_difference")
    si = sirl_si_credit(tokenizer, texts, responses, rewards, 4, "dr_grpo")
    for row, ids in enumerate(responses):
        assert torch.equal(got_BT[row, :len(ids)], core.token_advantages[row])
        assert torch.equal(got_BT[row, :len(ids)], si[row])
        assert not got_BT[row, len(ids):].any()  # padding
    # three failures localized of four ("...#5" in group 0, "...6;#5" and the half reward in group 1);
    # "3+4=2;..." leaves every success at its first step's result: localized at step 0 too
    assert {d.row for d in core.divergences} == {1, 2, 5, 6, 7}
    assert metrics["credit/localized_frac"] == 1.0
    # hand-derived: row 1 ("3+4=0;0*2=0;0-1=5;#5") shares 16 tokens with the successes ("3+4=0;0*2=0;0-1=");
    # from its 17th token (the "5" of step 2) the penalty -(V(before) - V(after)) = -(2/3 - 0): the free
    # rows through "3+4=0;0*2=0;" are rows 0, 1, 3 (2 successes of 3), and none of them but row 1 wrote "0-1=5;"
    assert not got_BT[1, :16].any()
    assert torch.allclose(got_BT[1, 16:18], torch.tensor(-2 / 3))
    assert not got_BT[1, 18:len(responses[1])].any()  # post_error="zero"


def test_group_scale_is_trls_denominator_on_the_dr_grpo_credit(fixed_trainer, tokenizer):
    """scale_rewards="group": the unscaled credit divided by TRL's std + 1e-4, bit for bit; within 1e-3
    of sirl's grpo credit (its std + 1e-6) from the core and from si."""
    responses, texts, rewards = fixed_batch(tokenizer)
    fixed_trainer.scale_rewards = "group"
    got_BT, _ = fixed_trainer.token_advantages(responses, torch.tensor(rewards)[:, None], 4, 40)
    step_ends = [completion_step_ends(tokenizer, ids, "regex:;") for ids in responses]
    groups = [i // 4 for i in range(8)]
    unscaled = divergence_credit(responses, rewards, groups, step_ends, estimator="dr_grpo")
    grpo = divergence_credit(responses, rewards, groups, step_ends, estimator="grpo")
    si = sirl_si_credit(tokenizer, texts, responses, rewards, 4, "grpo")
    std_G = trl.trainer.utils.nanstd(torch.tensor(rewards).view(2, 4), dim=1)  # TRL's own group std (unbiased)
    for row, ids in enumerate(responses):
        assert torch.equal(got_BT[row, :len(ids)], unscaled.token_advantages[row] / (std_G[row // 4] + 1e-4))
        assert torch.allclose(got_BT[row, :len(ids)], grpo.token_advantages[row], rtol=1e-3, atol=0)
        assert torch.allclose(got_BT[row, :len(ids)], si[row], rtol=1e-3, atol=0)
    # a success keeps TRL's outcome advantage: (1 - 0.5) / (std + 1e-4) in group 0
    assert torch.allclose(got_BT[0, :len(responses[0])], (1 - 0.5) / (std_G[0] + 1e-4))


def test_tree_and_outcome_credit_and_unscorable_rows(fixed_trainer, tokenizer):
    responses, _, rewards = fixed_batch(tokenizer)
    groups = [i // 4 for i in range(8)]
    scored = torch.tensor(rewards)
    scored[2] = torch.nan  # every reward function returned None: out of its group, 0 on its tokens
    kept = [i for i in range(8) if i != 2]
    for credit, core in (("tree", tree_credit), ("outcome", outcome_credit)):
        got, _, _ = group_token_advantages(responses, scored, 4, None, credit=credit, scale_rewards="none")
        expected = core([responses[i] for i in kept], [rewards[i] for i in kept], [groups[i] for i in kept], estimator="dr_grpo")
        assert not got[2].any()
        for i, adv in zip(kept, expected.token_advantages):
            assert torch.equal(got[i], adv)
    # outcome credit is TRL's advantage: r - nanmean(group) without the unscorable row
    got, _, _ = group_token_advantages(responses, scored, 4, None, credit="outcome", scale_rewards="none")
    assert torch.allclose(got[0], torch.tensor(1 - 2 / 3))


def test_bad_settings_are_refused(tmp_path):
    with pytest.raises(ValueError, match="choose one of"):
        make_trainer(tmp_path, credit="vine")
    with pytest.raises(ValueError, match=r"credit_options \['values'\]"):
        make_trainer(tmp_path, credit="divergence", credit_options={"values": "mean"})
    with pytest.raises(ValueError, match="unknown step splitter"):
        make_trainer(tmp_path, step_splitter="paragraphs")
    with pytest.raises(ValueError, match="sum_then_normalize"):
        make_trainer(tmp_path, config_overrides={"multi_objective_aggregation": "normalize_then_sum"})
    with pytest.raises(ValueError, match="only credit='divergence' finds good prefixes"):
        make_trainer(tmp_path, credit="tree", repair_share=0.25)
    with pytest.raises(ValueError, match=r"repair_share=1.5 must be in \[0, 1\]"):
        make_trainer(tmp_path, repair_share=1.5)
    assert make_trainer(tmp_path).repair_share == 0.0  # off unless asked for
    assert "post_error" in credit_options_of("divergence") and "outcome_mix" in credit_options_of("tree")


# --- an end-to-end TRL run -------------------------------------------------------------------------


class TRLAdvantages(trl.GRPOTrainer):
    """Records TRL's own per-completion advantages before the credit replaces them."""

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        self.trl_advantages.append(output["advantages"].clone())
        return output


class Recorder(CreditGRPOTrainer, TRLAdvantages):
    """CreditGRPOTrainer -> TRLAdvantages -> GRPOTrainer: also records the rows the credit was given."""

    def __init__(self, *args, **kwargs):
        self.trl_advantages, self.rows = [], []
        super().__init__(*args, **kwargs)

    def token_advantages(self, completion_ids, rewards_per_func, group_size, width, **kwargs):
        advantages_BT, metrics = super().token_advantages(completion_ids, rewards_per_func, group_size, width, **kwargs)
        self.rows.append((completion_ids, rewards_per_func.sum(1).tolist(), advantages_BT, group_size, kwargs.get("prefix_lens")))
        return advantages_BT, metrics


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def test_end_to_end_trl_run_from_the_arith_policy(tmp_path):
    trainer = make_trainer(tmp_path, Recorder, credit="divergence", step_splitter="regex:;")
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 2 and all(math.isfinite(loss) for loss in losses)
    assert any(not torch.equal(before[name], p) for name, p in trainer.model.named_parameters())
    assert any("credit/localized_frac" in entry for entry in trainer.state.log_history)

    shared_tokens = localized = 0
    for (ids, rewards, adv_BT, group_size, _), trl_adv_B in zip(trainer.rows, trainer.trl_advantages):
        step_ends = [completion_step_ends(trainer._tokenizer, row, "regex:;") for row in ids]
        found = divergence_credit(ids, rewards, [i // group_size for i in range(len(ids))], step_ends, estimator="dr_grpo")
        localized_rows = {d.row for d in found.divergences}
        localized += len(localized_rows)
        for row, tokens in enumerate(ids):
            adv = adv_BT[row, :len(tokens)]
            if row not in localized_rows:  # successes and failures the credit leaves alone: TRL's advantage
                assert torch.allclose(adv, trl_adv_B[row].expand_as(adv), atol=1e-5, rtol=1e-6)
                continue
            group = range(row - row % group_size, row - row % group_size + group_size)
            shared = max(common_prefix(tokens, ids[j]) for j in group if rewards[j] >= 1.0)
            assert not adv[:shared].any()  # what a success also wrote is not punished
            assert adv[shared] < 0  # the token where it left every success is
            shared_tokens += shared
    assert localized > 0 and shared_tokens > 0  # the checks above were not vacuous


def test_good_prefix_and_continued_groups_hand_derived():
    # steps end at tokens 3, 7, 9: a failure localized at step 2 keeps its first two steps (7 tokens)
    assert good_prefix(list(range(9)), [3, 7, 9], 2) == [0, 1, 2, 3, 4, 5, 6]
    assert good_prefix(list(range(9)), [3, 7, 9], 0) == []
    assert list(continued_groups(5, 2)) == [3, 4] and not continued_groups(5, 0)


class PrefixRecorder(Recorder):
    """Also records every generation batch: prompt ids, completion ids and advantages, and the pool's
    contents before the batch draws from it."""

    def _generate_and_score_completions(self, inputs):
        pool = list(self.good_prefixes.entries)
        output = super()._generate_and_score_completions(inputs)
        self.batches.append((pool, output["prompt_ids"].clone(), output["prompt_mask"].clone(), output["completion_ids"].clone(),
                             output["completion_mask"].clone(), output["advantages"].clone()))
        return output


def test_good_prefixes_are_continued_and_judged_whole(tmp_path):
    """repair_share=0.5, two groups of 8 a step: from the step after a failure was localized, the last
    group continues a good prefix from the pool. Its prompt ids end with the prefix, the reward function
    judges prefix + completion as one text and is told the prefix's length, the credit gets the prefix
    as given tokens (advantages on the sampled tokens only), and a checkpoint holds the pool."""
    seen = []

    def reward(completions, answer, sirl_prefix_tokens, completion_ids, **kwargs):
        seen.append((list(completions), list(sirl_prefix_tokens), [list(ids) for ids in completion_ids]))
        return arith_reward(completions, answer)

    model = AutoModelForCausalLM.from_pretrained(POLICY, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(POLICY)
    trainer = PrefixRecorder(model=model, reward_funcs=reward, args=grpo_config(tmp_path, max_steps=4, save_strategy="steps", save_steps=2),
                             train_dataset=arith_dataset(64), processing_class=tokenizer, credit="divergence", step_splitter="regex:;",
                             repair_share=0.5)
    trainer.batches = []
    trainer.train()
    draws = [e["repair/buffer_draws"] for e in trainer.state.log_history if "repair/buffer_draws" in e]
    assert len(draws) == 4 and draws[0] == 0 and sum(draws) > 0, draws

    continued = 0
    for (pool, prompt_ids, prompt_mask, completion_ids, completion_mask, adv), (texts, prefix_tokens, ids), rows in zip(
            trainer.batches, seen, trainer.rows):
        responses, _, _, _, prefix_lens = rows
        assert prefix_tokens == prefix_lens
        for row in range(16):
            prompt = prompt_ids[row][prompt_mask[row].bool()].tolist()
            completion = completion_ids[row][completion_mask[row].bool()].tolist()
            given = prefix_tokens[row]
            assert ids[row] == responses[row] and ids[row][given:] == completion
            assert texts[row] == tokenizer.decode(ids[row], skip_special_tokens=True)
            assert not adv[row, len(completion):].any()
            if row < 8:
                assert given == 0
                continue
            if given:  # the second group continues a prefix that was in the pool, after the problem's prompt
                continued += 1
                prefix = ids[row][:given]
                assert prompt[-given:] == prefix
                assert any(e.prefix_ids == prefix and e.example["answer"] for e in pool)
    assert continued >= 8  # a whole group at least once

    saved = json.loads((tmp_path / "checkpoint-2" / GOOD_PREFIXES_FILE).read_text())
    assert saved["capacity"] == 512
    # resumed from step 2, the run's third batch draws from the pool it had
    again = PrefixRecorder(model=AutoModelForCausalLM.from_pretrained(POLICY, dtype=torch.float32), reward_funcs=reward,
                           args=grpo_config(tmp_path / "again", max_steps=3), train_dataset=arith_dataset(64), processing_class=tokenizer,
                           credit="divergence", step_splitter="regex:;", repair_share=0.5)
    again.batches = []
    again.train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))
    assert len(again.batches) == 1
    assert [dataclasses.asdict(e) for e in again.batches[0][0]] == saved["entries"] == [dataclasses.asdict(e) for e in trainer.batches[2][0]]
    assert all(set(e["example"]) == {"prompt", "answer"} for e in saved["entries"])


# --- two processes ---------------------------------------------------------------------------------


def test_two_processes_give_the_one_process_credit(tmp_path):
    """Two processes (gloo), each running tests/trl_helpers.py's worker: 6 completions each in groups of 4."""
    import os
    import signal
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    workers, logs = [], []
    for rank in range(2):
        env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank), "WORLD_SIZE": "2",
               "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": "2", "OMP_NUM_THREADS": "1"}
        logs.append((tmp_path / f"worker{rank}.log").open("w"))
        workers.append(subprocess.Popen([sys.executable, str(Path(__file__).with_name("trl_helpers.py")), str(tmp_path)],
                                        env=env, cwd=ROOT, stdout=logs[-1], stderr=subprocess.STDOUT))
    try:
        codes = [w.wait(timeout=HANG_S) for w in workers]
    except subprocess.TimeoutExpired:
        for w in workers:
            if w.poll() is None:
                w.send_signal(signal.SIGUSR1)  # faulthandler: the stacks go to the worker's log
        time.sleep(2)
        for w in workers:
            w.kill()
        codes = None
    for log in logs:
        log.close()
    tails = "\n".join(f"--- worker {r}:\n" + (tmp_path / f"worker{r}.log").read_text()[-4000:] for r in range(2))
    assert codes == [0, 0], f"the workers ended with {codes or f'no exit after {HANG_S} s'}\n{tails}"
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert torch.equal(ranks[0]["rewards"], ranks[1]["rewards"])  # TRL gathers the rewards
    ids = ranks[0]["ids"] + ranks[1]["ids"]
    tokenizer = AutoTokenizer.from_pretrained(POLICY)
    step_ends = [completion_step_ends(tokenizer, row, "regex:;") for row in ids]
    one_process, metrics, _ = group_token_advantages(ids, ranks[0]["rewards"], 4, step_ends, credit="divergence", scale_rewards="group")
    for rank, recorded in enumerate(ranks):
        assert recorded["metrics"] == metrics
        for local, tokens in enumerate(recorded["ids"]):
            assert torch.equal(recorded["advantages"][local, :len(tokens)], one_process[6 * rank + local])
    # every process keeps the same good prefixes, with the dataset rows of failures on either process
    localized = group_token_advantages(ids, ranks[0]["rewards"], 4, step_ends, credit="divergence", scale_rewards="group")[2]
    assert ranks[0]["pool"] == ranks[1]["pool"] and len(ranks[0]["pool"]) == len(localized) > 0
    assert [prefix for _, prefix in ranks[0]["pool"]] == [good_prefix(ids[d.row], step_ends[d.row], d.error_step) for d in localized]
    assert {d.row >= 6 for d in localized} == {True, False}
    # group 1 (rows 4-7) straddles the processes and the credit saw it whole: it holds a success and a
    # localized failure, whose advantages are not one number
    rewards = ranks[0]["rewards"].tolist()
    assert 1.0 in rewards[4:8] and 0.0 in rewards[4:8]
    assert any(len(set(adv.tolist())) > 1 for adv in one_process[4:8])


# --- the README's example --------------------------------------------------------------------------


def test_readme_example_runs(tmp_path, monkeypatch):
    """The python block of README.md's "The credit inside TRL" section, run as a user would (in the
    repository's root, where checkpoints/arith7-tiny is) with its output folder in a temporary one."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## The credit inside TRL", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert len(block.strip().splitlines()) <= 20
    monkeypatch.chdir(ROOT)
    block = block.replace('output_dir="runs/trl-divergence"', f'output_dir="{tmp_path}"')
    assert str(tmp_path) in block
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)
    history = namespace["trainer"].state.log_history
    assert any("credit/zero_frac" in entry for entry in history)


# --- the TRL comparison benchmark, at a tiny size ---------------------------------------------------


@pytest.mark.slow
def test_trl_compare_benchmark_writes_a_comparison_folder(tmp_path):
    """benchmarks/trl_compare.py at a few hundred tokens and 20 problems: the three methods run, the folder is
    one benchmarks/paired.py reads, the held-out problems are sirl compare's, and a rerun skips finished runs."""
    import json
    import subprocess
    import sys

    from sirl.config import load_config
    from sirl.evaluate import heldout_problems
    from sirl.tasks import load_task

    out = tmp_path / "cmp"
    command = [sys.executable, str(ROOT / "benchmarks" / "trl_compare.py"), "--out", str(out), "--seeds", "1", "--budget-tokens", "600",
               "--eval-every-tokens", "300", "--final-problems", "20", "--set", "rollout.prompts_per_step=1", "rollout.group_size=4"]
    first = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "| trl_divergence | 1 |" in first.stdout
    config = load_config("arith_prime")
    task = load_task(config.task.name, **config.task.args)
    expected = [p.meta["difficulty"] for p in heldout_problems(task, 20, config.eval.seed)]
    for method in ("trl_grpo", "trl_divergence", "trl_divergence_repair"):
        run = out / "runs" / method / "seed0"
        final = json.loads((run / "eval.json").read_text())
        evals = [json.loads(line) for line in (run / "evals.jsonl").read_text().splitlines()]
        assert final["n"] == 20 and final["difficulties"] == expected and final["tokens/total"] >= 600
        assert len(evals) >= 2 and evals[-1]["step"] == final["step"] and len(evals[-1]["rewards"]) == 20
        assert any("credit/localized_frac" in json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()) == (
            method != "trl_grpo")
    paired = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "paired.py"), f"div={out}:trl_divergence", f"grpo={out}:trl_grpo"],
                            capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert paired.returncode == 0 and "| div | grpo |" in paired.stdout, paired.stdout + paired.stderr
    again = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert again.returncode == 0 and "started" not in again.stdout

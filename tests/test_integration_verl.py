"""sirl.integrations.verl: sirl's credit registered as a verl advantage estimator and called through verl's
own ``compute_advantage`` on a batch shaped as verl builds it (right-padded responses, a response mask,
the score on each response's last token, one ``uid`` per row), against sirl.credit.

An optional tier: it runs where verl imports (``pip install -e '.[verl]'``) and is skipped elsewhere. A
verl training run needs GPUs and Ray workers and is not run here (docs/integrations.md).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("verl.trainer.ppo.core_algos", reason="verl is not installed (pip install -e '.[verl]' installs it)")
ray_trainer = pytest.importorskip("verl.trainer.ppo.ray_trainer", reason="verl's ray_trainer does not import (pip install -e '.[verl]')")

from tensordict import TensorDict  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402
from verl import DataProto  # noqa: E402
from verl.trainer.config import AlgoConfig  # noqa: E402
from verl.trainer.ppo import core_algos  # noqa: E402

from sirl.credit import divergence_credit, tree_credit  # noqa: E402
from sirl.integrations import verl as sirl_verl  # noqa: E402
from sirl.integrations.tokens import completion_step_ends  # noqa: E402

pytestmark = pytest.mark.verl

POLICY = "checkpoints/arith7-tiny"
# two prompts x four responses (group ids are verl's uids): successes, a failure that leaves them at a late
# step, one that leaves them at the first
TEXTS = [
    ("3+4=0;0*2=0;0-1=6;#6", 1.0, "p0"), ("3+4=0;0*2=0;0-1=5;#5", 0.0, "p0"), ("3+4=1;1*2=2;2-1=1;#1", 0.0, "p0"),
    ("3+4=0;0*2=0;0-1=6;#6", 1.0, "p0"), ("5*2=3;3+1=4;#4", 1.0, "p1"), ("5*2=3;3+1=5;#5", 0.0, "p1"),
    ("5*2=4;4+1=5;#5", 0.0, "p1"), ("5*2=3;3+1=4;#4", 1.0, "p1"),
]


@pytest.fixture(scope="module")
def tokenizer():
    from pathlib import Path

    return AutoTokenizer.from_pretrained(Path(__file__).resolve().parents[1] / POLICY)


def verl_batch(tokenizer, width: int = 32) -> tuple[DataProto, list[list[int]], list[float], list[str]]:
    """A DataProto as verl's trainer hands it to compute_advantage: responses right-padded with the pad id,
    the response mask, the reward on each response's last token, the prompt's uid per row."""
    rows = [tokenizer(t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for t, _, _ in TEXTS]
    rewards = [r for _, r, _ in TEXTS]
    responses = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    scores = torch.zeros(len(rows), width)
    for i, ids in enumerate(rows):
        responses[i, :len(ids)], mask[i, :len(ids)] = torch.tensor(ids), 1
        scores[i, len(ids) - 1] = rewards[i]
    batch = TensorDict({"responses": responses, "response_mask": mask, "token_level_rewards": scores}, batch_size=[len(rows)])
    uids = [u for _, _, u in TEXTS]
    return DataProto(batch=batch, non_tensor_batch={"uid": np.array(uids, dtype=object)}), rows, rewards, uids


@pytest.fixture
def routed(monkeypatch):
    """route_compute_advantage() for one test: verl's modules get their own function back afterwards."""
    original = ray_trainer.compute_advantage
    monkeypatch.setattr(ray_trainer, "compute_advantage", original)
    v1_utils = sirl_verl._v1_utils()  # None where verl's v1 trainer does not import (no transfer_queue)
    if v1_utils is not None:
        monkeypatch.setattr(v1_utils, "compute_advantage", v1_utils.compute_advantage)
    sirl_verl.route_compute_advantage()
    assert ray_trainer.compute_advantage is sirl_verl.compute_advantage
    assert v1_utils is None or v1_utils.compute_advantage is sirl_verl.compute_advantage
    return original


def test_divergence_estimator_through_verls_compute_advantage(tokenizer, routed):
    name = sirl_verl.register(tokenizer, credit="divergence", name="sirl_divergence_test", step_splitter="regex:;")
    assert core_algos.get_adv_estimator_fn(name) is sirl_verl.REGISTERED[name]
    data, rows, rewards, _ = verl_batch(tokenizer)
    out = ray_trainer.compute_advantage(data, adv_estimator=name, config=AlgoConfig(adv_estimator=name))
    groups = [0, 0, 0, 0, 1, 1, 1, 1]
    step_ends = [completion_step_ends(tokenizer, ids, "regex:;") for ids in rows]
    expected = divergence_credit(rows, rewards, groups, step_ends, estimator="grpo")
    assert {d.row for d in expected.divergences} == {1, 2, 5, 6}
    for i, ids in enumerate(rows):
        assert torch.equal(out.batch["advantages"][i, :len(ids)], expected.token_advantages[i])
        assert not out.batch["advantages"][i, len(ids):].any()
    assert torch.equal(out.batch["returns"], out.batch["advantages"])
    # the failure's tokens shared with a success ("3+4=0;0*2=0;0-1=") carry nothing
    assert not out.batch["advantages"][1, :16].any() and out.batch["advantages"][1, 16] < 0


def test_verls_own_compute_advantage_does_not_pass_the_response_ids(tokenizer):
    """Without the routing (or the one-line edit of verl), the estimator says what to do."""
    name = sirl_verl.register(tokenizer, credit="divergence", name="sirl_divergence_unrouted")
    data, _, _, _ = verl_batch(tokenizer)
    original = getattr(ray_trainer, "_verl_compute_advantage", ray_trainer.compute_advantage)
    with pytest.raises(ValueError, match="route_compute_advantage"):
        original(data, adv_estimator=name, config=AlgoConfig(adv_estimator=name))


def test_other_estimators_are_verls_and_the_outcome_credit_is_verls_grpo(tokenizer, routed):
    data, rows, _, _ = verl_batch(tokenizer)
    config = AlgoConfig(adv_estimator="grpo")
    verl_grpo = routed(data, adv_estimator="grpo", config=config).batch["advantages"].clone()
    data, _, _, _ = verl_batch(tokenizer)
    assert torch.equal(ray_trainer.compute_advantage(data, adv_estimator="grpo", config=config).batch["advantages"], verl_grpo)
    name = sirl_verl.register(credit="outcome", name="sirl_outcome_test")
    data, _, _, _ = verl_batch(tokenizer)
    ours = ray_trainer.compute_advantage(data, adv_estimator=name, config=AlgoConfig(adv_estimator=name)).batch["advantages"]
    assert torch.allclose(ours, verl_grpo, atol=1e-6)  # the group std summed in another order


def test_norm_off_is_dr_grpo_and_tree_credit(tokenizer, routed):
    data, rows, rewards, _ = verl_batch(tokenizer)
    name = sirl_verl.register(credit="tree", name="sirl_tree_test")
    out = ray_trainer.compute_advantage(data, adv_estimator=name, config=AlgoConfig(adv_estimator=name, norm_adv_by_std_in_grpo=False))
    expected = tree_credit(rows, rewards, [0, 0, 0, 0, 1, 1, 1, 1], estimator="dr_grpo")
    for i, ids in enumerate(rows):
        assert torch.equal(out.batch["advantages"][i, :len(ids)], expected.token_advantages[i])


def test_response_rows_and_group_ids():
    responses = torch.tensor([[5, 6, 7, 0], [8, 9, 0, 0], [1, 2, 3, 4]])
    mask = torch.tensor([[1, 0, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0]])  # row 0: a masked tool token inside
    assert sirl_verl.response_rows(responses, mask) == [[5, 6, 7], [8, 9], []]
    assert sirl_verl.group_ids(["b", "a", "b", "c"]) == [0, 1, 0, 2]


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="needs the tokenizer"):
        sirl_verl.make_estimator(None, credit="divergence")
    with pytest.raises(ValueError, match="choose one of"):
        sirl_verl.make_estimator(None, credit="vine")
    with pytest.raises(ValueError, match="already been registered"):
        sirl_verl.register(credit="outcome", name="grpo")

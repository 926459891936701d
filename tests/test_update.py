"""The update's data parallelism is exact: two gloo processes, each with part of a batch (unequal token
counts), take the same optimizer step as one process on the whole batch."""

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from sirl.batch import collate_rollouts, collate_supervised
from sirl.config import AlgoConfig
from sirl.distributed import Distributed
from sirl.model import SIZE_PRESETS, build_model, token_logprobs
from sirl.tasks.arith import ArithTask
from sirl.tokenizer import build_char_tokenizer
from sirl.types import AuxiliaryLoss, Problem, Trajectory
from sirl.update import policy_update

# Rows of the global batch: (prompt ids, response ids, advantage). Rank 0 gets the first two, long ones;
# rank 1 the last three, short ones, so a per-process token mean would weigh their tokens differently.
ROWS = [
    ([5, 6, 7], [8, 9, 10, 11, 12, 13, 1], 1.0),
    ([5, 9], [14, 15, 16, 17, 18, 1], -0.5),
    ([6], [19, 1], 0.75),
    ([7, 8], [20, 21, 1], -1.0),
    ([9], [22, 1], 0.25),
]
SPLIT = {0: [0, 1], 1: [2, 3, 4]}
AUX = [([5, 6], [9, 9, 1]), ([7], [10, 11, 12, 1]), ([8], [13, 1]), ([9, 9], [14, 1])]  # self-verification-like rows
AUX_SPLIT = {0: [0], 1: [1, 2, 3]}


def model_and_batch(rows: list[int], aux_rows: list[int]):
    tokenizer = build_char_tokenizer(ArithTask().alphabet())
    model = build_model(tokenizer, "llama", SIZE_PRESETS["nano"], 64, seed=0)
    trajectories = [
        Trajectory(Problem("p", "a"), ROWS[i][0], ROWS[i][1], [0.0] * len(ROWS[i][1]), "", 0.0, False, 0, [(0, len(ROWS[i][1]))]) for i in rows
    ]
    batch = collate_rollouts(trajectories, [torch.full((len(ROWS[i][1]),), ROWS[i][2]) for i in rows], pad_id=0)
    with torch.no_grad():  # on-policy: old log-probs are the current ones
        logp, _ = token_logprobs(model, batch.tokens.input_ids_BT, batch.tokens.attention_BT)
    batch = type(batch)(batch.tokens, logp * batch.tokens.target_mask_BT, batch.adv_BT, batch.reference_B)
    aux_batch = collate_supervised([AUX[i] for i in aux_rows], pad_id=0)
    aux = AuxiliaryLoss("verify", 0.5, aux_batch.input_ids_BT, aux_batch.attention_BT, aux_batch.target_mask_BT)
    return model, batch, aux


def step(model, batch, aux, loss_agg, dist_: Distributed):
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)  # linear in the gradient: equal steps mean equal gradients
    stats = policy_update(
        model, optimizer, batch, AlgoConfig(loss_agg=loss_agg), norm_length=8, micro_batch_size=2, grad_clip=1e9,
        generator=torch.Generator().manual_seed(0), dist=dist_, aux_losses=[aux],
    )
    assert not stats.skipped
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _worker(rank: int, port: int, loss_agg: str, out: dict) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        model, batch, aux = model_and_batch(SPLIT[rank], AUX_SPLIT[rank])
        weights = step(model, batch, aux, loss_agg, Distributed(rank=rank, world_size=2))
        if rank == 0:
            out["weights"] = weights
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("loss_agg", ["token_mean", "seq_mean_token_mean"])
def test_two_processes_take_the_single_process_step(loss_agg, one_thread):
    model, batch, aux = model_and_batch(list(range(len(ROWS))), list(range(len(AUX))))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    single = step(model, batch, aux, loss_agg, Distributed())
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_worker, args=(free_port(), loss_agg, out), nprocs=2, join=True)
        parallel = dict(out["weights"])
    assert any(not torch.equal(before[k], single[k]) for k in single)  # the step did something
    for key in single:
        assert torch.allclose(parallel[key], single[key], atol=1e-6, rtol=1e-5), key

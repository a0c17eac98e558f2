"""Two-process CPU (gloo) training: DDP with activation checkpointing and FSDP2 `fully_shard`.

Each test spawns 2 processes with `torch.multiprocessing`; every rank trains the same tiny STORM model on its own
batch (video + image + text), then the ranks' parameters are compared (DDP: all-gathered, FSDP2: the full parameters).
"""

import os
import socket
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp


sys.path.insert(0, os.path.dirname(__file__))

from modeling_utils import (
    IMAGE_SIZE,
    IMAGE_TOKEN_ID,
    tiny_model,
    video_inputs,
    video_tokens,
)  # noqa: E402


WORLD_SIZE = 2
STEPS = 2


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rank_batch(model, rank: int) -> dict:
    """Different data on each rank: a video sample and a sample with an image (every parameter is used)."""
    inputs = video_inputs(model.config, [[4], [2]], text_length=6, seed=rank)
    tokens_per_image = video_tokens(model.config, 1)
    inputs["input_ids"][:, -tokens_per_image:] = IMAGE_TOKEN_ID
    inputs["pixel_values"] = torch.randn(2, 1, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(rank))
    inputs["labels"] = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
    return inputs


def _train(rank: int, port: int, wrapping: str, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD_SIZE)
    try:
        from storm_hf.training import apply_training_stage

        model = tiny_model().train()
        apply_training_stage(model, "sft")
        model.activation_checkpointing_enable()
        if wrapping == "ddp":
            wrapped = torch.nn.parallel.DistributedDataParallel(model)
        else:
            from torch.distributed.fsdp import fully_shard

            for module in model.modules():
                if type(module).__name__ in model._no_split_modules:
                    fully_shard(module)
            wrapped = fully_shard(model)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
        batch = _rank_batch(model, rank)
        losses = []
        for _ in range(STEPS):
            optimizer.zero_grad()
            loss = wrapped(**batch).loss
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        with torch.no_grad():
            parameters = [p.full_tensor() if hasattr(p, "full_tensor") else p for p in model.parameters()]
            flat = torch.cat([p.detach().reshape(-1) for p in parameters])
            gathered = [torch.empty_like(flat) for _ in range(WORLD_SIZE)]
            dist.all_gather(gathered, flat)
            final_loss = wrapped(**batch).loss.item()
        results[rank] = {
            "losses": losses,
            "final_loss": final_loss,
            "max_rank_difference": (gathered[0] - gathered[1]).abs().max().item(),
        }
    finally:
        dist.destroy_process_group()


def _run(wrapping: str) -> list[dict]:
    """Trains on 2 processes; a rank's exception is raised here with its traceback (`mp.spawn`)."""
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_train, args=(_free_port(), wrapping, results), nprocs=WORLD_SIZE, join=True)
        return [dict(results[rank]) for rank in range(WORLD_SIZE)]


@pytest.mark.parametrize("wrapping", ["ddp", "fsdp2"])
def test_two_process_training_with_activation_checkpointing_keeps_ranks_equal(wrapping):
    # with a built but unused parameter (the vision layers after the feature layer, SigLIP's post-layernorm) DDP
    # fails at step 2: "Expected to have finished reduction in the prior iteration"
    results = _run(wrapping)
    for result in results:
        assert result["max_rank_difference"] == 0, result  # the ranks hold the same parameters after every step
        # each rank's own loss falls (its batch's loss after training is below its first loss)
        assert result["final_loss"] < result["losses"][0], result

"""Run under ``torch.distributed.run`` (gloo): FSDP2 training and generation against one process.

Every rank trains a sharded stage-2 model on its half of fixed global batches; rank 0 then trains
an unsharded copy on the whole batches and writes the losses, the largest difference between the
two models' trainable tensors and both generations to ``out`` (JSON). Used by test_fsdp.py.
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.device_mesh import init_device_mesh

from maugpt.adapters import AMoELoRA
from maugpt.data import MAUSetDataModule
from maugpt.training.module import MAUGPTModule
from maugpt.training.sharding import shard_model
from tests.conftest import randomize_adapters


def build(args) -> MAUGPTModule:
    torch.manual_seed(0)
    module = MAUGPTModule(
        args.llm, args.vision, stage=2, adapter=AMoELoRA(experts=4, rank=2, hyper_hidden=8), loss_reduction="example"
    )
    randomize_adapters(module.model.llm, std=0.05)  # larger weights make 3 SGD steps chaotic
    return module


def batches(args, module: MAUGPTModule, prompts: bool) -> list[dict]:
    data = MAUSetDataModule(args.shards, args.llm, args.vision, module.image_tokens, max_length=512)
    data.setup()
    loader = data._eval_dataloader("val", prompts=prompts)
    loader = torch.utils.data.DataLoader(loader.dataset, batch_size=4, collate_fn=loader.collate_fn)
    out = []
    for batch in loader:
        out.append(data.on_after_batch_transfer(batch, 0))
        if len(out) == args.steps:
            return out
    raise ValueError(f"{args.shards}/val has fewer than {args.steps} batches of 4")


def part(batch: dict, rank: int, world: int) -> dict:
    rows = slice(rank * 4 // world, (rank + 1) * 4 // world)
    return {k: v[rows] if isinstance(v, torch.Tensor) else v[rows] for k, v in batch.items() if k != "skipped"}


def train(module: MAUGPTModule, data: list[dict]) -> list[float]:
    # SGD: a step is linear in the gradient. (Adam's first step is about lr·sign(g), which turns
    # the last-bit differences of near-zero gradients between the two reductions into ±lr.)
    optimizer = torch.optim.SGD([p for p in module.parameters() if p.requires_grad], lr=0.01)
    losses = []
    for batch in data:
        loss = module.lm_loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
    return losses


def generate(module: MAUGPTModule, batch: dict, max_new_tokens: int) -> list[list[int]]:
    """New tokens per row, trailing padding removed (ranks that finish early stop appending)."""
    tokens = module.model.generate(
        batch["input_ids"],
        batch["attention_mask"],
        batch["pixel_values"],
        batch["condition_mask"],
        max_new_tokens=max_new_tokens,
    )
    pad = module.model.tokenizer.pad_token_id
    rows = tokens.tolist()
    for row in rows:
        while row and row[-1] == pad:
            row.pop()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("llm", "vision", "shards", "out"):
        parser.add_argument(f"--{name}", required=True)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()

    sharded = build(args)
    shard_model(sharded.model, init_device_mesh("cpu", (world,)))
    data = batches(args, sharded, prompts=False)
    losses = train(sharded, [part(b, rank, world) for b in data])
    for loss in losses:  # each rank's loss is the mean over its examples: the global mean is their mean
        dist.all_reduce(loss)
    # Rank r answers with at most 4 + 8r tokens: the ranks that finish first must keep stepping with
    # the others (their layers' all-gathers would otherwise wait forever).
    speaker = build(args)
    shard_model(speaker.model, init_device_mesh("cpu", (world,)))
    prompts = batches(args, speaker, prompts=True)[0]
    generated = generate(speaker, part(prompts, rank, world), 4 + 8 * rank)
    everyone = [None] * world
    dist.all_gather_object(everyone, generated)
    state = get_model_state_dict(sharded, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    if rank == 0:
        reference = build(args)
        reference_losses = train(reference, data)
        own = {n: p.detach() for n, p in reference.named_parameters() if p.requires_grad}
        result = {
            "fsdp_losses": [loss.item() / world for loss in losses],
            "losses": [loss.item() for loss in reference_losses],
            "trainable": sorted(own),
            "gathered": sorted(state),
            "max_param_diff": max((state[n] - own[n]).abs().max().item() for n in own),
            "fsdp_generated": [row for rows in everyone for row in rows],
            "generated": generate(
                build(args), {k: v for k, v in prompts.items() if k != "skipped"}, 4 + 8 * (world - 1)
            ),
            "lengths": [4 + 8 * r for r in range(world) for _ in range(4 // world)],
        }
        with open(args.out, "w") as f:
            json.dump(result, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()

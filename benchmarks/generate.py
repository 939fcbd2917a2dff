"""Batched, KV-cached greedy generation with each adapter against the same LM without adapters.

A Qwen2-architecture LM is built from config (random weights, nothing downloaded); each variant
injects its adapter on all seven projections, generates ``new_tokens`` tokens for a batch of
left-padded prompts (AMoE-LoRA with its condition fixed at the prefill), and is torn down again.
Variants run in turn, round after round, so drift on a noisy machine hits all alike; the ratio is
against the adapter-free model measured in the same process. Fresh adapters add exactly zero, so
every variant must generate the adapter-free tokens: the script checks that too.

    python benchmarks/generate.py                       # small CPU shape (hidden 512)
    python benchmarks/generate.py --shape cpu-3b-width  # the 3B model's layer widths, 2 layers, on CPU
    python benchmarks/generate.py --shape 3b      # the Qwen2.5-3B shape, on CUDA
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch
from transformers import AutoModelForCausalLM, Qwen2Config

from maugpt.adapters import (
    ALL_PROJECTIONS,
    Adapter,
    AMoELoRA,
    ForwardInputs,
    LoRA,
    LoRAMoE,
    adapter_context,
    inject,
    unwrap,
)

VARIANTS: dict[str, Callable[[], Adapter] | None] = {
    "no adapter": None,
    "LoRA r=64": lambda: LoRA(rank=64, alpha=128, targets=ALL_PROJECTIONS),
    "LoRAMoE 16x4": lambda: LoRAMoE(experts=16, rank=4, alpha=8, dropout=0.0, targets=ALL_PROJECTIONS),
    "AMoE-LoRA 16x4 + hypernetwork": lambda: AMoELoRA(experts=16, rank=4, alpha=8, targets=ALL_PROJECTIONS),
}
SHAPES = {
    "tiny": dict(
        batch=3,
        prompt=6,
        new_tokens=4,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=128,
    ),  # a dry run's
    "cpu": dict(
        batch=8,
        prompt=96,
        new_tokens=32,
        hidden_size=512,
        intermediate_size=1408,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=2,
        vocab_size=8192,
    ),
    # The Qwen2.5-3B layer widths (2 layers, small vocabulary) so that a CPU can run it: an adapter's
    # cost relative to its frozen layer depends on the width (16×4 experts add ~150 columns to 2048).
    "cpu-3b-width": dict(
        batch=8,
        prompt=96,
        new_tokens=32,
        hidden_size=2048,
        intermediate_size=11008,
        num_hidden_layers=2,
        num_attention_heads=16,
        num_key_value_heads=2,
        vocab_size=8192,
    ),
    "3b": dict(
        batch=16,
        prompt=768,
        new_tokens=128,
        hidden_size=2048,
        intermediate_size=11008,
        num_hidden_layers=36,
        num_attention_heads=16,
        num_key_value_heads=2,
        vocab_size=151936,
    ),
}


def build(shape: dict, device: torch.device):
    config = Qwen2Config(
        **{k: v for k, v in shape.items() if k not in ("batch", "prompt", "new_tokens")},
        max_position_embeddings=4096,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    with torch.device(device):  # initialised where it runs: a 3B model's init on the host takes a minute
        model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa", dtype=dtype).eval()
    model.requires_grad_(False)
    ids = torch.randint(3, config.vocab_size, (shape["batch"], shape["prompt"]), device=device)
    mask = torch.ones_like(ids)
    for row in range(shape["batch"]):  # left padding of varied length, as batched prompts have
        mask[row, : row * shape["prompt"] // (4 * shape["batch"])] = 0
    return model, ids.masked_fill(mask == 0, 0), mask


def generate(model, ids, mask, new_tokens: int, adapter: bool) -> torch.Tensor:
    options = dict(
        attention_mask=mask,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        pad_token_id=0,
        eos_token_id=None,
    )
    with torch.no_grad():
        if not adapter:
            return model.generate(ids, **options)
        with adapter_context(model).generating(ForwardInputs(condition_mask=mask.bool())):
            return model.generate(ids, **options)


def run(
    shape: dict, device: torch.device, rounds: int = 3, variants: list[str] | None = None
) -> tuple[dict[str, float], dict[str, bool]]:
    """Median new tokens per second of each variant (default: all; the adapter-free model always
    runs), and whether its tokens equal the adapter-free ones."""
    model, ids, mask = build(shape, device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    chosen = {name: make for name, make in VARIANTS.items() if make is None or variants is None or name in variants}
    times: dict[str, list[float]] = {name: [] for name in chosen}
    same: dict[str, bool] = {}
    reference = generate(model, ids, mask, shape["new_tokens"], adapter=False)  # also the warm-up
    for _ in range(rounds):
        for name, make in chosen.items():
            if make is not None:
                inject(model, make())
                model.to(device)
            sync()
            start = time.perf_counter()
            out = generate(model, ids, mask, shape["new_tokens"], adapter=make is not None)
            sync()
            times[name].append(time.perf_counter() - start)
            same[name] = same.get(name, True) and torch.equal(out, reference)
            if make is not None:
                unwrap(model)
                model.requires_grad_(False)
    new = shape["batch"] * shape["new_tokens"]
    return {name: new / statistics.median(t) for name, t in times.items()}, same


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="cpu")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS)[1:], help="run only these adapters")
    args = parser.parse_args()
    device = torch.device(args.device)
    shape = SHAPES[args.shape]
    speed, same = run(shape, device, args.rounds, args.variants)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(
        f"device: {name}; shape {args.shape}: batch {shape['batch']} × {shape['prompt']}-token prompts (left-padded), "
        f"{shape['new_tokens']} new tokens, hidden {shape['hidden_size']}, {shape['num_hidden_layers']} layers"
    )
    print("| variant | new tokens/s | × no adapter | same tokens as no adapter |\n|---|---:|---:|---|")
    for variant, tokens_per_s in speed.items():
        print(f"| {variant} | {tokens_per_s:,.0f} | {tokens_per_s / speed['no adapter']:.2f} | {same[variant]} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": name, "shape": args.shape, "tokens_per_s": speed, "same_tokens": same}, f, indent=1)


if __name__ == "__main__":
    main()

"""Stage-2 training at the MAU-GPT-4B shape on one GPU: single device, FSDP2 or compiled, in one process.

The recipe is configs/mau-gpt-4b/stage2.yaml (AMoE-LoRA 16 × 4 on all 7 projections, bf16-mixed,
frozen parts in bf16, gradient checkpointing, batch 16 per GPU) with random weights, since nothing
can be downloaded: the LLM is built from Qwen2.5-3B-Instruct's published config.json
(tests/fixtures/hub) with the tiny base's tokenizer beside it, SigLIP so400m/14-384 from timm's
own config; the data are synthetic MAU-Set shards (resized to 384 px, 729 visual tokens per image).

A step is what Lightning times between ``on_train_batch_start`` and ``on_train_batch_end``
(forward, backward, optimizer), with the device synchronised at both ends. Reported: median step
time after warm-up, answer+prompt tokens per second, and the peak memory allocated and reserved
during training; ratios are against the single-device run measured first in the same process.

    python tools/synth_mauset.py --out /tmp/synth --images 400 --image_size 96
    python benchmarks/stage2_gpu.py --tokenizer runs/demo/base/llm --data /tmp/synth/mauset
    python benchmarks/stage2_gpu.py ... --runs "single device" "single device, compiled decoder layers"
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
from lightning.pytorch import Callback

from maugpt.training.cli import run

ROOT = Path(__file__).parents[1]
RECIPE = ROOT / "configs" / "mau-gpt-4b" / "stage2.yaml"
# Each run: the recipe plus these arguments ({backend}: --compile-backend).
RUNS = {
    "single device": [],
    "FSDP2": ["--config", str(ROOT / "configs" / "strategy" / "fsdp.yaml")],
    "single device, compiled decoder layers": [
        "--model.init_args.compile_llm",
        "decoder_layers",
        "--model.init_args.compile_backend",
        "{backend}",
    ],
}


class StepTimer(Callback):
    """Wall time and token count of every training step, and the peak memory of the run."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.tokens: list[int] = []
        self.cuda = torch.cuda.is_available()

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def on_train_start(self, trainer, module) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self.sync()
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.sync()
        self.times.append(time.perf_counter() - self.start)
        self.tokens.append(int(batch["attention_mask"].sum()))

    def memory(self) -> tuple[float, float]:
        if not self.cuda:
            return float("nan"), float("nan")
        return torch.cuda.max_memory_allocated() / 2**30, torch.cuda.max_memory_reserved() / 2**30


def llm_folder(config: Path, tokenizer: Path, out: Path) -> Path:
    """A model folder with the published config and the tiny tokenizer (weights are random)."""
    out.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (tokenizer / name).is_file():
            shutil.copy(tokenizer / name, out / name)
    shutil.copy(config, out / "config.json")
    return out


def measure(name: str, args: argparse.Namespace, llm: Path) -> dict:
    timer = StepTimer()
    overrides = [
        "--model.init_args.llm",
        str(llm),
        "--model.init_args.init_from",
        "null",
        "--model.init_args.llm_pretrained",
        "false",
        "--model.init_args.vision_pretrained",
        "false",
        "--model.init_args.gradient_checkpointing",
        str(args.gradient_checkpointing).lower(),
        "--data.init_args.data_dir",
        args.data,
        "--data.init_args.batch_size",
        str(args.batch_size),
        "--data.init_args.batches_per_epoch",
        str(args.warmup + args.steps),
        "--trainer.devices",
        "1",
        "--trainer.accelerator",
        args.accelerator,
        "--trainer.max_epochs",
        "1",
        "--trainer.precision",
        args.precision,
        "--trainer.logger",
        "false",
        "--trainer.callbacks=[]",
        "--trainer.enable_checkpointing",
        "false",
        "--trainer.limit_val_batches",
        "0",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.default_root_dir",
        args.root,
    ]
    if args.vision:
        overrides += ["--model.init_args.vision_encoder", args.vision]
    if args.num_workers is not None:
        overrides += ["--data.init_args.num_workers", str(args.num_workers)]
    extra = [arg.format(backend=args.compile_backend) for arg in RUNS[name]]
    cli = run(["--config", str(RECIPE), *extra, *overrides], subcommand=False)
    cli.trainer.callbacks.append(timer)
    cli.trainer.fit(cli.model, cli.datamodule)
    times, tokens = timer.times[args.warmup :], timer.tokens[args.warmup :]
    allocated, reserved = timer.memory()
    trainable = sum(p.numel() for p in cli.model.parameters() if p.requires_grad)
    del cli
    torch.compiler.reset()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    step = statistics.median(times)
    return {
        "run": name,
        "step_s": step,
        "tokens_per_s": statistics.median(tokens) / step,
        "allocated_gib": allocated,
        "reserved_gib": reserved,
        "trainable": trainable,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", required=True, help="folder holding the tiny base's tokenizer")
    parser.add_argument("--data", required=True, help="synthetic MAU-Set folder (train/, val/, test/)")
    parser.add_argument("--llm-config", default=str(ROOT / "tests/fixtures/hub/Qwen2.5-3B-Instruct/config.json"))
    parser.add_argument("--vision", help="vision encoder instead of the recipe's (a CPU dry run uses the tiny one)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--num-workers", type=int, help="loader workers instead of the recipe's 4")
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--gradient-checkpointing", type=lambda s: s.lower() == "true", default=True)
    parser.add_argument("--accelerator", default="gpu")
    parser.add_argument("--precision", default="bf16-mixed")
    parser.add_argument("--root", default=tempfile.mkdtemp(prefix="stage2_gpu_"))
    parser.add_argument(
        "--runs",
        nargs="+",
        choices=list(RUNS),
        default=list(RUNS)[:2],
        help="what to run; ratios are against the first",
    )
    parser.add_argument("--compile-backend", default="inductor")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args()
    llm = llm_folder(Path(args.llm_config), Path(args.tokenizer), Path(args.root) / "llm")
    results = [measure(name, args, llm) for name in args.runs]
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    print(
        f"\ndevice: {device}; torch {torch.__version__}; batch {args.batch_size}, gradient checkpointing "
        f"{args.gradient_checkpointing}; median of {args.steps} steps after {args.warmup}"
    )
    print("| run | trainable params | step s | × single | tokens/s | peak allocated GiB | × single | reserved GiB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    base = results[0]
    for r in results:
        print(
            f"| {r['run']} | {r['trainable']:,} | {r['step_s']:.3f} | {r['step_s'] / base['step_s']:.2f} | "
            f"{r['tokens_per_s']:,.0f} | {r['allocated_gib']:.1f} | "
            f"{r['allocated_gib'] / base['allocated_gib']:.2f} | {r['reserved_gib']:.1f} |"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": device, "batch_size": args.batch_size, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()

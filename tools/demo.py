#!/usr/bin/env python
"""The offline demo: synthetic MAU-Set → tiny base → stage 1 → stage 2 (AMoE-LoRA) → test, timed."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / "runs" / "demo"


def step(title: str, *args: str) -> float:
    print(f"\n=== {title}: {' '.join(args)}", flush=True)
    start = time.perf_counter()
    subprocess.run([sys.executable, *args], cwd=ROOT, check=True)
    return time.perf_counter() - start


def main() -> None:
    """Run the offline demo end to end (about 15 minutes on 2 CPU cores); a previous ``runs/demo``
    is moved aside to ``runs/demo-<time>``, never overwritten."""
    if RUN.exists():  # keep the previous demo's outputs: nothing is overwritten
        kept = RUN.with_name(f"demo-{datetime.now():%Y%m%d-%H%M%S}")
        RUN.rename(kept)
        print(f"previous demo outputs moved to {kept.relative_to(ROOT)}")
    times = {}
    times["synthetic MAU-Set"] = step(
        "synthetic MAU-Set",
        "-m",
        "maugpt.cli",
        "synth",
        "--out",
        "runs/demo/shards",
        "--images",
        "2800",
        "--image_size",
        "96",
        "--seed",
        "0",
    )
    times["tiny base"] = step(
        "tiny base", "-m", "maugpt.cli", "tiny-base", "--shards", "runs/demo/shards", "--out", "runs/demo/base"
    )
    times["stage 1"] = step("stage 1 (projector)", "-m", "maugpt.cli", "fit", "--config", "configs/tiny/stage1.yaml")
    times["stage 2"] = step(
        "stage 2 (AMoE-LoRA + projector)", "-m", "maugpt.cli", "fit", "--config", "configs/tiny/stage2.yaml"
    )
    start = time.perf_counter()
    print("\n=== test on the synthetic test split", flush=True)
    from maugpt.training.cli import run

    cli = run(
        [
            "test",
            "--config",
            "configs/tiny/stage2.yaml",
            "--ckpt_path",
            "runs/demo/stage2/checkpoints/last.ckpt",
            "--trainer.enable_progress_bar",
            "false",
        ]
    )
    times["test"] = time.perf_counter() - start
    metrics = {k: float(v) for k, v in cli.trainer.callback_metrics.items() if k.startswith("test/")}
    print("\n| metric | value |\n|---|---:|")
    for name in ("test/detection_accuracy", "test/detection_accuracy_macro", "test/detection_unparsed", "test/rougeL"):
        print(f"| {name[5:]} | {metrics.get(name, float('nan')):.4f} |")
    print("\n| step | seconds |\n|---|---:|")
    for name, seconds in times.items():
        print(f"| {name} | {seconds:.0f} |")
    print(f"| total | {sum(times.values()):.0f} |")
    evaluation = sorted(Path(cli.trainer.log_dir).glob("evaluation*"), key=lambda p: p.stat().st_mtime)[-1]
    print(f"\nTables 2 and 4 and every answer: {evaluation}/ (tables.md, scores.csv, predictions.jsonl)")
    print(f"\nwatch the runs: {Path(sys.executable).parent / 'tensorboard'} --logdir {RUN / 'tensorboard'}")


if __name__ == "__main__":
    from jsonargparse import auto_cli

    auto_cli(main)  # --help describes it instead of starting it

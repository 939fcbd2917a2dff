"""Every GPU figure of the adapters and of stage 2, in one prepared run of at most 8 minutes.

The parts, in order of importance, each a subprocess with a time allotment of its own:

1. ``adapters-eager``: ``adapters.py --shape 3b`` (Qwen2.5-3B's shape, bf16, B=4, T=1024, adapters
   on all 7 projections): the floor, LoRA r=64, LoRAMoE 16x4 and AMoE-LoRA 16x4 with the
   hand-written Functions, each also with ``share_input`` (AMoE-LoRA, LoRA, LoRAMoE), interleaved
   rounds; the top 15 CUDA kernels of one eager AMoE-LoRA step.
2. ``adapters-compiled``: the floor and the three adapters with ``compile_llm: decoder_layers``
   (inductor), and the same with inductor's CUDA graphs (``mode="reduce-overhead"``), beside the
   eager floor; the top 15 kernels of one compiled AMoE-LoRA step. One round each: every compile
   costs tens of seconds.
3. ``generate``: ``generate.py --shape 3b``, AMoE-LoRA against the adapter-free model.
4. ``setup``: synthetic MAU-Set shards and the tiny base (for parts 5 and 6).
5. ``stage2``: ``stage2_gpu.py``, the MAU-GPT-4B stage-2 recipe on one GPU, compile off and on.
6. ``fsdp1``: a 3-step ``maugpt fit`` of the tiny stage 2 with ``configs/strategy/fsdp1.yaml`` on the
   one GPU (with one validation batch, and a checkpoint that must record step 3).

A part that fails or runs out of time is reported by name and the next part still runs; a part
may use the time earlier parts left over, never the allotments of the parts after it. After every
part ``OUT/gpu_suite.json`` is rewritten (each part's status, seconds and results); every part's
output goes to ``OUT/gpu_suite.log``. The exit status is 1 if any part failed.

    python benchmarks/gpu_suite.py --out "$OUT"                 # one CUDA GPU, about 8 minutes
    python benchmarks/gpu_suite.py --dry-run --out /tmp/suite   # every part at tiny shapes on the CPU
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
ADAPTERS = ["LoRA r=64", "LoRAMoE 16x4", "AMoE-LoRA 16x4 + hypernetwork", "AMoE-LoRA 16x4, shared inputs"]
COMPILED = [
    "floor (frozen base), compiled",
    "LoRA r=64, compiled",
    "LoRAMoE 16x4, compiled",
    "AMoE-LoRA 16x4 + hypernetwork, compiled",
]  # prefixes: each with and without CUDA graphs


@dataclass
class Part:
    name: str
    allotment_s: float
    commands: list[list[str]]
    json: Path | None = None  # what the part writes; read into the report
    needs: str | None = None  # a part that must have succeeded first
    check: Callable[[Part], None] | None = None  # after success: sets results, may fail the part
    status: str = "not run"
    seconds: float = 0.0
    results: dict = field(default_factory=dict)


def plan(work: Path, dry_run: bool) -> list[Part]:
    """The parts with their commands: at the 3B/4B shapes on CUDA, or at tiny shapes on the CPU."""
    py = sys.executable
    shape, device = ("tiny", "cpu") if dry_run else ("3b", "cuda")
    backend = "eager" if dry_run else "inductor"  # dynamo alone: inductor on a CPU compiles C++ for minutes
    adapters = [
        py,
        str(BENCH / "adapters.py"),
        "--shape",
        shape,
        "--device",
        device,
        "--only",
        "model",
        "--profile",
        "5" if dry_run else "15",
    ]
    shards, base = work / "shards", work / "base"
    fit_config = work / "fsdp1.yaml"
    fit_config.write_text(
        json.dumps(
            {  # JSON is YAML: the tiny stage 2, pointed at this run's files
                "model": {
                    "init_args": {"llm": str(base / "llm"), "vision_encoder": str(base / "vision"), "init_from": None}
                },
                "data": {
                    "init_args": {
                        "data_dir": str(shards / "mauset"),
                        "batch_size": 4,
                        "eval_batch_size": 4,
                        "num_workers": 1,
                    }
                },
                "trainer": {
                    "max_steps": 3,
                    "val_check_interval": 3,
                    "limit_val_batches": 1,
                    "logger": False,
                    "default_root_dir": str(work / "fsdp1"),
                    "enable_progress_bar": False,
                    "accelerator": device,
                    "precision": "32-true" if dry_run else "bf16-mixed",
                    "callbacks": [
                        {
                            "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                            "init_args": {
                                "dirpath": str(work / "fsdp1" / "checkpoints"),
                                "save_last": True,
                                "save_top_k": 0,
                            },
                        }
                    ],
                },
            }
        )
    )
    # FSDP1 refuses to run without a GPU: the dry run fits the same configuration without it.
    strategy = [] if dry_run else ["--config", str(ROOT / "configs" / "strategy" / "fsdp1.yaml")]
    stage2 = (
        [
            "--llm-config",
            str(base / "llm" / "config.json"),
            "--vision",
            str(base / "vision"),
            "--accelerator",
            "cpu",
            "--precision",
            "32-true",
            "--batch-size",
            "2",
            "--warmup",
            "1",
            "--steps",
            "1",
            "--num-workers",
            "0",
        ]
        if dry_run
        else ["--warmup", "3", "--steps", "6"]
    )
    return [
        Part(
            "adapters-eager",
            60,
            [
                [
                    *adapters,
                    "--rounds",
                    "1" if dry_run else "3",
                    "--warmup",
                    "1",
                    "--steps",
                    "1" if dry_run else "3",
                    "--variants",
                    *ADAPTERS,
                    "--json",
                    str(work / "adapters_eager.json"),
                ]
            ],
            work / "adapters_eager.json",
        ),
        Part(
            "adapters-compiled",
            180,
            [
                [
                    *adapters,
                    "--compile",
                    backend,
                    "--rounds",
                    "1",
                    "--warmup",
                    "2",
                    "--steps",
                    "1" if dry_run else "4",
                    "--variants",
                    *COMPILED,
                    "--json",
                    str(work / "adapters_compiled.json"),
                ]
            ],
            work / "adapters_compiled.json",
        ),
        Part(
            "generate",
            45,
            [
                [
                    py,
                    str(BENCH / "generate.py"),
                    "--shape",
                    shape,
                    "--device",
                    device,
                    "--rounds",
                    "1" if dry_run else "2",
                    "--variants",
                    "AMoE-LoRA 16x4 + hypernetwork",
                    "--json",
                    str(work / "generate.json"),
                ]
            ],
            work / "generate.json",
        ),
        Part(
            "setup",
            20,
            [
                [
                    py,
                    "-m",
                    "maugpt.cli",
                    "synth",
                    "--out",
                    str(shards),
                    "--images",
                    "40" if dry_run else "400",
                    "--image_size",
                    "96",
                    "--seed",
                    "0",
                ],
                [
                    py,
                    "-m",
                    "maugpt.cli",
                    "tiny-base",
                    "--shards",
                    str(shards),
                    "--out",
                    str(base),
                    "--vit_steps",
                    "2",
                    "--llm_steps",
                    "2",
                    "--vit_extra_images",
                    "14",
                ],
            ],
        ),
        Part(
            "stage2",
            130,
            [
                [
                    py,
                    str(BENCH / "stage2_gpu.py"),
                    "--tokenizer",
                    str(base / "llm"),
                    "--data",
                    str(shards / "mauset"),
                    "--root",
                    str(work / "stage2"),
                    "--runs",
                    "single device",
                    "single device, compiled decoder layers",
                    "--compile-backend",
                    backend,
                    *stage2,
                    "--json",
                    str(work / "stage2.json"),
                ]
            ],
            work / "stage2.json",
            needs="setup",
        ),
        Part(
            "fsdp1",
            45,
            [
                [
                    py,
                    "-m",
                    "maugpt.cli",
                    "fit",
                    "--config",
                    str(ROOT / "configs" / "tiny" / "stage2.yaml"),
                    *strategy,
                    "--config",
                    str(fit_config),
                ]
            ],
            needs="setup",
            check=expect_checkpoint_step(work / "fsdp1" / "checkpoints" / "last.ckpt", 3),
        ),
    ]


def expect_checkpoint_step(path: Path, steps: int) -> Callable[[Part], None]:
    """A part's check: the Lightning checkpoint at ``path`` records ``steps`` optimizer steps."""

    def check(part: Part) -> None:
        import torch

        step = int(torch.load(path, map_location="cpu", weights_only=True)["global_step"])
        part.results = {"checkpoint_global_step": step}
        if step != steps:
            part.status = f"failed: {path.name} records step {step}, not {steps}"

    return check


def run_command(command: list[str], cwd: Path, timeout: float, log) -> int | None:
    """Run ``command`` in ``cwd`` with its output copied to ``log`` and to stdout; its exit status,
    or None if it ran out of ``timeout`` (then it and its children, e.g. loader workers, are killed).

    ``cwd`` is outside the checkout, so that ``maugpt`` is imported as installed (with the recipes
    inside it), not from the source folder."""
    log.write(f"\n$ {' '.join(command)}\n")
    proc = subprocess.Popen(
        command,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )

    def pump() -> None:
        for line in proc.stdout:
            log.write(line)
            sys.stdout.write(line)
        log.flush()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        return proc.wait(timeout=max(timeout, 1))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return None
    finally:
        reader.join(timeout=10)


def run_part(part: Part, cwd: Path, timeout: float, log) -> None:
    start = time.monotonic()
    log.write(f"\n=== {part.name}\n")
    for command in part.commands:
        status = run_command(command, cwd, timeout - (time.monotonic() - start), log)
        if status != 0:
            part.status = f"out of time after {timeout:.0f} s" if status is None else f"failed: exit status {status}"
            break
    else:
        part.status = "ok"
    part.seconds = round(time.monotonic() - start, 1)
    if part.json is not None and part.json.is_file():
        part.results = json.loads(part.json.read_text())


def report(parts: list[Part], out: Path, meta: dict) -> None:
    document = {
        **meta,
        "parts": [
            {
                "name": p.name,
                "status": p.status,
                "seconds": p.seconds,
                "allotment_s": p.allotment_s,
                "commands": [" ".join(c) for c in p.commands],
                "results": p.results,
            }
            for p in parts
        ],
    }
    tmp = out / "gpu_suite.json.tmp"
    tmp.write_text(json.dumps(document, indent=1, default=str))
    tmp.replace(out / "gpu_suite.json")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--out",
        type=Path,
        default=os.environ.get("OUT"),
        help="folder for gpu_suite.json and gpu_suite.log (default: $OUT)",
    )
    parser.add_argument("--dry-run", action="store_true", help="every part at tiny shapes on the CPU")
    parser.add_argument(
        "--budget",
        type=float,
        help="seconds for all parts (default: their allotments' sum, 480 on a GPU; 900 for a dry run)",
    )
    args = parser.parse_args()
    if args.out is None:
        parser.error("--out is required where $OUT is unset")
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        parser.error("no CUDA device: run it on a GPU, or with --dry-run")
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.out / "work" if args.dry_run else Path(os.environ.get("TMPDIR", "/tmp")) / "gpu_suite"
    work.mkdir(parents=True, exist_ok=True)
    parts = plan(work, args.dry_run)
    budget = args.budget or (900 if args.dry_run else sum(p.allotment_s for p in parts))
    meta = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "dry_run": args.dry_run,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() and not args.dry_run else "cpu",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "budget_s": budget,
    }
    failed = run_all(parts, work, args.out, budget, meta)
    print(
        f"gpu_suite: {len(parts) - len(failed)} of {len(parts)} parts ok"
        + (f"; not ok: {', '.join(failed)}" if failed else "")
        + f"; {args.out / 'gpu_suite.json'}"
    )
    return 1 if failed else 0


def run_all(parts: list[Part], work: Path, out: Path, budget: float, meta: dict) -> list[str]:
    """Run the parts in order within ``budget`` seconds, rewriting the report after each; the names
    of the parts that did not succeed."""
    deadline = time.monotonic() + budget
    with open(out / "gpu_suite.log", "a") as log:
        for index, part in enumerate(parts):
            timeout = deadline - time.monotonic() - sum(p.allotment_s for p in parts[index + 1 :])
            if part.needs and next(p for p in parts if p.name == part.needs).status != "ok":
                part.status = f"skipped: {part.needs} did not succeed"
            elif timeout < 1:
                part.status = "skipped: no time left"
            else:
                print(f"[{part.name}] up to {timeout:.0f} s", flush=True)
                run_part(part, work, timeout, log)
            if part.check is not None and part.status == "ok":
                part.check(part)
            print(f"[{part.name}] {part.status} ({part.seconds:.0f} s)", flush=True)
            report(parts, out, meta)
    return [p.name for p in parts if p.status != "ok"]


if __name__ == "__main__":
    sys.exit(main())

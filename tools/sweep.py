#!/usr/bin/env python
"""Expand a sweep spec into one run folder per cell and run them (or write a SLURM array script)."""
from __future__ import annotations

import time
from pathlib import Path

from jsonargparse import auto_cli

from maugpt.sweep import SweepError, load_spec, prepare, run_cells, write_slurm


def main(spec: Path, *, variant: str = "tiny", out: Path | None = None, parallel: int = 1, slurm: bool = False,
         partition: str | None = None, gpus: int = 1, hours: int = 24, dry_run: bool = False) -> None:
    """Run an ablation sweep: ``maugpt fit`` then ``maugpt test`` per cell, resumable.

    Args:
        spec: the sweep spec (experiments/*.yaml).
        variant: which of the spec's variants (``tiny``: synthetic data on CPU; ``full``: real scale).
        out: the sweep folder (default: experiments/results/<name>-<variant>).
        parallel: cells run at once on this machine.
        slurm: write <out>/slurm.sh (one array task per cell) instead of running.
        partition: SLURM partition.
        gpus: GPUs per SLURM array task.
        hours: SLURM time limit per task.
        dry_run: check the spec and write the cell folders, run nothing.
    """
    try:
        sweep = load_spec(spec, variant)
        folder = prepare(sweep, out or Path("experiments/results") / f"{sweep.name}-{variant}")
    except (SweepError, FileNotFoundError) as err:
        raise SystemExit(f"sweep: {err}") from None
    print(f"{sweep.name} ({variant}): {len(sweep.cells)} cells in {folder}: {', '.join(c.label for c in sweep.cells)}")
    if slurm:
        print(f"SLURM array script: {write_slurm(folder, partition, gpus, hours)}  (sbatch it)")
        return
    if dry_run:
        return
    start = time.perf_counter()
    outcomes = run_cells(folder, parallel)
    for name, outcome in outcomes.items():
        print(f"  {name}: {outcome}" + (f" (log: {folder}/cells/{name}/logs/)" if outcome == "failed" else ""))
    print(f"{time.perf_counter() - start:.0f} s; report: python tools/report.py {folder}")
    if "failed" in outcomes.values():
        raise SystemExit(1)


if __name__ == "__main__":
    auto_cli(main)

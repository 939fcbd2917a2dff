#!/usr/bin/env python
"""Collect a sweep's cell metrics into Table 6's layout (Markdown, CSV) and plot them (Fig. 5(a))."""
from __future__ import annotations

from pathlib import Path

from jsonargparse import auto_cli

from maugpt.report import write_report


def main(sweep_dir: Path, *, scale: float = 100.0, tensorboard: bool = True) -> None:
    """Write report.md, report.csv and report.png into the sweep folder and print the table.

    Args:
        sweep_dir: a folder made by tools/sweep.py.
        scale: multiply metrics by this in the Markdown table (100: fractions as %).
        tensorboard: also log the table and plot under <sweep_dir>/tensorboard/report.
    """
    try:
        written = write_report(sweep_dir, scale, tensorboard)
    except FileNotFoundError as err:
        raise SystemExit(f"report: {err}") from None
    print(written["markdown"].read_text())
    print("written: " + ", ".join(str(p) for p in written.values()))


if __name__ == "__main__":
    auto_cli(main)

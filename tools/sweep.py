#!/usr/bin/env python
"""Expand a sweep spec into one run folder per cell and run them (or write a SLURM array script).

The same as ``maugpt sweep``.
"""

from jsonargparse import auto_cli

from maugpt.commands import sweep

if __name__ == "__main__":
    auto_cli(sweep)

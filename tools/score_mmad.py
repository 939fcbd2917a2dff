#!/usr/bin/env python
"""Score any model's MMAD answers with the official protocol and print the paper's Table 5 layout.

The same as ``maugpt score-mmad``.
"""

from jsonargparse import auto_cli

from maugpt.commands import score_mmad

if __name__ == "__main__":
    auto_cli(score_mmad)

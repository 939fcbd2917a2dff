#!/usr/bin/env python
"""Collect a sweep's cell metrics into Table 6's layout (Markdown, CSV) and plot them (Fig. 5(a)).

The same as ``maugpt report``.
"""

from jsonargparse import auto_cli

from maugpt.commands import report

if __name__ == "__main__":
    auto_cli(report)

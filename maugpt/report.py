"""Sweep reports: the cells' metrics in Table 6's layout (Markdown and CSV) and, when the spec asks
for it, Fig. 5(a)'s plot of metrics across the cells (PNG, and both in TensorBoard).

A cell without ``metrics.json`` (not run, or crashed) or without one of the metrics is shown as
``missing``: never dropped from the table.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

MISSING = "missing"


def collect(sweep_dir: str | Path) -> tuple[dict, list[tuple[dict, dict | None]]]:
    """The sweep's spec and, per cell in spec order, the cell and its metrics (None: no metrics)."""
    sweep_dir = Path(sweep_dir)
    record_path = sweep_dir / "sweep.json"
    if not record_path.is_file():
        raise FileNotFoundError(f"{record_path} does not exist: {sweep_dir} is not a sweep folder (tools/sweep.py makes one)")
    spec = json.loads(record_path.read_text())["spec"]
    rows = []
    for cell in spec["cells"]:
        path = sweep_dir / "cells" / cell["name"] / "metrics.json"
        rows.append((cell, json.loads(path.read_text()) if path.is_file() else None))
    return spec, rows


def _value(metrics: dict | None, name: str) -> float | None:
    value = None if metrics is None else metrics.get(name)
    return None if value is None or math.isnan(value) else value


def table(spec: dict, rows: list[tuple[dict, dict | None]], scale: float = 100.0) -> tuple[str, str]:
    """Markdown (one row per cell, one column per metric, ×``scale``) and CSV (raw values)."""
    metrics = spec["metrics"]
    lines = ["| cell | " + " | ".join(metrics) + " |", "|---" + "|---:" * len(metrics) + "|"]
    csv = ["cell,label," + ",".join(metrics)]
    for cell, found in rows:
        values = [_value(found, m) for m in metrics]
        lines.append(f"| {cell['label']} | " + " | ".join(MISSING if v is None else f"{v * scale:.2f}" for v in values)
                     + " |")
        csv.append(",".join([cell["name"], f'"{cell["label"]}"', *("" if v is None else f"{v:.6f}" for v in values)]))
    missing = [cell["label"] for cell, found in rows if found is None]
    title = f"### {spec['name']} ({spec['variant']})" + (f": {spec['description']}" if spec.get("description") else "")
    note = f"\n\ncells without metrics (not run or failed): {', '.join(missing)}" if missing else ""
    return f"{title}\n\n" + "\n".join(lines) + note + "\n", "\n".join(csv) + "\n"


def figure(spec: dict, rows: list[tuple[dict, dict | None]], scale: float = 100.0):
    """A matplotlib figure of the plotted metrics across the cells, in spec order (gaps where missing)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plot = spec.get("plot") or {}
    labels = [cell["label"] for cell, _ in rows]
    fig, ax = plt.subplots(figsize=(1.2 * len(labels) + 3, 3.6))
    for metric in plot.get("y") or spec["metrics"]:
        values = [_value(found, metric) for _, found in rows]
        ax.plot(range(len(labels)), [math.nan if v is None else v * scale for v in values], marker="o",
                label=metric.split("/", 1)[-1])
    ax.set_xticks(range(len(labels)), labels)
    ax.set_xlabel(plot.get("xlabel", "cell"))
    ax.set_ylabel(plot.get("ylabel", "score (%)"))
    ax.set_title(f"{spec['name']} ({spec['variant']})")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def write_report(sweep_dir: str | Path, scale: float = 100.0, tensorboard: bool = True) -> dict[str, Path]:
    """Write ``report.md``, ``report.csv`` and (with a ``plot`` in the spec) ``report.png`` into the
    sweep folder, and log the table and plot to ``<sweep>/tensorboard/report``."""
    sweep_dir = Path(sweep_dir)
    spec, rows = collect(sweep_dir)
    markdown, csv = table(spec, rows, scale)
    written = {"markdown": sweep_dir / "report.md", "csv": sweep_dir / "report.csv"}
    written["markdown"].write_text(markdown)
    written["csv"].write_text(csv)
    fig = figure(spec, rows, scale) if spec.get("plot") else None
    if fig is not None:
        written["plot"] = sweep_dir / "report.png"
        fig.savefig(written["plot"], dpi=120)
    if tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        with SummaryWriter(str(sweep_dir / "tensorboard" / "report")) as writer:
            writer.add_text("sweep/table", markdown)
            if fig is not None:
                writer.add_figure("sweep/plot", fig)
    if fig is not None:
        import matplotlib.pyplot as plt

        plt.close(fig)
    return written

"""Sweep reports: the cells' metrics in Table 6's layout (Markdown and CSV) and, when the spec asks
for it, Fig. 5(a)'s plot of metrics across the cells (PNG, and both in TensorBoard).

A cell without ``metrics.json`` (not run, or crashed) or without one of the metrics is shown as
``missing``: never dropped from the table. With ``seeds`` in the spec, each cell also gets its mean,
standard deviation and 95 % interval over seeds and questions, and with a ``reference`` cell the
paired difference of every other cell from it, question by question, with its interval and
p-value (:mod:`maugpt.evaluation.statistics`, from the answers in ``cells/<run>/evaluation``).
"""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from maugpt.evaluation.run import predictions_path, read_jsonl

MISSING = "missing"
# The spec's metric names whose per-answer values statistics can resample (others: seeds only).
PER_ANSWER = {
    "test/detection_accuracy": "detection_accuracy",
    "test/rouge1": "rouge1",
    "test/rouge2": "rouge2",
    "test/rougeL": "rougeL",
    "test/bleu4": "bleu4",
}


def collect(sweep_dir: str | Path) -> tuple[dict, list[tuple[dict, dict | None]]]:
    """The sweep's spec and, per cell in spec order, the cell and its metrics (None: no metrics)."""
    sweep_dir = Path(sweep_dir)
    record_path = sweep_dir / "sweep.json"
    if not record_path.is_file():
        raise FileNotFoundError(
            f"{record_path} does not exist: {sweep_dir} is not a sweep folder (tools/sweep.py makes one)"
        )
    spec = json.loads(record_path.read_text())["spec"]
    rows = []
    for cell in spec["cells"]:
        path = sweep_dir / "cells" / cell["name"] / "metrics.json"
        rows.append((cell, json.loads(path.read_text()) if path.is_file() else None))
    return spec, rows


def _value(metrics: dict | None, name: str) -> float | None:
    value = None if metrics is None else metrics.get(name)
    return None if value is None or math.isnan(value) else value


def run_label(cell: dict) -> str:
    """A run as the tables name it: the cell's label, with its seed where the sweep has seeds."""
    return cell["label"] + (f" (seed {cell['seed']})" if cell.get("seed") is not None else "")


def table(spec: dict, rows: list[tuple[dict, dict | None]], scale: float = 100.0) -> tuple[str, str]:
    """Markdown (one row per cell, one column per metric, ×``scale``) and CSV (raw values)."""
    metrics = spec["metrics"]
    lines = ["| cell | " + " | ".join(metrics) + " |", "|---" + "|---:" * len(metrics) + "|"]
    csv = ["cell,label," + ",".join(metrics)]
    for cell, found in rows:
        values = [_value(found, m) for m in metrics]
        label = run_label(cell)
        lines.append(f"| {label} | " + " | ".join(MISSING if v is None else f"{v * scale:.2f}" for v in values) + " |")
        csv.append(",".join([cell["name"], f'"{cell["label"]}"', *("" if v is None else f"{v:.6f}" for v in values)]))
    missing = [cell["label"] for cell, found in rows if found is None]
    title = f"### {spec['name']} ({spec['variant']})" + (f": {spec['description']}" if spec.get("description") else "")
    note = f"\n\ncells without metrics (not run or failed): {', '.join(missing)}" if missing else ""
    # A run whose training diverged still writes metrics (all answers empty, every score 0): name it
    # with its count, so that a 0 in the table is read as "answered nothing", not as a weak score.
    unparsed = [
        f"{run_label(cell)}: {count:.0f}" for cell, found in rows if (count := _value(found, "test/detection_unparsed"))
    ]
    if unparsed:
        note += f"\n\nruns with detection answers naming neither True nor False: {', '.join(unparsed)}"
    return f"{title}\n\n" + "\n".join(lines) + note + "\n", "\n".join(csv) + "\n"


def groups(rows: list[tuple[dict, dict | None]]) -> dict[str, list[tuple[dict, dict | None]]]:
    """The runs of each cell (its seeds; one run without seeds), in spec order."""
    grouped: dict[str, list[tuple[dict, dict | None]]] = defaultdict(list)
    for cell, found in rows:
        grouped[cell.get("group") or cell["name"]].append((cell, found))
    return dict(grouped)


def run_predictions(sweep_dir: Path, runs: list[tuple[dict, dict | None]]) -> dict[str, list[dict]]:
    """The answers of a cell's finished runs, by run name (runs without metrics are left out)."""
    answers = {}
    for cell, found in runs:
        folder = sweep_dir / "cells" / cell["name"] / "evaluation"
        if found is not None:
            path = predictions_path(folder)
            if path is None:
                raise FileNotFoundError(
                    f"{folder} holds no predictions.jsonl(.gz): cell {cell['name']} was tested "
                    "before sweeps kept each answer; test it again to compare it"
                )
            answers[cell["name"]] = read_jsonl(path)
    return answers


def p_text(p: float) -> str:
    """A p-value as the tables show it (3 decimals; below 0.001 as "< 0.001")."""
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


@dataclass
class SeedReport:
    """What :func:`seed_statistics` found: the Markdown section, the two CSVs, and per metric the
    cells' (label, mean, low, high) for the figure (low/high NaN where no interval was made)."""

    markdown: str
    seeds_csv: str
    paired_csv: str
    points: dict[str, list[tuple[str, float, float, float]]]


def seed_statistics(
    sweep_dir: str | Path,
    spec: dict,
    rows: list[tuple[dict, dict | None]],
    *,
    resamples: int = 2000,
    scale: float = 100.0,
) -> SeedReport:
    """Each cell over its seeds (mean ± std, 95 % interval) and, with a ``reference`` in the spec,
    each cell's paired difference from it (interval, p-value), then the spec's ``pairs`` alike."""
    from maugpt.evaluation.statistics import compare, summarize

    sweep_dir = Path(sweep_dir)
    grouped = groups(rows)
    label = {name: runs[0][0]["label"] for name, runs in grouped.items()}
    answers = {name: run_predictions(sweep_dir, runs) for name, runs in grouped.items()}
    resampled = [m for m in spec["metrics"] if m in PER_ANSWER]
    lines = [
        "### Over seeds: mean ± std [95 % interval]",
        "",
        "| cell | runs | " + " | ".join(spec["metrics"]) + " |",
        "|---|---:" + "|---" * len(spec["metrics"]) + "|",
    ]
    csv = ["cell,metric,runs,mean,std,low,high,questions"]
    points: dict[str, list[tuple[str, float, float, float]]] = {metric: [] for metric in spec["metrics"]}
    for name, runs in grouped.items():
        cells = []
        for metric in spec["metrics"]:
            if metric in PER_ANSWER and answers[name]:
                summary = summarize(answers[name], PER_ANSWER[metric], resamples=resamples)
                mean, std, low, high, n = summary.mean, summary.std, summary.low, summary.high, summary.questions
            else:  # seeds only: the metric as each run logged it
                values = [v for v in (_value(found, metric) for _, found in runs) if v is not None]
                mean = statistics.fmean(values) if values else math.nan
                std = statistics.stdev(values) if len(values) > 1 else math.nan
                low = high = math.nan
                n = 0
            points[metric].append((label[name], mean, low, high))
            cells.append(
                MISSING
                if mean != mean
                else f"{mean * scale:.2f} ± {std * scale:.2f}"
                + (f" [{low * scale:.2f}, {high * scale:.2f}]" if low == low else "")
            )
            csv.append(f'"{label[name]}",{metric},{len(answers[name])},{mean:.6f},{std:.6f},{low:.6f},{high:.6f},{n}')
        lines.append(f"| {label[name]} | {len(answers[name])} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"± is the standard deviation over seeds. Intervals ({', '.join(resampled) or 'no metric'}): "
        "normal 95 % intervals combining a bootstrap over questions (the same questions resampled for "
        "every seed) with the spread over seeds; a metric without per-answer scores has none.",
    ]

    def find(name_or_label: str | None) -> str | None:
        return next((n for n in grouped if name_or_label in (n, label[n]) and answers[n]), None)

    reference = find(spec.get("reference"))
    comparisons = [(name, reference) for name in grouped if reference and name != reference and answers[name]]
    named = [(pair, (find(pair[0]), find(pair[1]))) for pair in spec.get("pairs") or []]
    pairs = [found for _, found in named if all(found)]
    waiting = [" against ".join(pair) for pair, found in named if not all(found)]
    paired = ["cell,reference,metric,difference,low,high,p_value,seed_low,seed_high,seed_p_value,significant,questions"]
    columns = (
        "metric | difference | 95 % interval, questions | p, questions | 95 % interval, questions + seeds | "
        "p, questions + seeds | significant at 0.05 |"
    )
    sections = [
        (f"### Against {label.get(reference)}: paired difference over the same questions", False, comparisons),
        ("### Pairs named in the spec: paired difference over the same questions", True, pairs),
    ]
    for title, named_against, chosen in (section for section in sections if section[2]):
        lines += ["", title, "", "| cell | " + ("against | " if named_against else "") + columns]
        lines.append("|---|" + ("---|" if named_against else "") + "---|---:|---|---:|---|---:|---|")
        for name, against in chosen:
            for metric in resampled:
                c = compare(answers[name], answers[against], PER_ANSWER[metric], resamples=resamples)
                seeds = (
                    f"[{c.seed_low * scale:+.2f}, {c.seed_high * scale:+.2f}] | {p_text(c.seed_p_value)}"
                    if c.seed_p_value == c.seed_p_value
                    else "— | —"
                )
                lines.append(
                    f"| {label[name]} | "
                    + (f"{label[against]} | " if named_against else "")
                    + f"{metric} | {c.difference * scale:+.2f} | [{c.low * scale:+.2f}, {c.high * scale:+.2f}] | "
                    f"{p_text(c.p_value)} | {seeds} | {'yes' if c.significant else 'no'} |"
                )
                paired.append(
                    f'"{label[name]}","{label[against]}",{metric},{c.difference:.6f},{c.low:.6f},'
                    f"{c.high:.6f},{c.p_value:.6f},{c.seed_low:.6f},{c.seed_high:.6f},{c.seed_p_value:.6f},"
                    f"{c.significant},{c.questions}"
                )
    if spec.get("reference") and reference is None:
        waiting.insert(0, f"the reference {spec['reference']}")
    if waiting:
        lines += ["", f"not compared (a cell has no finished runs): {', '.join(waiting)}"]
    if comparisons or pairs:
        lines += [
            "",
            "Questions: percentile bootstrap over questions and a two-sided paired permutation test "
            "swapping the two cells' answers question by question (the trained models held fixed). "
            "Questions + seeds: a normal interval and z-test whose variance adds each cell's spread over "
            "seeds (s²/S), since another seed trains another model; significance is judged on it where "
            "both cells have several seeds.",
        ]
    return SeedReport("\n".join(lines) + "\n", "\n".join(csv) + "\n", "\n".join(paired) + "\n", points)


def figure(
    spec: dict,
    rows: list[tuple[dict, dict | None]],
    scale: float = 100.0,
    points: dict[str, list[tuple[str, float, float, float]]] | None = None,
):
    """A matplotlib figure of the plotted metrics across the cells, in spec order (gaps where
    missing); with ``points`` (seeds), each cell's mean over seeds with its 95 % interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plot = spec.get("plot") or {}
    labels = [label for label, *_ in next(iter(points.values()))] if points else [cell["label"] for cell, _ in rows]
    fig, ax = plt.subplots(figsize=(1.2 * len(labels) + 3, 3.6))
    for metric in plot.get("y") or spec["metrics"]:
        name = metric.split("/", 1)[-1]
        if points:
            means = [mean * scale for _, mean, _, _ in points[metric]]
            errors = [
                [(m - lo) * scale if lo == lo else 0.0 for _, m, lo, _ in points[metric]],
                [(hi - m) * scale if hi == hi else 0.0 for _, m, _, hi in points[metric]],
            ]
            ax.errorbar(range(len(labels)), means, yerr=errors, marker="o", capsize=4, label=f"{name} (95 % interval)")
            continue
        values = [_value(found, metric) for _, found in rows]
        ax.plot(range(len(labels)), [math.nan if v is None else v * scale for v in values], marker="o", label=name)
    ax.set_xticks(range(len(labels)), labels)
    ax.set_xlabel(plot.get("xlabel", "cell"))
    ax.set_ylabel(plot.get("ylabel", "score (%)"))
    seeds = f", mean over {len(spec['seeds'])} seeds" if points else ""
    ax.set_title(f"{spec['name']} ({spec['variant']}{seeds})")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def write_report(
    sweep_dir: str | Path, scale: float = 100.0, tensorboard: bool = True, resamples: int = 2000
) -> dict[str, Path]:
    """Write ``report.md``, ``report.csv`` and (with a ``plot`` in the spec) ``report.png`` into the
    sweep folder, with seeds also ``report_seeds.csv`` and ``report_paired.csv`` (see
    :func:`seed_statistics`), and log the table and plot to ``<sweep>/tensorboard/report``."""
    sweep_dir = Path(sweep_dir)
    spec, rows = collect(sweep_dir)
    markdown, csv = table(spec, rows, scale)
    written = {"markdown": sweep_dir / "report.md", "csv": sweep_dir / "report.csv"}
    seeds = seed_statistics(sweep_dir, spec, rows, resamples=resamples, scale=scale) if spec.get("seeds") else None
    if seeds is not None:
        markdown += "\n" + seeds.markdown
        written |= {"seeds_csv": sweep_dir / "report_seeds.csv", "paired_csv": sweep_dir / "report_paired.csv"}
        written["seeds_csv"].write_text(seeds.seeds_csv)
        written["paired_csv"].write_text(seeds.paired_csv)
    written["markdown"].write_text(markdown)
    written["csv"].write_text(csv)
    fig = figure(spec, rows, scale, seeds.points if seeds else None) if spec.get("plot") else None
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

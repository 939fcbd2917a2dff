"""The sweep report on hand-written metric files: Table 6's layout, missing cells named, the plot."""

from __future__ import annotations

import json
from dataclasses import asdict

from maugpt.report import write_report
from maugpt.sweep import Cell, SweepSpec


def test_the_report_lays_out_the_cells_and_names_the_missing_one(tmp_path):
    cells = [
        Cell("lora_r64", "LoRA (r = 64)", {}),
        Cell("loramoe_16x4", "LoRAMoE (16 × 4)", {}),
        Cell("amoe_lora_16x4", "AMoE-LoRA (16 × 4)", {}),
    ]
    spec = SweepSpec(
        "ablation_architecture",
        "tiny",
        ["base.yaml"],
        cells,
        metrics=["test/rougeL", "test/bleu4"],
        plot={"y": ["test/rougeL", "test/bleu4"], "xlabel": "adapter"},
    )
    (tmp_path / "sweep.json").write_text(json.dumps({"spec": asdict(spec), "cells": [c.name for c in cells]}))
    for name, metrics in {
        "lora_r64": {"test/rougeL": 0.5, "test/bleu4": 0.25},
        "amoe_lora_16x4": {"test/rougeL": 0.625, "test/bleu4": float("nan"), "test/detection_unparsed": 845.0},
    }.items():
        (tmp_path / "cells" / name).mkdir(parents=True)
        (tmp_path / "cells" / name / "metrics.json").write_text(json.dumps(metrics))
    written = write_report(tmp_path, tensorboard=True)
    lines = written["markdown"].read_text().splitlines()
    assert lines[2:7] == [
        "| cell | test/rougeL | test/bleu4 |",
        "|---|---:|---:|",
        "| LoRA (r = 64) | 50.00 | 25.00 |",
        "| LoRAMoE (16 × 4) | missing | missing |",
        "| AMoE-LoRA (16 × 4) | 62.50 | missing |",
    ]
    assert lines[-3:] == [
        "cells without metrics (not run or failed): LoRAMoE (16 × 4)",
        "",
        "runs with detection answers naming neither True nor False: AMoE-LoRA (16 × 4): 845",
    ]
    assert written["csv"].read_text().splitlines() == [
        "cell,label,test/rougeL,test/bleu4",
        'lora_r64,"LoRA (r = 64)",0.500000,0.250000',
        'loramoe_16x4,"LoRAMoE (16 × 4)",,',
        'amoe_lora_16x4,"AMoE-LoRA (16 × 4)",0.625000,',
    ]
    assert written["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert any((tmp_path / "tensorboard" / "report").glob("events.out.tfevents.*"))


def test_pairs_are_compared_and_a_pair_or_reference_without_runs_is_named(tmp_path):
    import gzip

    from maugpt.evaluation.statistics import compare
    from maugpt.report import p_text

    names = ["a", "b", "c"]
    cells = [Cell(f"{n}-seed{s}", n.upper(), {}, group=n, seed=s) for s in (0, 1) for n in names]
    spec = SweepSpec(
        "pairs",
        "tiny",
        ["base.yaml"],
        cells,
        metrics=["test/detection_accuracy"],
        seeds=[0, 1],
        reference="C",
        pairs=[["B", "A"], ["A", "C"]],
    )
    (tmp_path / "sweep.json").write_text(json.dumps({"spec": asdict(spec), "cells": [c.name for c in cells]}))
    answers = {}
    for cell in cells:
        if cell.group == "c":  # C never finished
            continue
        correct = [(i * (3 if cell.group == "a" else 5) + cell.seed) % 4 != 0 for i in range(40)]
        rows = [
            {"key": f"img{i}", "qa_index": 0, "style": "discriminative", "correct": ok} for i, ok in enumerate(correct)
        ]
        answers.setdefault(cell.group, {})[cell.name] = rows
        folder = tmp_path / "cells" / cell.name
        (folder / "evaluation").mkdir(parents=True)
        (folder / "metrics.json").write_text(json.dumps({"test/detection_accuracy": sum(correct) / 40}))
        with gzip.open(folder / "evaluation" / "predictions.jsonl.gz", "wt") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)
    text = write_report(tmp_path, tensorboard=False, resamples=200)["markdown"].read_text()
    c = compare(answers["b"], answers["a"], "detection_accuracy", resamples=200)
    pairs = text.split("### Pairs named in the spec: paired difference over the same questions")[1]
    assert (
        f"| B | A | test/detection_accuracy | {100 * c.difference:+.2f} | [{100 * c.low:+.2f}, {100 * c.high:+.2f}] | "
        f"{p_text(c.p_value)} |"
    ) in pairs
    assert "### Against" not in text  # the reference has no runs: no table against it
    assert "not compared (a cell has no finished runs): the reference C, A against C" in text
    assert (tmp_path / "report_paired.csv").read_text().count("\n") == 2  # header and B against A

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

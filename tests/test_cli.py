"""The maugpt console script."""
from __future__ import annotations

import pytest

from maugpt.adapters import AMoELoRA, inject, save_adapter
from maugpt.cli import main
from tests.conftest import tiny_causal_lm


def test_adapter_info_describes_a_saved_adapter(tmp_path, capsys):
    model = tiny_causal_lm()
    adapter = AMoELoRA(experts=4, rank=2, hyper_hidden=8, targets=["q_proj", "down_proj"])
    inject(model, adapter)
    path = save_adapter(model, tmp_path / "amoe.safetensors", adapter)
    main(["adapter-info", str(path)])
    out = capsys.readouterr().out
    assert '"class_path": "maugpt.adapters.amoe_lora.AMoELoRA"' in out
    # q_proj: 32→32, down_proj: 48→32, two decoder layers each
    q = 4 * 2 * (32 + 32) + 32 * 4 + 2 * (32 + 32) + (32 * 8 + 8) + (8 * 4 + 4)
    down = 4 * 2 * (48 + 32) + 48 * 4 + 2 * (48 + 32) + (48 * 8 + 8) + (8 * 4 + 4)
    assert f"adapted layers: 4; tensors: 36; parameters: {2 * (q + down):,}" in out
    assert "model.layers.*.mlp.down_proj.A" in out and "(48, 8)" in out


def test_adapter_info_on_a_missing_or_corrupt_file_says_which(tmp_path):
    with pytest.raises(SystemExit, match="nothing.safetensors does not exist"):
        main(["adapter-info", str(tmp_path / "nothing.safetensors")])
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00not json")
    with pytest.raises(SystemExit, match="bad.safetensors is not a readable safetensors file"):
        main(["adapter-info", str(bad)])


def test_the_tools_are_subcommands_with_the_same_output(tmp_path, capsys):
    main(["synth", "--out", str(tmp_path / "syn"), "--images", "14", "--image_size", "16", "--seed", "1"])
    built = capsys.readouterr().out
    assert "== mauset/train:" in built and "== captions/train:" in built
    main(["inspect", str(tmp_path / "syn" / "mauset" / "train"), "--samples", "1"])
    shown = capsys.readouterr().out
    assert shown.count("-- sample ") == 1 and '"source": "synthetic"' in shown
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match=f"inspect_shards: no index.json under {tmp_path / 'empty'}: not a folder"):
        main(["inspect", str(tmp_path / "empty")])


def test_sweep_cell_runs_one_prepared_cell_by_its_array_index(tmp_path, monkeypatch, capsys):
    import json
    import sys

    from maugpt import sweep

    folder = tmp_path / "sweep"
    for name in ("a", "b"):
        (folder / "cells" / name).mkdir(parents=True)
    (folder / "sweep.json").write_text(json.dumps({"cells": ["a", "b"]}))
    script = "import pathlib, sys; pathlib.Path(sys.argv[1], 'metrics.json').write_text('{}')"
    monkeypatch.setattr(sweep, "cell_commands", lambda cell: [[sys.executable, "-c", script, str(cell)]])
    main(["sweep-cell", str(folder), "1"])
    assert capsys.readouterr().out == "b: done\n"
    assert (folder / "cells" / "b" / "metrics.json").is_file() and not (folder / "cells" / "a" / "metrics.json").exists()
    main(["sweep-cell", str(folder), "1"])
    assert capsys.readouterr().out == "b: skipped\n"  # a finished cell exits at once, as a resubmitted array task
    with pytest.raises(SystemExit, match=r"sweep-cell: index 2 is outside the sweep's 2 cells \(0-1\)"):
        main(["sweep-cell", str(folder), "2"])

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
    assert "model.layers.*.mlp.down_proj.generalist.A" in out and "(48, 8)" in out


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
    monkeypatch.setattr(sweep, "cell_commands", lambda cell: [("test", [sys.executable, "-c", script, str(cell)])])
    main(["sweep-cell", str(folder), "1"])
    assert capsys.readouterr().out == "b: done\n"
    assert (folder / "cells" / "b" / "metrics.json").is_file() and not (
        folder / "cells" / "a" / "metrics.json"
    ).exists()
    main(["sweep-cell", str(folder), "1"])
    assert capsys.readouterr().out == "b: skipped\n"  # a finished cell exits at once, as a resubmitted array task
    with pytest.raises(SystemExit, match=r"sweep-cell: index 2 is outside the sweep's 2 cells \(0-1\)"):
        main(["sweep-cell", str(folder), "2"])


def test_a_users_mistake_in_a_data_command_exits_with_one_message_and_no_traceback(tmp_path):
    import subprocess
    import sys

    from tests.mauset.releases import RELEASES

    RELEASES["mpdd"](tmp_path / "mpdd")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "mine.txt").write_text("keep me")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "maugpt.cli",
            "build",
            "--source",
            "mpdd",
            "--root",
            str(tmp_path / "mpdd"),
            "--out",
            str(tmp_path / "full"),
            "--partial",
            "true",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr == (
        f"build: output folder {tmp_path / 'full'} is not empty; pass --overwrite to replace "
        "the train/val/test shards in it\n"
    )


def expected_exit(args: list[str]) -> str:
    """The message a command exits with (in-process: ``SystemExit`` carries it to stderr, status 1)."""
    with pytest.raises(SystemExit) as err:
        main(args)
    assert isinstance(err.value.code, str), err.value.code  # a message, so the exit status is 1
    return err.value.code


def test_the_data_commands_name_each_mistake_in_one_message(tmp_path):
    from tests.mauset.releases import RELEASES

    message = expected_exit(
        ["build", "--source", "ksdd2", "--root", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]
    )
    assert message == (
        f"build: ksdd2: {tmp_path / 'nowhere'} does not have the expected layout.\n"
        "  expected: [KSDD2/]{train,test}/<id>.png with <id>_GT.png\n  found: the folder does not exist"
    )
    RELEASES["mvtec_ad"](tmp_path / "mvtec")
    message = expected_exit(
        ["build", "--source", "mvtec_ad", "--root", str(tmp_path / "mvtec"), "--out", str(tmp_path / "o")]
    )
    assert message.startswith("build: mvtec_ad: found 11 images under ") and "--partial true" in message
    message = expected_exit(
        [
            "build",
            "--source",
            "mvtec_ad",
            "--root",
            str(tmp_path / "mvtec"),
            "--out",
            str(tmp_path / "o"),
            "--knowledge",
            str(tmp_path / "no-overlay"),
        ]
    )
    assert message.startswith(f"build: knowledge overlay {tmp_path / 'no-overlay'} is not a folder")
    assert not (tmp_path / "o").exists()

    message = expected_exit(
        [
            "build-llava",
            "--annotations",
            str(tmp_path / "blip.json"),
            "--images",
            str(tmp_path),
            "--out",
            str(tmp_path / "llava"),
        ]
    )
    assert message.startswith(f"build_llava: LLaVA-Pretrain annotation file {tmp_path / 'blip.json'} does not exist")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "mine.txt").write_text("keep me")
    assert (
        expected_exit(["synth", "--out", str(tmp_path / "full"), "--images", "14"])
        == f"synth: output folder {tmp_path / 'full'} is not empty; pass --overwrite to replace its shards"
    )
    assert (
        expected_exit(["synth", "--out", str(tmp_path / "syn"), "--test", "0.8", "--val", "0.3"])
        == "synth: --test and --val must be fractions in [0, 1) with test + val < 1, got 0.8, 0.3"
    )
    message = expected_exit(["tiny-base", "--shards", str(tmp_path / "no-shards"), "--out", str(tmp_path / "base")])
    assert message.startswith(
        f"make_tiny_base: {tmp_path / 'no-shards' / 'mauset' / 'train' / 'index.json'} is missing"
    )
    assert message.endswith("; --shards is the folder maugpt synth wrote")


def test_a_magnetic_tile_subset_without_a_class_builds_only_with_partial(tmp_path, capsys):
    import json
    import shutil

    from tests.mauset.releases import RELEASES

    RELEASES["magnetic_tile"](tmp_path / "mt")
    shutil.rmtree(tmp_path / "mt" / "Magnetic-Tile-Defect" / "MT_Break")
    args = [
        "build",
        "--source",
        "magnetic_tile",
        "--root",
        str(tmp_path / "mt"),
        "--out",
        str(tmp_path / "out"),
        "--test",
        "0",
        "--val",
        "0",
        "--max_side",
        "32",
    ]
    message = expected_exit(args)
    assert message.startswith("build: magnetic_tile: ") and "found: MT_Break/Imgs is missing" in message
    main(args + ["--partial", "true"])
    assert "missing and left out: magnetic_tile: MT_Break/Imgs" in capsys.readouterr().out
    stats = json.loads((tmp_path / "out" / "train" / "stats.json").read_text())
    assert stats["missing"] == ["magnetic_tile: MT_Break/Imgs"] and stats["images"] == 6


def test_a_bug_in_a_data_command_keeps_its_traceback(tmp_path, monkeypatch):
    from maugpt.mauset import build

    def broken(*args, **kwargs):
        raise RuntimeError("a bug, not the user's mistake")

    monkeypatch.setattr(build, "build_mauset", broken)
    with pytest.raises(RuntimeError, match="a bug, not the user's mistake"):
        main(["build", "--source", "mpdd", "--root", str(tmp_path), "--out", str(tmp_path / "out")])

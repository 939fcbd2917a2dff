"""The thin command-line tools, run as a user would."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.mauset.releases import RELEASES

TOOLS = Path(__file__).parents[1] / "tools"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300)


def test_build_then_inspect_a_source(tmp_path):
    RELEASES["mvtec_ad"](tmp_path / "mvtec")
    built = run(
        str(TOOLS / "build_mauset.py"),
        "--source",
        "mvtec_ad",
        "--root",
        str(tmp_path / "mvtec"),
        "--out",
        str(tmp_path / "out"),
        "--test",
        "0.25",
        "--val",
        "0",
        "--max_side",
        "32",
        "--partial",
        "true",
    )
    assert built.returncode == 0, built.stderr
    assert "== train (mvtec_ad): 8 images (5 normal, 3 abnormal)" in built.stdout
    assert "== test (mvtec_ad): 3 images (2 normal, 1 abnormal)" in built.stdout
    shown = run(str(TOOLS / "inspect_shards.py"), str(tmp_path / "out"), "--samples", "1")
    assert shown.returncode == 0, shown.stderr
    assert f"== {tmp_path / 'out' / 'test'}: 3 images (2 normal, 1 abnormal)" in shown.stdout
    assert shown.stdout.count("-- sample ") == 2


def test_build_on_a_wrong_folder_names_the_expected_layout(tmp_path):
    (tmp_path / "empty").mkdir()
    result = run(
        str(TOOLS / "build_mauset.py"),
        "--source",
        "ksdd2",
        "--root",
        str(tmp_path / "empty"),
        "--out",
        str(tmp_path / "out"),
    )
    assert result.returncode != 0
    assert "does not have the expected layout" in result.stderr and "[KSDD2/]{train,test}/<id>.png" in result.stderr


def test_synth_then_inspect(tmp_path):
    made = run(
        str(TOOLS / "synth_mauset.py"),
        "--out",
        str(tmp_path / "syn"),
        "--images",
        "28",
        "--image_size",
        "32",
        "--seed",
        "1",
    )
    assert made.returncode == 0, made.stderr
    assert "== mauset/train:" in made.stdout and "== captions/train:" in made.stdout
    shown = run(str(TOOLS / "inspect_shards.py"), str(tmp_path / "syn" / "mauset" / "train"), "--samples", "0")
    assert shown.returncode == 0 and "synthetic" in shown.stdout

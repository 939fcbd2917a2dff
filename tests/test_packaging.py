"""maugpt installed from its wheel, away from this checkout: data files and recipes ship inside it."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The wheel built from this checkout (no network: the environment's setuptools), unpacked into a folder."""
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--quiet",
            "-w",
            str(out),
            str(REPO),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    wheel = next(out.glob("maugpt-*.whl"))
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", "--target", str(out / "site"), str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return wheel


def test_the_wheel_holds_every_module_and_every_config_file(installed):
    names = set(zipfile.ZipFile(installed).namelist())
    modules = {str(p.relative_to(REPO)) for p in (REPO / "maugpt").rglob("*.py")}
    configs = {
        "maugpt/configs/" + str(p.relative_to(REPO / "configs"))
        for p in (REPO / "configs").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    assert modules - names == set()  # a new subpackage missing from pyproject's list fails here
    assert configs - names == set() and "maugpt/configs/mauset/defects.yaml" in configs


def test_the_installed_package_finds_its_data_and_recipes(installed, tmp_path):
    site = installed.parent / "site"
    env = {**os.environ, "PYTHONPATH": str(site)}
    check = (
        "import maugpt, maugpt.configs\n"
        "from maugpt.mauset.knowledge import Knowledge\n"
        f"assert maugpt.__file__.startswith({str(site)!r}), maugpt.__file__\n"
        "knowledge = Knowledge()\n"
        f"assert str(knowledge.root).startswith({str(site)!r})\n"
        "print(len(knowledge.products('mvtec_ad')), sorted(maugpt.configs.recipes())[:2])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", check], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    count, _ = done.stdout.split(" ", 1)
    assert int(count) == 15 and "['adapters/amoe_lora.yaml', 'adapters/lora.yaml']" in done.stdout
    listed = subprocess.run(
        [sys.executable, "-m", "maugpt.cli", "recipes"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    paths = listed.stdout.split()
    assert listed.returncode == 0 and str(site / "maugpt" / "configs" / "tiny" / "stage2.yaml") in paths
    assert not any("mauset" in p for p in paths)  # data files are not recipes
    parsed = subprocess.run(
        [
            sys.executable,
            "-m",
            "maugpt.cli",
            "fit",
            "--config",
            str(site / "maugpt" / "configs" / "tiny" / "stage2.yaml"),
            "--print_config",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert parsed.returncode == 0, parsed.stderr[-2000:]
    assert "class_path: maugpt.adapters.AMoELoRA" in parsed.stdout


def test_recipes_are_copied_without_overwriting(tmp_path, capsys):
    from maugpt.cli import main

    (tmp_path / "tiny").mkdir()
    (tmp_path / "tiny" / "stage2.yaml").write_text("mine\n")
    main(["recipes", "--copy_to", str(tmp_path)])
    out = capsys.readouterr().out
    assert (tmp_path / "tiny" / "stage2.yaml").read_text() == "mine\n"  # the user's file stays
    assert (tmp_path / "tiny" / "stage1.yaml").read_text() == (REPO / "configs" / "tiny" / "stage1.yaml").read_text()
    assert f"left 1 existing file(s) untouched: {tmp_path / 'tiny' / 'stage2.yaml'}" in out


def test_the_installed_command_has_the_tools_as_subcommands(installed, tmp_path):
    site = installed.parent / "site"
    env = {**os.environ, "PYTHONPATH": str(site)}
    made = subprocess.run(
        [
            sys.executable,
            "-m",
            "maugpt.cli",
            "synth",
            "--out",
            str(tmp_path / "syn"),
            "--images",
            "14",
            "--image_size",
            "16",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert made.returncode == 0, made.stderr[-2000:]
    assert "== mauset/train:" in made.stdout and (tmp_path / "syn" / "mauset" / "train" / "index.json").is_file()
    helped = subprocess.run(
        [sys.executable, "-m", "maugpt.cli", "--help"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    for command in (
        "build",
        "build-llava",
        "synth",
        "inspect",
        "tiny-base",
        "score-mauset",
        "score-mmad",
        "judge",
        "sweep",
        "sweep-cell",
        "report",
        "report-html",
        "figure-cores",
        "export",
    ):
        assert f"    {command} " in helped.stdout, command

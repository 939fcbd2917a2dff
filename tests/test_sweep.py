"""Sweeps: grid expansion, constraints, key checks before anything runs, resume semantics, SLURM, and
a 2-cell sweep of the tiny model end to end."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import yaml

from maugpt import sweep
from maugpt.sweep import SweepError, evaluate, expand_grid, load_spec, prepare, run_cells, write_slurm

ROOT = Path(__file__).parents[1]
EXPERTS = "model.init_args.adapter.init_args.experts"
RANK = "model.init_args.adapter.init_args.rank"
HYPER = "model.init_args.adapter.init_args.hyper_hidden"


def test_the_experts_rank_spec_expands_to_seven_cells_with_product_64_times_three_seeds():
    spec = load_spec(ROOT / "experiments" / "ablation_experts_rank.yaml", "tiny")
    grid = ["1x64", "2x32", "4x16", "8x8", "16x4", "32x2", "64x1"]
    assert [c.label for c in spec.cells] == ["1×64", "2×32", "4×16", "8×8", "16×4", "32×2", "64×1"] * 3
    assert [c.name for c in spec.cells] == [f"{cell}-seed{seed}" for seed in (0, 1, 2) for cell in grid]
    assert spec.cells[4].overrides == {
        EXPERTS: 16,
        RANK: 4,
        "model.init_args.adapter.init_args.alpha": 8,
        "model.init_args.adapter.init_args.scaling": "paper",  # the product's one value, written out
        "seed_everything": 0,
    }
    assert spec.reference == "16×4"
    assert spec.base == ["configs/tiny/stage2.yaml"] and spec.overrides["data.init_args.batches_per_epoch"] == 800
    assert load_spec(ROOT / "experiments" / "ablation_experts_rank.yaml", "full").base == [
        "configs/mau-gpt-4b/stage2.yaml"
    ]
    architecture = load_spec(ROOT / "experiments" / "ablation_architecture.yaml", "full")
    assert [c.name for c in architecture.cells] == [
        f"{cell}-seed{seed}" for seed in (0, 1, 2) for cell in ("lora_r64", "loramoe_16x4", "amoe_lora_16x4")
    ]
    assert [(c.group, c.seed, c.overrides["seed_everything"]) for c in architecture.cells[2:4]] == [
        ("amoe_lora_16x4", 0, 0),
        ("lora_r64", 1, 1),
    ]
    assert architecture.reference == "LoRA (r = 64)" and architecture.cells[3].label == "LoRA (r = 64)"


SPECS = sorted((ROOT / "experiments").glob("*.yaml"))


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_every_spec_in_experiments_loads_and_each_cell_resolves_to_a_config(path, tmp_path):
    raw = yaml.safe_load(path.read_text())
    assert raw["seeds"] == [0, 1, 2] and raw["reference"]  # every committed comparison has variance and a reference
    for variant in raw["variants"]:
        load_spec(path, variant)
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump({**raw, "seeds": []}))
    spec = load_spec(tmp_path / "spec.yaml", "tiny")  # one seed: each cell resolved once by the CLI parser
    folder = prepare(spec, tmp_path / "sweep")
    for cell in spec.cells:
        adapter = yaml.safe_load((folder / "cells" / cell.name / "config.yaml").read_text())["model"]["init_args"][
            "adapter"
        ]
        mixture = adapter["class_path"].rsplit(".", 1)[-1] in ("LoRAMoE", "AMoELoRA")
        total_rank = "total_rank" in cell.name or path.stem == "scaling_experts_rank"
        expected = ("total_rank" if total_rank else "paper") if mixture else None
        assert adapter["init_args"].get("scaling") == expected, cell.name  # the convention each cell names


def test_seeds_and_the_reference_cell_are_checked(tmp_path):
    raw = yaml.safe_load((ROOT / "experiments" / "ablation_architecture.yaml").read_text())
    for seeds in ([0, 0], "0-2", [0, 1.5]):
        (tmp_path / "spec.yaml").write_text(yaml.safe_dump({**raw, "seeds": seeds}))
        with pytest.raises(SweepError, match=r"seeds must be a list of distinct integers, got"):
            load_spec(tmp_path / "spec.yaml", "tiny")
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump({**raw, "reference": "LoRA"}))
    with pytest.raises(SweepError, match=r"reference 'LoRA' is none of the cells \['LoRA \(r = 64\)', "):
        load_spec(tmp_path / "spec.yaml", "tiny")
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump({**raw, "pairs": [["LoRA (r = 64)", "LoRA r=8"]]}))
    with pytest.raises(SweepError, match=r"pairs name \['LoRA r=8'\], none of the cells \['LoRA \(r = 64\)', "):
        load_spec(tmp_path / "spec.yaml", "tiny")
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump({**raw, "pairs": [["LoRA (r = 64)"]]}))
    with pytest.raises(SweepError, match=r"each of pairs must be \[cell, against\], got \['LoRA \(r = 64\)'\]"):
        load_spec(tmp_path / "spec.yaml", "tiny")
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump({**raw, "plot": {"y": ["test/rougeL", "test/mmad"]}}))
    with pytest.raises(SweepError, match=r"plot y \['test/mmad'\] are not among the metrics \['test/rouge1', "):
        load_spec(tmp_path / "spec.yaml", "tiny")
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump({**raw, "seeds": []}))
    assert [c.name for c in load_spec(tmp_path / "spec.yaml", "tiny").cells] == [
        "lora_r64",
        "loramoe_16x4",
        "amoe_lora_16x4",
    ]


def test_zip_product_and_explicit_cells_combine():
    cells = expand_grid(
        {
            "cells": [{"name": "a", "x": 1}, {"name": "b", "x": 2}],
            "zip": {"y": [1, 2], "z": [3, 4]},
            "product": {"seed": [0, 1]},
        },
        label=None,
    )
    assert len(cells) == 2 * 2 * 2  # explicit × zip rows × product
    assert (cells[0].name, cells[0].label) == ("a_y_1_z_3_seed_0", "a (y=1, z=3, seed=0)")
    assert cells[-1].overrides == {"x": 2, "y": 2, "z": 4, "seed": 1}
    with pytest.raises(SweepError, match="two cells are both named 'a'"):
        expand_grid({"cells": [{"name": "a", "label": "A"}, {"name": "a", "label": "B"}]})
    with pytest.raises(SweepError, match=r"the zip lists differ in length: \{'y': 2, 'z': 1\}"):
        expand_grid({"zip": {"y": [1, 2], "z": [3]}})


def test_constraints_are_checked_safely_before_anything_runs(tmp_path):
    assert evaluate(f"{EXPERTS} * {RANK} == 64 and not {RANK} > 8", {EXPERTS: 16, RANK: 4}) is True
    with pytest.raises(SweepError, match="is not allowed"):
        evaluate("__import__('os').system('true')", {})
    with pytest.raises(SweepError, match="names 'seed', which no cell or override sets"):
        evaluate("seed == 1", {})
    spec = yaml.safe_load((ROOT / "experiments" / "ablation_experts_rank.yaml").read_text())
    spec["grid"]["zip"][RANK][0] = 32  # 1 × 32 ≠ 64
    spec["grid"]["zip"]["model.init_args.adapter.init_args.alpha"][0] = 64
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(SweepError, match=r"cell\(s\) \['1×32'\] break the constraint"):
        load_spec(path, "tiny")


def test_an_override_key_that_does_not_exist_fails_before_any_cell_is_written(tmp_path):
    spec = load_spec(ROOT / "experiments" / "ablation_architecture.yaml", "tiny")
    spec.overrides["trainer.max_epoch"] = 2  # argparse would take the prefix of max_epochs
    with pytest.raises(
        SweepError,
        match=r"'trainer.max_epoch' does not exist in the config \(did you mean "
        r"'trainer.max_epochs'\?\)",
    ):
        prepare(spec, tmp_path / "sweep")
    spec.overrides = {"model.init_args.learning_rate": 1e-3}
    with pytest.raises(SweepError, match="Option 'learning_rate' is not accepted"):
        prepare(spec, tmp_path / "sweep")
    assert not (tmp_path / "sweep").exists()


def test_the_slurm_script_has_one_array_task_per_cell_with_its_overrides(tmp_path):
    raw = yaml.safe_load((ROOT / "experiments" / "ablation_experts_rank.yaml").read_text())
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump({**raw, "seeds": [], "reference": None}))
    spec = load_spec(tmp_path / "spec.yaml", "full")  # one seed: 7 cells (each seed is one more task)
    folder = prepare(spec, tmp_path / "sweep")
    script = write_slurm(folder, partition="gpu", gpus=8).read_text()
    assert "#SBATCH --array=0-6\n" in script and "#SBATCH --gpus-per-task=8\n" in script
    assert "CELLS=(1x64 2x32 4x16 8x8 16x4 32x2 64x1)\n" in script
    # the array calls the sub-command that runs a cell locally (fit, test, skip when done, resume)
    assert f'\nexec python -m maugpt.cli sweep-cell "{folder.resolve()}" "$SLURM_ARRAY_TASK_ID"\n' in script
    # SIGUSR1 90 s before the limit reaches the runner (exec'd by the batch shell); the task requeues
    for line in ("#SBATCH --signal=B:USR1@90", "#SBATCH --requeue", "#SBATCH --open-mode=append"):
        assert f"{line}\n" in script
    for cell in spec.cells:
        config = yaml.safe_load((folder / "cells" / cell.name / "config.yaml").read_text())
        adapter = config["model"]["init_args"]["adapter"]["init_args"]
        assert (adapter["experts"], adapter["rank"]) == (cell.overrides[EXPERTS], cell.overrides[RANK])
        assert config["model"]["init_args"]["llm"] == "Qwen/Qwen2.5-3B-Instruct"
        assert config["trainer"]["logger"]["init_args"]["save_dir"] == str(folder / "tensorboard")
        assert config["trainer"]["callbacks"][-1]["init_args"]["path"] == str(
            folder / "cells" / cell.name / "metrics.json"
        )
    assert prepare(spec, folder) == folder  # the same spec again: accepted, nothing changes
    before = {path: path.read_text() for path in folder.glob("cells/*/config.yaml")}
    # the spec grown by a cell: taken, the cells already there untouched
    grown = load_spec(tmp_path / "spec.yaml", "full")
    grown.cells.append(sweep.Cell("128x1", "128×1", {**grown.cells[-1].overrides, EXPERTS: 128}))
    prepare(grown, folder)
    assert {path: path.read_text() for path in before} == before
    assert (folder / "cells" / "128x1" / "config.yaml").is_file()
    assert json.loads((folder / "sweep.json").read_text())["cells"][-1] == "128x1"
    spec.cells[0].overrides[EXPERTS] = 2  # a cell changed: another sweep
    with pytest.raises(SweepError, match=r"holds another sweep \(its sweep.json differs: cell 1x64 differs\)"):
        prepare(spec, folder)
    with pytest.raises(SweepError, match=r"cell 128x1 is not in the spec"):  # a cell dropped
        prepare(replace(grown, cells=grown.cells[:-1]), folder)
    with pytest.raises(SweepError, match=r"differs in overrides\)"):
        prepare(replace(grown, overrides={"trainer.max_steps": 5}), folder)
    prepare(replace(grown, metrics=["test/rougeL"], reference="8x8"), folder)  # report fields may change
    prepare(replace(grown, seeds=[0]), folder)  # seeds may grow, never shrink
    with pytest.raises(SweepError, match=r"differs in seeds\)"):
        prepare(grown, folder)
    # the base's value written out (as a spec pins a recipe's default against its later change): the
    # same configs, taken; another value is another sweep
    grown = replace(grown, seeds=[0])
    pinned = [replace(cell, overrides={**cell.overrides, HYPER: 64}) for cell in grown.cells]
    prepare(replace(grown, cells=pinned), folder)
    prepare(replace(grown, cells=pinned, overrides={HYPER: 64}), folder)
    assert {path: path.read_text() for path in before} == before
    assert json.loads((folder / "sweep.json").read_text())["spec"]["overrides"] == {HYPER: 64}
    with pytest.raises(SweepError, match=r"differs in overrides\)"):
        prepare(replace(grown, overrides={HYPER: 32}), folder)
    pinned[0] = replace(pinned[0], overrides={**pinned[0].overrides, HYPER: 32})
    with pytest.raises(SweepError, match=r"cell 1x64 differs\)"):
        prepare(replace(grown, cells=pinned, overrides={HYPER: 64}), folder)


def test_finished_cells_are_skipped_and_failed_ones_retried_keeping_their_logs(tmp_path, monkeypatch):
    folder = tmp_path / "sweep"
    for name in ("good", "flaky", "broken"):
        (folder / "cells" / name).mkdir(parents=True)
    (folder / "sweep.json").write_text(json.dumps({"cells": ["good", "flaky", "broken"]}))
    script = (
        "import pathlib, sys; cell = pathlib.Path(sys.argv[1]); marker = cell / 'tried'\n"
        "if cell.name == 'broken' or (cell.name == 'flaky' and not marker.exists()):\n"
        "    marker.touch(); print('crash in', cell.name); sys.exit(1)\n"
        "(cell / 'metrics.json').write_text('{\"test/rougeL\": 0.5}')"
    )
    monkeypatch.setattr(
        sweep, "cell_commands", lambda cell_dir: [("test", [sys.executable, "-c", script, str(cell_dir)])]
    )
    assert run_cells(folder, parallel=2) == {"good": "done", "flaky": "failed", "broken": "failed"}
    assert "crash in flaky" in (folder / "cells" / "flaky" / "logs" / "attempt-1.log").read_text()
    assert run_cells(folder) == {"good": "skipped", "flaky": "done", "broken": "failed"}
    assert not (folder / "cells" / "good" / "logs" / "attempt-2.log").exists()
    assert sorted(p.name for p in (folder / "cells" / "broken" / "logs").iterdir()) == [
        "attempt-1.log",
        "attempt-2.log",
    ]


def test_a_tiny_two_cell_sweep_over_two_seeds_runs_end_to_end_and_reports(tiny_base, synthetic_dir, tmp_path, capsys):
    from maugpt.commands import report
    from maugpt.commands import sweep as run_sweep
    from maugpt.evaluation.run import read_jsonl
    from maugpt.evaluation.statistics import compare, summarize
    from maugpt.report import p_text
    from tests.training.conftest import AMOE, stage_config

    config = yaml.safe_load(
        Path(stage_config(tmp_path, tiny_base, synthetic_dir, 2, batches=1, adapter=AMOE, max_new_tokens=3)).read_text()
    )
    config["trainer"]["callbacks"].append({"class_path": "maugpt.training.callbacks.HParamsSummary"})
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(config))
    spec = {
        "name": "tiny_split",
        "variants": {"tiny": {"base": [str(tmp_path / "base.yaml")]}},
        "grid": {"zip": {EXPERTS: [2, 4], RANK: [4, 2]}},
        "label": "{experts}×{rank}",
        "constraints": [f"{EXPERTS} * {RANK} == 8"],
        "metrics": ["test/rougeL", "test/detection_accuracy"],
        "plot": {"y": ["test/rougeL"]},
        "seeds": [0, 1],
        "reference": "2×4",
    }
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec, allow_unicode=True))
    folder = tmp_path / "sweep"
    runs = ["2x4-seed0", "4x2-seed0", "2x4-seed1", "4x2-seed1"]  # seed by seed: a cut sweep has every cell
    run_sweep(tmp_path / "spec.yaml", out=folder)
    out = capsys.readouterr().out
    assert "tiny_split (tiny): 4 cells in" in out and "2×4, 4×2 × seeds [0, 1]" in out
    assert all(f"  {name}: done" in out for name in runs), out
    for name in runs:
        assert json.loads((folder / "cells" / name / "fit.json").read_text()) == {"global_step": 1, "epoch": 1}
        metrics = json.loads((folder / "cells" / name / "metrics.json").read_text())
        assert 0.0 <= metrics["test/rougeL"] <= 1.0
        assert {p.name for p in (folder / "tensorboard" / name).iterdir()} == {"fit", "test"}
        assert (folder / "cells" / name / "evaluation" / "tables.md").is_file()
    seed = {
        name: yaml.safe_load((folder / "cells" / name / "config.yaml").read_text())["seed_everything"] for name in runs
    }
    assert seed == {"2x4-seed0": 0, "4x2-seed0": 0, "2x4-seed1": 1, "4x2-seed1": 1}
    # another report field (a pair to compare) on the finished folder: taken, nothing runs again
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump({**spec, "pairs": [["2×4", "4×2"]]}, allow_unicode=True))
    run_sweep(tmp_path / "spec.yaml", out=folder)
    again = capsys.readouterr().out
    assert all(f"  {name}: skipped" in again for name in runs), again
    report(folder, tensorboard=False, resamples=500)
    text = capsys.readouterr().out
    rouge = json.loads((folder / "cells" / "2x4-seed1" / "metrics.json").read_text())["test/rougeL"]
    assert f"| 2×4 (seed 1) | {100 * rouge:.2f} |" in text
    # each cell keeps its answers gzipped beside its tables, the same rows as the test wrote
    kept = folder / "cells" / "2x4-seed0" / "evaluation" / "predictions.jsonl.gz"
    assert read_jsonl(kept) == read_jsonl(
        next((folder / "tensorboard" / "2x4-seed0" / "test").glob("evaluation*/predictions.jsonl"))
    )
    assert sorted(p.name for p in kept.parent.iterdir()) == [
        "breakdown.csv",
        "predictions.jsonl.gz",
        "scores.csv",
        "tables.md",
    ]
    answers = {
        cell: {
            f"{cell}-seed{s}": read_jsonl(folder / "cells" / f"{cell}-seed{s}" / "evaluation" / "predictions.jsonl.gz")
            for s in (0, 1)
        }
        for cell in ("2x4", "4x2")
    }
    mine = summarize(answers["4x2"], "rougeL", resamples=500)
    assert mine.mean == pytest.approx(
        np.mean(
            [
                json.loads((folder / "cells" / f"4x2-seed{s}" / "metrics.json").read_text())["test/rougeL"]
                for s in (0, 1)
            ]
        ),
        abs=1e-6,
    )
    assert (
        f"| 4×2 | 2 | {100 * mine.mean:.2f} ± {100 * mine.std:.2f} [{100 * mine.low:.2f}, {100 * mine.high:.2f}]"
        in text
    )
    paired = compare(answers["4x2"], answers["2x4"], "detection_accuracy", resamples=500)
    assert (
        f"| 4×2 | test/detection_accuracy | {100 * paired.difference:+.2f} | [{100 * paired.low:+.2f}, "
        f"{100 * paired.high:+.2f}] | {p_text(paired.p_value)} | [{100 * paired.seed_low:+.2f}, "
        f"{100 * paired.seed_high:+.2f}] | {p_text(paired.seed_p_value)} |"
    ) in text
    reverse = compare(answers["2x4"], answers["4x2"], "detection_accuracy", resamples=500)
    assert reverse.difference == pytest.approx(-paired.difference)
    assert (
        f"| 2×4 | 4×2 | test/detection_accuracy | {100 * reverse.difference:+.2f} | [{100 * reverse.low:+.2f}, "
        f"{100 * reverse.high:+.2f}] | {p_text(reverse.p_value)} |"
    ) in text.split("### Pairs named in the spec: paired difference over the same questions")[1]
    # header, 4×2 against 2×4 and the pair 2×4 against 4×2, per metric
    assert (folder / "report_paired.csv").read_text().count("\n") == 1 + 2 + 2
    assert (folder / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_label_naming_no_grid_key_is_named():
    with pytest.raises(
        SweepError,
        match=r"label '\{experts\}x\{rnk\}' names 'rnk', which is not the last part of a "
        r"grid key \(\['experts', 'rank'\]\)",
    ):
        expand_grid({"zip": {EXPERTS: [16], RANK: [4]}}, label="{experts}x{rnk}")


def one_cell_sweep(tmp_path: Path) -> Path:
    folder = tmp_path / "sweep"
    (folder / "cells" / "a").mkdir(parents=True)
    (folder / "sweep.json").write_text(json.dumps({"cells": ["a"]}))
    return folder


def test_a_second_runner_finds_the_cell_held_by_another_and_a_dead_holder_never_blocks(tmp_path):
    folder = one_cell_sweep(tmp_path)
    cell = folder / "cells" / "a"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import pathlib, sys, time\nfrom maugpt.runner import hold_cell\n"
            "with hold_cell(pathlib.Path(sys.argv[1])):\n    print('held', flush=True)\n"
            "    time.sleep(600)",
            str(cell),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline() == "held\n"
        second = subprocess.run(
            [sys.executable, "-m", "maugpt.cli", "sweep-cell", str(folder), "0"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert second.returncode == 1 and second.stdout == "a: busy\n"
        assert f"a: cell a is being run by PID {holder.pid} on {socket.gethostname()} since " in second.stderr
        assert f"(lock: {cell / 'runner.lock'})" in second.stderr
        assert not (cell / "logs").exists()  # nothing ran
        wait = [sys.executable, "-m", "maugpt.cli", "sweep-cell", str(folder), "0", "--wait", "true"]
        stopped = subprocess.Popen(wait, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert stopped.stderr.readline().endswith("; waiting for it to finish\n")
        stopped.terminate()  # a waiting runner still stops on SIGTERM
        assert stopped.wait(timeout=60) == 128 + signal.SIGTERM and stopped.stdout.read() == "a: stopped\n"
        waiter = subprocess.Popen(wait, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert waiter.stderr.readline().endswith("; waiting for it to finish\n")
        (cell / "metrics.json").write_text("{}")  # the holder finished the cell …
    finally:
        holder.kill()  # … and dies without releasing anything itself (SIGKILL)
    assert holder.wait() == -signal.SIGKILL
    assert waiter.wait(timeout=120) == 0 and waiter.stdout.read() == "a: skipped\n"
    assert "PID" in (cell / "runner.lock").read_text()  # the dead holder's file stays and blocks nothing
    again = subprocess.run(
        [sys.executable, "-m", "maugpt.cli", "sweep-cell", str(folder), "0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.returncode == 0 and again.stdout == "a: skipped\n"


# A stand-in for maugpt fit: says it is ready, then waits; SIGTERM or SIGUSR1 makes it exit
# 128 + the signal as a fit that saved would, after recording the signals that reached it, its
# session and whether the runner said it requeues the job itself.
FIT = """import os, pathlib, signal, sys, time
cell = pathlib.Path(sys.argv[1])
def stop(signum, frame):
    with open(cell / "signals", "a") as f:
        f.write(f"{signum} {os.getsid(0)} {os.environ.get('MAUGPT_RUNNER_REQUEUES')}\\n")
    time.sleep(0.5)  # a second forwarded signal would arrive meanwhile
    sys.exit(128 + signum)
signal.signal(signal.SIGTERM, stop)
signal.signal(signal.SIGUSR1, stop)
(cell / "ready").touch()
time.sleep(600)
"""


@pytest.mark.parametrize("name", ["SIGTERM", "SIGUSR1"])
def test_a_signal_to_the_runner_reaches_the_fit_once_and_the_cell_is_not_tested(name, tmp_path, monkeypatch, capsys):
    from maugpt.cli import main

    folder = one_cell_sweep(tmp_path)
    cell = folder / "cells" / "a"
    calls = tmp_path / "scontrol.calls"
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')  # SLURM's, recording
    (tmp_path / "bin" / "scontrol").chmod(0o755)
    for key, value in {
        "SLURM_JOB_ID": "78",
        "SLURM_ARRAY_JOB_ID": "77",
        "SLURM_ARRAY_TASK_ID": "0",
        "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}",
    }.items():
        monkeypatch.setenv(key, value)
    signum = getattr(signal, name)
    test = "import pathlib, sys; pathlib.Path(sys.argv[1], 'metrics.json').write_text('{}')"
    monkeypatch.setattr(
        sweep,
        "cell_commands",
        lambda cell_dir: [
            ("fit", [sys.executable, "-c", FIT, str(cell_dir)]),
            ("test", [sys.executable, "-c", test, str(cell_dir)]),
        ],
    )

    def terminate_when_ready() -> None:
        deadline = time.monotonic() + 60
        while not (cell / "ready").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signum)  # to the runner, as SLURM (SIGUSR1 with --signal=B:…) or kill sends it

    threading.Thread(target=terminate_when_ready, daemon=True).start()
    with pytest.raises(SystemExit) as stopped:
        main(["sweep-cell", str(folder), "0"])
    assert stopped.value.code == 128 + signum
    out, err = capsys.readouterr()
    assert out == f"a: stopped (log: {folder}/cells/a/logs/)\n"
    assert f"sweep-cell: stopped by {name}; running the cell again resumes it from its last checkpoint" in err
    # once, though the runner's handler ran; in its own session; told that the runner requeues
    [line] = (cell / "signals").read_text().splitlines()
    assert line.split()[0] == str(int(signum)) and int(line.split()[1]) != os.getsid(0) and line.split()[2] == "1"
    assert not (cell / "metrics.json").exists()  # not tested
    assert (
        (cell / "logs" / "attempt-1.log").read_text().endswith(f"stopped by {name}: the cell resumes when run again\n")
    )
    assert signal.getsignal(signum) is signal.SIG_DFL  # the runner's handlers are gone
    if name == "SIGUSR1":  # the array's warning before the time limit: the task goes back to the queue
        assert calls.read_text() == "requeue 77_0\n"
        assert "sweep-cell: SLURM job 77_0 requeued: it resumes from last.ckpt when it starts again" in err
    else:
        assert not calls.exists()


def test_a_fit_that_exits_0_without_finishing_is_not_tested(tmp_path, monkeypatch):
    folder = one_cell_sweep(tmp_path)
    test = "import pathlib, sys; pathlib.Path(sys.argv[1], 'metrics.json').write_text('{}')"
    finished = "import pathlib, sys; pathlib.Path(sys.argv[1], 'fit.json').write_text('{}')"
    commands = {
        "cut": [("fit", [sys.executable, "-c", "pass"]), ("test", [sys.executable, "-c", test, "{cell}"])],
        "whole": [
            ("fit", [sys.executable, "-c", finished, "{cell}"]),
            ("test", [sys.executable, "-c", test, "{cell}"]),
        ],
    }
    for kind, outcome in (("cut", "failed"), ("whole", "done")):
        monkeypatch.setattr(
            sweep,
            "cell_commands",
            lambda cell_dir, kind=kind: [
                (name, [arg.replace("{cell}", str(cell_dir)) for arg in command]) for name, command in commands[kind]
            ],
        )
        assert run_cells(folder) == {"a": outcome}
    log = (folder / "cells" / "a" / "logs" / "attempt-1.log").read_text()
    assert log.endswith("the fit exited 0 without finishing its steps (no fit.json): not tested\n")
    assert "metrics.json" not in log and (folder / "cells" / "a" / "metrics.json").is_file()  # tested the 2nd time

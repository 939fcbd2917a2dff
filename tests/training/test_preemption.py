"""A fit stopped by SIGTERM, SIGINT or SIGUSR1 saves at the step boundary, says so, exits 128 + the
signal and resumes to the weights of an uninterrupted run (bit-equal on CPU)."""

from __future__ import annotations

import os
import shlex
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from maugpt.slurm import RUNNER_REQUEUES
from maugpt.training.preemption import Preemption, resume_command
from tests.training.conftest import stage_config

ROOT = Path(__file__).parents[2]
# LoRAMoE with dropout: a resume that did not restore the generators would draw other masks.
LORAMOE = {"class_path": "maugpt.adapters.LoRAMoE", "init_args": {"experts": 4, "rank": 2, "dropout": 0.1}}


def config(
    tmp_path: Path, tiny_base, synthetic_dir, *, steps: int, signal_at: tuple | None = None, workers: int = 2, **trainer
) -> str:
    """A stage-2 fit of ``steps`` batches per epoch with 2 loader workers; ``signal_at``: (step,
    signal name) sends the fit process that signal when a training batch starts at that global
    step; ``trainer``: more trainer settings."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = stage_config(tmp_path, tiny_base, synthetic_dir, 2, batches=steps, adapter=LORAMOE)
    raw = yaml.safe_load(open(path))
    raw["data"]["init_args"]["num_workers"] = workers
    raw["trainer"].update(trainer)
    if signal_at is not None:
        raw["trainer"]["callbacks"].append(
            {
                "class_path": "tests.training.signals.SignalAtStep",
                "init_args": {"step": signal_at[0], "signal": signal_at[1]},
            }
        )
    Path(path).write_text(yaml.safe_dump(raw))
    return path


def fit(args: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "maugpt.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=600,
    )


def trainable(checkpoint: Path) -> dict[str, torch.Tensor]:
    return torch.load(checkpoint, weights_only=True)["state_dict"]


# accumulating: 9 batches, 3 per optimizer step; SIGTERM during the first batch stops after the
# third (never inside an accumulation window), an odd count of batches, so the resumed loader's
# first batch comes from the other of the two workers.
# epoch end: 2 epochs of 3 batches; SIGTERM during the last batch of epoch 0 stops after it; the
# resume crosses into epoch 1, whose loader must leave the dropout generator as it finds it.
CASES = {
    "accumulating": dict(steps=9, signal_at=(0, "SIGTERM"), accumulate_grad_batches=3),
    "epoch end": dict(steps=3, signal_at=(2, "SIGTERM"), max_epochs=2),
}
STOPPED_AFTER = {"accumulating": (1, 3), "epoch end": (3, 6)}  # optimizer steps: done, planned


@pytest.mark.parametrize("case", CASES)
def test_sigterm_saves_at_a_step_boundary_exits_143_and_the_printed_command_resumes_to_equal_weights(
    case, tiny_base, synthetic_dir, tmp_path
):
    settings = {k: v for k, v in CASES[case].items() if k != "signal_at"}
    whole = config(tmp_path / "whole", tiny_base, synthetic_dir, **settings)
    assert fit(["fit", "--config", whole]).returncode == 0
    reference = trainable(tmp_path / "whole" / "stage2" / "checkpoints" / "last.ckpt")

    cut = config(tmp_path / "cut", tiny_base, synthetic_dir, **CASES[case])
    last = tmp_path / "cut" / "stage2" / "checkpoints" / "last.ckpt"
    stopped = fit(["fit", "--config", cut])
    done, planned = STOPPED_AFTER[case]
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr[-3000:]
    assert f"maugpt fit: stopped by SIGTERM after step {done} of {planned}; saved {last}" in stopped.stderr
    command = f"maugpt fit --config {cut} --ckpt_path {last}"
    assert f"resume with: {command}" in stopped.stderr
    assert torch.load(last, weights_only=True)["global_step"] == done
    assert any(not torch.equal(tensor, reference[name]) for name, tensor in trainable(last).items())  # half-trained

    resumed = fit(shlex.split(command)[1:])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.ckpt"]  # overwritten, no last-v1.ckpt
    finished = torch.load(last, weights_only=True)
    assert finished["global_step"] == planned
    assert finished["state_dict"].keys() == reference.keys()
    unequal = [name for name, tensor in finished["state_dict"].items() if not torch.equal(tensor, reference[name])]
    assert unequal == []


@pytest.mark.parametrize("name", ["SIGINT", "SIGUSR1"])
def test_sigint_and_sigusr1_save_too_and_sigusr1_requeues_a_slurm_job(name, tiny_base, synthetic_dir, tmp_path):
    path = config(tmp_path, tiny_base, synthetic_dir, steps=4, signal_at=(1, name), workers=0)
    last = tmp_path / "stage2" / "checkpoints" / "last.ckpt"
    calls = tmp_path / "scontrol.calls"
    scontrol = tmp_path / "bin" / "scontrol"  # SLURM's scontrol, recording how it was called
    scontrol.parent.mkdir()
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    scontrol.chmod(scontrol.stat().st_mode | stat.S_IEXEC)
    slurm = {
        "SLURM_NTASKS": "1",
        "SLURM_JOB_NAME": "cell",
        "SLURM_JOB_ID": "900",
        "SLURM_ARRAY_JOB_ID": "77",
        "SLURM_ARRAY_TASK_ID": "3",
        "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0",
        "SLURM_NODEID": "0",
        "PATH": f"{scontrol.parent}:{os.environ['PATH']}",
    }
    stopped = fit(["fit", "--config", path], env=slurm)
    signum = getattr(signal, name)
    assert stopped.returncode == 128 + signum, stopped.stderr[-3000:]
    assert f"stopped by {name} after step 2 of 4; saved {last}" in stopped.stderr
    assert torch.load(last, weights_only=True)["global_step"] == 2
    if name == "SIGUSR1":  # the requeue signal: the job goes back to the queue after the save
        assert calls.read_text() == "requeue 77_3\n"
        assert "SLURM job 77_3 requeued: it resumes from last.ckpt when it starts again" in stopped.stderr
    else:  # SIGINT is no requeue signal
        assert not calls.exists()


def test_a_fit_leaves_the_requeue_to_the_sweep_runner_that_started_it_and_names_array_tasks(monkeypatch):
    from types import SimpleNamespace

    from lightning.fabric.plugins.environments import LightningEnvironment, SLURMEnvironment

    from maugpt.training.preemption import requeue_job_id

    def trainer(environment):  # what requeue_job_id reads, as Lightning's signal connector does
        return SimpleNamespace(_accelerator_connector=SimpleNamespace(cluster_environment=environment))

    for key, value in {"SLURM_JOB_ID": "900", "SLURM_ARRAY_JOB_ID": "77", "SLURM_ARRAY_TASK_ID": "3"}.items():
        monkeypatch.setenv(key, value)
    assert requeue_job_id(trainer(SLURMEnvironment(auto_requeue=True))) == "77_3"
    assert requeue_job_id(trainer(SLURMEnvironment(auto_requeue=False))) is None
    assert requeue_job_id(trainer(LightningEnvironment())) is None
    monkeypatch.setenv(RUNNER_REQUEUES, "1")
    assert requeue_job_id(trainer(SLURMEnvironment(auto_requeue=True))) is None
    monkeypatch.delenv(RUNNER_REQUEUES)
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID")
    assert requeue_job_id(trainer(SLURMEnvironment(auto_requeue=True))) == "900"


def test_a_second_ctrl_c_stops_at_once_and_the_resume_command_replaces_ckpt_path():
    callback = Preemption()
    callback._on_signal(signal.SIGINT, None)
    assert callback.received == signal.SIGINT
    callback._on_signal(signal.SIGTERM, None)  # another signal while saving: still the first one
    assert callback.received == signal.SIGINT
    previous = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(KeyboardInterrupt):
            callback._on_signal(signal.SIGINT, None)
    finally:
        signal.signal(signal.SIGINT, previous)
    argv = ["fit", "--config", "a b.yaml", "--ckpt_path", "old.ckpt", "--trainer.max_steps=9", "--ckpt_path=x"]
    assert (
        resume_command(Path("runs/last.ckpt"), argv)
        == "maugpt fit --config 'a b.yaml' --trainer.max_steps=9 --ckpt_path runs/last.ckpt"
    )

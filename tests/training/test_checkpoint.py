"""Atomic checkpoint writes and safe loads."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from maugpt.training.checkpoint import AtomicCheckpointIO
from maugpt.training.cli import run
from tests.training.conftest import AMOE, stage_config

ROOT = Path(__file__).parents[2]


def test_a_failed_write_leaves_the_previous_file_intact(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"step": 1, "w": torch.ones(2)}, path)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"step": 2, "w": torch.zeros(2)}, path)
    monkeypatch.undo()
    assert io.load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary file left behind


class Anything:
    """Any class: a checkpoint holding an instance needs unpickling arbitrary code to load."""


def test_loading_refuses_pickled_objects(tmp_path):
    path = tmp_path / "evil.ckpt"
    torch.save({"object": Anything()}, path)
    with pytest.raises(Exception, match="Weights only load failed"):
        AtomicCheckpointIO().load_checkpoint(path)
    with pytest.raises(FileNotFoundError, match="missing.ckpt does not exist"):
        AtomicCheckpointIO().load_checkpoint(tmp_path / "missing.ckpt")


def test_a_temporary_file_left_by_a_killed_writer_is_removed_by_the_next_save(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".last.ckpt.tmp-{dead.pid}"
    stale.write_bytes(b"half a checkpoint")
    alive = tmp_path / f".last.ckpt.tmp-{os.getppid()}"  # a running process's file is not touched
    alive.write_bytes(b"being written")
    AtomicCheckpointIO().save_checkpoint({"step": 1}, tmp_path / "last.ckpt")
    assert sorted(p.name for p in tmp_path.iterdir()) == [alive.name, "last.ckpt"]


def test_kill_9_during_fit_then_ckpt_path_last_continues_from_the_saved_step(tiny_base, synthetic_dir, tmp_path):
    path = stage_config(tmp_path, tiny_base, synthetic_dir, 2, batches=40, adapter=AMOE)
    config = yaml.safe_load(open(path))
    config["trainer"]["callbacks"][0]["init_args"]["every_n_train_steps"] = 3
    open(path, "w").write(yaml.safe_dump(config))
    last = tmp_path / "stage2" / "checkpoints" / "last.ckpt"
    fit = subprocess.Popen(
        [sys.executable, "-m", "maugpt.cli", "fit", "--config", path],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and fit.poll() is None:
        if last.is_file() and torch.load(last, weights_only=True)["global_step"] >= 6:
            break
        time.sleep(0.02)
    fit.send_signal(signal.SIGKILL)
    assert fit.wait() == -signal.SIGKILL  # killed, not finished
    saved = torch.load(last, weights_only=True)
    assert 6 <= saved["global_step"] < 40 and saved["global_step"] % 3 == 0
    resumed = run(["fit", "--config", path, "--ckpt_path", "last"])
    assert resumed.trainer.global_step == 40  # the remaining steps only, not another 40
    # the resumed epoch replayed its stream without the batches trained on before the kill
    assert resumed.datamodule._train_loader.dataset.resumed_after == saved["global_step"]
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.ckpt"]


def test_a_checkpoint_of_another_adapter_is_refused_naming_both(tiny_base):
    from maugpt.adapters import LoRA
    from maugpt.training.module import MAUGPTModule

    amoe = MAUGPTModule(
        str(tiny_base["llm"]), str(tiny_base["vision"]), stage=2, adapter=amoe_adapter(), feature_layer=-1
    )
    saved = {}
    amoe.on_save_checkpoint(saved)
    lora = MAUGPTModule(
        str(tiny_base["llm"]), str(tiny_base["vision"]), stage=2, adapter=LoRA(rank=4, alpha=8), feature_layer=-1
    )
    lora.on_load_checkpoint({"state_dict": dict.fromkeys(lora.trainable_names())})  # its own: accepted
    amoe.on_load_checkpoint(saved)
    with pytest.raises(ValueError) as err:
        lora.on_load_checkpoint(saved)
    message = str(err.value)
    assert "saved by stage 2 with adapter {'class_path': 'maugpt.adapters.amoe_lora.AMoELoRA'" in message
    assert "this model is stage 2 with adapter {'class_path': 'maugpt.adapters.lora.LoRA'" in message
    # 3 layers × 7 projections × (generalist A, B, router; W_a, W_b, the hypernetwork's 2 weights and 2 biases)
    assert "(189 not in the model, e.g. ['model.llm.model.layers.0.mlp.down_proj.anomaly_aware.W_a'" in message


def amoe_adapter():
    from maugpt.adapters import AMoELoRA

    return AMoELoRA(**AMOE["init_args"])


def test_a_full_disk_names_the_checkpoint_and_keeps_the_previous_one(tiny_base, synthetic_dir, tmp_path):
    from maugpt.cli import main

    path = stage_config(tmp_path, tiny_base, synthetic_dir, 2, batches=2, adapter=AMOE)
    main(["fit", "--config", path])
    last = tmp_path / "stage2" / "checkpoints" / "last.ckpt"
    before = last.read_bytes()
    # The next save's temporary file is /dev/full, where every write fails with ENOSPC, as on a full disk.
    (last.parent / f".last.ckpt.tmp-{os.getpid()}").symlink_to("/dev/full")
    with pytest.raises(SystemExit) as stopped:
        main(["fit", "--config", path, "--trainer.max_epochs", "2", "--ckpt_path", str(last)])
    assert str(stopped.value.code).startswith(
        f"maugpt fit: could not save checkpoint {last}: no space left on device ("
    )
    assert str(stopped.value.code).endswith(f" MiB free in {last.parent}); the previous last.ckpt, if any, is kept")
    assert last.read_bytes() == before
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.ckpt"]  # the temporary link is gone


def test_any_refused_write_is_named_but_other_errors_pass_through(tmp_path, monkeypatch):
    from maugpt.training.checkpoint import CheckpointNotSaved

    io, path = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    (tmp_path / f".last.ckpt.tmp-{os.getpid()}").symlink_to("/dev/full")
    with pytest.raises(CheckpointNotSaved, match=rf"could not save checkpoint {path}: no space left on device") as err:
        io.save_checkpoint({"w": torch.ones(4)}, path)
    assert err.value.errno == 28 and not path.exists()
    monkeypatch.setattr(torch, "save", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("a bug")))
    with pytest.raises(RuntimeError, match="a bug"):
        io.save_checkpoint({"w": torch.ones(4)}, path)

"""Optimizer and schedule as LightningCLI components (``maugpt.training.schedule``)."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch

from maugpt.training.cli import run
from maugpt.training.schedule import WarmupCosine, component_config
from tests.training.conftest import AMOE, stage_config


def test_warmup_cosine_is_linear_warmup_then_cosine_to_zero():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = WarmupCosine(optimizer, total_steps=100, warmup_ratio=0.05)
    factors = [schedule.factor(s) for s in (0, 4, 5, 55, 100, 120)]
    assert factors[:2] == [1 / 6, 5 / 6]  # (s + 1) / (w + 1), w = 5
    assert factors[2] == 1.0 and factors[3] == pytest.approx(0.5 * (1 + math.cos(math.pi * 50 / 95)), abs=1e-15)
    assert factors[4] == factors[5] == 0.0
    for _ in range(3):
        optimizer.step(), schedule.step()
    resumed = WarmupCosine(optimizer, total_steps=200, warmup_ratio=0.05)  # a longer run resumes
    resumed.load_state_dict(schedule.state_dict())
    assert (resumed.last_epoch, resumed.total_steps, resumed.warmup_steps) == (3, 200, 10)
    with pytest.raises(ValueError, match=r"warmup_ratio must be in \[0, 1\), got 1.5"):
        WarmupCosine(optimizer, 10, 1.5)


def test_component_config_is_plain_data_for_the_checkpoint():
    from functools import partial

    assert component_config(None) is None and component_config(lambda params: None) is None
    assert component_config(torch.optim.SGD) == {"class_path": "torch.optim.sgd.SGD", "init_args": {}}
    assert component_config(partial(torch.optim.AdamW, betas=(0.9, 0.95), lr=1e-4)) == {
        "class_path": "torch.optim.adamw.AdamW",
        "init_args": {"betas": [0.9, 0.95], "lr": 1e-4},
    }


def test_the_default_optimizer_and_schedule_are_adamw_and_warmup_cosine(tiny_base):
    from maugpt.adapters import AMoELoRA
    from maugpt.training.module import MAUGPTModule

    module = MAUGPTModule(
        str(tiny_base["llm"]),
        str(tiny_base["vision"]),
        stage=2,
        adapter=AMoELoRA(experts=2, rank=2, hyper_hidden=4),
        lr=1e-3,
        projector_lr=2e-3,
        weight_decay=0.1,
        warmup_ratio=0.1,
    )
    module._trainer = SimpleNamespace(estimated_stepping_batches=50)
    configured = module.configure_optimizers()
    optimizer, scheduler = configured["optimizer"], configured["lr_scheduler"]["scheduler"]
    assert type(optimizer) is torch.optim.AdamW and optimizer.defaults["betas"] == (0.9, 0.999)
    groups = {g["name"]: (g["lr"], g["weight_decay"]) for g in optimizer.param_groups}
    assert groups == {"projector": (2e-3 / 6, 0.0), "adapter": (1e-3 / 6, 0.1), "adapter_no_decay": (1e-3 / 6, 0.0)}
    assert type(scheduler) is WarmupCosine and (scheduler.total_steps, scheduler.warmup_steps) == (50, 5)
    assert module.hparams["optimizer"] is None and module.hparams["scheduler"] is None


def test_yaml_swaps_the_optimizer_and_schedule_and_the_checkpoint_records_them(tiny_base, synthetic_dir, tmp_path):
    config = stage_config(tmp_path, tiny_base, synthetic_dir, 2, batches=2, adapter=AMOE)
    sgd = json.dumps({"class_path": "torch.optim.SGD", "init_args": {"momentum": 0.9}})
    run(
        [
            "fit",
            "--config",
            config,
            "--model.init_args.optimizer",
            sgd,
            "--model.init_args.scheduler",
            "torch.optim.lr_scheduler.CosineAnnealingLR",
        ]
    )
    saved = torch.load(tmp_path / "stage2" / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["hyper_parameters"]["optimizer"]["class_path"] == "torch.optim.sgd.SGD"
    assert saved["hyper_parameters"]["optimizer"]["init_args"]["momentum"] == 0.9
    assert saved["hyper_parameters"]["scheduler"]["class_path"] == "torch.optim.lr_scheduler.CosineAnnealingLR"
    state = saved["optimizer_states"][0]
    assert [g["momentum"] for g in state["param_groups"]] == [0.9, 0.9, 0.9]
    assert all("momentum_buffer" in s for s in state["state"].values())  # SGD's state, not Adam's
    (schedule,) = saved["lr_schedulers"]
    assert schedule["T_max"] == 2 and schedule["last_epoch"] == 2  # the run's total steps, stepped per step
    assert schedule["_last_lr"][0] == pytest.approx(0.0, abs=1e-12)  # cosine at T_max

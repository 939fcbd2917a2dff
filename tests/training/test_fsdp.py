"""FSDP2 on CPU (gloo, 2 processes): equal to one process, and through the CLI with checkpoints and resume."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from tests.training.conftest import AMOE, stage_config

ROOT = Path(__file__).parents[2]
FSDP = str(ROOT / "configs" / "strategy" / "fsdp.yaml")


def launch(command: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_fsdp_with_two_processes_matches_one_process_on_the_same_global_batch(tiny_base, synthetic_dir, tmp_path):
    out = tmp_path / "result.json"
    # --standalone: a free port of its own, so a port still held by an earlier run cannot break it
    launch(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "--module",
            "tests.training.fsdp_worker",
            "--llm",
            str(tiny_base["llm"]),
            "--vision",
            str(tiny_base["vision"]),
            "--shards",
            str(synthetic_dir / "mauset"),
            "--out",
            str(out),
            "--steps",
            "3",
        ]
    )
    result = json.loads(out.read_text())
    assert result["gathered"] == result["trainable"]  # the full state dict holds every trainable tensor
    assert len(result["losses"]) == 3 and result["losses"][0] != result["losses"][-1]
    for sharded, single in zip(result["fsdp_losses"], result["losses"]):
        assert abs(sharded - single) < 1e-4 * abs(single)
    assert result["max_param_diff"] < 1e-4
    # greedy answers equal; rank 0 stops after 4 tokens, rank 1 after 12, and neither waits forever
    assert result["lengths"] == [4, 4, 12, 12]
    assert result["fsdp_generated"] == [row[:n] for row, n in zip(result["generated"], result["lengths"])]


def test_fsdp_fit_checkpoints_one_file_of_trainable_tensors_and_resumes(tiny_base, synthetic_dir, tmp_path):
    config = stage_config(tmp_path, tiny_base, synthetic_dir, 2, batches=2, adapter=AMOE)
    fit = [sys.executable, "-m", "maugpt.cli", "fit", "--config", config, "--config", FSDP, "--trainer.devices", "2"]
    launch(fit)
    last = tmp_path / "stage2" / "checkpoints" / "last.ckpt"
    first = torch.load(last, weights_only=True)
    assert last.is_file() and first["global_step"] == 2
    assert set(first["state_dict"]) == set(first["maugpt"]["trainable"])
    assert not any(".base." in k or "vision" in k for k in first["state_dict"])
    launch(fit + ["--trainer.max_epochs", "2", "--ckpt_path", "last"])
    second = torch.load(last, weights_only=True)
    assert second["global_step"] == 4 and second["epoch"] == first["epoch"] + 1
    changed = [k for k in first["state_dict"] if not torch.equal(first["state_dict"][k], second["state_dict"][k])]
    assert changed  # the resumed run trained on


def test_fsdp1_policy_isolates_the_frozen_linear_layers_of_the_adapters(tiny_base):
    """The units FSDP1 (Lightning's FSDPStrategy) gets on the real model, read from the model itself."""
    from maugpt.adapters import AMoELoRA, adapter_layers, unwrap
    from maugpt.training.module import MAUGPTModule
    from maugpt.training.sharding import AdapterWrapPolicy

    module = MAUGPTModule(
        str(tiny_base["llm"]), str(tiny_base["vision"]), stage=2, adapter=AMoELoRA(experts=4, rank=2, hyper_hidden=8)
    )
    policy = AdapterWrapPolicy()
    units = list(policy._run_policy(module, set(), {"device_id": None}))
    bases = [layer.base for _, layer in adapter_layers(module.model.llm)]
    layers = [m for m in module.modules() if type(m).__name__ == "Qwen2DecoderLayer"]
    assert len(bases) == 21 and len(layers) == 3
    assert {id(m) for m in units} == {id(m) for m in bases + layers}
    assert all(not p.requires_grad for m in bases for p in m.parameters())
    assert module.model.llm.lm_head not in units  # tied to the embeddings: stays with them in the root
    assert policy._run_policy(module, set(bases), {})[layers[0]] == {}  # ignored modules stay out
    assert len(policy._run_policy(module, set(bases), {})) == 3
    with pytest.raises(TypeError, match="reads its units from the root module"):
        policy(module, True, 0)
    unwrap(module.model.llm)
    assert not any(b in policy._run_policy(module, set(), {}) for b in bases)


def test_fsdp1_wraps_each_decoder_layer_and_each_frozen_base_as_a_unit():
    """A real FSDP1 wrap (one CPU process, gloo): the policy's units are what FSDP makes."""
    import torch.distributed as dist
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    from maugpt.adapters import LoRA, inject
    from maugpt.training.sharding import AdapterWrapPolicy

    class Qwen2DecoderLayer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.q_proj, self.norm = nn.Linear(8, 8), nn.LayerNorm(8)

        def forward(self, x):
            return self.norm(self.q_proj(x))

    model = nn.Sequential(Qwen2DecoderLayer(), Qwen2DecoderLayer(), nn.Linear(8, 8))
    inject(model, LoRA(rank=2, targets=["q_proj"]))
    dist.init_process_group("gloo", init_method="tcp://127.0.0.1:0", rank=0, world_size=1)
    try:
        wrapped = FSDP(model, auto_wrap_policy=AdapterWrapPolicy(), device_id=torch.device("cpu"), use_orig_params=True)
        units = [n.replace("_fsdp_wrapped_module.", "") for n, m in wrapped.named_modules() if isinstance(m, FSDP)]
        wrapped(torch.randn(2, 8)).sum().backward()
        grads = {n.replace("_fsdp_wrapped_module.", ""): p.grad is not None for n, p in wrapped.named_parameters()}
    finally:
        dist.destroy_process_group()
    assert units == ["", "0", "0.q_proj.base", "1", "1.q_proj.base"]
    assert grads["0.q_proj.A"] and grads["1.q_proj.B"] and not grads["0.q_proj.base.weight"]

"""FSDP2 on CPU (gloo, 2 processes): equal to one process, and through the CLI with checkpoints and resume."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

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
    launch([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "--module",
            "tests.training.fsdp_worker", "--llm", str(tiny_base["llm"]), "--vision", str(tiny_base["vision"]),
            "--shards", str(synthetic_dir / "mauset"), "--out", str(out), "--steps", "3"])
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
    """FSDP1 (Lightning's FSDPStrategy) needs a GPU, so its wrapping decisions are checked here."""
    from maugpt.adapters import AMoELoRA, adapter_layers, unwrap
    from maugpt.training.module import MAUGPTModule
    from maugpt.training.sharding import fsdp1_wrap_policy

    module = MAUGPTModule(str(tiny_base["llm"]), str(tiny_base["vision"]), stage=2,
                          adapter=AMoELoRA(experts=4, rank=2, hyper_hidden=8))
    units = [m for m in module.modules() if fsdp1_wrap_policy(m, recurse=False, nonwrapped_numel=0)]
    bases = [layer.base for _, layer in adapter_layers(module.model.llm)]
    layers = [m for m in module.modules() if type(m).__name__ == "Qwen2DecoderLayer"]
    assert len(bases) == 21 and len(layers) == 3
    assert {id(m) for m in units} == {id(m) for m in bases + layers}
    assert all(not p.requires_grad for m in bases for p in m.parameters())
    assert module.model.llm.lm_head not in units  # tied to the embeddings: stays with them in the root
    assert fsdp1_wrap_policy(module, recurse=True, nonwrapped_numel=0)
    unwrap(module.model.llm)
    assert not any(fsdp1_wrap_policy(b, recurse=False, nonwrapped_numel=0) for b in bases)

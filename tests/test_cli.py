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

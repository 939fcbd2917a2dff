"""The adapter protocol alone is enough: an IA3-style adapter (a learned per-channel scale of the frozen
output, Liu et al. 2022), which is not low-rank, is written here in a few lines and trains through
``maugpt fit`` like the packaged ones."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import yaml
from torch import Tensor, nn

from maugpt.adapters import ALL_PROJECTIONS, Adapter, AdapterContext, AdapterLayer, adapter_layers, inject
from maugpt.training.cli import run
from tests.conftest import tiny_causal_lm
from tests.training.conftest import stage_config


class IA3Linear(AdapterLayer):
    """``o = l ⊙ (W_0 x + b)``, ``l (d_out)`` starting at ones."""

    def __init__(self, base: nn.Linear, context: AdapterContext | None = None) -> None:
        super().__init__(base, context)
        self.scale = nn.Parameter(torch.ones(self.out_features, device=base.weight.device))

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"ia3": [self.scale]}

    def delta_weight(self) -> Tensor | None:
        """``(l − 1) W_0``: mergeable when the layer has no bias (which the scale would change too)."""
        return None if self.base.bias is not None else (self.scale - 1).unsqueeze(1) * self.base.weight

    def forward(self, x: Tensor) -> Tensor:
        return self.base(x) * self.scale.to(x.dtype)


class IA3(Adapter):
    """IA3: a per-channel scale on each wrapped layer's output."""

    def __init__(self, targets: Sequence[str] = ALL_PROJECTIONS) -> None:
        super().__init__(targets)

    def wrap(self, base: nn.Linear, context: AdapterContext | None = None) -> IA3Linear:
        return IA3Linear(base, context)


def test_a_fresh_ia3_adapter_changes_nothing_and_its_delta_merges():
    model = tiny_causal_lm()
    ids = torch.randint(1, 96, (2, 7), generator=torch.Generator().manual_seed(0))
    before = model(ids).logits
    inject(model, IA3(targets=["q_proj", "down_proj"]))
    assert torch.equal(model(ids).logits, before)
    layer = dict(adapter_layers(model))["model.layers.0.mlp.down_proj"]
    with torch.no_grad():
        layer.scale.uniform_(0.5, 1.5)
    x = torch.randn(3, layer.in_features, dtype=torch.float64)
    merged = x @ (layer.base.weight + layer.delta_weight()).T
    assert layer.base.bias is None and (layer(x) - merged).abs().max().item() <= 1e-12
    assert layer.parameter_counts() == {"ia3": layer.out_features}


def test_ia3_trains_through_maugpt_fit_and_checkpoints_only_its_scales(tiny_base, synthetic_dir, tmp_path):
    adapter = {"class_path": "tests.adapters.test_ia3.IA3", "init_args": {"targets": ["v_proj", "down_proj"]}}
    path = stage_config(tmp_path, tiny_base, synthetic_dir, 2, batches=2, adapter=adapter)
    config = yaml.safe_load(open(path))
    config["trainer"]["limit_val_batches"] = 0
    open(path, "w").write(yaml.safe_dump(config))
    run(["fit", "--config", path])
    state = torch.load(tmp_path / "stage2" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    scales = {k: v for k, v in state.items() if k.startswith("model.llm.")}
    assert scales and all(k.endswith((".v_proj.scale", ".down_proj.scale")) for k in scales)
    assert all(not torch.equal(v, torch.ones_like(v)) for v in scales.values())  # two optimizer steps moved them
    assert set(state) - set(scales) == {k for k in state if k.startswith("model.projector.")}

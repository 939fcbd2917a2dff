"""LoRAMoE (Dou et al. 2023): LoRA experts mixed per token by a dense softmax router.

Its delta is the generalist experts alone, Eq. 1–3 of the paper (:mod:`maugpt.adapters.generalist`,
which also explains the ``scaling`` conventions); AMoE-LoRA adds the anomaly-aware expert to the
same mixture (:mod:`maugpt.adapters.amoe_lora`). Its *localized balancing constraint* on the
router (:func:`~maugpt.adapters.generalist.localized_balance_loss`) is its auxiliary loss.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from maugpt.adapters.base import FFN_PROJECTIONS, AdapterContext, require_fraction, require_positive
from maugpt.adapters.fused import MixtureSpec
from maugpt.adapters.generalist import (
    GeneralistExperts,
    Scaling,
    generalist_scale,
    mixture,
    mixture_spec,
    observe_router,
    upgrade_names,
)
from maugpt.adapters.lowrank import LowRankAdapter, LowRankLayer


class LoRAMoELinear(LowRankLayer):
    """A frozen linear layer plus the generalist experts: ``o = o_0 + o_1`` (Eq. 1–3).

    Parameters: ``generalist.router (d_in, N)``, ``generalist.A (d_in, N·r)``, ``generalist.B
    (N·r, d_out)`` zero (:class:`~maugpt.adapters.generalist.GeneralistExperts`).
    """

    def __init__(self, base: nn.Linear, config: LoRAMoE, context: AdapterContext | None = None) -> None:
        super().__init__(base, context)
        self.align = config.align
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else None
        self.generalist = GeneralistExperts.of(config, self.in_features, self.out_features, base.weight.device)
        self._aux_loss: Tensor | None = None
        self.register_load_state_dict_pre_hook(upgrade_saved_names)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        return self.generalist.parameter_groups()

    def auxiliary_loss(self) -> Tensor | None:
        return self._aux_loss

    def spec(self, device: torch.device) -> MixtureSpec:
        """The sizes of this layer's fused delta (:func:`~maugpt.adapters.generalist.mixture_spec`)."""
        return mixture_spec(self, self.generalist, device=device, anomaly_scale=None)

    def down_blocks(self) -> list[tuple[bool, list[Tensor]]]:
        return self.generalist.down_blocks([self.generalist.A], dropped=self.dropout is not None)

    def forward(self, x: Tensor) -> Tensor:
        out, weights, outputs = mixture(self, x, generalist=self.generalist)  # o_0 + o_1, fused
        self._aux_loss = observe_router(self, x, weights=weights, outputs=outputs, generalist=self.generalist)
        return out


def upgrade_saved_names(module: nn.Module, state: dict, prefix: str, *_) -> None:
    """A ``load_state_dict`` pre-hook: a mixture layer's tensors saved under their earlier names
    (``<layer>.A`` for ``<layer>.generalist.A``; :func:`~maugpt.adapters.generalist.upgrade_names`)
    are renamed in place."""
    mine = {k: state[k] for k in list(state) if k.startswith(prefix)}
    upgraded = upgrade_names(mine)
    if upgraded.keys() != mine.keys():
        for k in mine:
            del state[k]
        state.update(upgraded)


class LoRAMoE(LowRankAdapter):
    """LoRAMoE (Dou et al. 2023): N LoRA experts mixed by a dense softmax router, no top-k.

    Defaults follow the official release: the feed-forward projections, N = 8, r = 4, α = 32,
    dropout 0.05. The balancing constraint defaults to δ = 0.1, β = 1e-4; the official script
    ships it switched off, which ``balance_weight: 0`` reproduces.

    Args:
        experts: number of experts N.
        rank: rank r of each expert.
        alpha: scaling numerator α; each expert's update is scaled by α / r (N·α / r with ``total_rank``).
        dropout: dropout on the experts' input (the router reads the clean input).
        balance_delta: δ of the localized balancing constraint, in [0, 1).
        balance_weight: β, the weight of the balancing loss added to the LM loss (0 turns it off).
        targets: name patterns of the linear layers to wrap.
        share_input: one down-projection GEMM for q/k/v and for gate/up (same parameters and outputs).
        align: on GPUs, the fused low-rank widths are padded with zero columns and rows to a
            multiple of this, for the tensor-core GEMMs (bf16 wants multiples of 8); 1 never pads.
            Parameters, files and outputs do not change with it.
        scaling: the experts' scale convention: ``"paper"`` (α/r, Eq. 3) or ``"total_rank"``
            (N·α/r: with uniform routing, a LoRA of rank N·r at the same α/r); see the module docstring.
    """

    def __init__(
        self,
        experts: int = 8,
        rank: int = 4,
        alpha: float = 32.0,
        dropout: float = 0.05,
        balance_delta: float = 0.1,
        balance_weight: float = 1e-4,
        targets: Sequence[str] = FFN_PROJECTIONS,
        share_input: bool = False,
        align: int = 8,
        scaling: Scaling = "paper",
    ) -> None:
        super().__init__(rank, alpha, dropout, targets, share_input)
        require_positive(experts=experts, align=align)
        generalist_scale(alpha=alpha, rank=rank, experts=experts, scaling=scaling)  # names a bad convention
        self.scaling = scaling
        require_fraction(balance_delta=balance_delta)
        if balance_weight < 0:
            raise ValueError(f"balance_weight must be >= 0, got {balance_weight!r}")
        self.experts, self.align = int(experts), int(align)
        self.balance_delta, self.balance_weight = float(balance_delta), float(balance_weight)

    def wrap(self, base: nn.Linear, context: AdapterContext | None = None) -> LoRAMoELinear:
        return LoRAMoELinear(base, self, context)

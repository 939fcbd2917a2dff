"""LoRA (Hu et al. 2022): ``o = W_0 x + (α/r) B A x``, with B zero-initialised."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from maugpt.adapters.base import ALL_PROJECTIONS, AdapterContext
from maugpt.adapters.fused import LoRAUp, compute_dtype
from maugpt.adapters.lowrank import LowRankAdapter, LowRankLayer


def low_rank_init(d_in: int, cols: int, device: torch.device | None = None) -> nn.Parameter:
    """A down-projection ``(d_in, cols)`` initialised like ``nn.Linear`` (Kaiming-uniform, a=√5)."""
    bound = 1.0 / math.sqrt(d_in)
    return nn.Parameter(torch.empty(d_in, cols, device=device).uniform_(-bound, bound))


def zero_init(rows: int, d_out: int, device: torch.device | None = None) -> nn.Parameter:
    """An up-projection ``(rows, d_out)`` of zeros, so that a new adapter adds exactly nothing."""
    return nn.Parameter(torch.zeros(rows, d_out, device=device))


class LoRALinear(LowRankLayer):
    """One low-rank pair on a frozen linear layer.

    Parameters: ``A (d_in, r)`` random, ``B (r, d_out)`` zero, so the layer starts as ``base``.
    """

    def __init__(self, base: nn.Linear, config: LoRA, context: AdapterContext | None = None) -> None:
        super().__init__(base, context)
        self.rank, self.scale = config.rank, config.alpha / config.rank
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else None
        self.A = low_rank_init(self.in_features, self.rank, base.weight.device)
        self.B = zero_init(self.rank, self.out_features, base.weight.device)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"lora": [self.A, self.B]}

    def down_blocks(self) -> list[tuple[bool, list[Tensor]]]:
        return [(self.dropout is not None, [self.A])]

    def delta_weight(self) -> Tensor:
        """``(α/r) (A B)ᵀ``, in ``nn.Linear``'s ``(d_out, d_in)`` layout."""
        return (self.scale * (self.A @ self.B)).T

    def forward(self, x: Tensor) -> Tensor:
        x2 = x.reshape(-1, self.in_features)  # 2-D: the frozen GEMM and the delta share one view
        (z,) = self.project_down(x, x2.to(compute_dtype(x, self.A)))
        out0 = self.base(x2)
        out = LoRAUp.apply(out0, z, self.B, self.scale)
        self.record_outputs(x, lambda: {"frozen": out0, "lora": self.scale * (z @ self.B.to(z.dtype))})
        return out.view(*x.shape[:-1], self.out_features)


class LoRA(LowRankAdapter):
    """LoRA (Hu et al. 2022): ``ΔW x = (α/r) B A x``.

    Args:
        rank: rank r of the pair.
        alpha: scaling numerator α; the update is scaled by α / r.
        dropout: dropout on the adapter's input.
        targets: name patterns of the linear layers to wrap (see :class:`~maugpt.adapters.base.Adapter`).
        share_input: one down-projection GEMM for q/k/v and for gate/up (same parameters and outputs).
    """

    def __init__(
        self,
        rank: int = 8,
        alpha: float = 16.0,
        dropout: float = 0.0,
        targets: Sequence[str] = ALL_PROJECTIONS,
        share_input: bool = False,
    ) -> None:
        super().__init__(rank, alpha, dropout, targets, share_input)

    def wrap(self, base: nn.Linear, context: AdapterContext | None = None) -> LoRALinear:
        return LoRALinear(base, self, context)

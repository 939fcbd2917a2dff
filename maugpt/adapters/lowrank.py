"""The low-rank adapters' shared plumbing: the fused down-projection, its sharing across the
projections that read one input, and the caches generation reuses.

LoRA, LoRAMoE, AMoE-LoRA and the anomaly-aware expert all start with ``z = h [W_1 | … | W_k]``,
every low-rank block that reads the layer's input in one GEMM (:class:`~maugpt.adapters.fused.
DownProjection`). :class:`LowRankLayer` owns that step; :class:`LowRankAdapter` is the
configuration they share (rank, α, dropout, ``share_input``). Neither is part of the adapter
protocol (:mod:`maugpt.adapters.base`).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from maugpt.adapters.base import Adapter, AdapterContext, AdapterLayer, require_fraction, require_positive
from maugpt.adapters.fused import DownProjection, concat, split
from maugpt.compat import version


class InputGroup:
    """The adapted layers of one block that read the same input tensor (q/k/v, gate/up; see
    :data:`~maugpt.adapters.base.SHARED_INPUTS`).

    Whichever member first sees an input computes what every member needs of it (AMoE-LoRA's
    pooled condition; with ``share_input``, the fused down-projection) and hands each other
    member its part, which that member takes once. So nothing outlives the block's forward: a
    later forward that feeds the same tensor again computes afresh, and a stale part is replaced
    by the next input's before anyone could take it.
    """

    def __init__(self, layers: tuple[LowRankLayer, ...]) -> None:
        self.layers = layers
        self._handed: dict[str, tuple[Tensor, dict[int, Any]]] = {}

    def take(self, what: str, layer: LowRankLayer, x: Tensor) -> Any | None:
        """``layer``'s part of ``what`` computed from this very ``x`` by another member, or None."""
        handed = self._handed.get(what)
        if handed is None or handed[0] is not x:
            return None
        part = handed[1].pop(self.layers.index(layer), None)
        if not handed[1]:
            del self._handed[what]
        return part

    def hand_out(self, what: str, x: Tensor, parts: dict[int, Any]) -> None:
        """Leave ``parts`` (by member index) of ``what``, computed from ``x``, for the other members."""
        self._handed[what] = (x, parts)


class LowRankLayer(AdapterLayer):
    """An adapter layer whose delta starts with low-rank down-projections of its input.

    Subclasses list the blocks (:meth:`down_blocks`) and call :meth:`project_down` in their
    forward. ``group`` (the layers reading the same input) is set by
    :func:`~maugpt.adapters.inject.inject`, and ``share_input`` says whether their
    down-projections run as one GEMM; ``align`` pads the first fused width on GPUs (the
    mixtures take it as an argument).
    """

    def __init__(self, base: nn.Linear, context: AdapterContext | None = None) -> None:
        super().__init__(base, context)
        self._fused: dict[str, tuple[tuple, Tensor]] = {}
        self.group: InputGroup | None = None
        self.share_input = False
        self.dropout: nn.Module | None = None
        # On GPUs, the first fused down-projection's width is padded with zero columns to a
        # multiple of this (1: never).
        self.align = 1

    @property
    def siblings(self) -> tuple[LowRankLayer, ...]:
        """The layers (this one included) whose down-projections run as one GEMM with this one's."""
        return self.group.layers if self.group is not None and self.share_input else ()

    @abstractmethod
    def down_blocks(self) -> list[tuple[bool, list[Tensor]]]:
        """The down-projection weights, grouped by the input they read: ``(dropped, blocks)`` pairs,
        ``dropped`` meaning the input after dropout; the first group holds the experts' ``A``."""

    def pooled_condition(self, x: Tensor) -> Tensor:
        """AMoE-LoRA's condition ``(B, d_in)`` for ``x (B, T, d_in)``
        (:meth:`~maugpt.adapters.base.AdapterContext.pooled_condition`), computed once per input
        for the whole :class:`InputGroup`."""
        group = self.group
        if group is not None and (pooled := group.take("condition", self, x)) is not None:
            return pooled
        pooled = self.context.pooled_condition(x, self.name)
        if group is not None:
            group.hand_out("condition", x, {i: pooled for i, layer in enumerate(group.layers) if layer is not self})
        return pooled

    def project_down(self, x: Tensor, h: Tensor) -> list[Tensor]:
        """``h`` (``x`` flattened, in the compute dtype) times each group of :meth:`down_blocks`.

        With siblings, the first of them to see ``x`` computes every sibling's projections in
        one GEMM per group (and one dropout mask for all), and hands the others their columns.
        """
        group = self.siblings or (self,)
        if len(group) > 1 and (mine := self.group.take("down", self, x)) is not None:
            return mine
        layouts = [layer.down_blocks() for layer in group]
        dropped = None
        results: list[list[Tensor]] = [[] for _ in group]
        for index, (is_dropped, _) in enumerate(layouts[0]):
            if is_dropped and dropped is None:
                dropped = self.dropout(h) if self.dropout is not None else h
            weights = [w for layout in layouts for w in layout[index][1]]
            widths = [sum(w.shape[1] for w in layout[index][1]) for layout in layouts]
            pad = self.alignment_padding(sum(widths), x.device) if index == 0 else 0
            inputs = dropped if is_dropped else h
            if torch.is_grad_enabled():
                z = DownProjection.apply(inputs, pad, *weights)
            else:  # generation: the fused weights are cached between decoding steps
                dtype = inputs.dtype
                build = lambda dtype=dtype, weights=weights, pad=pad: concat([w.to(dtype) for w in weights], pad, dim=1)  # noqa: E731
                z = inputs @ group[0].fused(f"down {index} {dtype}", weights, build)
            if len(group) == 1:
                results[0].append(z)  # whole, with its padding columns
            else:
                for result, block in zip(results, split(z, widths, dim=1)):
                    result.append(block)
        me = group.index(self)
        if len(group) > 1:
            self.group.hand_out("down", x, {i: result for i, result in enumerate(results) if i != me})
        return results[me]

    def fused(self, name: str, parts: Sequence[Tensor], build: Callable[[], Tensor]) -> Tensor:
        """``build()``, a fusion (concatenation) of ``parts``, cached while no gradient is recorded:
        generation re-reads the same weights at every decoding step. The cache is keyed by the
        parts' identities and in-place versions, so an optimizer step or a load refreshes it."""
        if torch.is_grad_enabled():
            return build()
        key = tuple((id(p), version(p), p.device, p.dtype) for p in parts)
        cached = self._fused.get(name)
        if cached is None or cached[0] != key:
            cached = self._fused[name] = (key, build())
        return cached[1]

    def alignment_padding(self, width: int, device: torch.device) -> int:
        """Zero columns that bring a fused low-rank width to a multiple of ``self.align`` (on GPUs,
        whose tensor cores want it; elsewhere the padding would only cost)."""
        return -width % self.align if device.type == "cuda" else 0


class LowRankAdapter(Adapter):
    """Configuration shared by the low-rank adapters.

    Args:
        rank: rank ``r`` of each low-rank pair.
        alpha: scaling numerator; the adapter's output is scaled by ``alpha / rank``.
        dropout: dropout on the adapter's input (the frozen path never sees it).
        targets: name patterns of the ``nn.Linear`` layers to wrap (see :class:`Adapter`).
        share_input: give the wrapped layers that read the same input (q/k/v, gate/up of one
            block) one down-projection GEMM for all of them (and one dropout mask). The
            parameters, the saved files and the outputs are those of the per-module form.
    """

    def __init__(
        self, rank: int, alpha: float, dropout: float, targets: Sequence[str], share_input: bool = False
    ) -> None:
        require_positive(rank=rank, alpha=alpha)
        require_fraction(dropout=dropout)
        self.rank, self.alpha, self.dropout = int(rank), float(alpha), float(dropout)
        super().__init__(targets)
        self.share_input = bool(share_input)

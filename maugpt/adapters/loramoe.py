"""LoRAMoE (Dou et al. 2023): LoRA experts mixed per token by a dense softmax router.

The mixture is the generalist component of AMoE-LoRA too (the paper's Eq. 1–3)::

    ω = softmax(x W_g)                         router, (…, N)
    o_1 = s Σ_i ω_i B_i A_i x                  N experts of rank r, s = α/r (Eq. 3)

**The scale convention.** Eq. 3 scales every expert by α/r, as a LoRA of rank r would be. But
the router's weights start near 1/N, so at the same α/r each of the mixture's N·r directions
moves about N times less per optimizer step than a LoRA of rank N·r, and an experts × rank grid
at fixed α/r confounds the number of experts with the step size. ``scaling`` names the
convention (:data:`SCALINGS`): ``"paper"`` is Eq. 3 as written, ``s = α/r``; ``"total_rank"``
is ``s = N·α/r``, under which a mixture with uniform routing (every ω_i = 1/N) *is* one LoRA of
rank N·r with the same α/r: ``N·(α/r)·(1/N)·B A x = (α/r) B A x``.

The experts are stacked, ``A = [A_1 | … | A_N]: (d_in, N·r)`` and ``B = [B_1; …; B_N]: (N·r, d_out)``,
so the mixture costs one LoRA of rank N·r: ``((x A) ⊙ repeat(ω, r)) B``. The router's ``W_g`` is
concatenated to ``A`` so that ``x`` is read once for all of them; forward and backward are one
autograd Function (:class:`~maugpt.adapters.fused.MixtureDelta`). The official code instead
loops over experts, which costs N small matmul pairs and N full-size intermediates.

The *localized balancing constraint* is LoRAMoE's auxiliary loss; see :func:`localized_balance_loss`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from maugpt.adapters.base import (
    FFN_PROJECTIONS,
    AdapterContext,
    require_fraction,
    require_positive,
)
from maugpt.adapters.fused import (
    MixtureDelta,
    MixtureSpec,
    component_outputs,
    compute_dtype,
    fuse_up,
    mixture_forward,
)
from maugpt.adapters.lora import low_rank_init, zero_init
from maugpt.adapters.lowrank import LowRankAdapter, LowRankLayer

#: The generalist experts' scale conventions (see the module docstring).
SCALINGS: tuple[str, ...] = ("paper", "total_rank")
Scaling = Literal["paper", "total_rank"]


def generalist_scale(*, alpha: float, rank: int, experts: int, scaling: str) -> float:
    """The scale ``s`` of Eq. 3 under a convention: ``α/r`` (``"paper"``) or ``N·α/r`` (``"total_rank"``)."""
    if scaling not in SCALINGS:
        raise ValueError(f"scaling must be one of {list(SCALINGS)}, got {scaling!r}")
    return alpha / rank * (experts if scaling == "total_rank" else 1)


def localized_balance_loss(
    router_weights: Tensor, token_mask: Tensor | None = None, sample_labels: Tensor | None = None, delta: float = 0.1
) -> Tensor:
    """LoRAMoE's localized balancing constraint, before its weight β.

    Args:
        router_weights: ``(B, T, N)`` softmax router weights ω.
        token_mask: ``(B, T)``, false on padding. The official code sums over padding tokens
            too, which makes the loss depend on how a batch was padded; we mask them out.
        sample_labels: ``(B,)`` in {0, 1}. The experts form two groups, the first ⌊N/2⌋ and the
            other ⌈N/2⌉; a sample labelled 1 favours the first group and a sample labelled 0 the
            second (the official code's convention). ``None``: no favoured group (δ unused), which
            leaves a plain importance-balancing loss.
        delta: δ, the strength of the soft group preference.

    Returns:
        The scalar ``CV²(Q ⊙ I) = Var(Z) / (Mean(Z)² + 1e-10)`` over all B·N entries, where
        ``Q[b, i] = Σ_t mask[b, t] ω[b, t, i]`` is the per-sample importance of expert i and
        ``I[b, i]`` is ``1 + δ`` on the sample's favoured group and ``1 − δ`` on the other.
        The variance is unbiased, as in the official code; a single entry gives 0.
    """
    weights = router_weights.to(torch.promote_types(router_weights.dtype, torch.float32))
    if token_mask is not None:
        weights = weights * token_mask.to(weights.dtype).unsqueeze(-1)
    importance = weights.sum(dim=1)  # (B, N)
    if sample_labels is not None:
        n = importance.shape[-1]
        first_group = torch.arange(n, device=importance.device) < n // 2  # (N,)
        favoured = first_group == sample_labels.to(importance.device).view(-1, 1).bool()  # (B, N)
        importance = importance * torch.where(favoured, 1.0 + delta, 1.0 - delta)
    z = importance.flatten()
    if z.numel() < 2:
        return z.sum() * 0.0
    return z.var() / (z.mean() ** 2 + 1e-10)


class LoRAMoELinear(LowRankLayer):
    """N stacked LoRA experts and a dense softmax router on a frozen linear layer.

    Parameters: ``router (d_in, N)`` (W_g), ``A (d_in, N·r)``, ``B (N·r, d_out)`` zero.
    ``scale`` is Eq. 3's ``s`` under the ``scaling`` convention (:func:`generalist_scale`).
    """

    def __init__(self, base: nn.Linear, config: LoRAMoE, context: AdapterContext | None = None) -> None:
        super().__init__(base, context)
        self.align = config.align
        experts, rank = config.experts, config.rank
        self.experts, self.rank = experts, rank
        self.scale = generalist_scale(alpha=config.alpha, rank=rank, experts=experts, scaling=config.scaling)
        self.anomaly_scale: float | None = None  # s_a of Eq. 5: AMoE-LoRA's, a plain mixture has none
        self.balance_delta, self.balance_weight = config.balance_delta, config.balance_weight
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else None
        device = base.weight.device
        self.router = low_rank_init(self.in_features, experts, device)
        self.A = low_rank_init(self.in_features, experts * rank, device)
        self.B = zero_init(experts * rank, self.out_features, device)
        self._aux_loss: Tensor | None = None

    def expert(self, i: int) -> tuple[Tensor, Tensor]:
        """Expert i's pair ``(A_i (d_in, r), B_i (r, d_out))`` as views of the stacked weights."""
        cols = slice(i * self.rank, (i + 1) * self.rank)
        return self.A[:, cols], self.B[cols]

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"generalist": [self.A, self.B], "router": [self.router]}

    def auxiliary_loss(self) -> Tensor | None:
        return self._aux_loss

    def spec(self, device: torch.device, anomaly: bool) -> MixtureSpec:
        """The sizes of this layer's delta (``anomaly``: with the anomaly-aware expert's block);
        ``[B; W_b]``'s rows are padded to a multiple of ``align`` on GPUs."""
        up = self.experts * self.rank + (self.rank if anomaly else 0)
        return MixtureSpec(
            self.experts,
            self.rank,
            self.scale,
            anomaly,
            self.dropout is None,
            self.alignment_padding(up, device),
            self.anomaly_scale if anomaly else None,
        )

    def expert_blocks(self) -> list[Tensor]:
        """The down-projections the experts' input meets (AMoE-LoRA adds ``W_a``)."""
        return [self.A]

    def down_blocks(self) -> list[tuple[bool, list[Tensor]]]:
        experts = self.expert_blocks()
        if self.dropout is None:
            return [(False, experts + [self.router])]
        return [(True, experts), (False, [self.router])]  # the router reads the clean input

    def mixture(
        self, x: Tensor, core: Tensor | None = None, hh: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None, dict[str, Tensor]]:
        """``(o, ω, outputs)`` for ``x (…, d_in)``: the frozen output plus the delta (Eq. 1–6), the
        router weights ``(…, N)`` when :meth:`wants_weights` (else None), and while the context
        records, each component's output apart (``frozen``, ``generalist``, ``anomaly_aware``,
        ``(M, d_out)``; else empty). ``core``: the anomaly-aware ``H (B, r, r)``; ``hh``: its
        square when already known (generation)."""
        x2 = x.reshape(-1, self.in_features)
        out0 = self.base(x2)
        z, *logits = self.project_down(x, x2.to(compute_dtype(x, self.A)))
        logits = logits[0] if logits else None
        W_b = self.anomaly_aware.W_b if core is not None else None
        spec = self.spec(x.device, core is not None)
        if torch.is_grad_enabled():
            want = self.wants_weights()
            out = MixtureDelta.apply(out0, z, logits, self.B, W_b, core, spec, want)
            out, weights = out if want else (out, None)
        else:  # generation: the fused weights are cached between decoding steps
            dtype = z.dtype
            ups = [self.B] + ([W_b] if W_b is not None else [])
            up = self.fused(
                f"up {dtype}",
                ups,
                lambda: fuse_up(self.B.to(dtype), None if W_b is None else W_b.to(dtype), spec.pad_up),
            )
            if core is not None and hh is None:
                hh = torch.bmm(core, core)
            hh = None if hh is None else hh.to(dtype)
            out, weights = mixture_forward(out0, z, logits, up, hh, spec)[:2]
        outputs = {}
        if self.context.record:
            square = None if core is None else (hh if hh is not None else torch.bmm(core, core))
            outputs = {"frozen": out0, **component_outputs(z, weights, self.B, W_b, square, spec)}
        lead = x.shape[:-1]
        return (
            out.view(*lead, self.out_features),
            None if weights is None else weights.view(*lead, self.experts),
            outputs,
        )

    def wants_weights(self) -> bool:
        """Whether this forward needs the router weights: for the balancing loss or diagnostics."""
        return (self.training and self.balance_weight > 0) or self.context.record

    def observe(self, x: Tensor, weights: Tensor | None, outputs: dict[str, Tensor], **extra: Tensor) -> None:
        """The balancing loss (training) and the diagnostics (on request) of one forward: router
        load and entropy, and each component's output norm (:meth:`output_norms`)."""
        ctx = self.context
        self._aux_loss = None
        if self._diagnostics and not ctx.record:
            self._diagnostics = {}  # diagnostics always describe the latest forward
        want_loss = self.training and self.balance_weight > 0 and torch.is_grad_enabled()
        if weights is None or not (want_loss or ctx.record):
            return
        batch = x.shape[0] if x.dim() > 1 else 1
        w3 = weights.reshape(batch, -1, self.experts)
        mask = ctx.mask_for(ctx.token_mask, w3, self.name, "token_mask")
        if want_loss:
            loss = localized_balance_loss(w3, mask, ctx.sample_labels, self.balance_delta)
            self._aux_loss = self.balance_weight * loss
        if ctx.record:
            w = w3.detach().to(torch.promote_types(w3.dtype, torch.float32))
            keep = torch.ones(w.shape[:2], dtype=torch.bool, device=w.device) if mask is None else mask
            tokens = w[keep]  # (real tokens, N)
            entropy = -(tokens * tokens.clamp_min(1e-12).log()).sum(-1)
            self.record(
                expert_load=tokens.mean(0), router_entropy=entropy.mean(), **self.output_norms(outputs, keep), **extra
            )

    def forward(self, x: Tensor) -> Tensor:
        out, weights, outputs = self.mixture(x)
        self.observe(x, weights, outputs)
        return out


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

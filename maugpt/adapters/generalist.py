"""The generalist experts (the paper's Eq. 1–3): N LoRA experts mixed per token by a softmax router.

This is LoRAMoE's whole delta (Dou et al. 2023) and AMoE-LoRA's first component::

    ω = softmax(x W_g)                         router, (…, N)                    (Eq. 1)
    o_1 = s Σ_i ω_i B_i A_i x                  N experts of rank r, s = α/r     (Eq. 2–3)

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
autograd Function (:class:`~maugpt.adapters.fused.MixtureDelta`, called by :func:`mixture`), into
which AMoE-LoRA's anomaly-aware block (Eq. 5) is fused when given. The official code instead
loops over experts, which costs N small matmul pairs and N full-size intermediates;
:mod:`maugpt.adapters.reference` is that literal form, which the fused one is tested against.

The *localized balancing constraint* is LoRAMoE's auxiliary loss; see :func:`localized_balance_loss`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, TypeVar

import torch
from torch import Tensor, nn

from maugpt.adapters.fused import (
    MixtureDelta,
    MixtureSpec,
    component_outputs,
    compute_dtype,
    fuse_up,
    mixture_forward,
)
from maugpt.adapters.lora import low_rank_init, zero_init
from maugpt.adapters.lowrank import LowRankLayer

if TYPE_CHECKING:  # the configurations import this module
    from maugpt.adapters.loramoe import LoRAMoE

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


class GeneralistExperts(nn.Module):
    """Eq. 1–3's parameters: the router ``W_g (d_in, N)`` and N stacked experts of rank r,
    ``A (d_in, N·r)`` random and ``B (N·r, d_out)`` zero; ``scale`` is Eq. 3's ``s`` under the
    convention the adapter chose (:func:`generalist_scale`). ``balance_weight`` β and
    ``balance_delta`` δ weight LoRAMoE's balancing loss on the router (β = 0: none)."""

    def __init__(
        self,
        d_in: int,
        d_out: int,
        *,
        experts: int,
        rank: int,
        scale: float,
        balance_weight: float = 0.0,
        balance_delta: float = 0.0,
        device: torch.device | None = None,
    ) -> None:
        super().__init__()
        self.experts, self.rank, self.scale = experts, rank, scale
        self.balance_weight, self.balance_delta = balance_weight, balance_delta
        self.router = low_rank_init(d_in, experts, device)
        self.A = low_rank_init(d_in, experts * rank, device)
        self.B = zero_init(experts * rank, d_out, device)

    @classmethod
    def of(cls, config: LoRAMoE, d_in: int, d_out: int, device: torch.device | None = None) -> GeneralistExperts:
        """The experts a LoRAMoE or AMoE-LoRA configuration asks for (its N, r, α, ``scaling`` and
        balancing constraint)."""
        n, r = config.experts, config.rank
        return cls(
            d_in,
            d_out,
            experts=n,
            rank=r,
            scale=generalist_scale(alpha=config.alpha, rank=r, experts=n, scaling=config.scaling),
            balance_weight=config.balance_weight,
            balance_delta=config.balance_delta,
            device=device,
        )

    def down_blocks(self, experts: list[Tensor], dropped: bool) -> list[tuple[bool, list[Tensor]]]:
        """The layer's down-projection groups: ``experts`` (``A``, and AMoE-LoRA's ``W_a``) with the
        router ``W_g`` in one GEMM, or, with dropout (``dropped``), the router apart on the clean input."""
        if not dropped:
            return [(False, [*experts, self.router])]  # x [A (| W_a) | W_g]: one GEMM
        return [(True, experts), (False, [self.router])]

    def expert(self, i: int) -> tuple[Tensor, Tensor]:
        """Expert i's pair ``(A_i (d_in, r), B_i (r, d_out))`` as views of the stacked weights."""
        cols = slice(i * self.rank, (i + 1) * self.rank)
        return self.A[:, cols], self.B[cols]

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"generalist": [self.A, self.B], "router": [self.router]}


@dataclass(frozen=True)
class AnomalyBlock:
    """What the mixture needs of AMoE-LoRA's anomaly-aware expert for one forward (Eq. 5):
    ``W_b (r, d_out)``, the per-sample core ``H (B, r, r)``, its square ``H H`` when already known
    (generation; None: the delta squares ``H`` itself) and the scale ``s_a``."""

    W_b: Tensor
    core: Tensor
    square: Tensor | None
    scale: float


def mixture_spec(
    layer: LowRankLayer, generalist: GeneralistExperts, *, device: torch.device, anomaly_scale: float | None
) -> MixtureSpec:
    """The sizes of ``layer``'s fused delta, with the anomaly-aware block when ``anomaly_scale``
    is given; ``[B; W_b]``'s rows are padded to a multiple of the layer's ``align`` on GPUs."""
    anomaly = anomaly_scale is not None
    up = generalist.experts * generalist.rank + (generalist.rank if anomaly else 0)
    return MixtureSpec(
        experts=generalist.experts,
        rank=generalist.rank,
        scale=generalist.scale,
        anomaly_aware=anomaly,
        router_in_z=layer.dropout is None,
        pad_up=layer.alignment_padding(up, device),
        anomaly_scale=anomaly_scale,
    )


def mixture(
    layer: LowRankLayer, x: Tensor, *, generalist: GeneralistExperts, anomaly: AnomalyBlock | None = None
) -> tuple[Tensor, Tensor | None, dict[str, Tensor]]:
    """``o_0 + o_1 (+ o_2)`` (Eq. 6) for ``x (…, d_in)``, fused: ``(o, ω, outputs)``.

    ``layer`` gives the frozen ``base`` and the down-projection ``x [A (| W_a) | W_g]``
    (:meth:`~maugpt.adapters.lowrank.LowRankLayer.project_down`); ``ω (…, N)`` is returned when
    the balancing loss or the diagnostics need it (else None); ``outputs``, only while the
    context records, holds each component's output apart (``frozen``, ``generalist``,
    ``anomaly_aware``, each ``(M, d_out)``).
    """
    x2 = x.reshape(-1, layer.in_features)
    out0 = layer.base(x2)  # o_0
    z, *logits = layer.project_down(x, x2.to(compute_dtype(x, generalist.A)))
    logits = logits[0] if logits else None
    W_b, core, square = (None, None, None) if anomaly is None else (anomaly.W_b, anomaly.core, anomaly.square)
    spec = mixture_spec(layer, generalist, device=x.device, anomaly_scale=None if anomaly is None else anomaly.scale)
    if torch.is_grad_enabled():
        want = wants_weights(layer, generalist)
        out = MixtureDelta.apply(out0, z, logits, generalist.B, W_b, core, spec, want)
        out, weights = out if want else (out, None)
    else:  # generation: the fused up-projection is cached between decoding steps
        dtype = z.dtype
        ups = [generalist.B] + ([W_b] if W_b is not None else [])
        up = layer.fused(
            f"up {dtype}",
            ups,
            lambda: fuse_up(generalist.B.to(dtype), None if W_b is None else W_b.to(dtype), spec.pad_up),
        )
        if core is not None and square is None:
            square = torch.bmm(core, core)
        square = None if square is None else square.to(dtype)
        out, weights = mixture_forward(out0, z, logits, up, square, spec)[:2]
    outputs = {}
    if layer.context.record:
        if core is not None and square is None:
            square = torch.bmm(core, core)
        outputs = {"frozen": out0, **component_outputs(z, weights, generalist.B, W_b, square, spec)}
    lead = x.shape[:-1]
    return (
        out.view(*lead, layer.out_features),
        None if weights is None else weights.view(*lead, generalist.experts),
        outputs,
    )


def wants_weights(layer: LowRankLayer, generalist: GeneralistExperts) -> bool:
    """Whether a forward needs the router weights: for the balancing loss or the diagnostics."""
    return (layer.training and generalist.balance_weight > 0) or layer.context.record


def observe_router(
    layer: LowRankLayer,
    x: Tensor,
    *,
    weights: Tensor | None,
    outputs: dict[str, Tensor],
    generalist: GeneralistExperts,
    **extra: Tensor,
) -> Tensor | None:
    """The balancing loss of one training forward (returned; None without one) and, while the
    context records, ``layer``'s diagnostics: router load and entropy over the real tokens, each
    component's output norm and ``extra`` (:meth:`~maugpt.adapters.base.AdapterLayer.record_outputs`)."""
    ctx = layer.context
    want_loss = layer.training and generalist.balance_weight > 0 and torch.is_grad_enabled()
    loss, router = None, {}
    if weights is not None and (want_loss or ctx.record):
        batch = x.shape[0] if x.dim() > 1 else 1
        w3 = weights.reshape(batch, -1, generalist.experts)  # (B, T, N)
        mask = ctx.mask_for(ctx.token_mask, w3, layer.name, "token_mask")
        if want_loss:
            loss = generalist.balance_weight * localized_balance_loss(
                w3, mask, ctx.sample_labels, generalist.balance_delta
            )
        if ctx.record:
            w = w3.detach().to(torch.promote_types(w3.dtype, torch.float32))
            tokens = w.flatten(0, 1) if mask is None else w[mask]  # (real tokens, N)
            entropy = -(tokens * tokens.clamp_min(1e-12).log()).sum(-1)
            router = {"expert_load": tokens.mean(0), "router_entropy": entropy.mean()}
    layer.record_outputs(x, lambda: outputs, **router, **extra)
    return loss


T = TypeVar("T")
#: The generalist experts' parameters, which mixture layers held themselves before they moved into
#: the ``generalist`` submodule: ``<layer>.A`` is now ``<layer>.generalist.A``.
_MOVED = ("A", "B", "router")


def upgrade_names(state: Mapping[str, T]) -> dict[str, T]:
    """``state`` with the names that files saved before the ``generalist`` submodule gave a
    mixture layer's parameters renamed (a layer that held a ``router`` was a mixture), so that
    checkpoints and adapter files written by earlier versions still load. Other names pass."""
    prefixes = {k[: -len("router")] for k in state if k.rpartition(".")[2] == "router"}
    prefixes -= {p for p in prefixes if p.endswith("generalist.")}

    def rename(key: str) -> str:
        head, dot, leaf = key.rpartition(".")
        prefix = head + dot
        return f"{prefix}generalist.{leaf}" if prefix in prefixes and leaf in _MOVED else key

    return {rename(k): v for k, v in state.items()}

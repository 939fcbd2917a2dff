"""The adapters' deltas as custom autograd Functions with hand-written backward passes.

At the widths of a 3B model the adapters' arithmetic is ~4 % of the frozen projection's; what
costs is the number of kernels and autograd nodes each adapted projection launches. Autograd
composes a delta from ~30 small ops, each with its own node, views and casts. Here each delta is
two Functions that do the forward in the fewest ops and the backward in the fewest matmuls:

* :class:`DownProjection`: ``z = h [W_1 | … | W_k]``, every low-rank block that reads ``h`` in
  one GEMM: LoRA's ``A``; the mixture's ``[A | W_a | W_g]`` (Eq. 1, 2 and 5 read ``x`` once);
  with ``share_input``, those of q/k/v (or gate/up) together. Backward: one GEMM for ``∂h``, one
  per weight (each gets a contiguous gradient of its own).
* the up side: :class:`LoRAUp`, ``o = o_0 + s z B``; :class:`MixtureDelta` for LoRAMoE and
  AMoE-LoRA, ``ω = softmax(z_g)`` (Eq. 1), ``u = [z_A ⊙ ω̃ | z_a H H]`` (Eq. 3, 5; ``ω̃``: each
  ω_i over its expert's r columns), ``o = o_0 + s u [B; W_b]`` (Eq. 6) with ``s = α/r`` (the
  anomaly-aware block of ``u`` times ``s_a/s`` where its scale is set apart): one GEMM
  forward, two backward, and the router softmax, expert scaling and per-sample core in a few
  element-wise ops on the small ``(M, N·r + r)`` intermediate.

Shapes: ``M`` rows (tokens, flattened), ``d`` in, ``o`` out; the per-sample core ``H`` is
``(B, r, r)`` with ``M = B·T``. The Functions compute in one dtype (the autocast dtype when
autocast is on, else the adapter's), so the backward never meets a mixed-dtype matmul; autograd
casts each gradient back to its parameter's dtype. ``maugpt.adapters.reference`` is the literal
form they are tested against (float64, ≤ 1e-10, gradients included).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from maugpt.compat import gelu_backward, layer_norm_backward, layer_norm_with_stats, softmax_backward


def compute_dtype(x: Tensor, weight: Tensor) -> torch.dtype:
    """The dtype the adapter computes in: autocast's when it is on, else the adapter weights'."""
    device = x.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else weight.dtype


def router_dtype(dtype: torch.dtype) -> torch.dtype:
    """The softmax's dtype: at least float32 (a Python rule; ``torch.promote_types`` dispatches)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def add_up(out0: Tensor, u: Tensor, up: Tensor, scale: float) -> Tensor:
    """``out0 + scale · u @ up`` in one GEMM; ``out0 (M, o)`` keeps its dtype."""
    if out0.dtype == u.dtype:
        return torch.addmm(out0, u, up, alpha=scale)
    return torch.addmm(out0.to(u.dtype), u, up, alpha=scale).to(out0.dtype)


def scaled_mm(a: Tensor, b: Tensor, scale: float, like: Tensor) -> Tensor:
    """``scale · a @ b`` as one GEMM: ``addmm`` with ``beta=0`` ignores ``like`` (any tensor of
    the result's shape and dtype), so the scaling costs no extra pass."""
    return torch.addmm(like, a, b, beta=0, alpha=scale)


def scaled_bmm(a: Tensor, b: Tensor, scale: float, like: Tensor) -> Tensor:
    """``scale · a @ b`` for batches of matrices, one kernel (as :func:`scaled_mm`)."""
    if scale == 1.0:
        return torch.bmm(a, b)
    return torch.baddbmm(like, a, b, beta=0, alpha=scale)


def split(t: Tensor, widths: list[int], dim: int) -> list[Tensor]:
    """``t`` split into blocks of ``widths`` along ``dim`` (and the rest, if any, as one more)."""
    rest = t.shape[dim] - sum(widths)
    if not rest and len(widths) == 1:
        return [t]
    return list(t.split([*widths, rest] if rest else widths, dim=dim))


def concat(blocks: list[Tensor | None], pad: int, dim: int) -> Tensor:
    """The blocks (None skipped) and ``pad`` zeros along ``dim``, concatenated."""
    blocks = [b for b in blocks if b is not None]
    if pad:
        shape = list(blocks[0].shape)
        shape[dim] = pad
        blocks.append(blocks[0].new_zeros(shape))
    return torch.cat(blocks, dim=dim) if len(blocks) > 1 else blocks[0]


class DownProjection(torch.autograd.Function):
    """``z = h [W_1 | … | W_k | 0]``: ``h (M, d)``, each ``W_i (d, k_i)``, ``pad`` zero columns
    (that align the width on GPUs; the Functions downstream ignore them)."""

    @staticmethod
    def forward(ctx, h: Tensor, pad: int, *weights: Tensor) -> Tensor:
        with torch.autocast(h.device.type, enabled=False):
            down = concat([w.to(h.dtype) for w in weights], pad, dim=1)
            ctx.save_for_backward(h, down)
            ctx.widths = [w.shape[1] for w in weights]
            return torch.mm(h, down)

    @staticmethod
    def backward(ctx, grad: Tensor):
        h, down = ctx.saved_tensors
        need = ctx.needs_input_grad
        g = grad.to(h.dtype)
        g_h = torch.mm(g, down.t()) if need[0] else None
        h_t = h.t()
        blocks = split(g, ctx.widths, dim=1)
        return (g_h, None, *(torch.mm(h_t, b) if n else None for b, n in zip(blocks, need[2:])))


class LoRAUp(torch.autograd.Function):
    """``o = o_0 + s z B`` for ``o_0 (M, o)``, ``z = h A (M, r)``, ``B (r, o)``."""

    @staticmethod
    def forward(ctx, out0: Tensor, z: Tensor, B: Tensor, scale: float) -> Tensor:
        with torch.autocast(z.device.type, enabled=False):
            B_ = B.to(z.dtype)
            ctx.save_for_backward(z, B_)
            ctx.scale = scale
            return add_up(out0, z, B_, scale)

    @staticmethod
    def backward(ctx, grad: Tensor):
        z, B = ctx.saved_tensors
        g = grad.to(z.dtype)
        need = ctx.needs_input_grad
        return (
            grad if need[0] else None,
            scaled_mm(g, B.t(), ctx.scale, z) if need[1] else None,  # s g Bᵀ
            scaled_mm(z.t(), g, ctx.scale, B) if need[2] else None,  # s zᵀ g
            None,
        )


@dataclass(frozen=True)
class MixtureSpec:
    """The sizes of a mixture delta: N experts of rank r, the generalist scale ``s``, whether
    ``z`` ends with the router logits (no dropout), the zero rows (``pad_up``) that align
    ``[B; W_b]``, and the anomaly-aware expert's own scale ``s_a`` (None: ``s``)."""

    experts: int
    rank: int
    scale: float
    anomaly_aware: bool
    router_in_z: bool = True
    pad_up: int = 0
    anomaly_scale: float | None = None

    @property
    def anomaly_ratio(self) -> float:
        """``s_a / s``: the up GEMM scales everything by ``s``, so the anomaly-aware block of
        ``u`` carries this factor (1 when both components share the scale, as in the paper)."""
        return 1.0 if self.anomaly_scale is None else self.anomaly_scale / self.scale

    @property
    def widths(self) -> list[int]:
        """Column blocks of ``z``: experts, [anomaly-aware,] [router]."""
        blocks = [self.experts * self.rank] + ([self.rank] if self.anomaly_aware else [])
        return blocks + ([self.experts] if self.router_in_z else [])


def mixture_forward(
    out0: Tensor, z: Tensor, logits: Tensor | None, up: Tensor, hh: Tensor | None, spec: MixtureSpec
) -> tuple[Tensor, ...]:
    """The mixture's forward: ``(out, ω, u, ω as (M, N, 1))``; the last two are for backward.

    ``z`` is ``h [A | W_a | W_g]`` (``logits`` None) or ``h_dropped [A | W_a]`` with the clean
    ``logits = h W_g``, possibly followed by padding columns; ``up`` is ``[B; W_b; 0]``; ``hh`` the
    per-sample ``H H`` ``(B, r, r)`` (None for LoRAMoE).
    """
    n, r = spec.experts, spec.rank
    m = z.shape[0]
    parts = split(z, spec.widths, dim=1)
    if spec.router_in_z:
        logits = parts[len(spec.widths) - 1]
    weights = torch.softmax(logits, dim=-1, dtype=router_dtype(z.dtype))  # Eq. 1
    omega = weights.to(z.dtype).unsqueeze(-1)  # (M, N, 1)
    u = [(parts[0].view(m, n, r) * omega).view(m, n * r)]  # Eq. 3 before s
    if hh is not None:  # Eq. 5 before s: (s_a/s) (x W_a) H H, sample by sample
        z_anomaly = parts[1].view(hh.shape[0], -1, r)
        u.append(scaled_bmm(z_anomaly, hh, spec.anomaly_ratio, z_anomaly).view(m, r))
    u = concat(u, spec.pad_up, dim=1)  # zero columns of u meet zero rows of up: the GEMM aligned
    return add_up(out0, u, up, spec.scale), weights, u, omega


@torch.no_grad()
def component_outputs(
    z: Tensor, weights: Tensor, B: Tensor, W_b: Tensor | None, hh: Tensor | None, spec: MixtureSpec
) -> dict[str, Tensor]:
    """The mixture's two components apart, for diagnostics: ``o_1 = s (z_A ⊙ ω̃) B`` (Eq. 3) and
    ``o_2 = s_a (z_a H H) W_b`` (Eq. 5), each ``(M, o)``; the fused forward only ever has their sum."""
    n, r, m = spec.experts, spec.rank, z.shape[0]
    parts = split(z, spec.widths, dim=1)
    u = (parts[0].view(m, n, r) * weights.to(z.dtype).view(m, n, 1)).view(m, n * r)
    outputs = {"generalist": spec.scale * (u @ B.to(z.dtype))}
    if hh is not None:
        anomaly = torch.bmm(parts[1].view(hh.shape[0], -1, r), hh.to(z.dtype)).view(m, r)
        outputs["anomaly_aware"] = (spec.anomaly_scale or spec.scale) * (anomaly @ W_b.to(z.dtype))
    return outputs


def fuse_up(B: Tensor, W_b: Tensor | None, pad: int) -> Tensor:
    """``[B; W_b; 0]``: one up-projection."""
    return concat([B, W_b], pad, dim=0)


class MixtureDelta(torch.autograd.Function):
    """LoRAMoE's and AMoE-LoRA's up side (Eq. 1–6): ``o = o_0 + s u [B; W_b]``.

    Inputs: ``out0 (M, o)``, ``z`` and ``logits`` (see :func:`mixture_forward`), the stacked
    experts' ``B (N·r, o)``, the anomaly-aware ``W_b (r, o)`` and the hypernetwork's core
    ``H (B, r, r)`` (both None for LoRAMoE). With ``with_weights`` it returns ``(o, ω)`` instead of
    ``o``: ``ω (M, N)``, in at least float32 and differentiable, is what LoRAMoE's balancing loss
    and the diagnostics read.
    """

    @staticmethod
    def forward(ctx, out0, z, logits, B, W_b, core, spec: MixtureSpec, with_weights: bool):
        ctx.set_materialize_grads(False)
        with torch.autocast(z.device.type, enabled=False):
            dtype = z.dtype
            B = B.to(dtype)
            if core is not None:
                W_b, core = W_b.to(dtype), core.to(dtype)
            hh = torch.bmm(core, core) if core is not None else None
            up = fuse_up(B, W_b, spec.pad_up)
            out, weights, u, omega = mixture_forward(out0, z, logits, up, hh, spec)
        ctx.spec, ctx.z_width = spec, z.shape[1]
        # ω is saved as its (M, N, 1) view (saving an output of the Function itself costs a
        # detach), unless that view was rounded to a narrower compute dtype
        exact = None if omega.dtype == weights.dtype else weights
        ctx.save_for_backward(z, up, core, hh, u, omega, exact)
        return (out, weights) if with_weights else out

    @staticmethod
    def backward(ctx, grad: Tensor | None, grad_weights: Tensor | None = None):
        z, up, core, hh, u, omega, weights = ctx.saved_tensors
        spec, need = ctx.spec, ctx.needs_input_grad
        n, r, s = spec.experts, spec.rank, spec.scale
        m, dtype = z.shape[0], z.dtype
        e = n * r
        if grad is None:
            grad = torch.zeros(m, up.shape[1], dtype=dtype, device=z.device)
        g = grad.to(dtype)
        widths = [e, r] if core is not None else [e]
        gu = split(scaled_mm(g, up.t(), s, u), widths, dim=1)  # s g [B; W_b]ᵀ
        zs = split(z, widths, dim=1)
        gu_experts, z_experts = gu[0].view(m, n, r), zs[0].view(m, n, r)
        gz_experts = (gu_experts * omega).view(m, e)
        g_omega = (gu_experts * z_experts).sum(-1, dtype=router_dtype(dtype))  # dL/dω (M, N)
        if grad_weights is not None:
            g_omega = g_omega + grad_weights
        if weights is None:
            weights = omega.view(m, n)
        g_logits = softmax_backward(g_omega, weights, -1).to(dtype)
        gz_anomaly = g_core = None
        if core is not None:
            batch = core.shape[0]
            gu_anomaly, ratio = gu[1].view(batch, -1, r), spec.anomaly_ratio
            gz_anomaly = scaled_bmm(gu_anomaly, hh.transpose(1, 2), ratio, gu_anomaly).view(m, r)
            if need[5]:
                g_hh = scaled_bmm(zs[1].view(batch, -1, r).transpose(1, 2), gu_anomaly, ratio, hh)
                core_t = core.transpose(1, 2)  # d(H H) = dH H + H dH
                g_core = torch.baddbmm(torch.bmm(g_hh, core_t), core_t, g_hh)
        blocks = [gz_experts, gz_anomaly] + ([g_logits] if spec.router_in_z else [])
        width = sum(b.shape[1] for b in blocks if b is not None)
        g_z = concat(blocks, ctx.z_width - width, dim=1) if need[1] else None
        g_B = g_W_b = None
        if need[3] or need[4]:  # s uᵀ g = [gB; gW_b]
            g_up = split(scaled_mm(u.t(), g, s, up), widths, dim=0)
            g_B, g_W_b = g_up[0], (g_up[1] if core is not None else None)
        return (grad if need[0] else None, g_z, None if spec.router_in_z else g_logits, g_B, g_W_b, g_core, None, None)


class HypernetworkCore(torch.autograd.Function):
    """Eq. 4's ``H = W_2 gelu(W_1 LN(c) + b_1) + b_2``, reshaped to ``(B, r, r)``.

    ``c (B, d)`` is the pooled condition; ``W_1 (h, d)``, ``W_2 (r², h)`` are ``nn.Linear``
    weights. The layer norm has no parameters and runs in at least float32 (the inputs of o_proj
    and down_proj reach large magnitudes); the two linear layers run in the compute dtype.
    """

    @staticmethod
    def forward(ctx, condition: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor, rank: int) -> Tensor:
        with torch.autocast(condition.device.type, enabled=False):
            dtype = compute_dtype(condition, w1)
            wide = condition.to(router_dtype(dtype))
            c, mean, rstd = layer_norm_with_stats(wide, 1e-5)
            c = c.to(dtype)
            w1, b1, w2, b2 = w1.to(dtype), b1.to(dtype), w2.to(dtype), b2.to(dtype)
            a = torch.addmm(b1, c, w1.t())
            act = torch.nn.functional.gelu(a)
            ctx.save_for_backward(wide, mean, rstd, c, w1, w2, a, act)
            return torch.addmm(b2, act, w2.t()).view(-1, rank, rank)

    @staticmethod
    def backward(ctx, grad: Tensor):
        wide, mean, rstd, c, w1, w2, a, act = ctx.saved_tensors
        need = ctx.needs_input_grad
        g = grad.reshape(grad.shape[0], -1).to(c.dtype)
        ga = gelu_backward(torch.mm(g, w2), a)
        g_condition = None
        if need[0]:
            g_c = torch.mm(ga, w1).to(wide.dtype)
            g_condition = layer_norm_backward(g_c, wide, mean, rstd)
        return (
            g_condition,
            torch.mm(ga.t(), c) if need[1] else None,
            ga.sum(0) if need[2] else None,
            torch.mm(g.t(), act) if need[3] else None,
            g.sum(0) if need[4] else None,
            None,
        )

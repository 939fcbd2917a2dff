"""The adapters' deltas as custom autograd Functions with hand-written backward passes.

At the widths of a 3B model the adapters' arithmetic is ~4 % of the frozen projection's; what
costs is the number of kernels and autograd nodes each adapted projection launches. Autograd
composes a delta from ~30 small ops, each with its own node, views and casts. Here one Function
per delta does the forward in the fewest ops and the backward in the least number of matmuls:

* LoRA (:class:`LoRADelta`): ``o = o_0 + s (x A) B``, forward 2 matmuls, backward 4;
* the mixture of LoRAMoE and AMoE-LoRA (:class:`MixtureDelta`): ``z = x D`` with
  ``D = [A | W_a | W_g]`` (Eq. 1, 2 and 5 read ``x`` once), ``ω = softmax(z_g)`` (Eq. 1),
  ``u = [z_A ⊙ ω̃ | z_a H H]`` (Eq. 3, 5; ``ω̃``: each ω_i over its expert's r columns),
  ``o = o_0 + s u [B; W_b]`` (Eq. 6) with ``s = α/r``: forward 3 matmuls, backward 4 + 3 for the
  weight gradients, the router softmax, expert scaling and per-sample core in a few element-wise
  ops on the small ``(M, N·r + r)`` intermediate.

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


class LoRADelta(torch.autograd.Function):
    """``o = o_0 + s (h A) B`` for ``o_0 (M, o)``, ``h (M, d)``, ``A (d, r)``, ``B (r, o)``."""

    @staticmethod
    def forward(ctx, out0: Tensor, h: Tensor, A: Tensor, B: Tensor, scale: float) -> Tensor:
        with torch.autocast(h.device.type, enabled=False):
            A_, B_ = A.to(h.dtype), B.to(h.dtype)
            z = torch.mm(h, A_)
            ctx.save_for_backward(h, A_, B_, z)
            ctx.scale = scale
            return add_up(out0, z, B_, scale)

    @staticmethod
    def backward(ctx, grad: Tensor):
        h, A, B, z = ctx.saved_tensors
        g = grad.to(h.dtype)
        gz = scaled_mm(g, B.t(), ctx.scale, z)  # (M, r): s g Bᵀ
        need = ctx.needs_input_grad
        return (grad if need[0] else None,
                torch.mm(gz, A.t()) if need[1] else None,
                torch.mm(h.t(), gz) if need[2] else None,
                scaled_mm(z.t(), g, ctx.scale, B) if need[3] else None,
                None)


@dataclass(frozen=True)
class MixtureSpec:
    """The sizes of a mixture delta: N experts of rank r, scale s = α/r, and the zero columns
    (``pad_down``) and rows (``pad_up``) that align the fused widths on GPUs."""

    experts: int
    rank: int
    scale: float
    anomaly_aware: bool
    pad_down: int = 0
    pad_up: int = 0

    @property
    def widths(self) -> list[int]:
        """Column blocks of ``z = x D``: experts, [anomaly-aware,] router."""
        e = self.experts * self.rank
        return [e, self.rank, self.experts] if self.anomaly_aware else [e, self.experts]


def mixture_forward(out0: Tensor, h: Tensor, hd: Tensor | None, down: Tensor, router: Tensor | None,
                    up: Tensor, hh: Tensor | None, spec: MixtureSpec) -> tuple[Tensor, ...]:
    """The mixture's forward: ``(out, ω, u, z, ω as (M, N, 1))``; the last three are for backward.

    ``down`` is ``[A | W_a | W_g | 0]`` when ``hd`` is None (no dropout: every block reads ``h``),
    else ``[A | W_a | 0]`` read by the dropped-out ``hd`` while ``router`` reads ``h``. ``up`` is
    ``[B; W_b; 0]``; ``hh`` the per-sample ``H H`` ``(B, r, r)`` (None for LoRAMoE).
    """
    n, r = spec.experts, spec.rank
    m = h.shape[0]
    if hd is None:
        z = torch.mm(h, down)
        parts = z.split([*spec.widths, spec.pad_down], dim=1)
        logits = parts[-2]
    else:
        z = torch.mm(hd, down)
        parts = z.split([*spec.widths[:-1], spec.pad_down], dim=1)
        logits = torch.mm(h, router)
    weights = torch.softmax(logits, dim=-1, dtype=router_dtype(h.dtype))  # Eq. 1
    omega = weights.to(h.dtype).unsqueeze(-1)  # (M, N, 1)
    u = [(parts[0].view(m, n, r) * omega).view(m, n * r)]  # Eq. 3 before s
    if hh is not None:  # Eq. 5 before s: (x W_a) H H, sample by sample
        u.append(torch.bmm(parts[1].view(hh.shape[0], -1, r), hh).view(m, r))
    u = _cat(u, spec.pad_up, dim=1)  # zero columns of u meet zero rows of up: the GEMM aligned
    return add_up(out0, u, up, spec.scale), weights, u, z, omega


def split(t: Tensor, widths: list[int], dim: int) -> list[Tensor]:
    """``t`` split into blocks of ``widths`` along ``dim`` (and the rest, if any, as one more)."""
    rest = t.shape[dim] - sum(widths)
    if not rest and len(widths) == 1:
        return [t]
    return list(t.split([*widths, rest] if rest else widths, dim=dim))


def _cat(blocks: list[Tensor | None], pad: int, dim: int) -> Tensor:
    """The blocks (None skipped) and ``pad`` zeros along ``dim``, concatenated."""
    blocks = [b for b in blocks if b is not None]
    if pad:
        shape = list(blocks[0].shape)
        shape[dim] = pad
        blocks.append(blocks[0].new_zeros(shape))
    return torch.cat(blocks, dim=dim) if len(blocks) > 1 else blocks[0]


def fuse_down(A: Tensor, W_a: Tensor | None, router: Tensor | None, pad: int) -> Tensor:
    """``[A | W_a | W_g | 0]``: one down-projection for every block that reads the same input."""
    return _cat([A, W_a, router], pad, dim=1)


def fuse_up(B: Tensor, W_b: Tensor | None, pad: int) -> Tensor:
    """``[B; W_b; 0]``: one up-projection."""
    return _cat([B, W_b], pad, dim=0)


class MixtureDelta(torch.autograd.Function):
    """LoRAMoE's and AMoE-LoRA's delta (Eq. 1–6): ``o = o_0 + s u [B; W_b]``.

    Inputs: ``out0 (M, o)``, ``h (M, d)``, ``hd`` (``h`` after dropout, or None), the stacked
    experts ``A (d, N·r)``, ``router (d, N)``, ``B (N·r, o)``, the anomaly-aware pair
    ``W_a (d, r)``, ``W_b (r, o)`` and the hypernetwork's core ``H (B, r, r)`` (all three None
    for LoRAMoE). With ``with_weights`` it returns ``(o, ω)`` instead of ``o``: ``ω (M, N)``, in at least
    float32 and differentiable, is what LoRAMoE's balancing loss and the diagnostics read.
    """

    @staticmethod
    def forward(ctx, out0, h, hd, A, router, B, W_a, W_b, core, spec: MixtureSpec, with_weights: bool):
        ctx.set_materialize_grads(False)
        with torch.autocast(h.device.type, enabled=False):
            dtype = h.dtype
            A, router, B = A.to(dtype), router.to(dtype), B.to(dtype)
            anomaly = core is not None
            if anomaly:
                W_a, W_b, core = W_a.to(dtype), W_b.to(dtype), core.to(dtype)
            hh = torch.bmm(core, core) if anomaly else None
            down = fuse_down(A, W_a, router if hd is None else None, spec.pad_down)
            up = fuse_up(B, W_b, spec.pad_up)
            out, weights, u, z, omega = mixture_forward(out0, h, hd, down, router, up, hh, spec)
        ctx.spec, ctx.has_dropout = spec, hd is not None
        # ω is saved as its (M, N, 1) view (saving an output of the Function itself costs a
        # detach), unless that view was rounded to a narrower compute dtype
        exact = None if omega.dtype == weights.dtype else weights
        ctx.save_for_backward(h, hd, down, router, up, core, hh, u, z, omega, exact)
        return (out, weights) if with_weights else out

    @staticmethod
    def backward(ctx, grad: Tensor | None, grad_weights: Tensor | None = None):
        h, hd, down, router, up, core, hh, u, z, omega, weights = ctx.saved_tensors
        spec, need = ctx.spec, ctx.needs_input_grad
        n, r, s = spec.experts, spec.rank, spec.scale
        m, dtype = h.shape[0], h.dtype
        e = n * r
        if grad is None:
            grad = torch.zeros(m, up.shape[1], dtype=dtype, device=h.device)
        g = grad.to(dtype)
        widths = [e, r] if core is not None else [e]
        gu = split(scaled_mm(g, up.t(), s, u), widths, dim=1)  # s g [B; W_b]ᵀ
        z = split(z, widths, dim=1)
        gu_experts, z_experts = gu[0].view(m, n, r), z[0].view(m, n, r)
        gz_experts = (gu_experts * omega).view(m, e)
        g_omega = (gu_experts * z_experts).sum(-1, dtype=router_dtype(dtype))  # dL/dω (M, N)
        if grad_weights is not None:
            g_omega = g_omega + grad_weights
        if weights is None:
            weights = omega.view(m, n)
        g_logits = torch._softmax_backward_data(g_omega, weights, -1, weights.dtype).to(dtype)
        gz_anomaly = g_core = None
        if core is not None:
            batch = core.shape[0]
            gu_anomaly = gu[1].view(batch, -1, r)
            gz_anomaly = torch.bmm(gu_anomaly, hh.transpose(1, 2)).view(m, r)
            if need[8]:
                g_hh = torch.bmm(z[1].view(batch, -1, r).transpose(1, 2), gu_anomaly)
                core_t = core.transpose(1, 2)  # d(H H) = dH H + H dH
                g_core = torch.baddbmm(torch.bmm(g_hh, core_t), core_t, g_hh)
        blocks = [gz_experts, gz_anomaly] + ([] if ctx.has_dropout else [g_logits])
        gz = _cat(blocks, spec.pad_down, dim=1)
        reads = hd if ctx.has_dropout else h  # what the experts (and W_a) read
        g_reads = torch.mm(gz, down.t()) if need[1] or need[2] else None
        if ctx.has_dropout:
            g_h, g_hd = (torch.mm(g_logits, router.t()) if need[1] else None), g_reads
        else:
            g_h, g_hd = g_reads, None
        reads_t = reads.t()
        g_router = torch.mm(h.t() if ctx.has_dropout else reads_t, g_logits) if need[4] else None
        g_B = g_W_b = None
        if need[5] or need[7]:  # s uᵀ g = [gB; gW_b]
            g_up = split(scaled_mm(u.t(), g, s, up), widths, dim=0)
            g_B, g_W_b = g_up[0], (g_up[1] if core is not None else None)
        return (grad if need[0] else None, g_h, g_hd,
                torch.mm(reads_t, gz_experts) if need[3] else None,
                g_router, g_B,
                torch.mm(reads_t, gz_anomaly) if need[6] else None,
                g_W_b, g_core, None, None)


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
            c, mean, rstd = torch.native_layer_norm(wide, (wide.shape[-1],), None, None, 1e-5)
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
        ga = torch.ops.aten.gelu_backward(torch.mm(g, w2), a)
        g_condition = None
        if need[0]:
            g_c = torch.mm(ga, w1).to(wide.dtype)
            g_condition = torch.ops.aten.native_layer_norm_backward(g_c, wide, (wide.shape[-1],), mean, rstd, None, None,
                                                           [True, False, False])[0]
        return (g_condition,
                torch.mm(ga.t(), c) if need[1] else None, ga.sum(0) if need[2] else None,
                torch.mm(g.t(), act) if need[3] else None, g.sum(0) if need[4] else None, None)

"""The adapters' equations written out term by term: a loop over experts, separate paths.

This is the slow, literal form of Eq. 1–6 (and of LoRAMoE, which is Eq. 1–3 alone), written with
``torch`` and ``torch.nn.functional`` only: nothing of the fused forms it checks. The fast layers
are tested against it, and the benchmark measures what the fused forms save over it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from maugpt.adapters.amoe_lora import AMoELoRALinear
from maugpt.adapters.anomaly_aware import Hypernetwork
from maugpt.adapters.loramoe import LoRAMoELinear


def masked_mean(x: Tensor, mask: Tensor | None) -> Tensor:
    """Mean of ``x (B, T, d)`` over the tokens where ``mask (B, T)`` is true, sample by sample."""
    if mask is None:
        return x.mean(dim=1)
    rows = [x[b][mask[b].bool()].sum(0) / max(int(mask[b].sum()), 1) for b in range(x.shape[0])]
    return torch.stack(rows)


def hypernetwork_reference(hypernetwork: Hypernetwork, condition: Tensor) -> Tensor:
    """Eq. 4's ``H = W_2 gelu(W_1 LN(c) + b_1) + b_2`` in ``torch.nn.functional``, for ``c (B, d_in)``
    → ``(B, r, r)``: the form the hand-written :class:`~maugpt.adapters.fused.HypernetworkCore` is
    checked against. The layer norm has no parameters (see :class:`Hypernetwork`)."""
    c = F.layer_norm(condition, (condition.shape[-1],), eps=1e-5)
    hidden = F.gelu(F.linear(c, hypernetwork.hidden.weight, hypernetwork.hidden.bias))
    return F.linear(hidden, hypernetwork.out.weight, hypernetwork.out.bias).view(
        -1, hypernetwork.rank, hypernetwork.rank
    )


def reference_forward(layer: LoRAMoELinear | AMoELoRALinear, x: Tensor) -> Tensor:
    """``o = o_0 + o_1 (+ o_2)`` for a LoRAMoE or AMoE-LoRA layer, without any fusion.

    ``x``: ``(B, T, d_in)``; masks come from the layer's context, as in the fast path.
    """
    o = layer.base(x)  # o_0
    generalist = layer.generalist
    omega = torch.softmax(x @ generalist.router, dim=-1)  # Eq. 1
    for i in range(generalist.experts):  # Eq. 2–3, s by the layer's scaling convention
        A_i, B_i = generalist.expert(i)
        o = o + generalist.scale * omega[..., i : i + 1] * ((x @ A_i) @ B_i)
    if isinstance(layer, AMoELoRALinear):  # Eq. 4–5, with the per-sample matrices materialised
        ctx, expert = layer.context, layer.anomaly_aware
        mask = ctx.condition_mask if ctx.condition_mask is not None else ctx.token_mask
        H = hypernetwork_reference(expert.hypernetwork, masked_mean(x, mask))  # (B, r, r)
        A_0 = expert.W_a @ H  # (B, d_in, r)
        B_0 = H @ expert.W_b  # (B, r, d_out)
        o = o + expert.scale * torch.bmm(torch.bmm(x, A_0), B_0)
    return o  # Eq. 6

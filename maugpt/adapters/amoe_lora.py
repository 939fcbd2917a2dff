"""AMoE-LoRA, the paper's adapter (Sec. 4.2, Eq. 1–6): generalist experts + an anomaly-aware expert.

For one wrapped linear layer with frozen output ``o_0 = W_0 x``::

    generalist experts (Eq. 1–3)   ω = softmax(x W_g)               (B, T, N)
                                   o_1 = s Σ_i ω_i x A_i B_i         A_i (d_in, r), B_i (r, d_out)
    anomaly-aware expert (Eq. 4–5) H = hypernetwork(c)               (B, r, r), one core per sample
                                   A_0 = W_a H,  B_0 = H W_b         W_a (d_in, r), W_b (r, d_out)
                                   o_2 = s_a x A_0 B_0 = s_a (x W_a) H H W_b
    output (Eq. 6)                 o = o_0 + o_1 + o_2

In the paper ``s = s_a = α/r``. The generalist scale ``s`` follows the mixture's ``scaling``
convention (see :mod:`maugpt.adapters.generalist`); the anomaly-aware scale is set on its own,
``s_a = anomaly_alpha / r`` (``anomaly_alpha`` defaults to α), so that the two components' step
sizes can be compared and ablated apart.

How we read "the embedding x is fed into the hypernetwork" (Eq. 4): ``A_0`` and ``B_0`` are one
pair per *sample*, so ``H`` must see one vector per sample. That vector, the **condition**
``c (B, d_in)``, is the masked mean of the wrapped layer's own input over the sample's **prompt
tokens** (image tokens and question). Never the answer tokens: under teacher forcing they would
leak the target into the adapter, and at generation time they do not exist yet. The condition is
computed once per sequence: in training from the prompt part of the full sequence, in
generation at the prefill, after which every new token reuses the same core, so KV-cached
decoding and a full forward agree exactly. Which tokens count as "prompt" is the model's choice
(``ForwardInputs.condition_mask``): the prompt by default, the image tokens alone if a
config prefers that reading.

The layer is the two components side by side: :class:`~maugpt.adapters.generalist.GeneralistExperts`
(Eq. 1–3) and :class:`~maugpt.adapters.anomaly_aware.AnomalyAwareExpert` (Eq. 4–5), summed with
the frozen output by one fused call (:func:`~maugpt.adapters.generalist.mixture`, Eq. 6).
:func:`maugpt.adapters.reference.reference_forward` writes the same equations term by term.

Cost: ``[A_1 … A_N | W_a | W_g]`` is one ``(d_in, N·r + r + N)`` down-projection and
``[B_1; …; B_N; W_b]`` one ``(N·r + r, d_out)`` up-projection, so the whole adapter reads ``x``
once and writes the output once; the per-sample core acts on the small ``(B, T, r)``
intermediate by a batched ``(r, r)`` matmul, never on ``(d, r)`` matrices per token. Forward and
backward of all of it are one autograd Function (:class:`~maugpt.adapters.fused.MixtureDelta`).
The pooled condition is computed once per layer input and handed to the modules that read the
same input (q/k/v, gate/up: :class:`~maugpt.adapters.lowrank.InputGroup`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from maugpt.adapters.anomaly_aware import AnomalyAwareExpert
from maugpt.adapters.base import ALL_PROJECTIONS, AdapterContext, require_positive
from maugpt.adapters.fused import MixtureSpec
from maugpt.adapters.generalist import (
    AnomalyBlock,
    GeneralistExperts,
    Scaling,
    mixture,
    mixture_spec,
    observe_router,
)
from maugpt.adapters.loramoe import LoRAMoE, upgrade_saved_names
from maugpt.adapters.lowrank import LowRankLayer


class AMoELoRALinear(LowRankLayer):
    """A frozen linear layer plus AMoE-LoRA: ``o = o_0 + o_1 + o_2`` (Eq. 6).

    Parameters: ``generalist.{router, A, B}`` (Eq. 1–3) and ``anomaly_aware.{hypernetwork, W_a,
    W_b}`` (Eq. 4–5).
    """

    def __init__(self, base: nn.Linear, config: AMoELoRA, context: AdapterContext | None = None) -> None:
        super().__init__(base, context)
        self.align = config.align
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else None
        r = config.rank
        self.generalist = GeneralistExperts.of(  # Eq. 1–3
            config, self.in_features, self.out_features, base.weight.device
        )
        anomaly_alpha = config.alpha if config.anomaly_alpha is None else config.anomaly_alpha
        self.anomaly_aware = AnomalyAwareExpert(  # Eq. 4–5
            self.in_features,
            self.out_features,
            rank=r,
            hidden=config.hyper_hidden,
            scale=anomaly_alpha / r,  # s_a
            device=base.weight.device,
        )
        self._aux_loss: Tensor | None = None
        self.register_load_state_dict_pre_hook(upgrade_saved_names)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        return {**self.generalist.parameter_groups(), "anomaly_aware": list(self.anomaly_aware.parameters())}

    def auxiliary_loss(self) -> Tensor | None:
        return self._aux_loss

    def spec(self, device: torch.device) -> MixtureSpec:
        """The sizes of this layer's fused delta (:func:`~maugpt.adapters.generalist.mixture_spec`)."""
        return mixture_spec(self, self.generalist, device=device, anomaly_scale=self.anomaly_aware.scale)

    def down_blocks(self) -> list[tuple[bool, list[Tensor]]]:
        experts = [self.generalist.A, self.anomaly_aware.W_a]
        return self.generalist.down_blocks(experts, dropped=self.dropout is not None)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 3:
            raise ValueError(
                f"AMoE-LoRA layer {self.name!r} needs input (batch, tokens, features): "
                f"its anomaly-aware expert is per sample; got shape {tuple(x.shape)}"
            )
        expert = self.anomaly_aware
        core = expert.core(x, self)  # Eq. 4: H = hypernetwork(c), (B, r, r)
        square = expert.core_square(core, self)
        anomaly = AnomalyBlock(W_b=expert.W_b, core=core, square=square, scale=expert.scale)  # Eq. 5
        out, weights, outputs = mixture(self, x, generalist=self.generalist, anomaly=anomaly)  # Eq. 1–3, 6 fused
        self._aux_loss = observe_router(
            self, x, weights=weights, outputs=outputs, generalist=self.generalist, core=core
        )
        return out


class AMoELoRA(LoRAMoE):
    """AMoE-LoRA (the paper, Eq. 1–6): N generalist LoRA experts with a softmax router plus one
    anomaly-aware expert whose low-rank pair a hypernetwork generates per sample.

    Args:
        experts: number of generalist experts N (the paper's best: 16).
        rank: rank r of each generalist expert and of the anomaly-aware pair (the paper's best: 4).
        alpha: scaling numerator α; the generalist experts are scaled by α / r (Eq. 3), or by
            N·α / r with ``scaling: total_rank``.
        dropout: dropout on the experts' input (the router and the condition read the clean input).
        hyper_hidden: hidden width of the hypernetwork H.
        balance_delta: δ of LoRAMoE's balancing constraint on the router (off by default).
        balance_weight: β of that constraint; the paper uses none (0).
        targets: name patterns of the linear layers to wrap.
        share_input: one down-projection GEMM for q/k/v and for gate/up (same parameters and outputs).
        align: on GPUs, the fused low-rank widths are padded with zero columns and rows to a
            multiple of this, for the tensor-core GEMMs (bf16 wants multiples of 8); 1 never pads.
            Parameters, files and outputs do not change with it.
        scaling: the generalist experts' scale convention, ``"paper"`` or ``"total_rank"``
            (:mod:`maugpt.adapters.loramoe`).
        anomaly_alpha: the anomaly-aware expert's numerator: its update is scaled by
            ``anomaly_alpha / r`` (Eq. 5). None: α, as in the paper.
    """

    def __init__(
        self,
        experts: int = 16,
        rank: int = 4,
        alpha: float = 8.0,
        dropout: float = 0.0,
        hyper_hidden: int = 64,
        balance_delta: float = 0.0,
        balance_weight: float = 0.0,
        targets: Sequence[str] = ALL_PROJECTIONS,
        share_input: bool = False,
        align: int = 8,
        scaling: Scaling = "paper",
        anomaly_alpha: float | None = None,
    ) -> None:
        super().__init__(
            experts, rank, alpha, dropout, balance_delta, balance_weight, targets, share_input, align, scaling
        )
        require_positive(hyper_hidden=hyper_hidden)
        if anomaly_alpha is not None:
            require_positive(anomaly_alpha=anomaly_alpha)
        self.hyper_hidden = int(hyper_hidden)
        self.anomaly_alpha = None if anomaly_alpha is None else float(anomaly_alpha)

    def wrap(self, base: nn.Linear, context: AdapterContext | None = None) -> AMoELoRALinear:
        return AMoELoRALinear(base, self, context)

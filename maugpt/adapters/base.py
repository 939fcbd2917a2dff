"""The adapter protocol, and the per-forward context that every adapted layer of a model shares.

Two halves, as in torchtune's adapter protocol:

* :class:`Adapter` is the *configuration* of one adapter type (rank, experts, which layers it
  wraps). LightningCLI builds it from ``class_path`` / ``init_args``, so a YAML file swaps
  LoRA ↔ LoRAMoE ↔ AMoE-LoRA without code changes. Its one job is :meth:`Adapter.wrap`.
* :class:`AdapterLayer` is the ``nn.Module`` that replaces one frozen ``nn.Linear``. Every
  adapter layer answers the same three questions (its parameters, its auxiliary loss, its
  diagnostics), so training code never branches on the adapter type.

Shapes follow the row-vector convention of the paper's code: ``x`` is ``(B, T, d_in)`` and a
low-rank pair is ``A: (d_in, r)``, ``B: (r, d_out)``, so ``ΔW x`` is ``x @ A @ B``.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

#: Every linear projection of a Llama/Qwen2-style decoder block.
ALL_PROJECTIONS: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
#: The feed-forward projections only (LoRAMoE's official targets).
FFN_PROJECTIONS: tuple[str, ...] = ("gate_proj", "up_proj", "down_proj")
#: Projections of one block that read the same input: they can share one down-projection GEMM.
SHARED_INPUTS: tuple[tuple[str, ...], ...] = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


def require_positive(**values: float) -> None:
    """Raise ``ValueError`` naming the first argument that is not > 0."""
    for name, value in values.items():
        if not value > 0:
            raise ValueError(f"{name} must be > 0, got {value!r}")


def require_fraction(**values: float) -> None:
    """Raise ``ValueError`` naming the first argument outside [0, 1)."""
    for name, value in values.items():
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {value!r}")


@dataclass(frozen=True)
class ForwardInputs:
    """What adapted layers need beyond ``x`` for one forward of the model, all optional.

    Args:
        token_mask: ``(B, T)``, true for real tokens and false for padding. ``None``: all real.
        condition_mask: ``(B, T)``, true for the tokens whose mean is the anomaly-aware
            condition (the prompt: image and question). ``None``: the real tokens.
        sample_labels: ``(B,)`` integers in {0, 1}, LoRAMoE's expert group for each sample.

    Each layer checks a mask's shape against its own input (:meth:`AdapterContext.mask_for`).
    """

    token_mask: Tensor | None = None
    condition_mask: Tensor | None = None
    sample_labels: Tensor | None = None


class GenerationCache:
    """The anomaly-aware cores of one KV-cached generation, by adapted layer name: each layer's
    ``H (B, r, r)`` (and ``H H``), computed at the prefill from the prompt and reused for every
    new token, which no longer sees the prompt. It lives for one :meth:`AdapterContext.generating`
    block."""

    def __init__(self) -> None:
        self.cores: dict[str, Tensor] = {}
        self.squares: dict[str, Tensor] = {}


class AdapterContext:
    """What adapted layers need beyond ``x``, shared by every adapter layer of one model.

    A Hugging Face decoder calls each ``nn.Linear`` with ``x`` alone, so per-sample information
    travels here instead, as one :class:`ForwardInputs` that the owner of the model (the
    LightningModule, a benchmark, a test) sets before each forward. Two scopes change what a
    forward does: :meth:`recording` (keep each layer's diagnostics) and :meth:`generating`
    (KV-cached decoding: AMoE-LoRA's condition fixed by the prompt, in a :class:`GenerationCache`).

    The inputs stay set after the forward on purpose: activation checkpointing re-runs the
    forward during ``backward()``, and that re-run must see the same masks. :meth:`set` replaces
    all of them, so a forgotten field never leaks from one batch into the next.
    """

    def __init__(self) -> None:
        self.inputs = ForwardInputs()
        self.record = False
        self.generation: GenerationCache | None = None

    @property
    def token_mask(self) -> Tensor | None:
        return self.inputs.token_mask

    @property
    def condition_mask(self) -> Tensor | None:
        return self.inputs.condition_mask

    @property
    def sample_labels(self) -> Tensor | None:
        return self.inputs.sample_labels

    def set(self, inputs: ForwardInputs) -> None:
        """The inputs of the next forward(s)."""
        if not isinstance(inputs, ForwardInputs):
            raise TypeError(f"the adapter context takes ForwardInputs, got {type(inputs).__name__}")
        self.inputs = inputs

    def clear(self) -> None:
        """Drop every mask and label."""
        self.inputs = ForwardInputs()

    @contextlib.contextmanager
    def use(self, inputs: ForwardInputs) -> Iterator[AdapterContext]:
        """``inputs`` for the forwards inside a ``with`` block, cleared afterwards."""
        self.set(inputs)
        try:
            yield self
        finally:
            self.clear()

    @contextlib.contextmanager
    def recording(self, on: bool = True) -> Iterator[AdapterContext]:
        """The forwards inside the block keep per-layer diagnostics (router load, cores, output
        norms); ``on`` False records nothing. The previous setting returns afterwards."""
        before, self.record = self.record, on
        try:
            yield self
        finally:
            self.record = before

    @contextlib.contextmanager
    def generating(self, inputs: ForwardInputs) -> Iterator[GenerationCache]:
        """One KV-cached generation: the first forward (the prefill) through each anomaly-aware
        layer computes its core from ``inputs.condition_mask`` and every later forward reuses it."""
        self.set(inputs)
        self.generation = GenerationCache()
        try:
            yield self.generation
        finally:
            self.generation = None
            self.clear()

    def mask_for(self, mask: Tensor | None, x: Tensor, layer: str, what: str) -> Tensor | None:
        """Return ``mask`` as ``(B, T)`` matching ``x`` of shape ``(B, T, d)``, or raise."""
        if mask is None:
            return None
        if tuple(mask.shape) != tuple(x.shape[:2]):
            raise ValueError(
                f"{what} has shape {tuple(mask.shape)} but adapted layer {layer!r} got an input of "
                f"shape {tuple(x.shape)}: the mask must be (batch, tokens) of that input; set the "
                "adapter context for each forward"
            )
        return mask.to(device=x.device, dtype=torch.bool)

    def pooled_condition(self, x: Tensor, layer: str) -> Tensor:
        """The anomaly-aware condition: masked mean of ``x (B, T, d)`` over condition tokens → ``(B, d)``."""
        mask = self.mask_for(self.condition_mask, x, layer, "condition_mask")
        if mask is None:
            mask = self.mask_for(self.token_mask, x, layer, "token_mask")
        if mask is None:
            return x.mean(dim=1)
        weights = mask.to(x.dtype).unsqueeze(1)  # (B, 1, T): one batched matmul reads x once
        counts = weights.sum(dim=-1).clamp_min(1.0)  # an empty prompt pools to zeros, not NaN
        return torch.bmm(weights, x).squeeze(1) / counts


class AdapterLayer(nn.Module, ABC):
    """A frozen ``nn.Linear`` plus an adapter: ``o = o_0 + Δ`` (the paper's Eq. 6 form).

    The protocol every adapter implements, all that training code uses:

    * :meth:`forward`: ``x (…, d_in) → (…, d_out)``;
    * :meth:`parameter_groups`: its trainable parameters by component (counts, gradient norms;
      :meth:`adapter_parameters` by name follows from the module);
    * :meth:`auxiliary_loss`: a loss term of the latest forward to add to the LM loss, or None;
    * :meth:`diagnostics`: tensors of the latest forward recorded on request (router load, cores,
      each component's output norm);
    * :meth:`delta_weight`: the delta as one matrix to merge into ``base``, or None.

    The low-rank adapters share their GEMM plumbing in :class:`~maugpt.adapters.lowrank.LowRankLayer`;
    an adapter of another form (a per-channel scale, say) implements this protocol alone.
    """

    def __init__(self, base: nn.Linear, context: AdapterContext | None = None) -> None:
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"adapters wrap nn.Linear layers, got {type(base).__name__}")
        self.base = base
        self.in_features, self.out_features = base.in_features, base.out_features
        self.name = ""  # the dotted module name, set at injection; used in errors and diagnostics
        self.context = context if context is not None else AdapterContext()
        self._diagnostics: dict[str, Tensor] = {}
        # Set by inject(): what unwrap() needs to give the model back as it came (shared by all layers).
        self.injection: Any = None

    def adapter_parameters(self) -> dict[str, nn.Parameter]:
        """The adapter's own parameters, by name relative to this layer."""
        return {n: p for n, p in self.named_parameters() if not n.startswith("base.")}

    def auxiliary_loss(self) -> Tensor | None:
        """The auxiliary loss of the latest training forward (None: this adapter has none)."""
        return None

    def diagnostics(self) -> dict[str, Tensor]:
        """Detached tensors of the latest forward, recorded only while ``context.record`` is on."""
        return dict(self._diagnostics)

    def delta_weight(self) -> Tensor | None:
        """``ΔW (d_out, d_in)`` when the adapter's delta is one fixed matrix that can be merged into
        ``base.weight``; None (the default) when it depends on the input (routers, hypernetworks)."""
        return None

    @abstractmethod
    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """The trainable parameters by component, e.g. ``{"generalist": [A, B], "router": [W_g]}``:
        what the parameter counts and the per-component gradient norms are reported by."""

    def parameter_counts(self) -> dict[str, int]:
        """Trainable parameters per component (:meth:`parameter_groups`)."""
        return {name: sum(p.numel() for p in params) for name, params in self.parameter_groups().items()}

    @abstractmethod
    def forward(self, x: Tensor) -> Tensor:
        """``(…, d_in) → (…, d_out)``: the frozen output plus the adapter's (Eq. 6)."""

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"

    def record(self, **tensors: Tensor) -> None:
        """Keep detached diagnostics of this forward."""
        self._diagnostics = {k: v.detach() for k, v in tensors.items()}

    def record_outputs(self, x: Tensor, outputs: Callable[[], dict[str, Tensor]], **extra: Tensor) -> None:
        """While the context records: each of ``outputs()``'s norms (:meth:`output_norms`, over the
        real tokens of ``x``) and ``extra``; ``outputs`` is only called then. Otherwise the previous
        forward's diagnostics are dropped: they always describe the latest forward."""
        if not self.context.record:
            if self._diagnostics:
                self._diagnostics = {}
            return
        with torch.no_grad():
            computed = outputs()
        keep = self.context.mask_for(self.context.token_mask, x, self.name, "token_mask") if x.dim() == 3 else None
        self.record(**self.output_norms(computed, keep), **extra)

    @staticmethod
    @torch.no_grad()
    def output_norms(outputs: dict[str, Tensor], keep: Tensor | None) -> dict[str, Tensor]:
        """``{"<component>_norm": …}``: each output's L2 norm per token, averaged over the real tokens.

        ``outputs``: ``(M, d_out)`` per component (``frozen``, the adapter's parts), ``M = B·T``
        tokens; ``keep``: ``(B, T)``, false on padding (None: every token counts). Their ratios
        say how far the adapter moves the frozen layer, component by component."""
        norms = {}
        for component, output in outputs.items():
            per_token = torch.linalg.vector_norm(output, dim=-1, dtype=torch.promote_types(output.dtype, torch.float32))
            if keep is not None:
                per_token = per_token[keep.reshape(-1)]
            norms[f"{component}_norm"] = per_token.mean()
        return norms


class Adapter(ABC):
    """Configuration of one adapter type: its hyper-parameters and the layers it wraps.

    Args:
        targets: name patterns of the ``nn.Linear`` layers to wrap. A pattern matches a layer
            whose last name component equals it (``"q_proj"``) or whose full dotted name matches
            it as a glob (``"model.layers.1?.mlp.*"``).
    """

    def __init__(self, targets: Sequence[str]) -> None:
        if isinstance(targets, str) or not targets:
            raise ValueError(f"targets must be a non-empty list of name patterns, got {targets!r}")
        self.targets = tuple(targets)

    @abstractmethod
    def wrap(self, base: nn.Linear, context: AdapterContext | None = None) -> AdapterLayer:
        """Wrap one frozen linear layer."""

    @staticmethod
    def from_config(config: dict[str, Any]) -> Adapter:
        """The adapter of a ``{"class_path", "init_args"}`` block (:meth:`to_config`, a checkpoint's
        hyper-parameters), parsed as LightningCLI parses YAML: an unknown class or argument fails."""
        from jsonargparse import ArgumentParser

        parser = ArgumentParser(exit_on_error=False)
        parser.add_argument("--adapter", type=Adapter)
        return parser.instantiate(parser.parse_object({"adapter": config})).adapter

    def init_args(self) -> dict[str, Any]:
        """The constructor arguments, as a LightningCLI ``init_args`` block."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(self).items() if not k.startswith("_")}

    def to_config(self) -> dict[str, Any]:
        """``{"class_path": …, "init_args": …}``: rebuilds this adapter from YAML or JSON."""
        cls = type(self)
        return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": self.init_args()}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.init_args().items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.init_args() == self.init_args()

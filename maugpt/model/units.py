"""The LLM's repeated units, the pieces FSDP shards and ``torch.compile`` compiles one by one."""

from __future__ import annotations

from torch import nn

from maugpt.adapters import adapter_layers

#: What ``compile_llm`` may compile: nothing, each decoder layer (attention, MLP and the adapters
#: inside it, one graph per layer), or each adapter layer alone (where a decoder breaks graphs).
COMPILE_TARGETS = ("none", "decoder_layers", "adapters")


def require_compile_target(target: str) -> None:
    """Raise ``ValueError`` naming the choices unless ``target`` is one of :data:`COMPILE_TARGETS`."""
    if target not in COMPILE_TARGETS:
        raise ValueError(f"compile_llm must be one of {list(COMPILE_TARGETS)}, got {target!r}")


def decoder_layers(llm: nn.Module) -> list[nn.Module]:
    """The LLM's decoder layers: the module classes transformers never splits across devices."""
    names = set(getattr(llm, "_no_split_modules", None) or ())
    layers = [m for m in llm.modules() if type(m).__name__ in names]
    if not layers:
        raise ValueError(
            f"{type(llm).__name__} names no decoder-layer classes (_no_split_modules = {sorted(names)}): "
            "cannot choose FSDP or compile units"
        )
    return layers


def compile_llm(llm: nn.Module, target: str, backend: str = "inductor", mode: str | None = None) -> list[nn.Module]:
    """``torch.compile`` the ``target`` units of ``llm`` in place and return them.

    ``mode`` is ``torch.compile``'s (inductor's ``"reduce-overhead"`` replays each unit as a CUDA
    graph); ``None`` is its default.

    ``nn.Module.compile`` keeps every parameter name, so checkpoints and adapter files are the
    same as eager ones. The adapters' Functions trace without graph breaks (tested), so a
    decoder layer compiles to one graph; the first step of each new sequence length recompiles
    until dynamo marks the length dynamic.
    """
    require_compile_target(target)
    if target == "none":
        return []
    units = decoder_layers(llm) if target == "decoder_layers" else [layer for _, layer in adapter_layers(llm)]
    if not units:
        raise ValueError("compile_llm: 'adapters' but the LLM has no adapter layers (stage 1 has none)")
    for unit in units:
        unit.compile(backend=backend, mode=mode)
    return units

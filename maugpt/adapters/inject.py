"""Put adapters into a model, take them out, and save or load their weights alone.

Works on any ``nn.Module`` (a Hugging Face causal LM is one): the ``nn.Linear`` layers whose names
match the adapter's target patterns are replaced by adapter layers sharing one
:class:`~maugpt.adapters.base.AdapterContext`; every other parameter is frozen.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from maugpt.adapters.base import SHARED_INPUTS, Adapter, AdapterContext, AdapterLayer
from maugpt.adapters.generalist import upgrade_names
from maugpt.adapters.lowrank import InputGroup, LowRankLayer

METADATA_KEY = "maugpt.adapter"
LAYERS_KEY = "maugpt.layers"


@dataclass(frozen=True)
class Injection:
    """What :func:`inject` changed beyond the wrapped layers, for :func:`unwrap` to undo: each
    parameter's ``requires_grad`` before freezing (by ``id``)."""

    requires_grad_before: dict[int, bool]


def matches(name: str, pattern: str) -> bool:
    """True if ``pattern`` is the last component of ``name`` or a glob matching all of it."""
    return name.rsplit(".", 1)[-1] == pattern or fnmatch.fnmatchcase(name, pattern)


def _layer_kinds(names: list[str]) -> list[str]:
    """Linear layer names with numeric indices folded to ``*``, for short error messages."""
    return sorted({re.sub(r"\.\d+(?=\.|$)", ".*", n) for n in names})


def _parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent_name, _, child = name.rpartition(".")
    return (model.get_submodule(parent_name) if parent_name else model), child


def adapter_layers(model: nn.Module) -> Iterator[tuple[str, AdapterLayer]]:
    """The adapter layers of ``model`` with their dotted names."""
    for name, module in model.named_modules():
        if isinstance(module, AdapterLayer):
            yield name, module


def adapter_context(model: nn.Module) -> AdapterContext:
    """The context shared by the adapter layers of ``model``; set it before each forward."""
    for _, layer in adapter_layers(model):
        return layer.context
    raise ValueError("the model has no adapter layers: call maugpt.adapters.inject(model, adapter) first")


def inject(model: nn.Module, adapter: Adapter) -> list[str]:
    """Wrap the linear layers that match ``adapter.targets``; freeze every other parameter.

    Returns the wrapped layers' names. A target pattern that matches no linear layer is an
    error that lists the linear layers the model has.
    """
    if any(True for _ in adapter_layers(model)):
        raise ValueError("the model already has adapters; call unwrap(model) before injecting others")
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    unmatched = [p for p in adapter.targets if not any(matches(n, p) for n in linears)]
    if unmatched:
        raise ValueError(
            f"adapter target(s) {unmatched} match no nn.Linear layer; the model's linear "
            f"layers are: {_layer_kinds(linears) or 'none'}"
        )
    chosen = [n for n in linears if any(matches(n, p) for p in adapter.targets)]
    context = AdapterContext()
    # Remember who trained before, so that unwrap() gives the model back exactly as it came.
    injection = Injection({id(p): p.requires_grad for p in model.parameters()})
    model.requires_grad_(False)
    for name in chosen:
        parent, child = _parent(model, name)
        layer = adapter.wrap(getattr(parent, child), context)
        layer.name, layer.injection = name, injection
        setattr(parent, child, layer)
    group_inputs(model, chosen, share=getattr(adapter, "share_input", False))  # a LowRankAdapter option
    return chosen


def group_inputs(model: nn.Module, names: list[str], share: bool) -> None:
    """Put the adapted projections of one block that read the same input (:data:`SHARED_INPUTS`)
    into one :class:`~maugpt.adapters.lowrank.InputGroup`, which computes AMoE-LoRA's condition
    once for them; with ``share``, their down-projections run as one GEMM too."""
    for parent_name in dict.fromkeys(n.rpartition(".")[0] for n in names):
        for group in SHARED_INPUTS:
            members = [f"{parent_name}.{child}" if parent_name else child for child in group]
            layers = tuple(model.get_submodule(m) for m in members if m in names)
            if len(layers) > 1 and all(isinstance(layer, LowRankLayer) for layer in layers):
                shared = InputGroup(layers)
                for layer in layers:
                    layer.group, layer.share_input = shared, share


def unwrap(model: nn.Module) -> nn.Module:
    """Put the original linear layers back and restore every parameter's ``requires_grad``."""
    layers = list(adapter_layers(model))
    for name, layer in layers:
        parent, child = _parent(model, name)
        setattr(parent, child, layer.base)
    if layers:
        injection = layers[0][1].injection
        for p in model.parameters():
            p.requires_grad_(injection.requires_grad_before.get(id(p), p.requires_grad))
    return model


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def auxiliary_loss(model: nn.Module) -> Tensor | None:
    """Sum of the adapter layers' auxiliary losses of the latest forward (None if there are none)."""
    losses = [loss for _, layer in adapter_layers(model) if (loss := layer.auxiliary_loss()) is not None]
    return torch.stack(losses).sum() if losses else None


def adapter_diagnostics(model: nn.Module) -> dict[str, dict[str, Tensor]]:
    """Per-layer diagnostics of the latest forward run with ``context.record`` on."""
    return {name: d for name, layer in adapter_layers(model) if (d := layer.diagnostics())}


def adapter_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The adapters' tensors alone, keyed ``<module name>.<parameter>``."""
    return {
        f"{name}.{k}": p.detach()
        for name, layer in adapter_layers(model)
        for k, p in layer.adapter_parameters().items()
    }


def save_adapter(
    model: nn.Module, path: str | os.PathLike, adapter: Adapter | None = None, overwrite: bool = False
) -> Path:
    """Write the adapter weights to a safetensors file, atomically.

    ``adapter``'s configuration goes into the file's metadata, so the file says how to rebuild
    the layers. An existing file is never replaced unless ``overwrite`` is true.
    """
    return write_adapter_file(
        adapter_state_dict(model), [name for name, _ in adapter_layers(model)], adapter, path, overwrite
    )


def write_adapter_file(
    state: dict[str, Tensor],
    layers: list[str],
    adapter: Adapter | None,
    path: str | os.PathLike,
    overwrite: bool = False,
) -> Path:
    """The file :func:`save_adapter` writes, from the tensors (keyed ``<module name>.<parameter>``)
    and the adapted layers' names."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    if not state:
        raise ValueError("the model has no adapter layers to save")
    metadata = {LAYERS_KEY: json.dumps(layers)}
    if adapter is not None:
        metadata[METADATA_KEY] = json.dumps(adapter.to_config())
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(tmp), metadata=metadata)
    os.replace(tmp, path)  # a crash mid-write leaves the old file, never half a new one
    return path


def read_adapter_metadata(path: str | os.PathLike) -> tuple[dict | None, list[str] | None]:
    """The adapter configuration and the adapted layer names stored by :func:`save_adapter`."""
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
    config, layers = metadata.get(METADATA_KEY), metadata.get(LAYERS_KEY)
    return (json.loads(config) if config else None), (json.loads(layers) if layers else None)


def read_adapter_config(path: str | os.PathLike) -> dict | None:
    """The ``{"class_path", "init_args"}`` stored by :func:`save_adapter`, or None."""
    return read_adapter_metadata(path)[0]


def load_adapter(model: nn.Module, path: str | os.PathLike) -> None:
    """Copy saved adapter weights into the model's adapter layers; every key and shape must match."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"adapter file {path} does not exist")
    load_adapter_state(model, load_file(str(path)), str(path), f" (file written for {read_adapter_config(path)})")


def load_adapter_state(
    model: nn.Module, saved: dict[str, Tensor], source: str = "the adapter state", note: str = ""
) -> None:
    """Copy adapter tensors keyed as :func:`adapter_state_dict` keys them into the model's adapter
    layers; every key and shape must match (the error names ``source``, then ``note``)."""
    own, saved = adapter_state_dict(model), upgrade_names(saved)  # names of earlier versions, too
    missing, unexpected = sorted(own.keys() - saved.keys()), sorted(saved.keys() - own.keys())
    wrong = [
        f"{k}: file {tuple(saved[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(own.keys() & saved.keys())
        if saved[k].shape != own[k].shape
    ]
    if missing or unexpected or wrong:
        raise ValueError(
            f"{source} does not fit this model's adapters{note}: "
            f"{len(missing)} missing {missing[:5]}, {len(unexpected)} unexpected {unexpected[:5]}, "
            f"{len(wrong)} of another shape {wrong[:5]}"
        )
    with torch.no_grad():
        for k, tensor in own.items():
            tensor.copy_(saved[k])

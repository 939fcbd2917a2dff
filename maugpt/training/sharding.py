"""Sharding MAU-GPT. FSDP2 (``shard_model``): every decoder layer of the LLM is one shard unit, the
rest one root unit; FSDP1 (``AdapterWrapPolicy``, for Lightning's ``FSDPStrategy``) at the end.

``fully_shard`` shards each parameter as a DTensor, so frozen and trainable parameters can share
a unit: the frozen ones get no gradient buffer at all, and only the adapters and the projector
carry gradients and optimizer state. Under Lightning's ``ModelParallelStrategy`` the device mesh
is ``(data_parallel, tensor_parallel)``; MAU-GPT has no tensor-parallel plan, so a 1-node mesh
shards over its devices, and a 2-D mesh is used as HSDP (replicate across ``data_parallel``,
shard across ``tensor_parallel``, i.e. shard within a node and replicate across nodes).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method
from torch.distributed.fsdp.wrap import ModuleWrapPolicy

from maugpt.adapters import adapter_layers
from maugpt.model.units import decoder_layers


def shard_mesh(mesh: DeviceMesh) -> DeviceMesh:
    """The mesh ``fully_shard`` gets from Lightning's: 1-D when there is nothing to replicate."""
    if mesh.ndim == 2 and mesh.size(0) == 1:
        return mesh[mesh.mesh_dim_names[1]] if mesh.mesh_dim_names else mesh
    return mesh


def shard_model(
    model: nn.Module, mesh: DeviceMesh, param_dtype: torch.dtype | None = None, reshard_after_forward: bool = True
) -> None:
    """Apply FSDP2 to a :class:`~maugpt.model.MAUGPT` in place.

    Args:
        model: the MAU-GPT model (adapters already injected).
        mesh: the device mesh (see the module docstring).
        param_dtype: dtype the all-gathered parameters compute in (``bfloat16`` when the frozen
            parts are bf16: the float32 adapters are then gathered in bf16 too, while their
            sharded master copies, gradients reductions and optimizer state stay float32).
        reshard_after_forward: free each layer's gathered parameters after its forward
            (ZeRO-3; False keeps them until backward, ZeRO-2-like, faster and larger).
    """
    if isinstance(model, FSDPModule):
        return  # Lightning calls configure_model again for test after fit
    mesh = shard_mesh(mesh)
    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    for layer in decoder_layers(model.llm):
        fully_shard(layer, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard_after_forward)
    fully_shard(model, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard_after_forward)
    # generate() bypasses forward(): it must gather the root unit (encoder, projector, embeddings)
    # too, and every rank must keep stepping until all ranks have finished their answers.
    register_fsdp_forward_method(model, "generate")
    model.synced_generation = mesh.size() > 1


class AdapterWrapPolicy(ModuleWrapPolicy):
    """FSDP1's auto-wrap policy for Lightning's ``FSDPStrategy`` (configs/strategy/fsdp1.yaml).

    FSDP1 flattens each unit's parameters into one buffer and gives the whole buffer a gradient
    as soon as one of them trains. So the frozen linear layer inside each adapter is a unit of its
    own (no gradient), and each decoder layer a unit with the adapters' trainable tensors and the
    small frozen norms; the rest (encoder, projector, embeddings tied to the LM head) is the root.
    The units are read from the model being wrapped (:func:`fsdp1_units`), when FSDP wraps it.
    """

    def __init__(self) -> None:
        super().__init__(set())

    def _run_policy(
        self, root_module: nn.Module, ignored_modules: set[nn.Module], root_kwargs: dict[str, Any]
    ) -> dict[nn.Module, dict[str, Any]]:
        return {unit: dict(root_kwargs) for unit in fsdp1_units(root_module) if unit not in ignored_modules}

    def __call__(self, *args: Any, **kwargs: Any) -> bool:
        raise TypeError(
            "AdapterWrapPolicy reads its units from the root module: pass it to FSDP as a policy "
            "object, not as a per-module callable"
        )


def fsdp1_units(model: nn.Module) -> list[nn.Module]:
    """The FSDP1 units of ``model``: its decoder layers (transformers names their classes
    ``<Model>DecoderLayer``) and the frozen linear layer inside each of its adapter layers."""
    layers = [m for m in model.modules() if type(m).__name__.endswith("DecoderLayer")]
    return layers + [layer.base for _, layer in adapter_layers(model)]

"""Adapters for the frozen LLM: LoRA, LoRAMoE and the paper's AMoE-LoRA (and its anomaly-aware expert
alone, for the component ablation), swappable by config."""

from maugpt.adapters.amoe_lora import AMoELoRA, AMoELoRALinear
from maugpt.adapters.anomaly_aware import AnomalyAware, AnomalyAwareExpert, AnomalyAwareLinear, Hypernetwork
from maugpt.adapters.base import (
    ALL_PROJECTIONS,
    FFN_PROJECTIONS,
    Adapter,
    AdapterContext,
    AdapterLayer,
    ForwardInputs,
    GenerationCache,
)
from maugpt.adapters.generalist import GeneralistExperts, localized_balance_loss
from maugpt.adapters.inject import (
    adapter_context,
    adapter_diagnostics,
    adapter_layers,
    adapter_state_dict,
    auxiliary_loss,
    count_parameters,
    inject,
    load_adapter,
    load_adapter_state,
    read_adapter_config,
    read_adapter_metadata,
    save_adapter,
    unwrap,
    write_adapter_file,
)
from maugpt.adapters.lora import LoRA, LoRALinear
from maugpt.adapters.loramoe import LoRAMoE, LoRAMoELinear
from maugpt.adapters.lowrank import InputGroup, LowRankAdapter, LowRankLayer

__all__ = [
    "ALL_PROJECTIONS",
    "FFN_PROJECTIONS",
    "GeneralistExperts",
    "AMoELoRA",
    "AMoELoRALinear",
    "Adapter",
    "AdapterContext",
    "AdapterLayer",
    "AnomalyAware",
    "ForwardInputs",
    "GenerationCache",
    "AnomalyAwareExpert",
    "AnomalyAwareLinear",
    "Hypernetwork",
    "InputGroup",
    "LoRA",
    "LoRALinear",
    "LoRAMoE",
    "LoRAMoELinear",
    "LowRankAdapter",
    "LowRankLayer",
    "adapter_context",
    "adapter_diagnostics",
    "adapter_layers",
    "adapter_state_dict",
    "auxiliary_loss",
    "count_parameters",
    "inject",
    "load_adapter",
    "load_adapter_state",
    "localized_balance_loss",
    "read_adapter_config",
    "read_adapter_metadata",
    "save_adapter",
    "unwrap",
    "write_adapter_file",
]

"""From a trained checkpoint to files other tools load: ``maugpt export``.

Three formats of a stage-2 checkpoint's adapter (the projector, which a MAU-GPT model also needs,
stays in the checkpoint):

* ``adapter``: the adapter safetensors file of :func:`~maugpt.adapters.save_adapter` (tensors
  keyed ``<LLM module>.<parameter>``, the configuration in its metadata), for any adapter;
* ``peft`` (LoRA): a PEFT folder, ``adapter_config.json`` + ``adapter_model.safetensors``, that
  ``peft.PeftModel.from_pretrained(llm, folder)`` loads onto the base LLM;
* ``merged`` (LoRA): the LLM with ``W + (α/r)·(A B)ᵀ`` in its linear layers, saved with
  ``save_pretrained`` beside its tokenizer.

Only the checkpoint is read for ``adapter`` and ``peft`` (no model is built); ``merged`` loads the
LLM the checkpoint was trained on (or ``llm``). Nothing existing is overwritten unless asked.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from maugpt.adapters import Adapter, LoRA, adapter_layers, inject, load_adapter_state, unwrap, write_adapter_file
from maugpt.adapters.generalist import upgrade_names

LLM_PREFIX = "model.llm."


def read_checkpoint(path: str | Path) -> tuple[Adapter, dict[str, Tensor], list[str], dict]:
    """``(adapter, tensors, layer names, hyper-parameters)`` of a stage-2 checkpoint; the tensors
    are keyed as in an adapter file (``<LLM module>.<parameter>``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    hparams = checkpoint.get("hyper_parameters") or {}
    if "vlm" in hparams:
        raise ValueError(
            f"{path} fine-tuned the pretrained VLM {hparams['vlm']} (PretrainedVLMModule): export "
            "writes MAU-GPT checkpoints only; test or predict with the checkpoint itself (--ckpt_path)"
        )
    if "state_dict" not in checkpoint or "llm" not in hparams:
        raise ValueError(
            f"{path} is not a MAU-GPT training checkpoint (expected state_dict and the model's "
            "hyper_parameters, as `maugpt fit` writes them)"
        )
    if hparams.get("adapter") is None:
        raise ValueError(
            f"{path} was saved by stage {hparams.get('stage')} without an adapter: only a stage-2 "
            "checkpoint has one to export"
        )
    adapter = Adapter.from_config(hparams["adapter"])
    own = list(adapter.wrap(nn.Linear(2, 2, bias=False)).adapter_parameters())
    state = upgrade_names(checkpoint["state_dict"])  # names of earlier versions, too
    tensors = {k[len(LLM_PREFIX) :]: v for k, v in state.items() if k.startswith(LLM_PREFIX)}
    layers: dict[str, set[str]] = {}
    for key in tensors:
        suffix = max((n for n in own if key.endswith("." + n)), key=len, default=None)
        if suffix is None:
            raise ValueError(f"{path}: LLM tensor {key!r} is not a parameter of {type(adapter).__name__} ({own})")
        layers.setdefault(key[: -len(suffix) - 1], set()).add(suffix)
    incomplete = {name: sorted(set(own) - held) for name, held in layers.items() if held != set(own)}
    if not layers or incomplete:
        shown = dict(list(incomplete.items())[:3]) or "no adapted layer"
        raise ValueError(f"{path}: the adapter's tensors are incomplete: {shown}")
    return adapter, tensors, list(layers), hparams


def export(
    checkpoint: str | Path,
    out: str | Path,
    format: Literal["adapter", "peft", "merged"] = "adapter",
    llm: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``checkpoint``'s adapter to ``out`` in ``format`` (see the module docstring); returns ``out``."""
    adapter, tensors, layers, hparams = read_checkpoint(checkpoint)
    out = Path(out)
    if format == "adapter":
        return write_adapter_file(tensors, layers, adapter, out, overwrite)
    if not isinstance(adapter, LoRA):
        raise ValueError(
            f"format {format!r} is LoRA's: {type(adapter).__name__}'s delta depends on the input "
            "(a router, a hypernetwork), so PEFT cannot load it and no weight merges it; "
            "export format 'adapter' instead"
        )
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"output folder {out} is not empty; pass overwrite to replace its files")
    out.mkdir(parents=True, exist_ok=True)
    if format == "peft":
        write_peft(adapter, tensors, layers, hparams["llm"], out)
    elif format == "merged":
        write_merged(adapter, tensors, layers, llm or hparams["llm"], hparams, out)
    else:
        raise ValueError(f"format must be 'adapter', 'peft' or 'merged', got {format!r}")
    return out


def write_peft(adapter: LoRA, tensors: dict[str, Tensor], layers: list[str], base: str, out: Path) -> None:
    """PEFT's LoRA layout: ``lora_A.weight (r, d_in) = Aᵀ``, ``lora_B.weight (d_out, r) = Bᵀ``, scale α/r."""
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base,
        "r": adapter.rank,
        "lora_alpha": adapter.alpha,
        "lora_dropout": adapter.dropout,
        "target_modules": layers,
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "modules_to_save": None,
    }
    state = {}
    for name in layers:
        state[f"base_model.model.{name}.lora_A.weight"] = tensors[f"{name}.A"].T.contiguous()
        state[f"base_model.model.{name}.lora_B.weight"] = tensors[f"{name}.B"].T.contiguous()
    _atomic(out / "adapter_model.safetensors", lambda tmp: save_file(state, str(tmp), metadata={"format": "pt"}))
    _atomic(out / "adapter_config.json", lambda tmp: tmp.write_text(json.dumps(config, indent=2)))


def write_merged(
    adapter: LoRA, tensors: dict[str, Tensor], layers: list[str], llm: str, hparams: dict, out: Path
) -> None:
    """The LLM with each LoRA layer's ``delta_weight()`` added to its frozen weight, saved whole."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from maugpt.model.mau_gpt import DTYPES

    remote = bool(hparams.get("trust_remote_code", False))
    model = AutoModelForCausalLM.from_pretrained(
        llm, dtype=DTYPES[hparams.get("llm_dtype", "float32")], trust_remote_code=remote
    )
    inject(model, adapter)
    load_adapter_state(model, tensors, "the checkpoint's adapter", f" ({llm}: was it trained on another LLM?)")
    with torch.no_grad():
        for _, layer in adapter_layers(model):
            layer.base.weight += layer.delta_weight().to(layer.base.weight.dtype)
    unwrap(model)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(llm, trust_remote_code=remote).save_pretrained(out)


def _atomic(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)

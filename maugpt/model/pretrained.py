"""``PretrainedVLM``: an off-the-shelf transformers vision-language model (``AutoModelForImageTextToText``:
LLaVA-1.5, Qwen2.5-VL, Qwen3-VL, InternVL, Gemma-3, Gemma 4, Idefics3/SmolVLM …) behind MAU-GPT's model interface.

It answers what :class:`~maugpt.training.module.StagedModule`'s recipe asks of a network, so the
same stages, adapters, tests and callbacks run on it: ``llm`` (the language model the adapters go
into), ``projector`` (the vision-to-text connector, trained in stage 1), ``vision``, ``tokenizer``,
``forward(**batch)`` and ``generate(**prompts)`` returning only the new tokens. The batches come
from the model's own processor (:class:`~maugpt.data.processor.ProcessorFormat`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from maugpt.adapters import Adapter, inject
from maugpt.model.mau_gpt import DTYPES, generation_context, load_frozen, set_forward_context

#: Where the families keep their vision-to-text connector: LLaVA, Gemma-3, InternVL, PaliGemma
#: (``multi_modal_projector``); Idefics3/SmolVLM (``connector``); Qwen2-VL/2.5-VL/3-VL (``visual.merger``);
#: Gemma 4 and Gemma 3n (``embed_vision``, their multimodal embedder).
PROJECTORS = ("multi_modal_projector", "connector", "visual.merger", "embed_vision")
#: Modules beside a found connector that project vision features into the language model too, and so
#: train with it: Qwen3-VL's deepstack mergers (a patch merger per ``deepstack_visual_indexes`` layer of
#: its vision tower, whose outputs are added to the first decoder layers' hidden states).
PROJECTOR_PARTS = {"visual.merger": ("visual.deepstack_merger_list",)}
#: … and their vision encoder.
VISION_TOWERS = ("vision_tower", "vision_model", "visual")


def projector_parts(model: nn.Module, found: str, given: str | None = None) -> list[str]:
    """The :data:`PROJECTOR_PARTS` of ``model`` beside its connector ``found`` (none when the
    connector was ``given`` by name: then it alone is the projector)."""
    if given is not None:
        return []
    names = {name for name, _ in model.named_modules()}
    for suffix, parts in PROJECTOR_PARTS.items():
        if found == suffix or found.endswith("." + suffix):
            prefix = found[: len(found) - len(suffix)]
            return [prefix + part for part in parts if prefix + part in names]
    return []


def find_module(model: nn.Module, suffixes: tuple[str, ...], what: str, given: str | None = None) -> str:
    """The dotted name of ``model``'s submodule ``given``, or else of the first one whose name ends
    with one of ``suffixes``."""
    names = [name for name, _ in model.named_modules()]
    if given is not None:
        if given not in names:
            raise ValueError(f"{type(model).__name__} has no module {given!r} ({what})")
        return given
    for suffix in suffixes:
        found = [n for n in names if n == suffix or n.endswith("." + suffix)]
        if found:
            return min(found, key=len)
    raise ValueError(f"{type(model).__name__}: no {what} among {list(suffixes)}; name it in the config")


class PretrainedVLM(nn.Module):
    """A pretrained vision-language model, frozen, with optional adapters in its language model.

    Args:
        vlm: the model's folder or hub id (its processor comes from the same place).
        adapter: the adapter put into the language model's linear layers (None: none).
        pretrained: load the weights; False builds the model from its config (meta-device checks).
        dtype: ``float32``, ``bfloat16`` or ``float16`` for the frozen model.
        attn_implementation: passed to transformers (``sdpa``, ``eager``, ``flash_attention_2``).
        trust_remote_code: allow the repository's own code (off unless a config asks).
        projector: the connector's module name when it is none of :data:`PROJECTORS`.
        processor_kwargs: passed to ``AutoProcessor.from_pretrained``.
    """

    def __init__(
        self,
        vlm: str,
        adapter: Adapter | None = None,
        pretrained: bool = True,
        dtype: str = "float32",
        attn_implementation: str = "sdpa",
        trust_remote_code: bool = False,
        projector: str | None = None,
        processor_kwargs: dict | None = None,
    ) -> None:
        from transformers import AutoModelForImageTextToText

        from maugpt.data.processor import load_processor

        super().__init__()
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        self.processor = load_processor(vlm, trust_remote_code, processor_kwargs)
        self.tokenizer = self.processor.tokenizer
        self.vlm = load_frozen(
            AutoModelForImageTextToText, vlm, pretrained, DTYPES[dtype], attn_implementation, trust_remote_code
        )
        # Names, not attributes: the parts stay registered once, under vlm (checkpoint keys, FSDP).
        self.projector_name = find_module(self.vlm, PROJECTORS, "vision-to-text projector", projector)
        self.projector_names = (self.projector_name, *projector_parts(self.vlm, self.projector_name, projector))
        self.vision_name = find_module(self.vlm, VISION_TOWERS, "vision encoder")
        self.projector.requires_grad_(True)  # stage 1 trains it; inject() freezes only the language model
        self.image_token_ids = sorted(
            {
                i
                for i in (
                    getattr(self.processor, "image_token_id", None),
                    getattr(self.vlm.config, "image_token_id", None),
                    getattr(self.vlm.config, "image_token_index", None),
                )
                if isinstance(i, int)
            }
        )
        self.adapter = adapter
        self.synced_generation = False
        if adapter is not None:
            inject(self.llm, adapter)

    @property
    def llm(self) -> nn.Module:
        """The language model (decoder stack) inside the VLM: where the adapters go."""
        return self.vlm.get_decoder()

    @property
    def projector(self) -> nn.Module:
        """The connector; with its companion parts (Qwen3-VL's deepstack mergers) an unregistered
        ``ModuleList`` of them all, each still registered once, under ``vlm``."""
        parts = [self.vlm.get_submodule(name) for name in self.projector_names]
        return parts[0] if len(parts) == 1 else nn.ModuleList(parts)

    @property
    def vision(self) -> nn.Module:
        return self.vlm.get_submodule(self.vision_name)

    @property
    def image_tokens(self) -> None:
        return None  # the processor expands each image itself (a count per image for some families)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        labels: Tensor | None = None,
        condition_mask: Tensor | None = None,
        sample_labels: Tensor | None = None,
        **vision_inputs: Tensor,
    ):
        """Teacher-forced forward over a processor batch (``vision_inputs``: its ``pixel_values``,
        ``image_grid_thw`` … as the processor named them); ``loss`` when ``labels`` are given."""
        set_forward_context(self, attention_mask, condition_mask, sample_labels)
        return self.vlm(
            input_ids=input_ids,
            attention_mask=attention_mask,
            labels=labels,
            use_cache=False,
            **self._cast(vision_inputs),
        )

    def _cast(self, inputs: dict) -> dict:
        dtype = next(self.vision.parameters()).dtype
        return {k: v.to(dtype) if isinstance(v, Tensor) and v.is_floating_point() else v for k, v in inputs.items()}

    @torch.no_grad()
    def generate(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        condition_mask: Tensor | None = None,
        max_new_tokens: int = 64,
        **kwargs,
    ) -> Tensor:
        """Batched, KV-cached generation from left-padded prompts; greedy unless ``kwargs`` say
        otherwise. ``kwargs`` hold the processor's image inputs and any ``generate()`` options; the
        model's ``generation_config`` gives its stop tokens and anything else it sets (e.g.
        Qwen2.5-VL's repetition penalty). Returns only the new tokens. AMoE-LoRA's condition is fixed
        at the prefill."""
        options = {
            "do_sample": False,
            "pad_token_id": self.tokenizer.pad_token_id,
            "suppress_tokens": self.image_token_ids or None,
            "synced_gpus": self.synced_generation,
            **self._cast(kwargs),
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "max_new_tokens": max_new_tokens,
        }
        with generation_context(self, attention_mask, condition_mask):
            return self.vlm.generate(**options)[:, input_ids.shape[1] :]

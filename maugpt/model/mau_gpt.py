"""MAU-GPT: frozen vision encoder → trainable projector → frozen causal LLM with adapters (LLaVA style)."""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor, nn
from transformers import AutoConfig, AutoModelForCausalLM, LogitsProcessor

from maugpt.adapters import Adapter, ForwardInputs, adapter_context, inject
from maugpt.model.projector import build_projector
from maugpt.model.units import compile_llm as compile_llm_units
from maugpt.model.units import require_compile_target
from maugpt.model.vision import VisionEncoder
from maugpt.tokenizer import IMAGE_TOKEN, load_tokenizer

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


#: Batch entries that describe the examples rather than feed the model (see ``collate``; MMAD's
#: ``choice_ids`` are the option letters whose first-token probabilities the test step reads).
BATCH_ANNOTATIONS = ("valid", "meta", "skipped", "choice_ids")


def model_inputs(batch: dict, **overrides: Tensor | None) -> dict:
    """``batch`` without its :data:`BATCH_ANNOTATIONS`, with ``overrides`` applied (e.g. ``labels``)."""
    return {**{k: v for k, v in batch.items() if k not in BATCH_ANNOTATIONS}, **overrides}


def set_forward_context(
    net: nn.Module, attention_mask: Tensor, condition_mask: Tensor | None, sample_labels: Tensor | None
) -> None:
    """Give ``net``'s adapters (if it has any) the masks of the next forward (see ``AdapterContext``)."""
    if net.adapter is not None:
        inputs = ForwardInputs(attention_mask.bool(), condition_mask, sample_labels)
        adapter_context(net.llm).set(inputs)


def recording(net: nn.Module, on: bool = True) -> contextlib.AbstractContextManager:
    """A block whose forwards of ``net`` keep its adapters' diagnostics (router load, cores, output
    norms; read them with ``adapter_diagnostics``); nothing without adapters or with ``on`` False."""
    return adapter_context(net.llm).recording(on) if net.adapter is not None else contextlib.nullcontext()


def generation_context(net: nn.Module, attention_mask: Tensor, condition_mask: Tensor | None):
    """The context of one ``generate()`` of ``net``: AMoE-LoRA's condition (the prompt unless
    ``condition_mask`` says otherwise) is fixed at the prefill; nothing without adapters."""
    if net.adapter is None:
        return contextlib.nullcontext()
    condition = condition_mask if condition_mask is not None else attention_mask
    return adapter_context(net.llm).generating(ForwardInputs(condition_mask=condition.bool()))


def load_frozen(
    auto_class, path: str, pretrained: bool, dtype: torch.dtype, attn_implementation: str, trust_remote_code: bool
) -> nn.Module:
    """A transformers model (``auto_class``: ``AutoModelForCausalLM``, ``AutoModelForImageTextToText``)
    with its weights (or, with ``pretrained`` False, from its config: meta-device checks), frozen."""
    kwargs = dict(dtype=dtype, attn_implementation=attn_implementation, trust_remote_code=trust_remote_code)
    if pretrained:
        model = auto_class.from_pretrained(path, **kwargs)
    else:
        model = auto_class.from_config(AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code), **kwargs)
    return model.requires_grad_(False)


class MAUGPT(nn.Module):
    """The multimodal model.

    Args:
        llm: a causal LM folder or hub id (``AutoModelForCausalLM``); its tokenizer comes from
            the same place, with ``<image>`` added when missing.
        vision_encoder: a timm model name or local timm folder (see :class:`VisionEncoder`).
        projector: ``mlp2x_gelu`` (LLaVA-1.5) or ``linear`` or ``mlp<N>x_gelu``.
        adapter: the adapter put into the LLM (None: the LLM stays as it is, as in stage 1).
        feature_layer: the encoder block whose patch features are used (−2: penultimate).
        vision_pretrained: load the encoder's weights (or a checkpoint file path).
        llm_pretrained: load the LLM's weights; False builds it from its config (meta-device
            size checks, tests).
        llm_dtype: ``float32``, ``bfloat16`` or ``float16`` for the frozen LLM and encoder.
        attn_implementation: passed to transformers (``sdpa``, ``eager``, ``flash_attention_2``).
        trust_remote_code: allow the LLM repository's own code (off unless a config asks).
        compile_llm: ``torch.compile`` the LLM's ``decoder_layers`` or its ``adapters`` (``none``:
            eager); see :func:`~maugpt.model.units.compile_llm`.
        compile_backend: the ``torch.compile`` backend (``inductor``; ``aot_eager`` to debug).
    """

    def __init__(
        self,
        llm: str,
        vision_encoder: str,
        projector: str = "mlp2x_gelu",
        adapter: Adapter | None = None,
        feature_layer: int = -2,
        vision_pretrained: bool | str = True,
        llm_pretrained: bool = True,
        llm_dtype: str = "float32",
        attn_implementation: str = "sdpa",
        trust_remote_code: bool = False,
        compile_llm: str = "none",
        compile_backend: str = "inductor",
    ) -> None:
        super().__init__()
        if llm_dtype not in DTYPES:
            raise ValueError(f"llm_dtype must be one of {sorted(DTYPES)}, got {llm_dtype!r}")
        require_compile_target(compile_llm)  # before anything is loaded
        dtype = DTYPES[llm_dtype]
        self.tokenizer = load_tokenizer(llm, trust_remote_code=trust_remote_code)
        self.image_token_id = self.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        self.vision = VisionEncoder(vision_encoder, pretrained=vision_pretrained, feature_layer=feature_layer).to(dtype)
        self.llm = load_frozen(AutoModelForCausalLM, llm, llm_pretrained, dtype, attn_implementation, trust_remote_code)
        self.projector = build_projector(projector, self.vision.dim, self.llm.config.get_text_config().hidden_size)
        self.adapter = adapter
        self.synced_generation = False  # set under FSDP: ranks decode in lockstep (see training/sharding.py)
        if adapter is not None:
            inject(self.llm, adapter)
        compile_llm_units(self.llm, compile_llm, compile_backend)

    @property
    def image_tokens(self) -> int:
        return self.vision.tokens

    def embed(self, input_ids: Tensor, pixel_values: Tensor) -> Tensor:
        """Token embeddings with the projected patch features in the ``<image>`` slots.

        ``input_ids (B, L)`` holds ``images × image_tokens`` slots per row; ``pixel_values`` is
        ``(B, images, 3, H, W)``. The slots are filled image by image, in order.
        """
        batch, images = pixel_values.shape[:2]
        with torch.no_grad():  # the encoder is frozen: keep no activations for it
            features = self.vision(pixel_values.flatten(0, 1).to(next(self.vision.parameters()).dtype))
        projected = self.projector(features.to(self.projector_dtype))  # (B·images, P, D)
        slots = input_ids == self.image_token_id
        expected = images * self.vision.tokens
        if (slots.sum(1) != expected).any():
            raise ValueError(
                f"each row needs {images} × {self.vision.tokens} <image> slots, found "
                f"{slots.sum(1).tolist()}: the data's image_tokens must match the vision encoder"
            )
        embeddings = self.llm.get_input_embeddings()(input_ids.masked_fill(slots, 0))
        return embeddings.masked_scatter(slots.unsqueeze(-1), projected.to(embeddings.dtype).reshape(-1))

    @property
    def projector_dtype(self) -> torch.dtype:
        return next(self.projector.parameters()).dtype

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        pixel_values: Tensor,
        labels: Tensor | None = None,
        condition_mask: Tensor | None = None,
        sample_labels: Tensor | None = None,
    ):
        """Teacher-forced forward; returns the LLM's output (``loss`` when ``labels`` are given).

        Takes a batch's model inputs only (:func:`model_inputs` drops its annotations): an
        unknown key is a ``TypeError``, never silently ignored.
        """
        set_forward_context(self, attention_mask, condition_mask, sample_labels)
        embeddings = self.embed(input_ids, pixel_values)
        return self.llm(inputs_embeds=embeddings, attention_mask=attention_mask, labels=labels, use_cache=False)

    @torch.no_grad()
    def generate(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        pixel_values: Tensor,
        condition_mask: Tensor | None = None,
        max_new_tokens: int = 64,
        **kwargs,
    ) -> Tensor:
        """Batched, KV-cached generation from left-padded prompts, greedy unless ``kwargs`` say otherwise
        (e.g. an MMAD query script's sampling); returns the new tokens.

        AMoE-LoRA's condition is fixed at the prefill (the prompt: images and question).
        """
        embeddings = self.embed(input_ids, pixel_values)
        # The image placeholder is never a word of an answer.
        options = {
            "do_sample": False,
            "pad_token_id": self.tokenizer.pad_token_id,
            "eos_token_id": self.tokenizer.eos_token_id,
            "suppress_tokens": [self.image_token_id],
            "synced_gpus": self.synced_generation,
            **kwargs,
            "inputs_embeds": embeddings,
            "attention_mask": attention_mask,
            "max_new_tokens": max_new_tokens,
        }
        with generation_context(self, attention_mask, condition_mask):
            return self.llm.generate(**options)


class FirstTokenLogprobs(LogitsProcessor):
    """Records, at the first generation step only, the log-probabilities of ``choice_ids`` as the
    first answer token (``logprobs``: ``(B, C)``), leaving the scores as they are: option-likelihood
    scoring of multiple-choice questions from the same forward pass that starts the generation."""

    def __init__(self, choice_ids: Tensor) -> None:
        self.choice_ids = choice_ids
        self.logprobs: Tensor | None = None

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        if self.logprobs is None:
            self.logprobs = scores.float().log_softmax(-1)[:, self.choice_ids.to(scores.device)].cpu()
        return scores

"""``PretrainedVLMModule``: an off-the-shelf transformers VLM under MAU-GPT's recipe.

As a baseline (``maugpt test``, no checkpoint) it answers MAU-Set and MMAD with the same prompts,
parsing and scorers as MAU-GPT; with an adapter it fine-tunes the VLM's language model in stage 2
(stage 1, projector only, where the model has a connector to train), e.g. Qwen2.5-VL-3B with
AMoE-LoRA from one YAML (configs/baselines/). The data goes through the model's own processor: the
CLI links ``vlm`` to the data's ``processor``.
"""

from __future__ import annotations

from maugpt.adapters import Adapter
from maugpt.model.pretrained import PretrainedVLM
from maugpt.training.module import StagedModule


class PretrainedVLMModule(StagedModule):
    """A pretrained VLM (``AutoModelForImageTextToText``) with the training recipe of
    :class:`~maugpt.training.module.StagedModule` (``stage``, ``adapter``, ``lr`` …).

    Args:
        vlm: the model's folder or hub id (e.g. ``Qwen/Qwen2.5-VL-3B-Instruct``); its processor
            (chat template, image processor) comes from the same place.
        pretrained: load the weights; False builds the model from its config (meta-device checks).
        dtype: dtype of the frozen model (``float32``, ``bfloat16``, ``float16``).
        attn_implementation: transformers attention implementation.
        trust_remote_code: allow the repository's own code (off unless a config asks).
        projector: the vision-to-text connector's module name, when it is not one transformers
            usually gives (``multi_modal_projector``, ``connector``, ``visual.merger`` with Qwen3-VL's
            deepstack mergers, ``embed_vision``); a name given here is the whole projector.
        processor_kwargs: settings of the model's processor, for its data too (linked): e.g.
            ``{max_pixels: 1003520}`` caps Qwen2.5-VL's image tokens at 1280 per image.
    """

    def __init__(
        self,
        vlm: str,
        pretrained: bool = True,
        dtype: str = "float32",
        attn_implementation: str = "sdpa",
        trust_remote_code: bool = False,
        projector: str | None = None,
        processor_kwargs: dict | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)

    def build(self, adapter: Adapter | None) -> PretrainedVLM:
        h = self.hparams
        return PretrainedVLM(
            h.vlm,
            adapter,
            h.pretrained,
            h.dtype,
            h.attn_implementation,
            h.trust_remote_code,
            h.projector,
            h.processor_kwargs,
        )

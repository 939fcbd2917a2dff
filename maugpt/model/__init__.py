"""The MAU-GPT model: vision encoder, projector, LLM with adapters."""

from maugpt.model.mau_gpt import MAUGPT
from maugpt.model.projector import build_projector
from maugpt.model.vision import VisionEncoder

__all__ = ["MAUGPT", "VisionEncoder", "build_projector"]

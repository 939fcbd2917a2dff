"""The frozen vision encoder: a timm ViT or ConvNeXt returning patch features from one layer."""

from __future__ import annotations

from pathlib import Path

import timm
from torch import Tensor, nn


def timm_name(encoder: str) -> str:
    """A timm model name, or ``local-dir:`` for a folder saved with config.json and weights."""
    return f"local-dir:{encoder}" if (Path(encoder) / "config.json").is_file() else encoder


class VisionEncoder(nn.Module):
    """Patch features of a frozen timm encoder, as LLaVA-1.5 uses them.

    Args:
        encoder: a timm model name (``vit_large_patch14_clip_336.openai``) or a local folder
            saved in timm's format (config.json + model.safetensors).
        pretrained: load weights (from the hub for a name, from the folder for a folder); a path
            to a checkpoint file loads that file instead.
        feature_layer: which block's output to use; −2 is the penultimate block (LLaVA-1.5).

    ``forward``: ``(N, 3, H, W)`` → ``(N, tokens, dim)``, prefix (class) tokens dropped; ConvNeXt
    feature maps are flattened to tokens.
    """

    def __init__(self, encoder: str, pretrained: bool | str = True, feature_layer: int = -2) -> None:
        super().__init__()
        checkpoint = pretrained if isinstance(pretrained, str) else None
        self.model = timm.create_model(
            timm_name(encoder), pretrained=bool(pretrained) and checkpoint is None, num_classes=0
        )
        if checkpoint is not None:
            timm.models.load_checkpoint(self.model, checkpoint, strict=True)
        depth = len(getattr(self.model, "blocks", None) or getattr(self.model, "stages", []))
        if depth == 0:
            raise ValueError(f"vision encoder {encoder!r} has neither ViT blocks nor ConvNeXt stages")
        self.layer = feature_layer % depth
        # Blocks after the chosen layer never run: drop them (and the final norm and head).
        self.model.prune_intermediate_layers([self.layer], prune_norm=True, prune_head=True)
        self.model.requires_grad_(False)
        size = self.model.pretrained_cfg.get("input_size", (3, 224, 224))
        if hasattr(self.model, "blocks"):  # ViT family: patch tokens, prefix tokens dropped
            self.dim, self.tokens = self.model.embed_dim, self.model.patch_embed.num_patches
        else:  # ConvNeXt family: the stage's feature map, flattened
            info = self.model.feature_info[self.layer]
            self.dim = info["num_chs"]
            self.tokens = (size[1] // info["reduction"]) * (size[2] // info["reduction"])

    def train(self, mode: bool = True) -> VisionEncoder:
        super().train(mode)
        self.model.eval()  # frozen: dropout and drop-path stay off
        return self

    def forward(self, pixels: Tensor) -> Tensor:
        if hasattr(self.model, "blocks"):
            return self.model.forward_intermediates(
                pixels, indices=[self.layer], output_fmt="NLC", intermediates_only=True
            )[0]
        feature = self.model.forward_intermediates(pixels, indices=[self.layer], intermediates_only=True)[0]
        return feature.flatten(2).transpose(1, 2)

"""The offline default's base models, built and briefly pretrained here on the synthetic MAU-Set.

Nothing is downloaded: a byte-level BPE tokenizer is trained on the synthetic corpus and saved
with a ChatML template; a tiny Qwen2-architecture LM is built from a config and a tiny timm
ViT from timm's ViT class. Both are then briefly pretrained — the LM on the *training* split's
questions and answers, the ViT to classify product and defect class and to mark defective patches
on the training split plus procedural images of its own seed (never a validation or test image) —
so that the frozen base carries signal, as a real pretrained base would. They are
saved in their standard formats (``save_pretrained``; timm's config.json + model.safetensors)
and loaded back through the same code as hub models.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import timm
import torch
import torch.nn.functional as F
from PIL import Image
from timm.models import save_for_hf
from transformers import AutoModelForCausalLM, Qwen2Config

from maugpt.data.chat import ChatEncoder
from maugpt.data.geometry import ImageTransform
from maugpt.data.shards import iter_samples
from maugpt.mauset.synthetic import iter_synthetic
from maugpt.tokenizer import save_tokenizer, train_tokenizer

# Average pooling: the pretraining objectives read the mean of the patch tokens, so every patch
# token carries the image-level facts (is there a defect?) that the LM reads from them.
VIT = dict(img_size=96, patch_size=12, embed_dim=128, depth=4, num_heads=4, global_pool="avg")
LLM = dict(
    hidden_size=128,
    intermediate_size=384,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=2048,
    tie_word_embeddings=True,
)


def _texts(records: list[dict]) -> list[str]:
    return [qa[k] for r in records for qa in r["qa"] for k in ("question", "answer")]


def pretrain_vit(
    images: torch.Tensor, labels: torch.Tensor, masks: torch.Tensor, classes: int, steps: int, seed: int
) -> torch.nn.Module:
    """A tiny ViT trained to name each image's (product, defect class) and to mark defective patches.

    ``images (N, 3, H, W)`` normalised, ``labels (N,)`` class ids, ``masks (N, P)`` the share of
    defect pixels in each patch. The patch objective puts the defects into the patch features that
    the projector reads, as the features of a strong pretrained encoder would carry them.
    """
    torch.manual_seed(seed)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=classes, **VIT)
    patch_head = torch.nn.Linear(VIT["embed_dim"], 1)
    opt = torch.optim.AdamW([*model.parameters(), *patch_head.parameters()], lr=1e-3, weight_decay=0.05)
    rng = np.random.default_rng(seed)
    model.train()
    for _ in range(steps):
        idx = torch.from_numpy(rng.choice(len(images), size=min(64, len(images)), replace=False))
        tokens = model.forward_features(images[idx])  # (B, 1 + P, D)
        loss = F.cross_entropy(model.forward_head(tokens), labels[idx])
        patch_logits = patch_head(tokens[:, model.num_prefix_tokens :]).squeeze(-1)
        loss = loss + F.binary_cross_entropy_with_logits(patch_logits, (masks[idx] > 0).float())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.reset_classifier(0)
    return model.eval()


def _patch_mask(mask, grid: int) -> torch.Tensor:
    """Share of defect pixels in each of ``grid × grid`` patches, row-major ``(grid²,)``."""
    if mask is None:
        return torch.zeros(grid * grid)
    if isinstance(mask, np.ndarray):
        mask = Image.fromarray(mask)
    pixels = torch.from_numpy(np.asarray(mask.convert("L").resize((grid * 8, grid * 8))) > 0).float()
    return F.avg_pool2d(pixels[None, None], 8).flatten()


def pretrain_llm(tokenizer, records: list[dict], steps: int, seed: int) -> torch.nn.Module:
    """A tiny Qwen2 LM trained on the synthetic questions and answers, in the chat format (no images)."""
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        **LLM,
    )
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    chat = ChatEncoder(tokenizer, image_tokens=1, max_length=512)
    encoded = [chat.encode([(qa["question"], qa["answer"]) for qa in r["qa"]], images=0) for r in records]
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    rng = random.Random(seed)
    model.train()
    for _ in range(steps):
        batch = rng.sample(encoded, min(8, len(encoded)))
        ids = torch.nn.utils.rnn.pad_sequence(
            [e.input_ids for e in batch], batch_first=True, padding_value=tokenizer.pad_token_id
        )
        labels = torch.nn.utils.rnn.pad_sequence([e.labels for e in batch], batch_first=True, padding_value=-100)
        loss = model(input_ids=ids, attention_mask=ids != tokenizer.pad_token_id, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.eval()


def make_tiny_base(
    out: str | Path,
    shards: str | Path,
    seed: int = 0,
    vocab_size: int = 2048,
    vit_steps: int = 900,
    llm_steps: int = 150,
    vit_extra_images: int = 6000,
) -> dict[str, Path]:
    """Write ``out/llm`` (tokenizer + LM) and ``out/vision`` (timm ViT) from the synthetic shards.

    ``shards`` is the folder written by ``tools/synth_mauset.py`` (``mauset/`` and ``captions/``).
    The ViT also sees ``vit_extra_images`` procedural images of its own (another seed, never the
    MAU-Set validation or test images), as a real encoder is pretrained on data of its own.
    """
    out, shards = Path(out), Path(shards)
    train = list(iter_samples(shards / "mauset" / "train"))
    captions = [s["json"] for s in iter_samples(shards / "captions" / "train")]
    records = [s["json"] for s in train]
    corpus = _texts(records + captions) + ["system user assistant"] * 50
    tokenizer = train_tokenizer(corpus, vocab_size=vocab_size)
    llm_dir = save_tokenizer(tokenizer, out / "llm")
    vision_dir = out / "vision"
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, **VIT)
    model.pretrained_cfg = {
        **model.pretrained_cfg,
        "input_size": (3, VIT["img_size"], VIT["img_size"]),
        "crop_pct": 1.0,
        "mean": (0.5, 0.5, 0.5),
        "std": (0.5, 0.5, 0.5),
        "tag": None,
    }
    save_for_hf(model, vision_dir, model_config=VIT, safe_serialization=True)  # writes the data config
    transform = ImageTransform(str(vision_dir))
    grid = VIT["img_size"] // VIT["patch_size"]
    # The ViT learns to name (product, defect class or normal) and to mark defective patches.
    pictures = [
        (s["png"] if "png" in s else s["jpg"], s["json"]["product"], s["json"]["defect_class"], s.get("mask.png"))
        for s in train
    ]
    extra_seed = 1_000_003 + seed  # far from every seed the MAU-Set builds use
    pictures += [
        (image, item.product, item.defect_class, mask)
        for item, image, mask in iter_synthetic(vit_extra_images, extra_seed, VIT["img_size"])
    ]
    names = sorted({(product, defect or "normal") for _, product, defect, _ in pictures})
    images = torch.stack([transform.normalize(transform(image)) for image, *_ in pictures])
    labels = torch.tensor([names.index((product, defect or "normal")) for _, product, defect, _ in pictures])
    masks = torch.stack([_patch_mask(mask, grid) for *_, mask in pictures])
    vit = pretrain_vit(images, labels, masks, len(names), vit_steps, seed)
    vit.pretrained_cfg = model.pretrained_cfg
    save_for_hf(vit, vision_dir, model_config=VIT, safe_serialization=True)
    llm = pretrain_llm(tokenizer, records + captions, llm_steps, seed)
    llm.save_pretrained(llm_dir)
    return {"llm": llm_dir, "vision": vision_dir}

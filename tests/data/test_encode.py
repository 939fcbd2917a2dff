"""Chat encoding: the template, image slots, labels on answers only, truncation."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer

from maugpt.data.chat import IGNORE_INDEX, ChatEncoder
from maugpt.data.collate import collate
from maugpt.data.geometry import ImageTransform


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir):
    return AutoTokenizer.from_pretrained(tokenizer_dir)


PAIRS = [
    ("Is there any defect in this image of a screw? Answer True or False.", "True"),
    ("What type of defect does this screw have?", "The screw has a scratch defect."),
]


def test_labels_are_the_answers_and_their_turn_ends_exactly(tokenizer):
    encoded = ChatEncoder(tokenizer, image_tokens=5).encode(PAIRS, images=2)
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    assert encoded.input_ids.tolist().count(image_id) == 10
    ids, labels = encoded.input_ids.tolist(), encoded.labels.tolist()
    supervised = [t for t, label in zip(ids, labels) if label != IGNORE_INDEX]
    assert all(label in (IGNORE_INDEX, token) for token, label in zip(ids, labels))
    assert tokenizer.decode(supervised) == "True<|im_end|>\nThe screw has a scratch defect.<|im_end|>\n"
    full = tokenizer.decode([t for t in ids if t != image_id])
    assert full == tokenizer.apply_chat_template(
        [
            {"role": "user", "content": "<image>\n<image>\n" + PAIRS[0][0]},
            {"role": "assistant", "content": "True"},
            {"role": "user", "content": PAIRS[1][0]},
            {"role": "assistant", "content": PAIRS[1][1]},
        ],
        tokenize=False,
    ).replace("<image>", "")
    # The condition (prompt) ends where the first answer starts.
    assert tokenizer.decode(ids[encoded.condition_end : encoded.condition_end + 1]) == "True"


def test_truncation_drops_whole_pairs_then_cuts_inside_the_answer(tokenizer):
    encoder = ChatEncoder(tokenizer, image_tokens=5)
    one = encoder.encode(PAIRS[:1]).input_ids
    both = encoder.encode(PAIRS).input_ids
    encoder.max_length = len(both) - 1
    assert torch.equal(encoder.encode(PAIRS).input_ids, one)  # the second pair went, whole
    encoder.max_length = len(one) - 1
    cut = encoder.encode(PAIRS[1:])
    assert len(cut.input_ids) == len(one) - 1 and (cut.labels != IGNORE_INDEX).any()
    encoder.max_length = 10
    with pytest.raises(ValueError, match=r"max_length 10 leaves no room for an answer: 1 image\(s\) × 5 tokens"):
        encoder.encode(PAIRS)


def test_a_tokenizer_without_the_image_token_is_refused(tokenizer_dir):
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    with pytest.raises(ValueError, match="no single token for '<img>'"):
        ChatEncoder(tokenizer, image_tokens=4, image_token="<img>")


def test_images_are_padded_to_square_then_transformed_by_the_timm_config(vision_dir):
    from PIL import Image

    transform = ImageTransform(str(vision_dir))
    pixels = transform(Image.new("RGB", (10, 40), (255, 255, 255)))
    assert pixels.shape == (32, 32, 3) and pixels.dtype == torch.uint8
    normal = transform.normalize(pixels[None])[0]
    # white (1.0 → +1 after normalisation) in the middle columns, the mean grey (→ ~0) at the sides
    assert normal[:, :, 16].min() > 0.99 and normal[:, :, 0].abs().max() < 0.01


def test_transform_matches_timms_own_float_transform(vision_dir):
    import json

    import numpy as np
    from PIL import Image
    from timm.data import create_transform, resolve_data_config

    config = json.loads((vision_dir / "config.json").read_text())["pretrained_cfg"]
    reference = create_transform(**resolve_data_config(pretrained_cfg=config), is_training=False)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 48, 3), dtype=np.uint8))
    transform = ImageTransform(str(vision_dir), resize="pil")
    assert transform.fast is None
    torch.testing.assert_close(transform.normalize(transform(image)), reference(image), rtol=0, atol=1e-5)


@pytest.mark.parametrize("size", [(48, 48), (61, 37), (30, 90), (32, 32)])
def test_torch_resize_is_pil_compatible_within_one_level(vision_dir, size):
    import numpy as np
    from PIL import Image

    # Noise is the worst case for interpolation differences; real images differ on fewer pixels.
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (*size, 3), dtype=np.uint8))
    for pad in (True, False):
        pil = ImageTransform(str(vision_dir), pad_to_square=pad, resize="pil")(image)
        fast_transform = ImageTransform(str(vision_dir), pad_to_square=pad)
        assert fast_transform.fast is not None and fast_transform.fast.mode == "bicubic"
        fast = fast_transform(image)
        assert fast.shape == pil.shape == (32, 32, 3) and fast.dtype == torch.uint8
        diff = (fast.int() - pil.int()).abs()
        assert diff.max().item() <= 1 and (diff > 0).float().mean().item() < 0.05


def test_an_unknown_resize_is_named(vision_dir):
    with pytest.raises(ValueError, match="resize must be 'torch' or 'pil', got 'cv2'"):
        ImageTransform(str(vision_dir), resize="cv2")


def test_collate_pads_right_and_masks_padding(tokenizer):
    encoder = ChatEncoder(tokenizer, image_tokens=2)
    examples = []
    for pairs in (PAIRS, PAIRS[:1]):
        e = encoder.encode(pairs)
        examples.append(
            {
                "input_ids": e.input_ids,
                "labels": e.labels,
                "condition_end": e.condition_end,
                "pixel_values": torch.zeros(1, 4, 4, 3, dtype=torch.uint8),
                "meta": {},
                "skipped": 1,
            }
        )
    batch = collate(examples, pad_token_id=tokenizer.pad_token_id)
    n0, n1 = len(examples[0]["input_ids"]), len(examples[1]["input_ids"])
    assert batch["input_ids"].shape == (2, n0) and batch["attention_mask"].sum(1).tolist() == [n0, n1]
    assert (batch["labels"][1, n1:] == IGNORE_INDEX).all() and (
        batch["input_ids"][1, n1:] == tokenizer.pad_token_id
    ).all()
    assert batch["condition_mask"].sum(1).tolist() == [examples[0]["condition_end"], examples[1]["condition_end"]]
    assert batch["pixel_values"].shape == (2, 1, 4, 4, 3) and batch["skipped"] == 2 and batch["valid"].all()

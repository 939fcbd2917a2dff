"""ProcessorFormat on the shrunk published files of eight VLM families: the exact prompts their
templates and processors make, answer labels, the condition mask, and bad input."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from maugpt.data.processor import ProcessorFormat, expanded
from tests.conftest import VLM_FAMILIES

QUESTION = "Is the bottle defective? Answer True or False."
# What each family's published chat template and processor make of one 40×40 image and QUESTION:
# LLaVA-1.5 (28 px / 14 px patches, CLS dropped: 4 tokens), Qwen2.5-VL (resized to min_pixels 56×56,
# 4×4 patches merged 2×2: 4 tokens), InternVL (2×2 tiles of 28 px and the thumbnail, 4 tokens each,
# between <img> and </img>), Gemma-3 (its template writes <bos>; the processor's image sequence
# between blank lines), SmolVLM (longest edge 64: 2×2 tiles of 32 px + the global image, 4 tokens
# each, with its row/column markup), Qwen3-VL (no default system turn; resized to 64×64, 16-px
# patches merged 2×2: 4 tokens), Gemma 4 (its template writes <bos>, the image between blank lines and
# the empty thought channel after the model header; resized to 384×384, 16-px patches pooled 3×3:
# 64 tokens between <|image> and <image|>), InternVL3.5 (as InternVL).
PROMPTS = {
    "llava-1.5": (
        "USER: <image>\n" + QUESTION + " ASSISTANT:",
        "<s>USER: " + "<image>" * 4 + "\n" + QUESTION + " ASSISTANT:",
    ),
    "qwen2.5-vl": (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        "<|vision_start|><|image_pad|><|vision_end|>" + QUESTION + "<|im_end|>\n<|im_start|>assistant\n",
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        "<|vision_start|>" + "<|image_pad|>" * 4 + "<|vision_end|>" + QUESTION + "<|im_end|>\n<|im_start|>assistant\n",
    ),
    "internvl": (
        "<|im_start|>user\n<IMG_CONTEXT>\n" + QUESTION + "<|im_end|>\n<|im_start|>assistant\n",
        "<|im_start|>user\n<img>"
        + "<IMG_CONTEXT>" * 20
        + "</img>\n"
        + QUESTION
        + "<|im_end|>\n<|im_start|>assistant\n",
    ),
    "gemma-3": (
        "<bos><start_of_turn>user\n<start_of_image>" + QUESTION + "<end_of_turn>\n<start_of_turn>model\n",
        "<bos><start_of_turn>user\n\n\n<start_of_image>"
        + "<image_soft_token>" * 4
        + "<end_of_image>\n\n"
        + QUESTION
        + "<end_of_turn>\n<start_of_turn>model\n",
    ),
    "smolvlm": (
        "<|im_start|>User:<image>" + QUESTION + "<end_of_utterance>\nAssistant:",
        "<|im_start|>User:"
        + "".join(
            f"<fake_token_around_image><row_{r}_col_{c}>" + "<image>" * 4 + ("\n" if c == 2 else "")
            for r in (1, 2)
            for c in (1, 2)
        )
        + "\n<fake_token_around_image><global-img>"
        + "<image>" * 4
        + "<fake_token_around_image>"
        + QUESTION
        + "<end_of_utterance>\nAssistant:",
    ),
    "qwen3-vl": (
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>"
        + QUESTION
        + "<|im_end|>\n<|im_start|>assistant\n",
        "<|im_start|>user\n<|vision_start|>"
        + "<|image_pad|>" * 4
        + "<|vision_end|>"
        + QUESTION
        + "<|im_end|>\n<|im_start|>assistant\n",
    ),
    "gemma-4": (
        "<bos><|turn>user\n\n\n<|image|>\n\n" + QUESTION + "<turn|>\n<|turn>model\n<|channel>thought\n<channel|>",
        "<bos><|turn>user\n\n\n<|image>"
        + "<|image|>" * 64
        + "<image|>\n\n"
        + QUESTION
        + "<turn|>\n<|turn>model\n<|channel>thought\n<channel|>",
    ),
    "internvl3.5": (
        "<|im_start|>user\n<IMG_CONTEXT>\n" + QUESTION + "<|im_end|>\n<|im_start|>assistant\n",
        "<|im_start|>user\n<img>"
        + "<IMG_CONTEXT>" * 20
        + "</img>\n"
        + QUESTION
        + "<|im_end|>\n<|im_start|>assistant\n",
    ),
}
# The supervised tokens of a two-turn chat: each answer and the turn end after it (LLaVA-1.5's
# template writes no stop token: </s> is put after each answer, as Vicuna's separator was; Gemma-3
# stops on <end_of_turn>, its generation_config's second EOS; Gemma 4 on <turn|>, its second).
LABELS = {
    "llava-1.5": " True</s> At the top left.</s> ",
    "qwen2.5-vl": "True<|im_end|>\nAt the top left.<|im_end|>\n",
    "internvl": "True<|im_end|>\nAt the top left.<|im_end|>\n",
    "gemma-3": "True<end_of_turn>\nAt the top left.<end_of_turn>\n",
    "smolvlm": " True<end_of_utterance>\nAt the top left.<end_of_utterance>\n",
    "qwen3-vl": "True<|im_end|>\nAt the top left.<|im_end|>\n",
    "gemma-4": "True<turn|>\nAt the top left.<turn|>\n",
    "internvl3.5": "True<|im_end|>\nAt the top left.<|im_end|>\n",
}
PAIRS = [(QUESTION, "True"), ("Where is the defect?", "At the top left.")]


@pytest.fixture(scope="module")
def formats(tiny_vlm):
    return {family: ProcessorFormat(str(tiny_vlm(family))) for family in VLM_FAMILIES}


def image(width: int = 40, height: int = 40) -> Image.Image:
    return Image.new("RGB", (width, height), (200, 30, 30))


@pytest.mark.parametrize("family", VLM_FAMILIES)
def test_prompts_are_the_published_templates_with_the_processors_image_tokens(formats, family):
    chat = formats[family]
    prompt = chat.prompt(QUESTION, chat.images([image()]))
    assert prompt["text"] == PROMPTS[family][0]
    batch = chat.collate_prompts([{**prompt, "meta": {"key": "a"}}])
    assert chat.tokenizer.decode(batch["input_ids"][0]) == PROMPTS[family][1]
    assert torch.equal(batch["condition_mask"], batch["attention_mask"].bool())
    assert batch["meta"] == [{"key": "a"}] and batch["valid"].tolist() == [True] and batch["skipped"] == 0


@pytest.mark.parametrize("family", VLM_FAMILIES)
def test_answers_and_their_turn_ends_are_the_only_labels(formats, family):
    chat = formats[family]
    long = chat.conversation(PAIRS, chat.images([image(80, 60)]))
    short = chat.conversation(PAIRS[:1], chat.images([image(30, 90)]))  # another shape: padding
    batch = chat.collate([{**long, "meta": {}}, {**short, "meta": {}}])
    tokens = chat.tokenizer
    labels = batch["labels"]
    assert tokens.decode(labels[0][labels[0] != -100]) == LABELS[family]
    assert tokens.decode(labels[1][labels[1] != -100]) == LABELS[family].split("At the")[0]
    for row in range(2):
        ids, condition = batch["input_ids"][row], batch["condition_mask"][row]
        first_answer = int((labels[row] != -100).nonzero()[0])
        # the condition is the whole prompt before the first answer: images and first question
        assert condition[:first_answer].all()
        assert not condition[first_answer:].any()
        assert QUESTION in tokens.decode(ids[condition])
    assert not batch["attention_mask"][1][-1]  # right padding


def test_gemma_4s_answers_follow_its_generation_prompt(formats):
    # Gemma 4's prompt ends with an empty thought channel that its rendered answers lack: it goes
    # before each answer, unlabelled, so that the tokens before the first answer are the prompt's.
    chat = formats["gemma-4"]
    assert chat.answer_prefix == "<|channel>thought\n<channel|>"
    assert [f for f in VLM_FAMILIES if formats[f].answer_prefix] == ["gemma-4"]
    pixels = chat.images([image()])
    prompt = chat.prompt(QUESTION, pixels)
    conversation = chat.conversation(PAIRS, pixels)
    assert conversation["text"] == prompt["text"] + (
        "True<turn|>\n<|turn>user\nWhere is the defect?<turn|>\n<|turn>model\n<|channel>thought\n<channel|>"
        "At the top left.<turn|>\n"
    )
    assert [conversation["text"][a:b] for a, b in conversation["spans"]] == [
        "True<turn|>\n",
        "At the top left.<turn|>\n",
    ]
    batch = chat.collate([{**conversation, "meta": {}}])
    asked = chat.collate_prompts([{**prompt, "meta": {}}])["input_ids"][0]
    first_answer = int((batch["labels"][0] != -100).nonzero()[0])
    assert first_answer == len(asked) == int(batch["condition_mask"][0].sum())
    assert torch.equal(batch["input_ids"][0][:first_answer], asked)  # the same tokens, thought channel included
    assert chat.tokenizer.decode(batch["labels"][0][batch["labels"][0] != -100]) == LABELS["gemma-4"]


def test_an_mmad_user_turn_keeps_its_text_and_image_order(formats):
    chat = formats["qwen2.5-vl"]
    content = "Instruction\nFollowing is 1 image of normal sample:<image>\nTest image: \n<image>\nQuestion?"
    prompt = chat.prompt_text(content, chat.images([image(), image()]), system="Inspect.")
    assert prompt["text"] == (
        "<|im_start|>system\nInspect.<|im_end|>\n<|im_start|>user\nInstruction\nFollowing is 1 "
        "image of normal sample:<|vision_start|><|image_pad|><|vision_end|>\nTest image: \n"
        "<|vision_start|><|image_pad|><|vision_end|>\nQuestion?<|im_end|>\n<|im_start|>assistant\n"
    )
    with pytest.raises(ValueError, match="2 <image> placeholder"):
        chat.prompt_text(content, chat.images([image()]))


def test_a_sequence_longer_than_max_length_is_cut_inside_the_answers(tiny_vlm):
    chat = ProcessorFormat(str(tiny_vlm("qwen2.5-vl")), max_length=64)
    long = chat.conversation(PAIRS + [("Describe it.", "A long scratch " * 20)], chat.images([image()]))
    batch = chat.collate([{**long, "meta": {}}])
    assert batch["input_ids"].shape == batch["labels"].shape == batch["mm_token_type_ids"].shape == (1, 64)
    assert chat.tokenizer.decode(batch["labels"][0][batch["labels"][0] != -100]).startswith("True<|im_end|>")
    # a prompt that alone fills max_length is left out and counted; a batch of nothing else fails
    tight = ProcessorFormat(str(tiny_vlm("qwen2.5-vl")), max_length=60)
    big = tight.conversation(PAIRS, tight.images([image(112, 112)]))  # 16 image tokens: a 64-token prompt
    small = tight.conversation(PAIRS[:1], tight.images([image()]))
    batch = tight.collate([{**big, "meta": {"key": "big"}}, {**small, "meta": {"key": "small"}, "skipped": 1}])
    assert batch["meta"] == [{"key": "small"}] and batch["skipped"] == 2 and batch["input_ids"].shape[0] == 1
    with pytest.raises(ValueError, match=r"max_length 60 leaves no room for an answer.*\['big'\]"):
        tight.collate([{**big, "meta": {"key": "big"}}])


def test_spans_move_past_the_expanded_placeholders():
    # two placeholders of 5 characters grown to 20 and 11: spans after them shift by 15, then by 21
    replacements = [{"span": (3, 8), "new_span": (3, 23)}, {"span": (10, 15), "new_span": (25, 36)}]
    assert expanded([(0, 2), (8, 10), (16, 20)], replacements) == [(0, 2), (23, 25), (37, 41)]


def test_processor_settings_change_the_image_tokens(tiny_vlm):
    folder = str(tiny_vlm("qwen2.5-vl"))
    counts = []
    for settings in (None, {"max_pixels": 3136}):  # the fixture's 12544 → 56 × 56 at most
        chat = ProcessorFormat(folder, processor_kwargs=settings)
        batch = chat.collate_prompts([{**chat.prompt(QUESTION, chat.images([image(112, 112)])), "meta": {}}])
        counts.append(int((batch["input_ids"] == chat.processor.image_token_id).sum()))
    assert counts == [16, 4]

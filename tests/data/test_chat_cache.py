"""The chat caches give exactly the uncached tokens, and switch themselves off where they cannot."""

from __future__ import annotations

import logging

import pytest
from tokenizers import AddedToken
from transformers import AutoTokenizer

from maugpt.data.chat import ChatEncoder
from maugpt.data.chat_cache import PROBES, SegmentTokenizer, TemplateRenderer
from maugpt.data.shards import iter_samples


@pytest.fixture
def tokenizer(tokenizer_dir):
    return AutoTokenizer.from_pretrained(tokenizer_dir)


def test_cached_encoding_equals_uncached_on_every_synthetic_conversation(tokenizer, synthetic_dir):
    cached, plain = ChatEncoder(tokenizer, image_tokens=3), ChatEncoder(tokenizer, image_tokens=3, cache=False)
    assert cached.renderer.enabled and cached.segments.enabled
    assert not plain.renderer.enabled and not plain.segments.enabled
    conversations = 0
    for sample in iter_samples(synthetic_dir / "mauset" / "train"):
        pairs = [(qa["question"], qa["answer"]) for qa in sample["json"]["qa"]]
        for chunk in (pairs, pairs[:1], pairs[::-1]):
            a, b = cached.encode(chunk, images=2), plain.encode(chunk, images=2)
            assert a.input_ids.tolist() == b.input_ids.tolist() and a.labels.tolist() == b.labels.tolist()
            assert a.condition_end == b.condition_end
            conversations += 1
        assert cached.prompt(pairs[0][0]).tolist() == plain.prompt(pairs[0][0]).tolist()
    assert conversations >= 60
    # the role headers, the template's questions and repeated answers were tokenized once each
    segments = cached.segments
    assert segments.misses == len(segments.pieces) and segments.hits > 3 * segments.misses


def test_an_added_token_that_strips_its_neighbours_turns_the_segment_cache_off(tokenizer, caplog):
    tokenizer.add_tokens([AddedToken("<sep>", lstrip=True, rstrip=True)])
    probe = "left <sep> right"
    with caplog.at_level(logging.WARNING):
        segments = SegmentTokenizer(tokenizer, probes=["plain", probe])
    assert not segments.enabled and "token-segment cache off" in caplog.text
    encoding = tokenizer.backend_tokenizer.encode(probe, add_special_tokens=False)
    assert segments.encode(probe)[0].tolist() == encoding.ids  # the uncached path, exact


@pytest.mark.parametrize(
    "template",
    [
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] | trim }}<|im_end|>\n{% endfor %}",
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] | upper }}<|im_end|>\n{% endfor %}",
        "{% for m in messages %}{% if m['content'] %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}{% endif %}{% endfor %}",
    ],
    ids=["trims", "rewrites", "branches_on_empty"],
)
def test_templates_that_do_not_copy_contents_verbatim_turn_the_template_cache_off(tokenizer, template):
    tokenizer.chat_template = template
    renderer = TemplateRenderer(tokenizer)
    assert not renderer.enabled
    messages = [{"role": "user", "content": " hi "}, {"role": "assistant", "content": ""}]
    assert renderer.render(messages) == tokenizer.apply_chat_template(messages, tokenize=False)


def test_a_difference_the_probes_missed_is_caught_by_the_periodic_check(tokenizer, caplog):
    tokenizer.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
        "{% if 'defect' in m['content'] %} [flagged]{% endif %}<|im_end|>\n{% endfor %}"
    )
    renderer = TemplateRenderer(tokenizer, verify_every=2)
    assert renderer.enabled  # no probe says "defect"
    messages = [{"role": "user", "content": "any defect?"}]
    reference = tokenizer.apply_chat_template(messages, tokenize=False)
    assert renderer.render(messages) != reference  # the first call is not checked...
    with caplog.at_level(logging.WARNING):
        assert renderer.render(messages) == reference  # ...the second is: the cache goes off
    assert not renderer.enabled and "chat-template cache off" in caplog.text
    assert renderer.render(messages) == reference


def test_the_piece_cache_is_bounded(tokenizer):
    segments = SegmentTokenizer(tokenizer, max_entries=3, probes=PROBES)
    for word in ("alpha", "beta", "gamma", "delta", "epsilon"):
        ids, starts = segments.encode(f"<|im_start|>{word}<|im_end|>")
        assert (
            ids.tolist()
            == tokenizer.backend_tokenizer.encode(f"<|im_start|>{word}<|im_end|>", add_special_tokens=False).ids
        )
        assert len(segments.pieces) <= 3

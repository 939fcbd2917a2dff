"""KV-cached decoding must give the logits of a full forward pass, for every adapter."""

from __future__ import annotations

import pytest
import torch

from maugpt.adapters import (
    AdapterContext,
    AMoELoRA,
    AnomalyAware,
    ForwardInputs,
    LoRA,
    LoRAMoE,
    adapter_context,
    adapter_layers,
    inject,
)
from tests.conftest import randomize_adapters, tiny_causal_lm

ADAPTERS = {
    "none": None,
    "lora": LoRA(rank=4, alpha=8),
    "loramoe": LoRAMoE(experts=4, rank=2, dropout=0.0),
    "amoe_lora": AMoELoRA(experts=4, rank=2, hyper_hidden=8),
    "amoe_lora_shared": AMoELoRA(experts=4, rank=2, hyper_hidden=8, share_input=True),
    "anomaly_aware": AnomalyAware(rank=2, hyper_hidden=8),
}
PROMPT, NEW = 6, 5


def adapted_model(kind: str):
    model = tiny_causal_lm()
    if ADAPTERS[kind] is None:
        return model, AdapterContext()
    inject(model, ADAPTERS[kind])
    model.double()
    randomize_adapters(model)
    return model, adapter_context(model)


def left_padded_prompts():
    ids = torch.randint(1, 96, (2, PROMPT), generator=torch.Generator().manual_seed(3))
    mask = torch.ones(2, PROMPT, dtype=torch.long)
    ids[0, :2], mask[0, :2] = 0, 0  # sample 0 has a 4-token prompt, left-padded
    return ids, mask


def positions(mask: torch.Tensor) -> torch.Tensor:
    return (mask.cumsum(-1) - 1).clamp_min(0)


def decode_with_cache(model, ctx, ids, mask, freeze: bool):
    """Greedy decoding by hand: one prefill, then one token at a time from the KV cache."""
    inputs = ForwardInputs(condition_mask=mask.bool())
    with ctx.generating(inputs) if freeze else ctx.use(inputs):
        out = model(ids, attention_mask=mask, position_ids=positions(mask), use_cache=True)
        steps, seq = [out.logits[:, -1]], ids
        for _ in range(NEW - 1):
            token = steps[-1].argmax(-1, keepdim=True)
            seq, mask = torch.cat([seq, token], 1), torch.cat([mask, torch.ones_like(token)], 1)
            position_ids = positions(mask)[:, -1:]
            out = model(token, attention_mask=mask, position_ids=position_ids, cache=out.cache, use_cache=True)
            steps.append(out.logits[:, -1])
    return seq, mask, torch.stack(steps, 1)


def full_forward(model, ctx, seq, mask):
    condition = mask.bool().clone()
    condition[:, PROMPT:] = False  # the prompt alone conditions the anomaly-aware expert
    with ctx.use(ForwardInputs(token_mask=mask.bool(), condition_mask=condition)):
        logits = model(seq, attention_mask=mask, position_ids=positions(mask)).logits
    return logits[:, PROMPT - 1 :]


@pytest.mark.parametrize("kind", ADAPTERS)
def test_kv_cached_decoding_equals_a_full_forward(kind):
    model, ctx = adapted_model(kind)
    ids, mask = left_padded_prompts()
    with torch.no_grad():
        seq, full_mask, cached = decode_with_cache(model, ctx, ids, mask, freeze=True)
        full = full_forward(model, ctx, seq, full_mask)
    assert seq.shape == (2, PROMPT + NEW - 1)
    assert (cached - full).abs().max().item() <= 1e-10


def test_without_freezing_the_condition_decoding_is_an_error_not_a_silent_drift():
    # The control for the test above: a decode step cannot pool a prompt it no longer sees.
    model, ctx = adapted_model("amoe_lora")
    ids, mask = left_padded_prompts()
    with torch.no_grad(), pytest.raises(ValueError, match=r"condition_mask has shape \(2, 6\) .* \(2, 1, 32\)"):
        decode_with_cache(model, ctx, ids, mask, freeze=False)


def test_hugging_face_generate_uses_the_condition_fixed_at_prefill():
    model, ctx = adapted_model("amoe_lora")
    ids, mask = left_padded_prompts()
    with torch.no_grad(), ctx.generating(ForwardInputs(condition_mask=mask.bool())) as cache:
        out = model.generate(
            ids,
            attention_mask=mask,
            max_new_tokens=NEW,
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
        )
    # one core per adapted layer, computed at the prefill; leaving the block forgets them
    assert sorted(cache.cores) == sorted(name for name, _ in adapter_layers(model)) and ctx.generation is None
    full_mask = torch.cat([mask, torch.ones(2, NEW, dtype=mask.dtype)], 1)
    with torch.no_grad():
        full = full_forward(model, ctx, out.sequences, full_mask)
    # generate() hands out float32 logits, hence float32 rounding here.
    torch.testing.assert_close(torch.stack(out.logits, 1), full[:, :NEW].float(), rtol=1e-6, atol=1e-6)

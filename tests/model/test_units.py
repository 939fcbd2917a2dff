"""``compile_llm``: the adapters trace without graph breaks, and compiled equals eager."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from maugpt.adapters import AMoELoRA, ForwardInputs, LoRA, LoRAMoE, adapter_context, adapter_layers, inject
from maugpt.compat import explain
from maugpt.model import MAUGPT
from maugpt.model.units import compile_llm, decoder_layers
from tests.conftest import randomize_adapters, tiny_causal_lm

ADAPTERS = {
    "lora": lambda: LoRA(rank=4, alpha=8, dropout=0.1),
    "loramoe": lambda: LoRAMoE(experts=4, rank=2, dropout=0.1, balance_weight=0.01),
    "amoe_lora": lambda: AMoELoRA(experts=4, rank=2, hyper_hidden=8),
}


def adapted_lm(kind: str, dtype=torch.float64):
    model = tiny_causal_lm(dtype=dtype)
    inject(model, ADAPTERS[kind]())
    model.to(dtype)
    randomize_adapters(model)
    return model.train()


def batch():
    ids = torch.randint(1, 96, (2, 9), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[0, :3] = 0
    return ids, mask


def loss_and_grads(model, ids, mask):
    ctx = adapter_context(model)
    condition = mask.bool().clone()
    condition[:, 6:] = False
    ctx.set(ForwardInputs(token_mask=mask.bool(), condition_mask=condition, sample_labels=torch.tensor([0, 1])))
    torch.manual_seed(3)  # the same dropout masks in both runs
    loss = model(ids, attention_mask=mask, labels=ids, use_cache=False).loss
    aux = [layer.auxiliary_loss() for _, layer in adapter_layers(model)]
    total = loss + sum(a for a in aux if a is not None)
    params = [p for p in model.parameters() if p.requires_grad]
    return total.detach(), torch.autograd.grad(total, params)


@pytest.mark.parametrize("kind", ADAPTERS)
def test_a_decoder_layer_with_adapters_is_one_graph_without_breaks(kind):
    model = adapted_lm(kind)
    ids, mask = batch()
    layer = decoder_layers(model)[0]
    seen = {}
    hook = layer.register_forward_pre_hook(lambda m, a, k: seen.update(args=a, kwargs=k), with_kwargs=True)
    loss_and_grads(model, ids, mask)
    hook.remove()
    torch.compiler.reset()
    explained = explain(layer, *seen["args"], **seen["kwargs"])
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons


@pytest.mark.parametrize("kind", ["amoe_lora"])  # the others trace the same Functions (see above)
def test_compiled_decoder_layers_train_exactly_like_eager(kind):
    ids, mask = batch()
    eager_loss, eager_grads = loss_and_grads(adapted_lm(kind), ids, mask)
    model = adapted_lm(kind)
    torch.compiler.reset()
    assert len(compile_llm(model, "decoder_layers", backend="aot_eager")) == 2
    loss, grads = loss_and_grads(model, ids, mask)
    assert (loss - eager_loss).abs().item() <= 1e-12
    assert len(grads) == len(eager_grads) > 0
    for g, e in zip(grads, eager_grads):
        assert (g - e).abs().max().item() <= 1e-10


def test_an_inductor_compiled_adapter_agrees_with_eager():
    # One real inductor compile (C++ on this CPU, ~15 s): the adapter's forward and backward kernels.
    model = adapted_lm("amoe_lora")
    ids, mask = batch()
    eager_loss, eager_grads = loss_and_grads(model, ids, mask)
    torch.compiler.reset()
    units = compile_llm(model, "adapters")
    assert len(units) == 14  # 7 projections × 2 decoder layers
    loss, grads = loss_and_grads(model, ids, mask)
    assert (loss - eager_loss).abs().item() <= 1e-10
    for g, e in zip(grads, eager_grads):
        assert (g - e).abs().max().item() <= 1e-10
    # the parameter names stay those of the eager model: checkpoints and adapter files are unchanged
    assert all("_orig_mod" not in name for name, _ in model.named_parameters())


def test_bad_compile_targets_are_named():
    with pytest.raises(
        ValueError, match=r"compile_llm must be one of \['none', 'decoder_layers', 'adapters'\], got 'all'"
    ):
        MAUGPT(llm="no/such/model", vision_encoder="no-such-encoder", compile_llm="all")
    with pytest.raises(ValueError, match="'adapters' but the LLM has no adapter layers"):
        compile_llm(tiny_causal_lm(), "adapters")
    assert compile_llm(nn.Sequential(), "none") == []


def test_compiled_decoder_layers_under_activation_checkpointing_match_eager():
    ids, mask = batch()
    eager = adapted_lm("amoe_lora")
    eager.activation_checkpointing_enable({"use_reentrant": False})
    eager_loss, eager_grads = loss_and_grads(eager, ids, mask)
    model = adapted_lm("amoe_lora")
    model.activation_checkpointing_enable({"use_reentrant": False})
    torch.compiler.reset()
    compile_llm(model, "decoder_layers", backend="aot_eager")
    loss, grads = loss_and_grads(model, ids, mask)
    assert (loss - eager_loss).abs().item() <= 1e-12
    for g, e in zip(grads, eager_grads):
        assert (g - e).abs().max().item() <= 1e-10

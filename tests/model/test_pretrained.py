"""PretrainedVLM on eight families' tiny random models: adapters go into the language model only, a
fresh adapter leaves every output as it was, and one fine-tuning step moves exactly the trainable
tensors."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from maugpt.adapters import AMoELoRA, LoRA, LoRAMoE, adapter_layers
from maugpt.data.processor import ProcessorFormat
from maugpt.model.mau_gpt import model_inputs
from maugpt.training.pretrained import PretrainedVLMModule
from tests.conftest import VLM_FAMILIES

ADAPTERS = {
    "lora": lambda: LoRA(rank=4, alpha=8),
    "loramoe": lambda: LoRAMoE(experts=2, rank=2, dropout=0.0),
    "amoe_lora": lambda: AMoELoRA(experts=2, rank=2, hyper_hidden=8),
}
PROJECTOR = {  # the modules stage 1 trains: the connector (Qwen3-VL's with its deepstack mergers)
    "llava-1.5": ("model.multi_modal_projector",),
    "qwen2.5-vl": ("model.visual.merger",),
    "internvl": ("model.multi_modal_projector",),
    "gemma-3": ("model.multi_modal_projector",),
    "smolvlm": ("model.connector",),
    "qwen3-vl": ("model.visual.merger", "model.visual.deepstack_merger_list"),
    "gemma-4": ("model.embed_vision",),
    "internvl3.5": ("model.multi_modal_projector",),
}


def batches(folder, prompts: bool = False) -> dict:
    chat = ProcessorFormat(str(folder))
    images = [Image.new("RGB", (48, 40), (200, 30, 30)), Image.new("RGB", (30, 60), (20, 90, 30))]
    if prompts:
        examples = [chat.prompt("Is it defective?", chat.images([im])) for im in images]
        return chat.collate_prompts([{**e, "meta": {}} for e in examples])
    examples = [
        chat.conversation([("Is it defective?", answer)], chat.images([im]))
        for im, answer in zip(images, ("True", "False, it is a normal bottle."))
    ]
    return chat.collate([{**e, "meta": {}} for e in examples])


@pytest.mark.parametrize("family", VLM_FAMILIES)
def test_stage_1_trains_only_the_projector(tiny_vlm, family):
    module = PretrainedVLMModule(str(tiny_vlm(family)), stage=1)
    names = module.trainable_names()
    parts = [f"model.vlm.{part}." for part in PROJECTOR[family]]
    assert names and all(n.startswith(tuple(parts)) for n in names)
    assert all(any(n.startswith(part) for n in names) for part in parts)  # every part trains
    assert module.model.projector_names == PROJECTOR[family]
    summary = module.parameter_summary()
    assert summary["adapter"] == summary["vision"] == 0
    assert summary["projector"] == sum(p.numel() for p in module.model.projector.parameters())


@pytest.mark.parametrize("family", VLM_FAMILIES)
@pytest.mark.parametrize("kind", sorted(ADAPTERS))
def test_a_fresh_adapter_in_the_language_model_changes_no_output(tiny_vlm, family, kind):
    folder = tiny_vlm(family)
    plain = PretrainedVLMModule(str(folder), stage=1).model.eval()
    adapted = PretrainedVLMModule(str(folder), stage=2, adapter=ADAPTERS[kind]()).model.eval()
    layers = [layer for _, layer in adapter_layers(adapted.vlm)]
    assert layers and {id(x) for x in layers} == {id(x) for _, x in adapter_layers(adapted.llm)}  # the LM's only
    config = adapted.vlm.config.get_text_config()
    assert len(layers) == config.num_hidden_layers * len(ADAPTERS[kind]().targets)
    batch = batches(folder)
    with torch.no_grad():
        expected = plain(**model_inputs(batch))
        got = adapted(**model_inputs(batch))
    assert torch.equal(got.logits, expected.logits)
    assert torch.equal(got.loss, expected.loss)
    prompts = batches(folder, prompts=True)
    # pure greedy (Qwen2.5-VL's generation_config adds a repetition penalty), to compare with argmax below
    new = plain.generate(**model_inputs(prompts), max_new_tokens=4, repetition_penalty=1.0)
    assert new.shape == (2, 4)
    assert torch.equal(adapted.generate(**model_inputs(prompts), max_new_tokens=4, repetition_penalty=1.0), new)
    # only the new tokens come back: the first is the full forward's greedy choice after each prompt
    with torch.no_grad():
        last = plain(**model_inputs(prompts)).logits[:, -1].clone()
    last[:, plain.image_token_ids] = float("-inf")  # the image placeholders are never generated
    assert torch.equal(last.argmax(-1), new[:, 0])


def test_one_fine_tuning_step_moves_the_adapter_and_projector_only(tiny_vlm):
    folder = tiny_vlm("qwen2.5-vl")
    module = PretrainedVLMModule(str(folder), stage=2, adapter=AMoELoRA(experts=2, rank=2, hyper_hidden=8), lr=1e-2)
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    trainable = set(module.trainable_names())
    owned = {id(p) for _, layer in adapter_layers(module.model.llm) for p in layer.adapter_parameters().values()}
    owned |= {id(p) for p in module.model.projector.parameters()}
    assert {id(p) for p in module.parameters() if p.requires_grad} == owned
    batch = batches(folder)
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-2)
    with torch.no_grad():
        logits_before = module.model(**model_inputs(batch)).logits
    loss = module.training_step(batch, 0)
    assert torch.isfinite(loss)
    loss.backward()
    optimizer.step()
    moved = {n for n, p in module.named_parameters() if not torch.equal(p, before[n])}
    assert moved and moved <= trainable
    assert any(n.startswith("model.vlm.model.visual.merger.") for n in moved)
    assert all(torch.equal(p, before[n]) for n, p in module.named_parameters() if n not in trainable)
    with torch.no_grad():
        assert not torch.equal(module.model(**model_inputs(batch)).logits, logits_before)
    # the checkpoint keeps exactly the trainable tensors
    assert set(module.state_dict()) == trainable


def test_an_unknown_projector_is_named(tiny_vlm):
    with pytest.raises(ValueError, match="has no module 'mm_proj'"):
        PretrainedVLMModule(str(tiny_vlm("llava-1.5")), stage=1, projector="mm_proj")


@pytest.mark.parametrize("family", VLM_FAMILIES)
def test_gradient_checkpointing_gives_the_same_gradients(tiny_vlm, family):
    folder = str(tiny_vlm(family))
    modules = []
    for checkpointing in (True, False):
        torch.manual_seed(0)
        modules.append(
            PretrainedVLMModule(
                folder,
                stage=2,
                adapter=AMoELoRA(experts=2, rank=2, hyper_hidden=8),
                gradient_checkpointing=checkpointing,
            ).train()
        )
    recomputed, plain = modules
    assert recomputed.model.llm.is_activation_checkpointing and not plain.model.llm.is_activation_checkpointing
    plain.load_state_dict(recomputed.state_dict(), strict=False)
    batch = batches(folder)
    losses = [m.lm_loss(batch) for m in modules]
    for loss in losses:
        loss.backward()
    assert torch.equal(losses[0], losses[1])
    grads = [{n: p.grad for n, p in m.named_parameters() if p.requires_grad} for m in modules]
    assert grads[0].keys() == grads[1].keys() and all(g is not None for g in grads[0].values())
    assert all(torch.allclose(grads[0][n], grads[1][n], atol=1e-6) for n in grads[0])


def test_a_language_model_alone_is_refused_naming_what_it_is(tiny_base):
    with pytest.raises(ValueError, match="not a vision-language processor with a tokenizer and an image processor"):
        PretrainedVLMModule(str(tiny_base["llm"]), stage=1)

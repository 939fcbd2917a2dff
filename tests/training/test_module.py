"""MAUGPTModule end to end on the tiny base: stages, checkpoints, resume, generation, faults."""

from __future__ import annotations

import pytest
import torch

from maugpt.adapters import AMoELoRA, ForwardInputs, adapter_layers
from maugpt.training.cli import run
from maugpt.training.module import MAUGPTModule
from tests.conftest import randomize_adapters
from tests.training.conftest import AMOE, stage_config


def module(tiny_base, **kwargs):
    return MAUGPTModule(str(tiny_base["llm"]), str(tiny_base["vision"]), **kwargs)


def test_stage_1_trains_the_projector_and_stage_2_the_adapter_and_projector(tiny_base):
    stage1 = module(tiny_base, stage=1)
    assert stage1.trainable_names() and all(n.startswith("model.projector.") for n in stage1.trainable_names())
    stage2 = module(tiny_base, stage=2, adapter=AMoELoRA(experts=4, rank=2, hyper_hidden=8))
    names = stage2.trainable_names()
    adapter = {
        f"model.llm.{name}.{k}" for name, layer in adapter_layers(stage2.model.llm) for k in layer.adapter_parameters()
    }
    projector = {n for n in names if n.startswith("model.projector.")}
    assert set(names) == adapter | projector and adapter and projector
    assert stage2.parameter_summary()["vision"] == 0


def test_wrong_stage_settings_fail_before_any_data_loads(tiny_base, tmp_path):
    with pytest.raises(ValueError, match="stage 1 trains only the projector"):
        module(tiny_base, stage=1, adapter=AMoELoRA())
    with pytest.raises(ValueError, match="stage 2 trains an adapter"):
        module(tiny_base, stage=2)
    with pytest.raises(FileNotFoundError, match="nope.ckpt does not exist: run the previous stage first"):
        module(tiny_base, stage=2, adapter=AMoELoRA(), init_from=str(tmp_path / "nope.ckpt"))


def test_both_stages_run_end_to_end_and_checkpoint_only_trainable_tensors(tiny_base, synthetic_dir, tmp_path):
    cli1 = run(["fit", "--config", stage_config(tmp_path, tiny_base, synthetic_dir, 1)])
    last1 = tmp_path / "stage1" / "checkpoints" / "last.ckpt"
    state1 = torch.load(last1, weights_only=True)["state_dict"]
    assert set(state1) == set(cli1.model.trainable_names()) and cli1.trainer.global_step == 3
    cli2 = run(
        ["fit", "--config", stage_config(tmp_path, tiny_base, synthetic_dir, 2, adapter=AMOE, init_from=str(last1))]
    )
    state2 = torch.load(tmp_path / "stage2" / "checkpoints" / "last.ckpt", weights_only=True)
    assert set(state2["state_dict"]) == set(cli2.model.trainable_names())
    assert state2["maugpt"]["stage"] == 2 and state2["optimizer_states"]
    assert not any(".base." in k or "vision" in k for k in state2["state_dict"])


def test_stage_2_starts_from_stage_1s_projector(tiny_base, synthetic_dir, tmp_path):
    run(["fit", "--config", stage_config(tmp_path, tiny_base, synthetic_dir, 1)])
    last1 = tmp_path / "stage1" / "checkpoints" / "last.ckpt"
    stage2 = module(tiny_base, stage=2, adapter=AMoELoRA(experts=2, rank=2, hyper_hidden=4), init_from=str(last1))
    saved = torch.load(last1, weights_only=True)["state_dict"]
    for name, tensor in saved.items():
        assert torch.equal(stage2.get_parameter(name), tensor)


def test_resume_continues_the_step_count(tiny_base, synthetic_dir, tmp_path):
    config = stage_config(tmp_path, tiny_base, synthetic_dir, 2, batches=2, adapter=AMOE)
    first = run(["fit", "--config", config])
    assert first.trainer.global_step == 2
    resumed = run(["fit", "--config", config, "--trainer.max_epochs", "2", "--ckpt_path", "last"])
    assert resumed.trainer.global_step == 4 and resumed.trainer.current_epoch == 2


def test_kv_cached_generation_equals_the_full_forward_through_the_whole_model(tiny_base):
    model = module(tiny_base, stage=2, adapter=AMoELoRA(experts=4, rank=2, hyper_hidden=8)).model.double().eval()
    randomize_adapters(model.llm, std=0.1)
    torch.manual_seed(0)
    tokens = model.image_tokens
    prompt = torch.cat([torch.full((2, tokens), model.image_token_id), torch.randint(5, 400, (2, 6))], dim=1)
    mask = torch.ones_like(prompt, dtype=torch.bool)
    pixels = torch.randn(2, 1, 3, 96, 96, dtype=torch.float64)
    out = model.llm.generate  # generation through MAUGPT.generate, with logits kept
    with torch.no_grad():
        embeds = model.embed(prompt, pixels)
        from maugpt.adapters import adapter_context

        with adapter_context(model.llm).generating(ForwardInputs(condition_mask=mask)):
            gen = out(
                inputs_embeds=embeds,
                attention_mask=mask,
                max_new_tokens=4,
                do_sample=False,
                output_logits=True,
                return_dict_in_generate=True,
                pad_token_id=model.tokenizer.pad_token_id,
                eos_token_id=None,
                suppress_tokens=[model.image_token_id],
            )
        assert torch.equal(gen.sequences, model.generate(prompt, mask, pixels, max_new_tokens=4, eos_token_id=None))
        full_ids = torch.cat([prompt, gen.sequences[:, :-1]], dim=1)
        condition = torch.zeros_like(full_ids, dtype=torch.bool)
        condition[:, : prompt.shape[1]] = True
        full = model(full_ids, torch.ones_like(full_ids, dtype=torch.bool), pixels, condition_mask=condition).logits
    torch.testing.assert_close(torch.stack(gen.logits, 1), full[:, prompt.shape[1] - 1 :].float(), rtol=1e-5, atol=1e-5)


def test_image_slots_must_match_the_encoder(tiny_base):
    model = module(tiny_base, stage=1).model
    ids = torch.full((1, model.image_tokens - 1), model.image_token_id)
    with pytest.raises(
        ValueError, match=rf"each row needs 1 × {model.image_tokens} <image> slots, found \[{model.image_tokens - 1}\]"
    ):
        model.embed(ids, torch.zeros(1, 1, 3, 96, 96))


def test_a_non_finite_loss_stops_the_run_naming_the_step(tiny_base, synthetic_dir, tmp_path, monkeypatch):
    from maugpt.model import MAUGPT

    original = MAUGPT.forward

    def poisoned(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(MAUGPT, "forward", poisoned)
    with pytest.raises(FloatingPointError, match="non-finite loss nan at global step 0"):
        run(["fit", "--config", stage_config(tmp_path, tiny_base, synthetic_dir, 1)])
    cli = run(
        [
            "fit",
            "--config",
            stage_config(tmp_path, tiny_base, synthetic_dir, 1, nonfinite="skip"),
            "--trainer.default_root_dir",
            str(tmp_path / "skip"),
        ]
    )
    assert cli.model.skipped_nonfinite == 3


def test_example_loss_reduction_weighs_every_example_equally(tiny_base):
    token = module(tiny_base, stage=1)
    example = module(tiny_base, stage=1, loss_reduction="example")
    example.model.projector.load_state_dict(token.model.projector.state_dict())
    tokens = token.image_tokens
    ids = torch.cat([torch.full((2, tokens), token.model.image_token_id), torch.randint(5, 300, (2, 12))], dim=1)
    labels = torch.full_like(ids, -100)
    labels[0, -2:] = ids[0, -2:]  # a one-word answer
    labels[1, -9:] = ids[1, -9:]  # a long answer
    batch = {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids, dtype=torch.bool),
        "labels": labels,
        "pixel_values": torch.randn(2, 1, 3, 96, 96),
    }
    with torch.no_grad():
        per_example = [token.lm_loss({k: v[i : i + 1] for k, v in batch.items()}) for i in range(2)]
        assert example.lm_loss(batch).item() == pytest.approx((per_example[0] + per_example[1]).item() / 2, rel=1e-5)
        # the token mean weighs the long answer 4.5 times more
        expected_token = (per_example[0] * 2 + per_example[1] * 9) / 11
        assert token.lm_loss(batch).item() == pytest.approx(expected_token.item(), rel=1e-5)


def test_the_model_takes_the_batch_without_annotations_and_rejects_unknown_keys(tiny_base):
    from maugpt.model.mau_gpt import model_inputs

    stage1 = module(tiny_base, stage=1)
    ids = torch.cat([torch.full((1, stage1.image_tokens), stage1.model.image_token_id), torch.arange(5, 9)[None]], 1)
    batch = {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids, dtype=torch.bool),
        "labels": ids,
        "pixel_values": torch.randn(1, 1, 3, 96, 96),
        "valid": torch.tensor([True]),
        "meta": [{}],
        "skipped": 0,
    }
    assert sorted(model_inputs(batch, labels=None)) == ["attention_mask", "input_ids", "labels", "pixel_values"]
    assert model_inputs(batch, labels=None)["labels"] is None and batch["labels"] is ids  # the batch is untouched
    with torch.no_grad():
        assert torch.isfinite(stage1.lm_loss(batch))
        with pytest.raises(TypeError, match="unexpected keyword argument 'pixel_value'"):
            stage1.lm_loss({**batch, "pixel_value": batch["pixel_values"]})  # a misspelt key fails


def test_test_step_decodes_with_the_benchmarks_settings(tiny_base, monkeypatch):
    stage2 = module(tiny_base, stage=2, adapter=AMoELoRA(experts=2, rank=2, hyper_hidden=4), max_new_tokens=7)
    seen = []

    def generate(*args, **kwargs):
        seen.append(kwargs)
        return torch.zeros(1, 2, dtype=torch.long)

    class Evaluation:
        generate_kwargs = {"do_sample": True, "temperature": 0.2, "max_new_tokens": 64}

        def add(self, meta, answer, choice_logprobs=None):
            seen.append(meta)

    monkeypatch.setattr(stage2.model, "generate", generate)
    stage2.evaluation = Evaluation()
    batch = {
        "input_ids": torch.ones(1, 3, dtype=torch.long),
        "attention_mask": torch.ones(1, 3, dtype=torch.long),
        "pixel_values": torch.zeros(1, 1, 3, 32, 32),
        "meta": [{"key": "k"}],
        "valid": torch.tensor([True]),
    }
    stage2.test_step(batch, 0)
    assert {k: seen[0][k] for k in ("do_sample", "temperature", "max_new_tokens")} == {
        "do_sample": True,
        "temperature": 0.2,
        "max_new_tokens": 64,
    }
    assert seen[1] == {"key": "k"}
    stage2.evaluation = type("Plain", (), {"add": Evaluation.add})()  # no settings: the model's own
    stage2.test_step(batch, 0)
    assert seen[2]["max_new_tokens"] == 7 and "do_sample" not in seen[2]

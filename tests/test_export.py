"""``maugpt export``: a trained checkpoint's adapter as maugpt's file, a PEFT folder and merged weights."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from maugpt.adapters import Adapter, adapter_state_dict, inject, load_adapter, read_adapter_metadata
from maugpt.cli import main
from maugpt.training.cli import run
from tests.training.conftest import AMOE, stage_config

LORA = {
    "class_path": "maugpt.adapters.LoRA",
    "init_args": {"rank": 4, "alpha": 8, "targets": ["q_proj", "v_proj", "down_proj"]},
}


@pytest.fixture(scope="module")
def trained(tiny_base, synthetic_dir, tmp_path_factory):
    """Stage-2 checkpoints of a short LoRA and AMoE-LoRA run (a high learning rate moves B off zero)."""
    checkpoints = {}
    for name, adapter in (("lora", LORA), ("amoe_lora", AMOE)):
        folder = tmp_path_factory.mktemp(name)
        run(
            [
                "fit",
                "--config",
                stage_config(folder, tiny_base, synthetic_dir, 2, batches=2, adapter=adapter),
                "--model.init_args.lr",
                "0.05",
            ]
        )
        checkpoints[name] = folder / "stage2" / "checkpoints" / "last.ckpt"
    return checkpoints


def logits(model, ids):
    with torch.no_grad():
        return model.eval()(input_ids=ids).logits


def adapted_llm(tiny_base, path):
    config, _ = read_adapter_metadata(path)
    llm = AutoModelForCausalLM.from_pretrained(tiny_base["llm"])
    inject(llm, Adapter.from_config(config))
    load_adapter(llm, path)
    return llm


@pytest.mark.parametrize("kind", ["lora", "amoe_lora"])
def test_the_adapter_file_holds_exactly_the_checkpoints_adapter_tensors(trained, tmp_path, kind, capsys):
    out = tmp_path / "adapter.safetensors"
    main(["export", str(trained[kind]), str(out)])
    assert f"wrote adapter export of {trained[kind]} to {out}" in capsys.readouterr().out
    saved = torch.load(trained[kind], weights_only=True)
    config, layers = read_adapter_metadata(out)
    assert config == saved["hyper_parameters"]["adapter"]
    from safetensors.torch import load_file

    exported = load_file(str(out))
    expected = {k[len("model.llm.") :]: v for k, v in saved["state_dict"].items() if k.startswith("model.llm.")}
    assert exported.keys() == expected.keys() and all(torch.equal(exported[k], expected[k]) for k in expected)
    assert len(layers) == (3 * 3 if kind == "lora" else 3 * 7)  # 3 decoder layers × targets
    with pytest.raises(SystemExit, match=f"maugpt export: {out} exists; pass overwrite=True"):
        main(["export", str(trained[kind]), str(out)])  # never replaced unless asked


def test_peft_loads_the_lora_export_with_equal_outputs(trained, tiny_base, tmp_path):
    from peft import PeftModel

    main(["export", str(trained["lora"]), str(tmp_path / "adapter.safetensors")])
    main(["export", str(trained["lora"]), str(tmp_path / "peft"), "--format", "peft"])
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert (config["peft_type"], config["r"], config["lora_alpha"]) == ("LORA", 4, 8.0)
    assert len(config["target_modules"]) == 9
    ids = torch.randint(5, 300, (2, 11), generator=torch.Generator().manual_seed(0))
    ours = logits(adapted_llm(tiny_base, tmp_path / "adapter.safetensors"), ids)
    base = logits(AutoModelForCausalLM.from_pretrained(tiny_base["llm"]), ids)
    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_base["llm"]), tmp_path / "peft")
    peft = logits(loaded, ids)
    assert (ours - base).abs().max() > 1e-3  # the trained LoRA changes the outputs…
    torch.testing.assert_close(peft, ours, rtol=0, atol=1e-5)  # …and PEFT reproduces them


def test_the_merged_lora_export_is_a_plain_llm_with_equal_outputs(trained, tiny_base, tmp_path):
    main(["export", str(trained["lora"]), str(tmp_path / "adapter.safetensors")])
    main(["export", str(trained["lora"]), str(tmp_path / "merged"), "--format", "merged"])
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert not any("lora" in n or n.endswith(".A") for n, _ in merged.named_parameters())
    assert (tmp_path / "merged" / "tokenizer.json").is_file()
    ids = torch.randint(5, 300, (2, 11), generator=torch.Generator().manual_seed(1))
    ours = logits(adapted_llm(tiny_base, tmp_path / "adapter.safetensors"), ids)
    torch.testing.assert_close(logits(merged, ids), ours, rtol=0, atol=1e-5)
    with pytest.raises(SystemExit, match="output folder .*merged is not empty; pass overwrite"):
        main(["export", str(trained["lora"]), str(tmp_path / "merged"), "--format", "merged"])


@pytest.mark.parametrize("format", ["peft", "merged"])
def test_an_input_dependent_adapter_has_no_peft_or_merged_export(trained, tmp_path, format):
    with pytest.raises(SystemExit, match=f"format '{format}' is LoRA's: AMoELoRA's delta depends on the input"):
        main(["export", str(trained["amoe_lora"]), str(tmp_path / "out"), "--format", format])
    assert not (tmp_path / "out").exists()


def test_a_stage_1_or_foreign_checkpoint_is_refused_naming_it(tmp_path):
    stage1 = tmp_path / "stage1.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"llm": "x", "stage": 1, "adapter": None}}, stage1)
    with pytest.raises(SystemExit, match=r"stage1.ckpt was saved by stage 1 without an adapter"):
        main(["export", str(stage1), str(tmp_path / "a.safetensors")])
    other = tmp_path / "other.ckpt"
    torch.save({"weights": torch.zeros(1)}, other)
    with pytest.raises(SystemExit, match=r"other.ckpt is not a MAU-GPT training checkpoint"):
        main(["export", str(other), str(tmp_path / "a.safetensors")])
    with pytest.raises(SystemExit, match=r"checkpoint .*missing.ckpt does not exist"):
        main(["export", str(tmp_path / "missing.ckpt"), str(tmp_path / "a.safetensors")])


def test_the_adapter_state_is_what_the_trained_module_holds(trained, tiny_base, tmp_path):
    from maugpt.training.module import MAUGPTModule

    saved = torch.load(trained["amoe_lora"], weights_only=True)
    module = MAUGPTModule(
        str(tiny_base["llm"]),
        str(tiny_base["vision"]),
        stage=2,
        adapter=Adapter.from_config(saved["hyper_parameters"]["adapter"]),
    )
    module.load_state_dict(saved["state_dict"], strict=False)
    main(["export", str(trained["amoe_lora"]), str(tmp_path / "a.safetensors")])
    from safetensors.torch import load_file

    exported = load_file(str(tmp_path / "a.safetensors"))
    held = adapter_state_dict(module.model.llm)
    assert held.keys() == exported.keys() and all(torch.equal(held[k], exported[k]) for k in held)


def earlier_names(names):
    """The names an earlier version saved: a mixture layer held ``A``, ``B`` and ``router`` itself."""
    return {k.replace(".generalist.", "."): v for k, v in dict(names).items()}


def test_checkpoints_and_files_saved_under_the_earlier_names_still_load(trained, tiny_base, tmp_path):
    from safetensors.torch import load_file, save_file

    from maugpt.training.module import MAUGPTModule

    saved = torch.load(trained["amoe_lora"], weights_only=True)
    old = dict(saved, state_dict=earlier_names(saved["state_dict"]))
    old["maugpt"] = dict(saved["maugpt"], trainable=list(earlier_names(dict.fromkeys(saved["maugpt"]["trainable"]))))
    assert any(k.endswith("q_proj.router") for k in old["state_dict"])  # really the earlier layout
    torch.save(old, tmp_path / "old.ckpt")
    # export: the same file as from the checkpoint saved now
    main(["export", str(tmp_path / "old.ckpt"), str(tmp_path / "old.safetensors")])
    main(["export", str(trained["amoe_lora"]), str(tmp_path / "new.safetensors")])
    from_old, from_new = load_file(str(tmp_path / "old.safetensors")), load_file(str(tmp_path / "new.safetensors"))
    assert from_old.keys() == from_new.keys() and all(torch.equal(from_old[k], from_new[k]) for k in from_new)
    assert read_adapter_metadata(tmp_path / "old.safetensors") == read_adapter_metadata(tmp_path / "new.safetensors")

    def module():
        adapter = Adapter.from_config(saved["hyper_parameters"]["adapter"])
        return MAUGPTModule(str(tiny_base["llm"]), str(tiny_base["vision"]), stage=2, adapter=adapter)

    # resuming (the name check, then the load), a state dict alone, a previous stage's tensors, an adapter file
    resumed, loaded, previous, adapted = module(), module(), module(), module()
    resumed.on_load_checkpoint(old)
    resumed.load_state_dict(old["state_dict"], strict=False)
    loaded.load_state_dict(earlier_names(saved["state_dict"]), strict=False)
    previous.load_trainable(str(tmp_path / "old.ckpt"))
    save_file(earlier_names(from_new), str(tmp_path / "old_file.safetensors"))
    load_adapter(adapted.model.llm, tmp_path / "old_file.safetensors")
    for each in (resumed, loaded, previous, adapted):
        held = adapter_state_dict(each.model.llm)
        assert held.keys() == from_new.keys() and all(torch.equal(held[k], from_new[k]) for k in held)

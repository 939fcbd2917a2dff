"""Every shipped training recipe parses with the CLI (nothing is built or downloaded)."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from maugpt.training.cli import run

CONFIGS = Path(__file__).parents[2] / "configs"


@pytest.mark.parametrize("name", ["tiny/stage1.yaml", "tiny/stage2.yaml"])
def test_recipe_parses(name, capsys):
    with pytest.raises(SystemExit) as done:
        run(["fit", "--config", str(CONFIGS / name), "--print_config"])
    assert done.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    source = yaml.safe_load((CONFIGS / name).read_text())
    assert printed["model"]["init_args"]["stage"] == source["model"]["init_args"]["stage"]
    assert printed["data"]["init_args"]["data_dir"] == source["data"]["init_args"]["data_dir"]
    # linked from the model, so never set twice in a recipe
    assert "tokenizer" not in printed["data"]["init_args"] and "tokenizer" not in source["data"]["init_args"]


def test_a_mistyped_key_names_the_key(capsys):
    with pytest.raises(SystemExit):
        run(["fit", "--config", str(CONFIGS / "tiny/stage2.yaml"), "--model.init_args.learning_rate", "1e-3"])
    assert "learning_rate" in capsys.readouterr().err


@pytest.mark.parametrize("adapter", ["lora", "loramoe", "amoe_lora"])
def test_stage_2_swaps_adapters_from_their_recipes(adapter, capsys):
    with pytest.raises(SystemExit):
        run(["fit", "--config", str(CONFIGS / "tiny/stage2.yaml"), "--model.init_args.adapter",
             str(CONFIGS / "adapters" / f"{adapter}.yaml"), "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    recipe = yaml.safe_load((CONFIGS / "adapters" / f"{adapter}.yaml").read_text())
    assert printed["model"]["init_args"]["adapter"]["class_path"] == recipe["class_path"]

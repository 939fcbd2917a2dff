"""Fig. 5(c): the hypernetwork cores of the test images, embedded by t-SNE and drawn."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from maugpt.commands import figure_cores
from maugpt.data.shards import iter_samples
from maugpt.figures import embed
from maugpt.training.cli import run
from tests.training.conftest import AMOE, stage_config


def test_figure_cores_embeds_one_core_per_test_image_and_draws_both_colourings(
    tiny_base, synthetic_dir, tmp_path, capsys
):
    config = stage_config(tmp_path, tiny_base, synthetic_dir, 2, batches=1, adapter=AMOE)
    run(["fit", "--config", config])
    last = tmp_path / "stage2" / "checkpoints" / "last.ckpt"
    out = tmp_path / "figure"
    figure_cores(
        config=config, ckpt_path=last, out=out, layer="layers.1.self_attn.q_proj", max_samples=12, perplexity=3.0
    )
    assert "12 test images; written:" in capsys.readouterr().out
    saved = np.load(out / "cores.npz")
    records = {s["json"]["key"]: s["json"] for s in iter_samples(synthetic_dir / "mauset" / "test")}
    keys = list(saved["keys"])
    assert len(keys) == len(set(keys)) == 12 and set(keys) <= set(records)  # one point per image
    assert [records[k]["product"] for k in keys] == list(saved["product"])
    assert [records[k].get("defect_class") or "normal" for k in keys] == list(saved["defect_class"])
    assert saved["cores"].shape == (12, 2 * 2)  # AMoE-LoRA's r × r core, rank 2
    assert np.ptp(saved["cores"], axis=0).max() > 0  # images get different cores
    # the drawn points are scikit-learn's t-SNE of the saved cores
    rows = [line.split(",") for line in (out / "cores_tsne.csv").read_text().splitlines()[1:]]
    assert np.allclose(np.array([[float(r[1]), float(r[2])] for r in rows]), embed(saved["cores"], 3.0, 0), atol=1e-5)
    picture = np.asarray(Image.open(out / "cores_tsne.png").convert("RGB"))
    assert len(np.unique(picture.reshape(-1, 3), axis=0)) > 20  # two scatter panels, not a blank page
    assert any((out / "tensorboard").iterdir())
    with pytest.raises(SystemExit, match=r"already holds cores_tsne.png, cores.npz, cores_tsne.csv; pass --overwrite"):
        figure_cores(config=config, ckpt_path=last, out=out)
    with pytest.raises(
        SystemExit,
        match=r"no adapted layer matching 'mlp.router' records a hypernetwork core: the "
        r"model's adapter must be AMoE-LoRA and the layer one of its targets",
    ):
        figure_cores(config=config, ckpt_path=last, out=tmp_path / "other", layer="mlp.router")

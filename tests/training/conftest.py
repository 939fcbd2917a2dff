"""Stage configs for the tiny base (the ``tiny_base`` fixture lives in tests/conftest.py)."""

from __future__ import annotations

import yaml


def stage_config(tmp_path, base, shards, stage: int, batches: int = 3, **model_args) -> str:
    """A LightningCLI config like configs/tiny/stage<N>.yaml, with every path under ``tmp_path``."""
    run = tmp_path / f"stage{stage}"
    config = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu",
            "devices": 1,
            "max_epochs": 1,
            "log_every_n_steps": 1,
            "num_sanity_val_steps": 0,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "default_root_dir": str(run),
            "logger": {
                "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                "init_args": {"save_dir": str(tmp_path / "tb"), "name": f"stage{stage}"},
            },
            "callbacks": [
                {
                    "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                    "init_args": {"dirpath": str(run / "checkpoints"), "save_last": True, "save_top_k": 0},
                }
            ],
            "plugins": [{"class_path": "maugpt.training.checkpoint.AtomicCheckpointIO"}],
        },
        "model": {
            "class_path": "maugpt.training.module.MAUGPTModule",
            "init_args": {
                "llm": str(base["llm"]),
                "vision_encoder": str(base["vision"]),
                "stage": stage,
                "lr": 1e-3,
                **model_args,
            },
        },
        "data": {
            "class_path": "maugpt.data.MAUSetDataModule",
            "init_args": {
                "data_dir": str(shards / ("captions" if stage == 1 else "mauset")),
                "batch_size": 2,
                "eval_batch_size": 4,
                "num_workers": 0,
                "max_length": 512,
                "batches_per_epoch": batches,
            },
        },
    }
    path = tmp_path / f"stage{stage}.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


AMOE = {"class_path": "maugpt.adapters.AMoELoRA", "init_args": {"experts": 4, "rank": 2, "hyper_hidden": 8}}

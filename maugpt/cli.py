"""The ``maugpt`` command line.

Sub-commands are plain typed functions: their signatures and docstrings are the ``--help``.
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Literal

from jsonargparse import auto_cli
from safetensors import safe_open

from maugpt.adapters.inject import read_adapter_metadata


def adapter_info(path: str) -> None:
    """Describe a saved adapter file: the configuration that built it and the tensors it holds.

    Args:
        path: a ``.safetensors`` file written by ``maugpt.adapters.save_adapter``.
    """
    file = Path(path)
    if not file.is_file():
        raise SystemExit(f"maugpt adapter-info: {file} does not exist or is not a file")
    try:
        with safe_open(str(file), framework="pt") as f:
            shapes = {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}
    except Exception as err:  # safetensors raises its own error types for a damaged header
        raise SystemExit(f"maugpt adapter-info: {file} is not a readable safetensors file ({err})") from None
    config, layers = read_adapter_metadata(file)
    total = sum(math.prod(shape) for shape in shapes.values())
    print(f"file: {file}")
    print(f"adapter: {json.dumps(config) if config else 'unknown (saved without a configuration)'}")
    print(f"adapted layers: {len(layers) if layers else 'unknown'}; tensors: {len(shapes)}; parameters: {total:,}")
    kinds = Counter((re.sub(r"\.\d+\.", ".*.", key), shape) for key, shape in shapes.items())
    width = max(len(key) for key, _ in kinds) + 2
    for (key, shape), count in sorted(kinds.items()):
        print(f"  {key:<{width}} {str(shape):<14} ×{count}")


def export(
    checkpoint: str,
    out: str,
    format: Literal["adapter", "peft", "merged"] = "adapter",
    llm: str | None = None,
    overwrite: bool = False,
) -> None:
    """Export a stage-2 checkpoint's adapter (see ``maugpt.export``).

    Args:
        checkpoint: a checkpoint written by ``maugpt fit`` (e.g. ``runs/demo/stage2/checkpoints/last.ckpt``).
        out: the ``.safetensors`` file (``adapter``) or the folder (``peft``, ``merged``) to write.
        format: ``adapter``: maugpt's adapter file, any adapter; ``peft``: a PEFT LoRA folder
            (``adapter_config.json`` + ``adapter_model.safetensors``); ``merged``: the LLM with the
            LoRA merged into its weights (``save_pretrained``). The last two are LoRA's only.
        llm: the base LLM for ``merged`` (default: the one the checkpoint was trained on).
        overwrite: replace an existing file or a non-empty folder.
    """
    from maugpt.export import export as write

    try:
        written = write(checkpoint, out, format, llm, overwrite)
    except (FileNotFoundError, FileExistsError, ValueError) as err:
        raise SystemExit(f"maugpt export: {err}") from None
    print(f"wrote {format} export of {checkpoint} to {written}")


def recipes(copy_to: str | None = None) -> None:
    """List the recipes installed with maugpt (``--config`` takes the printed paths), or copy them.

    Args:
        copy_to: copy every recipe into this folder (keeping ``tiny/``, ``mau-gpt-4b/`` …) to edit
            them; files already there are left as they are and named.
    """
    import shutil

    from maugpt.configs import ROOT
    from maugpt.configs import recipes as names

    recipes = names()
    if copy_to is None:
        for name in recipes:
            print(ROOT / name)
        return
    kept = []
    for name in recipes:
        target = Path(copy_to) / name
        if target.exists():
            kept.append(str(target))
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / name, target)
    print(
        f"copied {len(recipes) - len(kept)} recipe(s) to {copy_to}"
        + (f"; left {len(kept)} existing file(s) untouched: {', '.join(kept)}" if kept else "")
    )


LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``maugpt`` console script.

    ``maugpt fit|validate|test|predict --config …`` runs LightningCLI; ``maugpt adapter-info FILE``
    describes a saved adapter; ``maugpt export CKPT OUT`` exports a checkpoint's adapter;
    ``maugpt recipes`` lists (or copies) the installed recipes; the data, scoring and sweep
    commands (``build``, ``synth``, ``inspect``, ``score-mmad``, ``judge``, ``sweep`` …) are
    :mod:`maugpt.commands`.
    """
    argv = sys.argv[1:] if args is None else args
    if argv and argv[0] in LIGHTNING_COMMANDS:
        from maugpt.training.checkpoint import CheckpointNotSaved
        from maugpt.training.cli import run  # Lightning and the model load only when needed

        try:
            run(args)  # None: LightningCLI reads sys.argv itself
        except CheckpointNotSaved as err:  # a full disk is the user's to fix, not a bug: no traceback
            raise SystemExit(f"maugpt {argv[0]}: {err.strerror}") from None
        return
    from maugpt import commands

    auto_cli(
        {
            "adapter-info": adapter_info,
            "export": export,
            "recipes": recipes,
            "build": commands.build,
            "download": commands.download,
            "build-llava": commands.build_llava,
            "synth": commands.synth,
            "inspect": commands.inspect_shards,
            "tiny-base": commands.tiny_base,
            "score-mauset": commands.score_mauset,
            "score-mmad": commands.score_mmad,
            "judge": commands.judge,
            "sweep": commands.sweep,
            "sweep-cell": commands.sweep_cell,
            "report": commands.report,
            "report-html": commands.report_html,
            "figure-cores": commands.figure_cores,
        },
        args=argv,
    )


if __name__ == "__main__":
    main()

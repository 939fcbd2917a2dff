"""``maugpt fit|validate|test|predict --config …``: LightningCLI over MAU-GPT and its data."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lightning as L
import torch

from maugpt.compat import HookedLightningCLI
from maugpt.training.preemption import Preemption

EVALUATING = ("validate", "test", "predict")


def checkpoint_model(args: list[str]) -> list[str]:
    """``args`` with the model a ``validate``/``test``/``predict`` checkpoint was trained as put
    first (``--model {…}`` right after the sub-command), so that a config without a model (e.g.
    ``configs/eval/mmad.yaml``) rebuilds it, and later configs and options still override it.

    ``init_from`` is dropped: the checkpoint holds every trainable tensor itself.
    """
    command = next((i for i, a in enumerate(args) if a in (*EVALUATING, "fit")), None)
    if command is None or args[command] not in EVALUATING:
        return args
    path = next((a.split("=", 1)[1] for a in args if a.startswith("--ckpt_path=")), None)
    if path is None and "--ckpt_path" in args[:-1]:
        path = args[args.index("--ckpt_path") + 1]
    if path is None or not Path(path).is_file():
        return args
    hparams = dict(torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("hyper_parameters", {}))
    class_path = hparams.pop("_class_path", None)
    if class_path is None:
        return args
    hparams.pop("_instantiator", None)
    hparams["init_from"] = None
    model = json.dumps({"class_path": class_path, "init_args": hparams})
    return [*args[: command + 1], "--model", model, *args[command + 1 :]]


class MAUGPTCLI(HookedLightningCLI):
    """LightningCLI with the model and data in subclass mode and their shared settings linked:
    the data's tokenizer and image transform come from the model's LLM and vision encoder, and
    its visual-token count from the built encoder (a pretrained VLM's ``vlm`` gives the data its
    processor instead). A checkpoint given to validate/test/predict
    supplies the model's settings as defaults (see :func:`checkpoint_model`)."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("model.init_args.llm", "data.init_args.tokenizer")
        parser.link_arguments("model.init_args.vision_encoder", "data.init_args.vision_encoder")
        parser.link_arguments("model.init_args.vlm", "data.init_args.processor")  # PretrainedVLMModule
        parser.link_arguments("model.init_args.processor_kwargs", "data.init_args.processor_kwargs")
        parser.link_arguments(
            "model", "data.init_args.image_tokens", compute_fn=lambda model: model.image_tokens, apply_on="instantiate"
        )

    def parse_arguments(self, parser, args) -> None:
        if isinstance(args, dict):
            return super().parse_arguments(parser, args)
        self.config = parser.parse_args(checkpoint_model(sys.argv[1:] if args is None else list(args)))

    # Lightning would apply a checkpoint's hyper-parameters *over* the parsed config, silently
    # undoing options such as --model.init_args.max_new_tokens; parse_arguments put them first
    # instead, and MAUGPTModule.on_load_checkpoint rejects a checkpoint of another architecture.
    apply_checkpoint_hyperparameters = False

    def trainer_callbacks(self, config: dict, callbacks: list) -> list:
        # One Preemption per run: the one the config lists, else a default (two would share a state key).
        given = config.get("callbacks") or []
        listed = any(isinstance(c, Preemption) for c in (given if isinstance(given, list) else [given]))
        return callbacks if listed else [*callbacks, Preemption()]


def run(args: list[str] | None = None, subcommand: bool = True) -> MAUGPTCLI:
    """Parse ``args`` (default: ``sys.argv``), build everything and run the sub-command.

    ``subcommand=False`` parses arguments without a sub-command and only builds the trainer, model
    and data (the recipe tests build the 4B model on the meta device this way). Every run has a
    :class:`~maugpt.training.preemption.Preemption` callback (a fit stopped by a signal saves first).
    """
    return MAUGPTCLI(
        L.LightningModule,
        L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        args=args,
        auto_configure_optimizers=False,
        run=subcommand,
    )

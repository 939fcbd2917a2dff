"""``maugpt fit|validate|test|predict --config …``: LightningCLI over MAU-GPT and its data."""
from __future__ import annotations

import lightning as L
from lightning.pytorch.cli import LightningCLI


class MAUGPTCLI(LightningCLI):
    """LightningCLI with the model and data in subclass mode and their shared settings linked:
    the data's tokenizer and image transform come from the model's LLM and vision encoder, and
    its visual-token count from the built encoder."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("model.init_args.llm", "data.init_args.tokenizer")
        parser.link_arguments("model.init_args.vision_encoder", "data.init_args.vision_encoder")
        parser.link_arguments("model", "data.init_args.image_tokens", compute_fn=lambda model: model.image_tokens,
                              apply_on="instantiate")


def run(args: list[str] | None = None, subcommand: bool = True) -> MAUGPTCLI:
    """Parse ``args`` (default: ``sys.argv``), build everything and run the sub-command.

    ``subcommand=False`` parses arguments without a sub-command and only builds the trainer, model
    and data (the recipe tests build the 4B model on the meta device this way).
    """
    return MAUGPTCLI(L.LightningModule, L.LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                     save_config_kwargs={"overwrite": True}, args=args, auto_configure_optimizers=False,
                     run=subcommand)

"""Loading MAU-Set for training and evaluation, in the order a batch meets them: safe shard reading
(`shards`), the training and evaluation streams (`streams`, exactly once by `sharding`), a sample
to examples (`examples`), the model's format (`formats`: image `geometry`, `chat` encoding with
`chat_cache`, `collate`; or a pretrained VLM's `processor`), and the data modules that wire them
(`datamodule`, `prompts`, `folder`), with the skipped-samples callback. Building MAU-Set is
:mod:`maugpt.mauset`; docs/architecture.md follows one batch through these files."""

from __future__ import annotations


def __getattr__(name: str):
    # The DataModule pulls in Lightning and transformers; the builders and tools do not need them.
    if name == "MAUSetDataModule":
        from maugpt.data.datamodule import MAUSetDataModule

        return MAUSetDataModule
    if name == "ExampleEncoder":
        from maugpt.data.examples import ExampleEncoder

        return ExampleEncoder
    if name == "ImageFolderQuestions":
        from maugpt.data.folder import ImageFolderQuestions

        return ImageFolderQuestions
    if name == "SkippedSamplesLogger":
        from maugpt.data.callbacks import SkippedSamplesLogger

        return SkippedSamplesLogger
    raise AttributeError(f"module 'maugpt.data' has no attribute {name!r}")

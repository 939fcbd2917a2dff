"""Loading MAU-Set for training and evaluation: safe shard reading (`reader`), the chat encoding and
image geometry (`encode`, `chat_cache`), the data modules (`datamodule`, `folder`) and the
skipped-samples callback. Building MAU-Set is :mod:`maugpt.mauset`."""

from __future__ import annotations


def __getattr__(name: str):
    # The DataModule pulls in Lightning and transformers; the builders and tools do not need them.
    if name in ("MAUSetDataModule", "ExampleEncoder"):
        from maugpt.data import datamodule

        return getattr(datamodule, name)
    if name == "ImageFolderQuestions":
        from maugpt.data.folder import ImageFolderQuestions

        return ImageFolderQuestions
    if name == "SkippedSamplesLogger":
        from maugpt.data.callbacks import SkippedSamplesLogger

        return SkippedSamplesLogger
    raise AttributeError(f"module 'maugpt.data' has no attribute {name!r}")

"""MAU-Set: the data files, source builders, synthetic data, shards and the DataModule."""
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

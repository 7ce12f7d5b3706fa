"""Datasets (docs/method.md §2 preprocessing): a registry of real and built-in offline sets."""

from zsad.data.base import ImageDataset
from zsad.data.builtin import BUILTIN_NAMES, make_builtin
from zsad.data.registry import DATASETS, build_dataset, build_training_dataset, folder_dataset
from zsad.errors import CorruptImageError, DatasetNotFoundError

__all__ = [
    "BUILTIN_NAMES",
    "DATASETS",
    "CorruptImageError",
    "DatasetNotFoundError",
    "ImageDataset",
    "build_dataset",
    "build_training_dataset",
    "folder_dataset",
    "make_builtin",
]

"""Data: where images come from (``sources``: no MindSpore), the training pipeline
(``pipeline``: ``mindspore.dataset``), and images out (``images``: uint8, grids).

``from ddpm_ms.data import create_dataset`` works as before; the pipeline, which imports
MindSpore (after the CPU settings), is loaded on first use, so the config and the readers
can be imported before MindSpore is.
"""
from .fetch import DataError
from .images import save_grid, tile, to_uint8
from .sources import (CIFAR_BATCH_BYTES, DATASETS, IDX_SETS, IMAGE_EXTENSIONS, NATIVE, SPLITS, DataWarning, list_images, load_image, read_cifar10,
                      read_idx, resolve_cache_dir, scan_image_folder)

__all__ = ["CIFAR_BATCH_BYTES", "IDX_SETS", "NATIVE", "DataError", "DataWarning", "DATASETS", "IMAGE_EXTENSIONS", "SPLITS", "list_images", "load_image",
           "read_cifar10", "read_idx", "resolve_cache_dir", "save_grid", "scan_image_folder", "tile", "to_uint8",
           "create_dataset", "epoch_batches", "epoch_config", "count_images"]
_PIPELINE = ("create_dataset", "epoch_batches", "epoch_config", "count_images")


def __getattr__(name):
    if name in _PIPELINE:
        from . import pipeline
        return getattr(pipeline, name)
    raise AttributeError(f"module 'ddpm_ms.data' has no attribute {name!r}")

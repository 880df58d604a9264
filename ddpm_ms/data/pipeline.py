"""The training pipeline: ``create_dataset(cfg)`` returns a ``mindspore.dataset`` pipeline with
one column, ``image``: float32 batches of shape (B, C, H, W) with values in [-1, 1]. Every
source (:mod:`ddpm_ms.data.sources`) goes through the same steps:

1. decode, and convert to ``channels`` (1 = Pillow "L", 3 = RGB) from any mode;
2. resize: image folders get Resize(image_size, bilinear) of the short side and
   CenterCrop(image_size) (done with Pillow, whose bilinear filter anti-aliases when
   shrinking); built-in sets are resized only when image_size differs from their native size;
3. RandomHorizontalFlip when ``random_flip`` and training;
4. HWC uint8 -> CHW float in [0, 1] (ToTensor), then x * 2 - 1.

``epoch_batches`` gives one epoch of batches for the train loop; ``images.to_uint8`` inverts
step 4 exactly.

Look at a batch::

    python -m ddpm_ms.data --config configs/X.yaml --out batch.png [--key value ...]
"""
import os
import sys
import warnings
from pathlib import Path

import numpy as np

from ..cpu_env import apply_cpu_env, usable_cpus
from .fetch import DataError
from .images import save_grid, to_uint8
from .sources import (DATASETS, IDX_SETS, NATIVE, SPLITS, DataWarning, _get, _prepare_cifar, _prepare_idx,
                      load_image, resolve_cache_dir, scan_image_folder)

apply_cpu_env(verbose=False)  # before MindSpore is imported (idempotent)

import mindspore.dataset as ds  # noqa: E402
import mindspore.dataset.vision as vision  # noqa: E402


class _Indices:
    """Random-access source for GeneratorDataset: row i -> (i,). Sharding and shuffling act on
    these cheap rows; decoding happens in a parallel ``map`` (``_FolderDecoder``), which scales
    where a multi-worker GeneratorDataset does not (it ran 10x slower with 2 workers here)."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, index):
        return (np.array(index, np.int64),)


class _FolderDecoder:
    """Map function: index -> HWC uint8 image (mode, resize and crop done)."""

    def __init__(self, paths, channels, image_size):
        self.paths, self.channels, self.image_size = list(paths), channels, image_size
        self._warned = False

    def __call__(self, index):
        # A file that passed the scan but fails now (deleted, disk error) must not end a long
        # run: warn once and use the next file instead.
        index = int(index)
        for k in range(len(self.paths)):
            path = self.paths[(index + k) % len(self.paths)]
            try:
                return load_image(path, self.channels, self.image_size)
            except Exception as e:  # noqa: BLE001
                if not self._warned:
                    self._warned = True
                    warnings.warn(DataWarning(f"cannot decode {path} during training ({e}); "
                                              f"using the next file instead"))
        raise DataError("no image of the folder can be decoded any more")


# --------------------------------------------------------------------------- pipeline

def _check_cfg(cfg):
    dataset = cfg["dataset"]
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {', '.join(DATASETS)}, got {dataset!r}")
    split = _get(cfg, "split")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    native_size, native_channels = NATIVE.get(dataset, (None, 3))
    channels = int(_get(cfg, "channels") or native_channels)
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    image_size = int(_get(cfg, "image_size") or native_size or 0)
    if image_size <= 0:
        raise ValueError("image_size must be a positive integer for image folders")
    if not cfg["data_dir"]:
        raise DataError("no data folder given: pass --data_dir DIR")
    return dataset, split, channels, image_size


def _workers(cfg):
    """num_parallel_workers, or min(4, usable cores); MindSpore refuses more than os.cpu_count()."""
    n = int(_get(cfg, "num_parallel_workers") or 0)
    return min(n if n > 0 else min(4, usable_cpus()), os.cpu_count() or 1)


def _source(cfg, num_shards=1, shard_id=0, shuffle=False, fetch=None):
    """(source dataset with one ``image`` column, ops that turn it into HWC uint8 images of
    the configured size and channels). Folder rows are file indices until decoded."""
    dataset, split, channels, image_size = _check_cfg(cfg)
    data_dir = Path(cfg["data_dir"]).expanduser()
    cache_root = resolve_cache_dir(cfg)
    shard = {"num_shards": num_shards, "shard_id": shard_id} if num_shards > 1 else {}
    workers = _workers(cfg)
    download_ok = bool(_get(cfg, "download"))

    if dataset == "image_folder":
        paths = scan_image_folder(data_dir, cache_dir=cache_root, workers=workers)
        src = ds.GeneratorDataset(_Indices(len(paths)), column_names=["image"], shuffle=shuffle,
                                  num_parallel_workers=1, **shard)
        return src, [_FolderDecoder(paths, channels, image_size)]  # also does mode, resize, crop

    if not data_dir.is_dir() and not download_ok:
        raise DataError(f"data folder {data_dir} does not exist: pass --data_dir DIR holding the "
                        f"{dataset} files, or pass --download true")
    usage = split
    common = dict(usage=usage, shuffle=shuffle, num_parallel_workers=workers, **shard)
    if dataset in IDX_SETS:
        folder = _prepare_idx(dataset, data_dir, cache_root, split, download_ok, fetch)
        reader = ds.FashionMnistDataset if dataset == "fashion_mnist" else ds.MnistDataset
        src = reader(str(folder), **common)
    else:
        folder = _prepare_cifar(data_dir, cache_root, split, download_ok, fetch)
        src = ds.Cifar10Dataset(str(folder), **common)
    src = src.project(["image"])

    native_size, native_channels = NATIVE[dataset]
    ops = []
    if channels != native_channels:
        ops.append(vision.ConvertColor(vision.ConvertMode.COLOR_GRAY2RGB if channels == 3
                                       else vision.ConvertMode.COLOR_RGB2GRAY))
    if image_size != native_size:
        ops.append(vision.Resize(image_size, vision.Inter.BILINEAR))
    return src, ops


def create_dataset(cfg, num_shards=1, shard_id=0, training=True, repeat=False, fetch=None):
    """Build the pipeline; rows are one column ``image``, float32 (B, C, H, W) in [-1, 1].

    training: shuffle (the reader draws a fresh full permutation each epoch; a
    ``shuffle_buffer`` > 1 adds a buffer shuffle of the undecoded rows) and ``random_flip``;
    otherwise the files' order and no flip. ``num_shards`` /
    ``shard_id`` give each rank a disjoint share (MindSpore pads the shards to equal length
    with a few repeated rows when the count does not divide). The order repeats under
    ``seed`` (``mindspore.dataset.config.set_seed``, process-wide). ``repeat``: endless.
    ``fetch``: replaces the HTTP download (tests).
    """
    if not 0 <= shard_id < num_shards:
        raise ValueError(f"shard_id must be in [0, {num_shards}), got {shard_id}")
    ds.config.set_seed(int(_get(cfg, "seed")))
    data, ops = _source(cfg, num_shards, shard_id, shuffle=training, fetch=fetch)
    buffer = int(_get(cfg, "shuffle_buffer") or 0)
    if training and buffer > 1:  # before decoding: the buffer holds indices / small uint8 rows
        data = data.shuffle(buffer)
    if training and _get(cfg, "random_flip"):
        ops.append(vision.RandomHorizontalFlip(0.5))
    ops += [vision.ToTensor(np.float32), vision.Rescale(2.0, -1.0)]  # HWC uint8 -> CHW [-1, 1]
    data = data.map(operations=ops, input_columns=["image"], num_parallel_workers=_workers(cfg),
                    python_multiprocessing=False)
    data = data.batch(int(_get(cfg, "batch_size")), drop_remainder=bool(_get(cfg, "drop_remainder")))
    if repeat:
        data = data.repeat()
    return data


def epoch_config(cfg, epoch):
    """The config of epoch ``epoch``'s pipeline: seed + epoch. ``create_dataset`` seeds the
    process-wide dataset RNG from the config it is given, so the seed must travel in it."""
    return dict(cfg, seed=cfg["seed"] + epoch)


def epoch_batches(cfg, epoch, skip=0, num_shards=1, shard_id=0):
    """The training batches of epoch ``epoch``: float32 (B, C, H, W) tensors in [-1, 1].

    Each epoch's shuffle is seeded with seed + epoch, so a resumed run sees the same order;
    ``skip`` batches are dropped from the start (resume mid-epoch). ``shuffle: false`` reads the
    files in order without random flips (rank r then gets rows r::num_shards).
    """
    dataset = create_dataset(epoch_config(cfg, epoch), num_shards=num_shards, shard_id=shard_id,
                             training=cfg["shuffle"])
    if skip:
        dataset = dataset.skip(skip)
    for (x0,) in dataset.create_tuple_iterator(num_epochs=1):
        yield x0


def count_images(cfg, fetch=None):
    """Number of images in the configured split (all shards together)."""
    data, _ = _source(cfg, fetch=fetch)
    return data.get_dataset_size()


def main(argv=None):
    """``python -m ddpm_ms.data --config X --out batch.png [--key value ...]``: one batch as a grid."""
    from ..config import build_parser, load_config
    parser = build_parser(description="Write one training batch as a PNG grid.")
    parser.add_argument("--out", default="batch.png", help="PNG to write [default: batch.png]")
    cfg = load_config(sys.argv[1:] if argv is None else list(argv), parser=parser)
    try:
        data = create_dataset(cfg, training=True)
        batch = next(data.create_tuple_iterator(num_epochs=1, output_numpy=True))[0]
    except DataError as e:
        sys.exit(f"data error: {e}")
    path = save_grid(to_uint8(batch), cfg["_extra"]["out"])
    print(f"wrote {path}: batch {tuple(batch.shape)} {batch.dtype}, "
          f"range [{batch.min():.3f}, {batch.max():.3f}]")


if __name__ == "__main__":
    main()

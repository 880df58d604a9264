"""Input pipelines: shapes and ranges, exact round trips, caches, shards, seeds, bad inputs.

Nothing here downloads: fetching is tested with fake fetch functions. Nothing is written to the
shared data folders: caches and test images live under pytest's tmp folders.
"""
import gzip
import io
import os
import shutil
import subprocess
import sys
import tarfile
import urllib.error
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ddpm_ms import data as D
from ddpm_ms.data import pipeline as P
from ddpm_ms.data import sources as S
from ddpm_ms.data.fetch import DataError, md5sum

ROOT = Path(__file__).resolve().parents[1]


def first_batch(data):
    return next(data.create_tuple_iterator(num_epochs=1, output_numpy=True))[0]


def all_rows(data):
    return np.concatenate([b[0] for b in data.create_tuple_iterator(num_epochs=1, output_numpy=True)])


def cfg_for(dataset, data_dir, cache_dir, **kw):
    cfg = {"dataset": dataset, "data_dir": str(data_dir), "cache_dir": str(cache_dir),
           "download": False, "image_size": None, "channels": None, "random_flip": False,
           "batch_size": 8, "shuffle_buffer": 0, "num_parallel_workers": 2, "seed": 0,
           "drop_remainder": False, "split": "train"}
    cfg.update(kw)
    return cfg


def write_png_folder(folder, values, size=4):
    """One constant-valued RGB image per value, in class subfolders: value = identity."""
    for i, v in enumerate(values):
        sub = folder / f"class{i % 3}"
        sub.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (size, size), (v, v, v)).save(sub / f"img{i:03d}.png")
    return folder


def ids(batch):
    return to_list(D.to_uint8(batch)[:, 0, 0, 0])


def to_list(a):
    return [int(x) for x in a]


@pytest.fixture(scope="session")
def cache(tmp_path_factory):
    """One cache folder for the session: Fashion-MNIST is decompressed and the CIFAR PNG
    folder scanned only once."""
    return tmp_path_factory.mktemp("ddpm_ms_cache")


# --------------------------------------------------------------------------- conversions

def test_to_uint8_inverts_the_pipeline_scaling_exactly():
    u = np.arange(256, dtype=np.uint8).reshape(1, 1, 16, 16)
    x = u.astype(np.float32) * np.float32(2.0 / 255.0) - np.float32(1.0)  # ToTensor then x*2-1
    back = D.to_uint8(x)
    assert back.shape == (1, 16, 16, 1) and back.dtype == np.uint8
    assert np.array_equal(back[0, :, :, 0], u[0, 0])
    assert to_list(D.to_uint8(np.array([[[[-3.0, 3.0]]]], np.float32)).ravel()) == [0, 255]


def test_save_grid_layout(tmp_path):
    imgs = np.stack([np.full((4, 5, 3), 10 * (i + 1), np.uint8) for i in range(5)])
    path = D.save_grid(imgs, tmp_path / "sub" / "g.png", padding=1)
    with Image.open(path) as g:
        assert g.mode == "RGB" and g.size == (3 * 6 + 1, 2 * 5 + 1)  # nrow = ceil(sqrt(5)) = 3
        a = np.asarray(g)
    assert a[1, 1, 0] == 10 and a[6, 7, 0] == 50 and a[6, 13, 0] == 0  # 5th image; empty slot
    with Image.open(D.save_grid(imgs[:, :, :, 0], tmp_path / "l.png", nrow=5)) as g:
        assert g.mode == "L" and g.size == (5 * 7 + 2, 4 + 4)


# --------------------------------------------------------------------------- built-in sets

def test_fashion_mnist_batches_from_gz_files(fashion_mnist_dir, cache):
    cfg = cfg_for("fashion_mnist", fashion_mnist_dir, cache, split="test", random_flip=True,
                  batch_size=32, shuffle_buffer=100)
    b = first_batch(D.create_dataset(cfg))
    assert b.shape == (32, 1, 28, 28) and b.dtype == np.float32
    assert b.min() >= -1.0 and b.max() <= 1.0 and b.min() < -0.99 and b.max() > 0.99
    assert first_batch(D.create_dataset(dict(cfg, image_size=32, channels=3))).shape == (32, 3, 32, 32)
    assert D.count_images(cfg) == 10000


def test_fashion_mnist_pixels_round_trip(fashion_mnist_dir, cache):
    with gzip.open(fashion_mnist_dir / "t10k-images-idx3-ubyte.gz") as f:
        raw = np.frombuffer(f.read(16 + 8 * 784), np.uint8)[16:].reshape(8, 28, 28)
    cfg = cfg_for("fashion_mnist", fashion_mnist_dir, cache, split="test", random_flip=True)
    b = first_batch(D.create_dataset(cfg, training=False))  # no shuffle, no flip
    assert np.array_equal(D.to_uint8(b)[..., 0], raw)


def test_decompression_cache_is_reused(fashion_mnist_dir, tmp_path, monkeypatch):
    cfg = cfg_for("fashion_mnist", fashion_mnist_dir, tmp_path, split="test")
    first_batch(D.create_dataset(cfg))
    raw = sorted(p for p in tmp_path.rglob("*-ubyte") if p.is_file())
    assert [p.name for p in raw] == ["t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
    mtimes = [p.stat().st_mtime_ns for p in raw]

    def no_gunzip(*a, **k):
        raise AssertionError("decompressed again")
    monkeypatch.setattr(S, "gunzip", no_gunzip)
    assert first_batch(D.create_dataset(cfg)).shape == (8, 1, 28, 28)
    assert [p.stat().st_mtime_ns for p in raw] == mtimes


def test_gz_beside_raw_files_is_fine(fashion_mnist_dir, tmp_path):
    data_dir = tmp_path / "fm"
    data_dir.mkdir()
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        shutil.copy(fashion_mnist_dir / f"{name}.gz", data_dir)
        with gzip.open(data_dir / f"{name}.gz") as f:
            (data_dir / name).write_bytes(f.read())
    cfg = cfg_for("fashion_mnist", data_dir, tmp_path / "cache", split="test")
    assert D.count_images(cfg) == 10000
    # raw files alone are read in place, with no cache folder made
    for gz in data_dir.glob("*.gz"):
        gz.unlink()
    cfg["cache_dir"] = str(tmp_path / "cache2")
    assert first_batch(D.create_dataset(cfg)).shape == (8, 1, 28, 28)
    assert not (tmp_path / "cache2").exists()


def test_truncated_idx_file_is_a_data_error(fashion_mnist_dir, tmp_path):
    data_dir = tmp_path / "fm"
    data_dir.mkdir()
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        with gzip.open(fashion_mnist_dir / f"{name}.gz") as f:
            (data_dir / name).write_bytes(f.read(5000))
    with pytest.raises(DataError, match="not a complete IDX file"):
        D.create_dataset(cfg_for("fashion_mnist", data_dir, tmp_path / "c", split="test"))


def test_cifar10_binary_test_split(data_root, cache):
    folder = data_root / "cifar10-bin"
    if not (folder / "cifar-10-batches-bin" / "test_batch.bin").is_file():
        pytest.skip("CIFAR-10 binary test batch not present")
    cfg = cfg_for("cifar10", folder, cache, split="test", batch_size=16)
    b = first_batch(D.create_dataset(cfg, training=False))
    assert b.shape == (16, 3, 32, 32) and b.dtype == np.float32 and -1 <= b.min() < b.max() <= 1
    with open(folder / "cifar-10-batches-bin" / "test_batch.bin", "rb") as f:
        rec = np.frombuffer(f.read(3073), np.uint8)
    assert np.array_equal(D.to_uint8(b[:1])[0], rec[1:].reshape(3, 32, 32).transpose(1, 2, 0))
    gray = first_batch(D.create_dataset(dict(cfg, channels=1, image_size=16), training=False))
    assert gray.shape == (16, 1, 16, 16)
    with pytest.raises(DataError, match=r"data_batch_1\.bin.*--split test"):
        D.create_dataset(dict(cfg, split="train"))


# --------------------------------------------------------------------------- image folders

@pytest.mark.parametrize("size", [32, 16])
def test_image_folder_cifar_pngs(cifar10_png_dir, cache, size):
    cfg = cfg_for("image_folder", cifar10_png_dir, cache, image_size=size, channels=3,
                  random_flip=True, batch_size=16, drop_remainder=True)
    data = D.create_dataset(cfg)
    b = first_batch(data)
    assert b.shape == (16, 3, size, size) and b.dtype == np.float32
    assert -1.0 <= b.min() < 0 < b.max() <= 1.0
    assert data.get_dataset_size() == 10000 // 16


def test_folder_png_round_trip_and_channels(tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (3, 12, 12, 3), dtype=np.uint8)
    (tmp_path / "imgs").mkdir()
    for i, p in enumerate(pixels):
        Image.fromarray(p).save(tmp_path / "imgs" / f"{i}.png")
    cfg = cfg_for("image_folder", tmp_path / "imgs", tmp_path / "c", image_size=12, channels=3)
    rgb = D.to_uint8(all_rows(D.create_dataset(cfg, training=False)))
    assert np.array_equal(rgb, pixels)
    gray = all_rows(D.create_dataset(dict(cfg, channels=1), training=False))
    assert gray.shape == (3, 1, 12, 12)
    want = np.stack([np.asarray(Image.fromarray(p).convert("L")) for p in pixels])
    assert np.array_equal(D.to_uint8(gray)[..., 0], want)


def test_resize_short_side_then_center_crop(tmp_path):
    (tmp_path / "i").mkdir()
    a = np.zeros((20, 40, 3), np.uint8)
    a[:, 6:34] = 255  # white band covering the middle half of a 2:1 image (plus filter support)
    Image.fromarray(a).save(tmp_path / "i" / "wide.png")
    out = D.load_image(tmp_path / "i" / "wide.png", channels=3, image_size=10)
    assert out.shape == (10, 10, 3)  # 20x40 -> 10x20 -> center 10x10, all inside the band
    assert out.min() == 255
    Image.fromarray(a.transpose(1, 0, 2)).save(tmp_path / "i" / "tall.png")
    assert D.load_image(tmp_path / "i" / "tall.png", channels=1, image_size=10).min() == 255


def test_modes_rgba_16bit_palette(tmp_path):
    folder = tmp_path / "modes"
    folder.mkdir()
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 2], rgba[..., 3] = 10, 200, 30, 0
    Image.fromarray(rgba, "RGBA").save(folder / "a_rgba.png")
    g16 = np.full((4, 4), 257 * 100, np.uint16)
    g16[0, 0], g16[0, 1] = 65535, 1000  # 255 and round(1000 / 257) = 4
    Image.fromarray(g16).save(folder / "b_gray16.png")  # mode I;16: a 16-bit PNG
    pal = Image.new("P", (4, 4))
    pal.putpalette([0, 0, 0, 250, 100, 50] + [0] * 762)
    pal.putpixel((1, 1), 1)
    pal.save(folder / "c_palette.png")
    with Image.open(folder / "b_gray16.png") as im:
        assert im.mode.startswith("I;16")  # really a 16-bit file

    cfg = cfg_for("image_folder", folder, tmp_path / "c", image_size=4, channels=3)
    out = D.to_uint8(all_rows(D.create_dataset(cfg, training=False)))  # sorted: a, b, c
    assert out.shape == (3, 4, 4, 3)
    assert to_list(out[0, 2, 2]) == [10, 200, 30]
    assert to_list(out[1, 1, 1]) == [100] * 3 and to_list(out[1, 0, :2, 0]) == [255, 4]
    assert to_list(out[2, 1, 1]) == [250, 100, 50] and to_list(out[2, 0, 0]) == [0, 0, 0]
    gray = D.to_uint8(all_rows(D.create_dataset(dict(cfg, channels=1), training=False)))
    assert gray.shape == (3, 4, 4, 1)
    assert gray[0, 0, 0, 0] == Image.new("RGB", (1, 1), (10, 200, 30)).convert("L").getpixel((0, 0))
    assert to_list(gray[1, 0, :3, 0]) == [255, 4, 100]


def test_bad_files_warned_once_and_skipped(tmp_path):
    folder = write_png_folder(tmp_path / "mixed", [10, 20, 30, 40])
    noise = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, format="PNG")
    (folder / "truncated.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (folder / "empty.JPG").write_bytes(b"")
    (folder / "notes.txt").write_text("not an image")
    cfg = cfg_for("image_folder", folder, tmp_path / "c", image_size=4, channels=3)
    with pytest.warns(D.DataWarning) as record:
        rows = all_rows(D.create_dataset(cfg, training=False))
    assert len(record) == 1
    msg = str(record[0].message)
    assert "2 of 6 image files" in msg and "truncated.png" in msg and "empty.JPG" in msg
    assert sorted(ids(rows)) == [10, 20, 30, 40]
    # the scan result is cached: a second run warns the same way without decoding again
    with pytest.warns(D.DataWarning, match="2 of 6"):
        assert D.count_images(cfg) == 4


def test_file_failing_during_training_is_replaced(tmp_path):
    folder = write_png_folder(tmp_path / "f", [10, 20])
    paths = sorted(str(p) for p in folder.rglob("*.png"))
    decode = P._FolderDecoder([str(tmp_path / "gone.png")] + paths, channels=3, image_size=4)
    with pytest.warns(D.DataWarning, match="gone.png"):
        assert decode(np.int64(0))[0, 0, 0] == 10


@pytest.mark.parametrize("case", ["missing", "empty", "no_images", "all_broken"])
def test_unusable_folders_raise_data_error(tmp_path, case):
    folder = tmp_path / "imgs"
    if case != "missing":
        folder.mkdir()
    if case == "no_images":
        (folder / "a.txt").write_text("x")
        (folder / "b.csv").write_text("1,2")
    if case == "all_broken":
        (folder / "x.png").write_bytes(b"\x89PNG not really")
    cfg = cfg_for("image_folder", folder, tmp_path / "c", image_size=8, channels=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", D.DataWarning)
        with pytest.raises(DataError) as err:
            D.create_dataset(cfg)
    msg = str(err.value)
    assert "\n" not in msg and str(folder) in msg and "--data_dir" in msg


# --------------------------------------------------------------------------- shards and seeds

def test_two_shards_cover_the_data_once(tmp_path):
    values = list(range(5, 250, 20)) + [251]  # 14 images: an even count, so no padded rows
    folder = write_png_folder(tmp_path / "s", values)
    cfg = cfg_for("image_folder", folder, tmp_path / "c", image_size=4, channels=3,
                  batch_size=3, shuffle_buffer=4)
    parts = [ids(all_rows(D.create_dataset(cfg, num_shards=2, shard_id=k))) for k in (0, 1)]
    assert len(parts[0]) == len(parts[1]) == len(values) // 2
    assert not set(parts[0]) & set(parts[1])
    assert sorted(parts[0] + parts[1]) == sorted(values)


def test_seed_fixes_the_order(tmp_path):
    values = list(range(0, 240, 10))
    folder = write_png_folder(tmp_path / "o", values)
    cfg = cfg_for("image_folder", folder, tmp_path / "c", image_size=4, channels=3, batch_size=5)

    def order(seed):
        return ids(all_rows(D.create_dataset(dict(cfg, seed=seed))))
    a, b, c = order(1), order(1), order(2)
    assert sorted(a) == values and a != values  # shuffled
    assert a == b and a != c


# --------------------------------------------------------------------------- fetching

def test_missing_files_without_download_is_one_clear_error(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError) as err:
        D.create_dataset(cfg_for("fashion_mnist", empty, tmp_path / "c"))
    msg = str(err.value)
    assert "\n" not in msg and str(empty) in msg
    assert "train-images-idx3-ubyte.gz" in msg and "--data_dir" in msg
    with pytest.raises(DataError, match="--data_dir"):
        D.create_dataset(cfg_for("cifar10", empty, tmp_path / "c", split="test"))
    with pytest.raises(DataError, match="does not exist.*--data_dir"):
        D.create_dataset(cfg_for("mnist", tmp_path / "nowhere", tmp_path / "c"))


def test_download_with_a_fake_fetch(fashion_mnist_dir, tmp_path):
    calls = []

    def fake_fetch(url, dest):  # serves the shared official files
        calls.append(url)
        shutil.copy(fashion_mnist_dir / url.rsplit("/", 1)[1], dest)
    data_dir = tmp_path / "new" / "fm"
    cfg = cfg_for("fashion_mnist", data_dir, tmp_path / "c", split="test", download=True)
    assert first_batch(D.create_dataset(cfg, fetch=fake_fetch)).shape == (8, 1, 28, 28)
    assert len(calls) == 4 and all(u.startswith(D.IDX_SETS["fashion_mnist"]["url"]) for u in calls)
    official = sorted(f"{n}.gz" for n in D.IDX_SETS["fashion_mnist"]["md5"])
    assert sorted(p.name for p in data_dir.iterdir()) == official
    D.create_dataset(cfg, fetch=fake_fetch)
    assert len(calls) == 4  # nothing fetched the second time


def test_download_checksum_mismatch_and_no_network(tmp_path):
    def wrong_bytes(url, dest):
        Path(dest).write_bytes(b"not the real file")

    def offline(url, dest):
        raise urllib.error.URLError("no route to host")
    data_dir = tmp_path / "mn"
    cfg = cfg_for("mnist", data_dir, tmp_path / "c", download=True)
    with pytest.raises(DataError, match="checksum mismatch") as err:
        D.create_dataset(cfg, fetch=wrong_bytes)
    assert "\n" not in str(err.value) and "--data_dir" in str(err.value)
    assert not data_dir.exists()  # nothing half-written left behind, not even the folder
    with pytest.raises(DataError, match="could not download.*no route to host") as err:
        D.create_dataset(cfg, fetch=offline)
    assert "\n" not in str(err.value) and "train-images-idx3-ubyte.gz" in str(err.value)
    assert not data_dir.exists()
    nested = tmp_path / "new" / "deeper" / "mn"  # folders created for the download go too
    with pytest.raises(DataError, match="could not download"):
        D.create_dataset(dict(cfg, data_dir=str(nested)), fetch=offline)
    assert not (tmp_path / "new").exists()


def test_cifar10_archive_download_and_extract(tmp_path, monkeypatch):
    # a stand-in archive: one all-zero test batch in the official layout
    src = tmp_path / "src"
    (src / "cifar-10-batches-bin").mkdir(parents=True)
    (src / "cifar-10-batches-bin" / "test_batch.bin").write_bytes(bytes(D.CIFAR_BATCH_BYTES))
    archive = tmp_path / "fake.tar.gz"
    with tarfile.open(archive, "w:gz", compresslevel=1) as tar:
        tar.add(src / "cifar-10-batches-bin", arcname="cifar-10-batches-bin")
    monkeypatch.setattr(S, "CIFAR_MD5", md5sum(archive))
    data_dir = tmp_path / "cifar"
    cfg = cfg_for("cifar10", data_dir, tmp_path / "c", split="test", download=True)
    b = first_batch(D.create_dataset(cfg, fetch=lambda url, dest: shutil.copy(archive, dest)))
    assert b.shape == (8, 3, 32, 32) and np.all(b == -1.0)
    assert (data_dir / "cifar-10-batches-bin" / "test_batch.bin").is_file()


# --------------------------------------------------------------------------- command line

def test_command_line_writes_a_grid(tmp_path):
    if not (ROOT / "ddpm_ms" / "config.py").is_file():
        pytest.skip("ddpm_ms/config.py not written yet")
    folder = write_png_folder(tmp_path / "imgs", [0, 60, 120, 180, 240], size=8)
    out = tmp_path / "batch.png"
    cmd = [sys.executable, "-m", "ddpm_ms.data", "--dataset", "image_folder", "--data_dir",
           str(folder), "--cache_dir", str(tmp_path / "c"), "--image_size", "8", "--channels", "3",
           "--batch_size", "4", "--num_parallel_workers", "1", "--out", str(out)]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    with Image.open(out) as g:
        assert g.size == (2 * 10 + 2, 2 * 10 + 2)  # 4 images, nrow 2, padding 2

"""Where the images come from, without MindSpore: the data sets we know, their official files
(checked, decompressed or downloaded into a cache, never into the data folder), readers that
give numpy arrays, and image files decoded the way the training pipeline decodes them.

The training pipeline (:mod:`ddpm_ms.data.pipeline`) and the evaluation (``ddpm_ms.eval``) both
read through here, so a data set is read one way everywhere.
"""
import concurrent.futures
import gzip
import hashlib
import json
import math
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from ..cpu_env import usable_cpus
from ..files import write_text
from .fetch import DataError, download, extract_tar_folder, gunzip, md5sum, user_cache_dir

DATASETS = ("fashion_mnist", "mnist", "cifar10", "image_folder")
SPLITS = ("train", "test", "all")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

# Official IDX files: raw name -> MD5 of the .gz.
IDX_SETS = {
    "fashion_mnist": {
        "title": "Fashion-MNIST",
        "url": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "md5": {
            "train-images-idx3-ubyte": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte": "bb300cfdad3c16e7a12a480ee83cd310",
        },
    },
    "mnist": {
        "title": "MNIST",
        "url": "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "md5": {
            "train-images-idx3-ubyte": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte": "ec29112dd5afa0611ce80d1b7f02629c",
        },
    },
}
IDX_PREFIX = {"train": "train", "test": "t10k"}

CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
CIFAR_MD5 = "c32a1d4ab5d03f1284b67883e8d87530"
CIFAR_FOLDER = "cifar-10-batches-bin"
CIFAR_FILES = {"train": [f"data_batch_{i}.bin" for i in range(1, 6)], "test": ["test_batch.bin"]}
CIFAR_BATCH_BYTES = 10000 * (1 + 3 * 32 * 32)

NATIVE = {"fashion_mnist": (28, 1), "mnist": (28, 1), "cifar10": (32, 3)}  # (size, channels)


class DataWarning(UserWarning):
    """Something in the data was skipped (e.g. unreadable image files)."""


# --------------------------------------------------------------------------- config helpers

def _get(cfg, key):
    """cfg[key], or the config's default (``config.DEFAULTS``) when the key is absent."""
    try:
        return cfg[key]
    except KeyError:
        from ..config import DEFAULTS
        return DEFAULTS[key][0]


def _split_list(split):
    return ["train", "test"] if split == "all" else [split]


def _path_key(path):
    """Short stable id of a folder, to keep cache entries of different data_dirs apart."""
    return hashlib.sha1(str(Path(path).resolve()).encode()).hexdigest()[:10]


def _writable(path):
    """True for an existing folder we may write to. A folder with no write bit counts as
    read-only even for root, who could write anyway (shared data must stay untouched)."""
    path = Path(path)
    try:
        return path.is_dir() and os.access(path, os.W_OK) and bool(path.stat().st_mode & 0o222)
    except OSError:
        return False


def resolve_cache_dir(cfg):
    """``cache_dir``, else the per-user cache ``<user cache>/data`` (``$DDPM_MS_CACHE``,
    ``$XDG_CACHE_HOME/ddpm_ms`` or ``~/.cache/ddpm_ms``; see ``fetch.user_cache_dir``).

    Never the data folder: reading a data set writes nothing into it. Entries inside are
    keyed by the data folder's resolved path, so two data folders never share one.
    """
    if _get(cfg, "cache_dir"):
        return Path(_get(cfg, "cache_dir")).expanduser()
    return user_cache_dir() / "data"


def _download_dir(data_dir, cache_root, name):
    """Where downloads go: data_dir when it is writable or can be created (the download
    creates it, and only when it succeeds), else the cache."""
    if data_dir.exists():
        return data_dir if _writable(data_dir) else cache_root / "downloads" / name
    parent = next((p for p in data_dir.absolute().parents if p.exists()), None)
    return data_dir if parent is not None and _writable(parent) else cache_root / "downloads" / name


# --------------------------------------------------------------------------- IDX (MNIST-like)

def _check_idx(path):
    """Raise DataError unless ``path`` is an IDX file whose size matches its header."""
    labels = "labels" in path.name
    try:
        with open(path, "rb") as f:
            head = f.read(16)
        size = path.stat().st_size
    except OSError as e:
        raise DataError(f"cannot read {path} ({e})") from e
    want_magic, header = (2049, 8) if labels else (2051, 16)
    magic = int.from_bytes(head[0:4], "big") if len(head) >= header else -1
    dims = [int.from_bytes(head[i:i + 4], "big") for i in range(4, header, 4)]
    if magic != want_magic or size != header + math.prod(dims):
        raise DataError(f"{path} is not a complete IDX file (magic {magic}, {size} bytes); "
                        "delete it and put the official file there")


def _has_name_clash(folder, names):
    """MindSpore picks IDX files by matching their names inside file names: any other file
    whose name contains a needed name (e.g. the .gz beside the raw file) makes it fail."""
    for entry in folder.iterdir():
        if any(n in entry.name and entry.name != n for n in names):
            return True
    return False


def _link_or_copy(src, dest, tmp_dir):
    """Make ``dest`` a symlink to ``src`` (a copy where symlinks are not allowed)."""
    src = src.resolve()
    if dest.is_symlink() and Path(os.readlink(dest)) == src:
        return
    tmp = tmp_dir / f"{dest.name}.link"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    try:
        os.symlink(src, tmp)
    except OSError:
        shutil.copy2(src, tmp)
    os.replace(tmp, dest)


def _prepare_idx(dataset, data_dir, cache_root, split, download_ok, fetch=None):
    """Return a folder holding only the raw IDX files MindSpore needs for ``split``.

    Raw files in data_dir are used in place when no other file name there contains theirs;
    otherwise the cache folder gets symlinks to them, or decompressed copies of the ``.gz``
    files (once: a stamp records which .gz each copy came from).
    """
    spec = IDX_SETS[dataset]
    names = [f"{IDX_PREFIX[s]}-{kind}" for s in _split_list(split)
             for kind in ("images-idx3-ubyte", "labels-idx1-ubyte")]
    dl_dir = _download_dir(data_dir, cache_root, dataset) if download_ok else None
    search = [d for d in (data_dir, dl_dir) if d is not None and d.is_dir()]

    def locate(name):
        for d in search:
            if (d / name).is_file():
                return d / name
        for d in search:
            if (d / f"{name}.gz").is_file():
                return d / f"{name}.gz"
        return None

    if any(locate(n) is None for n in names):
        files = ", ".join(f"{n}.gz" for n in spec["md5"])
        if not download_ok:
            raise DataError(f"{spec['title']} files not found in {data_dir}: put {files} (or the "
                            f"decompressed files) there, pass --data_dir DIR holding them, or pass "
                            f"--download true")
        for name, md5 in spec["md5"].items():
            if locate(name) is None:
                try:
                    download(spec["url"] + f"{name}.gz", dl_dir / f"{name}.gz", md5=md5, fetch=fetch)
                except DataError as e:
                    raise DataError(f"{spec['title']}: {e}; download {files} from {spec['url']} into "
                                    f"{data_dir} yourself, or pass --data_dir DIR holding them") from None
                search = [d for d in (data_dir, dl_dir) if d.is_dir()]

    found = {n: locate(n) for n in names}
    if all(p.parent == data_dir and p.name == n for n, p in found.items()) \
            and not _has_name_clash(data_dir, names):
        for p in found.values():
            _check_idx(p)
        return data_dir

    # The raw files get a folder of their own; stamps and partial files live beside it in
    # <out>.meta, since MindSpore would try to read any file whose name contains an IDX name.
    out = cache_root / f"{dataset}-idx-{_path_key(data_dir)}"
    meta = out.with_name(out.name + ".meta")
    try:
        out.mkdir(parents=True, exist_ok=True)
        meta.mkdir(exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create the cache folder {out} ({e}); pass --cache_dir DIR") from e
    for name, src in found.items():
        dest = out / name
        if src.name == name:
            _link_or_copy(src, dest, meta)
        else:
            stamp = meta / f"{name}.stamp"
            st = src.stat()
            want = f"{src.resolve()} {st.st_size} {st.st_mtime_ns}"
            fresh = dest.is_file() and not dest.is_symlink() and stamp.is_file() \
                and stamp.read_text() == want
            if not fresh:
                known = spec["md5"].get(name)
                if known and md5sum(src) != known:
                    warnings.warn(DataWarning(f"{src} is not the official {spec['title']} file "
                                              f"(MD5 differs); using it anyway"), stacklevel=3)
                if dest.is_symlink():
                    dest.unlink()
                gunzip(src, dest, tmp_dir=meta)
                stamp.write_text(want)
        _check_idx(dest)
    return out


# --------------------------------------------------------------------------- CIFAR-10 binary

def _prepare_cifar(data_dir, cache_root, split, download_ok, fetch=None):
    """Return the ``cifar-10-batches-bin`` folder holding the batches ``split`` needs."""
    need = [f for s in _split_list(split) for f in CIFAR_FILES[s]]
    extracted = cache_root / f"cifar10-{_path_key(data_dir)}"
    dl_dir = _download_dir(data_dir, cache_root, "cifar10") if download_ok else None

    def find_folder():
        roots = [data_dir / CIFAR_FOLDER, data_dir, extracted / CIFAR_FOLDER]
        if dl_dir is not None:
            roots.append(dl_dir / CIFAR_FOLDER)
        for d in roots:
            if all((d / f).is_file() for f in need):
                for f in need:
                    if (d / f).stat().st_size != CIFAR_BATCH_BYTES:
                        raise DataError(f"{d / f} is not a complete CIFAR-10 batch "
                                        f"({(d / f).stat().st_size} bytes, expected {CIFAR_BATCH_BYTES})")
                return d
        return None

    folder = find_folder()
    if folder is not None:
        return folder
    tars = [d / "cifar-10-binary.tar.gz" for d in (data_dir, dl_dir) if d is not None]
    tar = next((t for t in tars if t.is_file()), None)
    downloaded = False
    if tar is None and download_ok:
        try:
            tar = download(CIFAR_URL, dl_dir / "cifar-10-binary.tar.gz", md5=CIFAR_MD5, fetch=fetch)
        except DataError as e:
            raise DataError(f"CIFAR-10: {e}; download {CIFAR_URL} yourself and put it (or its "
                            f"{CIFAR_FOLDER}/ folder) into {data_dir}, or pass --data_dir DIR") from None
        downloaded = True
    if tar is not None:
        # beside an archive we just downloaded; an archive the user put there is extracted
        # into the cache, so the data folder is left as it was
        extract_tar_folder(tar, CIFAR_FOLDER, tar.parent if downloaded and _writable(tar.parent) else extracted)
        folder = find_folder()
        if folder is not None:
            return folder
    raise DataError(f"CIFAR-10 binary files {', '.join(need)} not found in {data_dir} or "
                    f"{data_dir / CIFAR_FOLDER}: put {CIFAR_FOLDER}/ or cifar-10-binary.tar.gz there, "
                    f"pass --data_dir DIR holding them, pass --download true"
                    + (", or use --split test" if split != "test" else ""))


# --------------------------------------------------------------------------- image folders

def _to_mode(img, channels):
    """Pillow image of any mode -> "L" (channels 1) or "RGB" (channels 3).

    16- and 32-bit integer images (I;16, I) are scaled from 0..65535 to 0..255 (Pillow's own
    conversion would clip them); float images (F) are read as 0..1 when their maximum is at
    most 1, else as 0..255. Alpha is dropped, as ``convert`` does.
    """
    target = "L" if channels == 1 else "RGB"
    if img.mode.startswith("I") or img.mode == "F":
        a = np.asarray(img).astype(np.float64)
        if img.mode == "F":
            a = a * 255.0 if a.size and a.max() <= 1.0 else a
        else:
            a = a * (255.0 / 65535.0)
        img = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L")
    if img.mode != target:
        with warnings.catch_warnings():  # "Palette images with Transparency ..." is noise here
            warnings.simplefilter("ignore", UserWarning)
            img = img.convert(target)
    return img


def load_image(path, channels=3, image_size=None):
    """Decode one file into an (H, W, channels) uint8 array.

    With ``image_size``: resize the short side to image_size (bilinear), then center-crop to
    image_size x image_size. EXIF orientation is applied.
    """
    with Image.open(path) as img:
        if image_size and img.format == "JPEG" and img.mode in ("L", "RGB"):
            img.draft(img.mode, (image_size, image_size))  # DCT scaling: faster, stays >= size
        img.load()
        img = ImageOps.exif_transpose(img) if img.format in ("JPEG", "TIFF", "WEBP") else img
        img = _to_mode(img, channels)
    if image_size:
        w, h = img.size
        if (w, h) != (image_size, image_size):
            scale = image_size / min(w, h)
            nw, nh = max(image_size, round(w * scale)), max(image_size, round(h * scale))
            if (nw, nh) != (w, h):
                img = img.resize((nw, nh), Image.BILINEAR)
            left, top = int(round((nw - image_size) / 2)), int(round((nh - image_size) / 2))
            img = img.crop((left, top, left + image_size, top + image_size))
    a = np.asarray(img, dtype=np.uint8)
    return a[:, :, None] if a.ndim == 2 else a


def _check_image(path):
    """None when Pillow can verify and fully decode the file, else a short reason."""
    try:
        with Image.open(path) as img:
            img.verify()
        load_image(path, channels=3)
        return None
    except Exception as e:  # noqa: BLE001 -- any decoder failure means "skip this file"
        return f"{type(e).__name__}: {e}"


def list_images(root):
    """Image files under root (recursive, hidden folders skipped), sorted by relative path."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(os.path.join(dirpath, f) for f in filenames
                     if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith("."))
    return sorted(found, key=lambda p: os.path.relpath(p, root))


def scan_image_folder(root, cache_dir=None, workers=None):
    """Return the sorted list of decodable image files under ``root``.

    Every file is checked once (Pillow verify + full decode, in threads); results are kept in
    ``cache_dir`` keyed by size and mtime, so later runs only check new or changed files.
    Unreadable files are reported in ONE DataWarning (count and first paths) and skipped.
    Raises DataError when root is missing or holds no usable image.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist; pass --data_dir DIR pointing to a "
                        f"folder of images ({', '.join(IMAGE_EXTENSIONS)})")
    paths = list_images(root)
    if not paths:
        raise DataError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) under {root}; pass "
                        f"--data_dir DIR pointing to a folder of images")

    cache_file = Path(cache_dir) / f"scan-{_path_key(root)}.json" if cache_dir else None
    cached = {}
    if cache_file is not None and cache_file.is_file():
        try:
            cached = json.loads(cache_file.read_text()).get("files", {})
        except (OSError, ValueError):
            cached = {}
    results, todo = {}, []
    for p in paths:
        rel = os.path.relpath(p, root)
        try:
            st = os.stat(p)
        except OSError as e:
            results[rel] = [0, 0, f"OSError: {e}"]
            continue
        entry = cached.get(rel)
        if entry and entry[0] == st.st_size and entry[1] == st.st_mtime_ns:
            results[rel] = entry
        else:
            todo.append((rel, p, st))
    if todo:
        with concurrent.futures.ThreadPoolExecutor(workers or usable_cpus()) as pool:
            for (rel, _, st), err in zip(todo, pool.map(_check_image, [t[1] for t in todo])):
                results[rel] = [st.st_size, st.st_mtime_ns, err]
        if cache_file is not None:
            try:
                write_text(str(cache_file), json.dumps({"root": str(root.resolve()), "files": results}))
            except OSError:
                pass  # the cache is only a speed-up

    errors = [results[os.path.relpath(p, root)][2] for p in paths]
    good = [p for p, err in zip(paths, errors) if err is None]
    bad = [(p, err) for p, err in zip(paths, errors) if err is not None]
    if bad:
        first = "; ".join(f"{p} ({why})" for p, why in bad[:3])
        more = f"; and {len(bad) - 3} more" if len(bad) > 3 else ""
        warnings.warn(DataWarning(f"{len(bad)} of {len(paths)} image files under {root} cannot be "
                                  f"decoded and are skipped: {first}{more}"), stacklevel=2)
    if not good:
        raise DataError(f"no usable image under {root}: all {len(paths)} image files are unreadable; "
                        f"pass --data_dir DIR pointing to a folder of valid images")
    return good


# --------------------------------------------------------------------------- numpy readers

IDX_MAGIC = {2049: 1, 2051: 3}   # labels: 1 dim, images: 3 dims (N, rows, cols)


def read_idx(path):
    """An IDX file (``.gz`` or decompressed) as a uint8 array: images (magic 2051) ->
    (N, rows, cols), labels (magic 2049) -> (N,). If ``path`` is missing, the same name
    with / without ``.gz`` is tried. DataError (one line) for a missing, short or foreign file."""
    path = str(path)
    if not os.path.isfile(path):
        alt = path[:-3] if path.endswith(".gz") else path + ".gz"
        if not os.path.isfile(alt):
            raise DataError(f"IDX file not found: {path} (nor {alt})")
        path = alt
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read IDX file {path}: {e}") from None
    magic = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else -1
    if magic not in IDX_MAGIC:
        raise DataError(f"{path} is not an IDX image/label file (magic {magic}, expected 2049 or 2051)")
    ndim = IDX_MAGIC[magic]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise DataError(f"{path} is truncated: header says {shape}, found {data.size} bytes")
    return data.reshape(shape)


def read_cifar10(data_dir, split="test"):
    """uint8 (N, 32, 32, 3) images from the official binary batches in ``data_dir`` (the
    ``cifar-10-batches-bin`` folder or the folder holding it). DataError (one line) when a
    batch is missing or is not a CIFAR-10 batch."""
    root = Path(data_dir)
    names = CIFAR_FILES[split]
    if not (root / names[0]).is_file() and (root / CIFAR_FOLDER / names[0]).is_file():
        root = root / CIFAR_FOLDER
    out = []
    for name in names:
        path = root / name
        if not path.is_file():
            raise DataError(f"CIFAR-10 batch not found: {path} (pass --data_dir pointing at {CIFAR_FOLDER})")
        raw = np.fromfile(path, dtype=np.uint8)
        if raw.size % 3073:
            raise DataError(f"{path} is not a CIFAR-10 binary batch ({raw.size} bytes, not a multiple of 3073)")
        out.append(raw.reshape(-1, 3073)[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    return np.concatenate(out, 0)

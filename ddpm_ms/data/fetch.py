"""Downloading, checksums and atomic unpacking for the data sets.

Nothing here imports MindSpore. Every write goes to a temporary file in the target folder
first and is moved into place with ``os.replace``, so an interrupted run never leaves a
half-written file under the final name.

The network call is one function, ``http_get(url, dest)``; the callers take a ``fetch``
argument with the same signature so tests can pass a fake and never touch the network.
"""
import gzip
import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path


class DataError(Exception):
    """A data set cannot be found, fetched or read. The message says how to fix it."""


def user_cache_dir():
    """The per-user cache of ddpm_ms: ``$DDPM_MS_CACHE``, else ``$XDG_CACHE_HOME/ddpm_ms``,
    else ``~/.cache/ddpm_ms``."""
    if os.environ.get("DDPM_MS_CACHE"):
        return Path(os.environ["DDPM_MS_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base).expanduser() / "ddpm_ms"


def _missing_dirs(folder):
    """The folders that ``folder.mkdir(parents=True)`` would create, deepest last."""
    missing = []
    folder = Path(folder).absolute()
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing[::-1]


def md5sum(path, chunk_size=1 << 20):
    """Hex MD5 of a file, read in chunks."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk_size), b""):
            h.update(block)
    return h.hexdigest()


def _temp_path(dest, tmp_dir=None):
    """A fresh temporary file in ``tmp_dir`` (default: beside ``dest``; must be on the same
    file system so the final rename is atomic), with the usual umask-based permissions."""
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=tmp_dir or dest.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    return Path(tmp)


def http_get(url, dest, timeout=60):
    """Stream ``url`` into the file ``dest``. Raises OSError / URLError on failure."""
    with urllib.request.urlopen(url, timeout=timeout) as response, open(dest, "wb") as f:
        shutil.copyfileobj(response, f, length=1 << 20)


def download(url, dest, md5=None, fetch=None):
    """Download ``url`` to ``dest`` atomically and check its MD5 when given.

    ``fetch(url, path)`` writes the body to ``path`` (default: :func:`http_get`).
    Raises DataError when the transfer fails or the checksum does not match; neither
    leaves anything under ``dest``, and folders created for it are removed again.
    """
    dest = Path(dest)
    created = _missing_dirs(dest.parent)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_path(dest)
    done = False
    try:
        try:
            (fetch or http_get)(url, tmp)
        except (OSError, urllib.error.URLError, ValueError) as e:
            raise DataError(f"could not download {url} ({e})") from e
        if md5 is not None:
            got = md5sum(tmp)
            if got != md5:
                raise DataError(f"checksum mismatch for {url}: MD5 {got}, expected {md5}")
        os.replace(tmp, dest)
        done = True
    finally:
        if tmp.exists():
            tmp.unlink()
        if not done:  # a failed download leaves no empty folder behind
            for folder in reversed(created):
                try:
                    folder.rmdir()
                except OSError:
                    break
    return dest


def gunzip(src, dest, tmp_dir=None):
    """Decompress the gzip file ``src`` into ``dest`` atomically. Returns ``dest``.

    ``tmp_dir``: where the partial file lives meanwhile (same file system as ``dest``).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_path(dest, tmp_dir)
    try:
        with gzip.open(src, "rb") as fin, open(tmp, "wb") as fout:
            shutil.copyfileobj(fin, fout, length=1 << 20)
        os.replace(tmp, dest)
    except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError
        raise DataError(f"cannot decompress {src} ({e}); delete it and fetch it again") from e
    finally:
        if tmp.exists():
            tmp.unlink()
    return dest


def extract_tar_folder(archive, folder, dest_parent):
    """Extract the top-level ``folder`` of a .tar.gz into ``dest_parent/folder`` atomically.

    Members outside ``folder/`` and anything that is not a plain file or directory are
    skipped, so a hostile archive cannot write outside the target.
    """
    dest_parent = Path(dest_parent)
    dest_parent.mkdir(parents=True, exist_ok=True)
    final = dest_parent / folder
    staging = Path(tempfile.mkdtemp(prefix=f".{folder}.", dir=dest_parent))
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for m in tar.getmembers():
                parts = Path(m.name).parts
                if not parts or parts[0] != folder or ".." in parts or Path(m.name).is_absolute():
                    continue
                if not (m.isfile() or m.isdir()):
                    continue
                target = staging.joinpath(*parts)
                if m.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(m) as fin, open(target, "wb") as fout:
                    shutil.copyfileobj(fin, fout, length=1 << 20)
        if not (staging / folder).is_dir():
            raise DataError(f"{archive} has no {folder}/ folder; delete it and fetch it again")
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging / folder, final)
    except (OSError, EOFError, tarfile.TarError) as e:
        raise DataError(f"cannot extract {archive} ({e}); delete it and fetch it again") from e
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final

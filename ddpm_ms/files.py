"""Writing files so that a crash never leaves a half-written one: every writer of the package
goes through :func:`atomic_write` (a temporary file beside the target, then ``os.replace``)."""
import contextlib
import io
import os
import zipfile

import numpy as np


@contextlib.contextmanager
def atomic_write(path, suffix=""):
    """Yield a temporary path beside ``path``; when the block ends without an error the file
    written there replaces ``path`` in one step (``os.replace``), and on any error it is removed,
    leaving ``path`` as it was. ``suffix``: for writers that insist on an extension (``.png``,
    ``.ckpt``). The folder is created if needed."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp{os.getpid()}{suffix}")
    try:
        if os.path.lexists(tmp):
            os.remove(tmp)
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.lexists(tmp):
            os.remove(tmp)


def write_text(path, text):
    """Write ``text`` to ``path`` atomically."""
    with atomic_write(path) as tmp, open(tmp, "w") as f:
        f.write(text)
    return path


def save_npz(path, **arrays):
    """``np.savez_compressed`` with fixed zip timestamps (equal arrays give equal bytes), written
    atomically; no pickled objects."""
    with atomic_write(path) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for name, value in arrays.items():
                buf = io.BytesIO()
                np.lib.format.write_array(buf, np.asanyarray(value), allow_pickle=False)
                info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_DEFLATED
                zf.writestr(info, buf.getvalue())
    return path

"""Images out: float batches in [-1, 1] to uint8, and uint8 images tiled into one grid."""
import math
from pathlib import Path

import numpy as np
from PIL import Image


def to_uint8(batch):
    """(N, C, H, W) floats in [-1, 1] -> (N, H, W, C) uint8 by round((x + 1) * 127.5), clipped.

    Accepts numpy arrays or MindSpore tensors; a single (C, H, W) image gives (H, W, C).
    Inverts the pipeline's x / 127.5 - 1 exactly.
    """
    x = batch.asnumpy() if hasattr(batch, "asnumpy") else np.asarray(batch)
    x = np.clip(np.rint((x.astype(np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)
    return np.moveaxis(x, -3, -1)


def tile(images, nrow=None, padding=2, pad_value=0):
    """uint8 images (N, H, W, C) or (N, H, W) -> one uint8 grid (H', W', C), ``nrow`` per row
    (default ceil(sqrt(N))), ``padding`` pixels of ``pad_value`` around and between them."""
    a = np.asarray(images)
    if a.dtype != np.uint8:
        raise ValueError(f"expected uint8 images, got {a.dtype} (use to_uint8 first)")
    if a.ndim == 3:
        a = a[..., None]
    n, h, w, c = a.shape
    nrow = int(nrow or math.ceil(math.sqrt(n)))
    rows = math.ceil(n / nrow)
    grid = np.full((rows * (h + padding) + padding, nrow * (w + padding) + padding, c), pad_value, np.uint8)
    for i in range(n):
        r, k = divmod(i, nrow)
        y, x = padding + r * (h + padding), padding + k * (w + padding)
        grid[y:y + h, x:x + w] = a[i]
    return grid


def save_grid(images, path, nrow=None, padding=2, pad_value=0):
    """Write uint8 images (N, H, W, C) or (N, H, W) as one PNG grid (:func:`tile`). Returns the path."""
    grid = tile(images, nrow, padding, pad_value)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    gray = grid.shape[-1] == 1
    Image.fromarray(grid[..., 0] if gray else grid, "L" if gray else "RGB").save(path)
    return path

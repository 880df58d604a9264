"""Checkpoints that are enough to sample from, written so a crash never breaks them.

One ``.ckpt`` (MindSpore's format) holds the network (``<name>``), the EMA copy
(``ema.<name>``), the optimizer state, the training step and the resolved config as JSON.
Files are written to a temporary name and renamed into place; ``latest.ckpt`` is replaced
atomically only after the step file is complete.
"""
import glob
import json
import os
import re
import shutil

from .files import atomic_write

FORMAT_VERSION = 1
EMA_PREFIX = "ema."
# an imported optimizer (python -m ddpm_ms.convert): import_adam.m.<name>, import_adam.v.<name>, import_adam.step
IMPORT_ADAM = "import_adam."
WEIGHTS = ("ema", "raw")  # which weight set to load: the EMA copy or the trained weights
META_KEYS = ("step", "epoch", "config_json", "format_version", "kind")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message is one line saying why."""


def save(path, named_tensors, step, config, epoch=0, kind="train"):
    """Write ``named_tensors`` (iterable of (name, Tensor/Parameter)) and metadata atomically.

    A failure at any point leaves ``path`` as it was (or absent) and removes the temp file.
    """
    from .config import public
    items = [{"name": name, "data": value} for name, value in named_tensors]
    meta = {"step": int(step), "epoch": int(epoch), "format_version": FORMAT_VERSION,
            "config_json": json.dumps(public(config), sort_keys=True), "kind": kind}
    return save_atomic(items, path, append_dict=meta)


def save_atomic(items, path, append_dict=None):
    """``mindspore.save_checkpoint(items, ...)`` to a temporary file renamed onto ``path``:
    a failure leaves ``path`` as it was and removes the temporary file."""
    import mindspore as ms

    with atomic_write(path, suffix=".ckpt") as tmp:  # MindSpore appends .ckpt to names without it
        ms.save_checkpoint(items, tmp, append_dict=append_dict)
    return path


def link_latest(path, run_dir):
    """Point ``run_dir/latest.ckpt`` at ``path`` (hard link, else copy), atomically."""
    latest = os.path.join(run_dir, "latest.ckpt")
    with atomic_write(latest) as tmp:
        try:
            os.link(path, tmp)
        except OSError:  # file systems without hard links (some OBS mounts)
            shutil.copyfile(path, tmp)
    return latest


def step_checkpoints(run_dir):
    """Step checkpoints in ``run_dir`` as [(step, path)], oldest first."""
    found = []
    for p in glob.glob(os.path.join(run_dir, "step_*.ckpt")):
        m = re.match(r"step_(\d+)\.ckpt$", os.path.basename(p))
        if m:
            found.append((int(m.group(1)), p))
    return sorted(found)


def rotate(run_dir, keep):
    """Delete all but the newest ``keep`` step checkpoints (``latest.ckpt`` is separate)."""
    ckpts = step_checkpoints(run_dir)
    for _, p in ckpts[:max(0, len(ckpts) - keep)]:
        os.remove(p)


def load(path):
    """Read a checkpoint: (tensors dict name -> Parameter, meta dict with 'config' as dict).

    Raises CheckpointError with one line for a missing file, a file that is not a
    MindSpore checkpoint, or a checkpoint not written by ddpm_ms.
    """
    import mindspore as ms
    if path and os.path.isdir(path):
        raise CheckpointError(f"{path} is a folder, not a checkpoint file: {folder_hint(path)}")
    if not path or not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        raw = ms.load_checkpoint(path)
    except Exception:  # MindSpore raises ValueError/RuntimeError for unparsable files
        raise CheckpointError(f"{path} is not a readable MindSpore checkpoint (corrupt or another format)") from None
    if "config_json" not in raw or "step" not in raw:
        raise CheckpointError(f"{path} is a MindSpore checkpoint but not one written by ddpm_ms "
                              "(no config inside); train with train.py to get one")
    meta = {}
    for key in META_KEYS:
        if key in raw:
            value = raw.pop(key)
            meta[key] = value if isinstance(value, str) else value.asnumpy().item()
    meta["config"] = json.loads(meta.pop("config_json"))
    return raw, meta


def check_compatible(saved_cfg, cfg, keys):
    """Raise CheckpointError naming the first setting in ``keys`` that differs. A key that the
    saved config lacks (a checkpoint older than the key, e.g. unet_family) counts as its default."""
    from .config import DEFAULTS
    saved = {k: saved_cfg[k] if k in saved_cfg else DEFAULTS.get(k, (None,))[0] for k in keys}
    diffs = [f"{k}: checkpoint {saved[k]!r} vs config {cfg.get(k)!r}"
             for k in keys if saved[k] != cfg.get(k)]
    if diffs:
        raise CheckpointError("checkpoint is from a different architecture (" + "; ".join(diffs) + ")")


def named(cell):
    """(path, Parameter) pairs of a cell, paths relative to the cell itself.

    Parameter.name changes when a cell is wrapped (e.g. 'network.' inside the loss cell);
    checkpoints store networks under these stable relative paths instead.
    """
    return list(cell.parameters_and_names())


def load_into(named_params, tensors, prefix="", where="checkpoint"):
    """Copy ``tensors[prefix + name]`` into each Parameter of ``named_params`` ((name, Parameter) pairs).

    Every parameter must be present with the same shape; otherwise CheckpointError names it.
    """
    for name, p in named_params:
        key = prefix + name
        if key not in tensors:
            raise CheckpointError(f"{where} has no tensor '{key}': it was written for another network")
        value = tensors[key]
        if tuple(value.shape) != tuple(p.shape):
            raise CheckpointError(f"{where}: '{key}' has shape {tuple(value.shape)}, the network "
                                  f"expects {tuple(p.shape)} (different architecture or image size)")
        p.set_data(value.astype(p.dtype) if value.dtype != p.dtype else value)


def folder_hint(folder):
    """What to pass instead of a folder: its latest.ckpt, else the .ckpt files it holds."""
    latest = os.path.join(folder, "latest.ckpt")
    if os.path.isfile(latest):
        return f"pass {latest}"
    found = sorted(f for f in os.listdir(folder) if f.endswith(".ckpt"))
    if not found:
        return "it holds no .ckpt file"
    shown = ", ".join(found[-5:]) + (f" (and {len(found) - 5} more)" if len(found) > 5 else "")
    return f"pass one of the .ckpt files in it: {shown}"


def find_resume(resume, run_dir):
    """Resolve ``--resume``: '' -> None, 'auto' -> run_dir/latest.ckpt if present, else the path.

    (``auto_resume_candidates`` lists every checkpoint 'auto' may fall back to.)
    """
    if not resume:
        return None
    if resume == "auto":
        latest = os.path.join(run_dir, "latest.ckpt")
        return latest if os.path.isfile(latest) else None
    if os.path.isdir(resume):
        raise CheckpointError(f"--resume {resume} is a folder, not a checkpoint file: {folder_hint(resume)}, "
                              "or --resume auto with its run")
    if not os.path.isfile(resume):
        raise CheckpointError(f"--resume {resume}: no such checkpoint file")
    return resume


def auto_resume_candidates(run_dir):
    """What ``--resume auto`` tries, in order: latest.ckpt, then the step checkpoints newest first."""
    latest = os.path.join(run_dir, "latest.ckpt")
    found = [latest] if os.path.isfile(latest) else []
    return found + [p for _, p in reversed(step_checkpoints(run_dir))]


def load_first_readable(paths):
    """(path, (tensors, meta), skipped) for the first of ``paths`` that ``load`` can read;
    skipped lists (path, CheckpointError) of the unreadable ones before it. Raises
    CheckpointError when none is readable."""
    skipped = []
    for path in paths:
        try:
            return path, load(path), skipped
        except CheckpointError as err:
            skipped.append((path, err))
    names = ", ".join(os.path.basename(p) for p, _ in skipped)
    where = os.path.dirname(paths[0]) if paths else "?"
    raise CheckpointError(f"no readable checkpoint in {where}: {names} cannot be read (corrupt or "
                          "truncated); move them away to start from step 0, or pass --resume PATH")


def load_network(ckpt_path, weights="ema", conv_impl="auto"):
    """(network, config dict, meta) from a checkpoint; CheckpointError with one line on a bad file.

    conv_impl ('auto' | 'native' | 'matmul', see ``runtime.resolve_conv_impl``; 'auto' is native
    for sampling) is how this process computes convolutions, whatever the training run used:
    both give the same weights."""
    from .config import config_from_dict
    from .runtime import current_device_target, resolve_conv_impl
    from .unet import build_unet
    conv_impl = resolve_conv_impl(conv_impl, current_device_target(), training=False)
    tensors, meta = load(ckpt_path)
    cfg = config_from_dict(meta["config"])
    try:
        net = build_unet(cfg, conv_impl=conv_impl)
    except ValueError as err:
        raise CheckpointError(f"{ckpt_path}: its config does not build a U-Net ({err})") from None
    prefix = EMA_PREFIX if weights == "ema" else ""
    if weights == "ema" and not any(k.startswith(EMA_PREFIX) for k in tensors):
        raise CheckpointError(f"{ckpt_path} holds no EMA weights (trained with ema_decay 0); "
                              "use --weights raw")
    load_into(named(net), tensors, prefix=prefix, where=ckpt_path)
    net.set_train(False)
    return net, cfg, meta

"""Device, execution mode and seeds, for MindSpore 2.3 through 2.10.

MindSpore 2.5 added ``mindspore.set_device`` and moved thread settings to
``mindspore.device_context``; older releases only have ``set_context``. Everything
version-dependent is kept here.
"""
import os
import random

import numpy as np

from .cpu_env import apply_cpu_env, cpu_threads

DEVICE_TARGETS = ("auto", "CPU", "GPU", "Ascend")
MODES = ("graph", "pynative")


def resolve_device_target(requested):
    """Map 'auto' to the first available backend in Ascend, GPU, CPU order."""
    if requested not in DEVICE_TARGETS:
        raise ValueError(f"device_target must be one of {', '.join(DEVICE_TARGETS)}, got {requested!r}")
    if requested != "auto":
        return requested, "requested"
    import mindspore as ms
    for target in ("Ascend", "GPU"):
        try:
            if ms.hal.is_available(target):
                return target, f"auto: {target} is available"
        except Exception:  # backend plug-in missing or not loadable: not available
            continue
    return "CPU", "auto: no Ascend or GPU available"


def setup_device(device_target="auto", mode="graph", device_id=-1, seed=None, verbose=True):
    """Configure MindSpore for one process and return a dict describing the choice.

    device_id < 0 takes ``DEVICE_ID`` from the environment (ModelArts, msrun), else 0.
    On CPU the oneDNN/thread environment must already be applied (``apply_cpu_env``);
    this function applies it too, which only helps when MindSpore is not yet imported.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if device_target in ("auto", "CPU"):
        apply_cpu_env(verbose=False)
    import mindspore as ms

    target, why = resolve_device_target(device_target)
    if device_id is None or device_id < 0:
        device_id = int(os.environ.get("DEVICE_ID", 0))
    if hasattr(ms, "set_device"):  # MindSpore >= 2.5
        if target == "CPU":
            ms.set_device("CPU")
        else:
            ms.set_device(target, device_id)
    else:
        ms.set_context(device_target=target, device_id=device_id)
    ms.set_context(mode=ms.GRAPH_MODE if mode == "graph" else ms.PYNATIVE_MODE)
    info = {"device_target": target, "why": why, "device_id": device_id, "mode": mode}
    if target == "CPU":
        n = cpu_threads()
        try:
            ms.device_context.cpu.op_tuning.threads_num(n)
        except (AttributeError, RuntimeError):  # MindSpore < 2.5
            ms.set_context(runtime_num_threads=n)
        info["threads"] = n
    if seed is not None:
        set_seed(seed)
        info["seed"] = seed
    if verbose:
        print("[ddpm_ms] device: " + ", ".join(f"{k}={v}" for k, v in info.items()), flush=True)
    return info


def set_seed(seed):
    """Seed MindSpore (ops.randn etc.), numpy, Python and the dataset pipeline."""
    import mindspore as ms
    import mindspore.dataset as ds
    ms.set_seed(seed)
    ds.config.set_seed(seed)
    np.random.seed(seed)
    random.seed(seed)

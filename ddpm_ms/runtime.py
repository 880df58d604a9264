"""Process set-up shared by every entry point: CPU settings, device and mode, seeds, and
one-line errors.

* :func:`start` is what every command runs first: MindSpore's log level, the CPU settings
  (``ddpm_ms.cpu_env``, applied before MindSpore is imported), then the device and mode.
  :func:`prepare` does it for a train config (parse, then ``start``).
* :func:`run_main` runs a command's ``main`` and turns a user's mistake (any error class in
  :func:`user_errors`) into ``error: <one line>`` on stderr and exit code 2.
* Device, mode and thread settings for MindSpore 2.3 through 2.10: MindSpore 2.5 added
  ``mindspore.set_device`` and moved thread settings to ``mindspore.device_context``; older
  releases only have ``set_context``. Everything version-dependent is kept here.

``ddpm_ms.cpu_env`` stays a module of its own because it must run before ``import mindspore``
and so imports nothing of MindSpore; this module imports MindSpore only inside functions.
"""
import os
import random
import sys

import numpy as np

from .cpu_env import apply_cpu_env, cpu_threads
from .errors import ConfigError

DEVICE_TARGETS = ("auto", "CPU", "GPU", "Ascend")
MODES = ("auto", "graph", "pynative")
# What mode="auto" means on CPU: the faster of the two for the tutorial U-Net's train step,
# measured with bench/bench_train.py on a 2-core AVX-512 Xeon, MindSpore 2.10.0, interleaved in
# one process: graph 1.9x pynative at batch 16, 1.4x at batch 128. Ascend and GPU always get
# graph mode (whole-graph kernels, the reason those backends exist).
CPU_AUTO_MODE = "graph"
CPU_AUTO_WHY = "graph measured faster than pynative for the U-Net train step on CPU (bench/bench_train.py)"
# Compile levels of the train step's ms.jit (MindSpore 2.10 offers O0 and O1 there; O2 is
# deprecated). auto: O1 on Ascend, where graph-kernel fusion (AKG) is MindSpore's documented way
# to fuse the many small ops (Casts, norms, elementwise) of a mixed-precision U-Net; O0 on GPU and
# CPU, because the 2.10 ms.jit docstring calls O1 experimental, and CPU fusion needs AKG built
# with LLVM (a source build), which the PyPI wheel run here is not.
JIT_LEVELS = ("auto", "O0", "O1")
AUTO_JIT_LEVEL = {"Ascend": "O1", "GPU": "O0", "CPU": "O0"}
# How to get a backend this machine lacks (one line each, shown in DeviceError).
HOW_TO_GET = {
    "GPU": "GPU needs an NVIDIA GPU with CUDA 11.1 or 11.6 and the matching cuDNN (README: "
           "'Installing for Ascend or GPU')",
    "Ascend": "Ascend needs an Ascend NPU with the CANN toolkit that matches this MindSpore, its "
              "set_env.sh sourced (README: 'Installing for Ascend or GPU')",
}


# How convolutions are computed (ddpm_ms.convs): 'auto' = matmul for training on CPU, where the
# backward passes of MindSpore's own conv kernels are the bottleneck (BENCHMARKS.md), native on
# Ascend and GPU, whose vendor conv kernels are the fast path, and native for sampling on CPU.
CONV_IMPLS = ("auto", "native", "matmul")


def resolve_conv_impl(conv_impl, device_target, training=True):
    """'auto' -> 'matmul' for training on CPU, else 'native'; 'native' / 'matmul' pass through.

    Sampling runs the forward pass only, and there MindSpore's CPU convs (oneDNN capped at
    AVX2) were about 20% faster than unfold + matmul (DDIM-50, tutorial U-Net, BENCHMARKS.md);
    in training their backward passes make matmul 2.9-3.2x faster on one core."""
    if conv_impl not in CONV_IMPLS:
        raise ValueError(f"conv_impl must be one of {CONV_IMPLS}, got {conv_impl!r}")
    if conv_impl == "auto":
        return "matmul" if training and str(device_target).upper() == "CPU" else "native"
    return conv_impl


class DeviceError(ConfigError):
    """The requested device is not available here; the message is one line."""


def is_available(target):
    """Whether this MindSpore install can use ``target`` (CPU / GPU / Ascend) on this machine:
    ``mindspore.device_context.<target>.is_available()`` (2.5+; ``hal.is_available`` before),
    with the WARNING it logs for each missing plug-in silenced."""
    import logging

    import mindspore as ms
    before = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        backend = getattr(getattr(ms, "device_context", None), target.lower(), None)
        if backend is not None and hasattr(backend, "is_available"):
            return bool(backend.is_available())
        return bool(ms.hal.is_available(target))
    except Exception:  # backend plug-in missing or not loadable: not available
        return False
    finally:
        logging.disable(before)


def current_device_target():
    """The device target MindSpore runs on now: CPU, GPU or Ascend
    (``mindspore.get_current_device()`` from 2.5, ``get_context`` before)."""
    import mindspore as ms
    if hasattr(ms, "get_current_device"):
        return ms.get_current_device().device_target
    return ms.get_context("device_target")


def available_targets():
    """Backends this MindSpore install can use on this machine, e.g. ['CPU']."""
    return [t for t in ("Ascend", "GPU", "CPU") if is_available(t)] or ["CPU"]


def check_available(target):
    """Raise DeviceError (one line) unless ``target`` can run here.

    Checked with :func:`is_available` before ``set_device``: setting a missing
    backend prints MindSpore's library errors and a C++ stack instead.
    """
    if target == "CPU":
        return
    import mindspore as ms
    offered = available_targets()
    if target in offered:
        return
    raise DeviceError(f"device_target {target} is not available: this machine and MindSpore "
                      f"{ms.__version__} offer {', '.join(offered)}. {HOW_TO_GET[target]}; or pass "
                      f"--device_target {offered[0]} (or auto)")


def resolve_mode(mode, target):
    """(concrete mode, why) for a device target already resolved to CPU / GPU / Ascend."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if mode != "auto":
        return mode, "requested"
    if target == "CPU":
        return CPU_AUTO_MODE, f"auto: {CPU_AUTO_WHY}"
    return "graph", f"auto: graph on {target}"


def resolve_jit_level(level, target):
    """(O0 | O1, why) for a device target already resolved to CPU / GPU / Ascend."""
    if level not in JIT_LEVELS:
        raise ValueError(f"jit_level must be one of {', '.join(JIT_LEVELS)}, got {level!r}")
    if level != "auto":
        return level, "requested"
    return AUTO_JIT_LEVEL[target], f"auto: {AUTO_JIT_LEVEL[target]} on {target}"


def resolve_device_target(requested):
    """Map 'auto' to the first available backend in Ascend, GPU, CPU order."""
    if requested not in DEVICE_TARGETS:
        raise ValueError(f"device_target must be one of {', '.join(DEVICE_TARGETS)}, got {requested!r}")
    if requested != "auto":
        return requested, "requested"
    for target in ("Ascend", "GPU"):
        if is_available(target):
            return target, f"auto: {target} is available"
    return "CPU", "auto: no Ascend or GPU available"


def setup_device(device_target="auto", mode="auto", device_id=-1, seed=None, verbose=True):
    """Configure MindSpore for one process and return a dict describing the choice.

    mode: graph | pynative | auto (``resolve_mode``); ``info["mode"]`` is the concrete one and
    ``info["mode_why"]`` says why. device_id < 0 takes ``DEVICE_ID`` from the environment
    (ModelArts, msrun), else 0. On CPU the oneDNN/thread environment must already be applied
    (``apply_cpu_env``); this function applies it too, which only helps when MindSpore is not
    yet imported.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if device_target in ("auto", "CPU"):
        apply_cpu_env(verbose=False)
    import mindspore as ms

    target, why = resolve_device_target(device_target)
    check_available(target)
    if device_id is None or device_id < 0:
        device_id = int(os.environ.get("DEVICE_ID", 0))
    try:
        if hasattr(ms, "set_device"):  # MindSpore >= 2.5
            if target == "CPU":
                ms.set_device("CPU")
            else:
                ms.set_device(target, device_id)
        else:
            ms.set_context(device_target=target, device_id=device_id)
    except RuntimeError as err:  # e.g. device_id out of range; MindSpore adds a C++ stack
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DeviceError(f"cannot use {target} device {device_id}: {first}") from None
    mode, mode_why = resolve_mode(mode, target)
    ms.set_context(mode=ms.GRAPH_MODE if mode == "graph" else ms.PYNATIVE_MODE)
    info = {"device_target": target, "why": why, "device_id": device_id, "mode": mode, "mode_why": mode_why}
    if target == "CPU":
        info["threads"] = set_cpu_threads(ms, cpu_threads())
    if seed is not None:
        set_seed(seed)
        info["seed"] = seed
    if verbose:
        print("[ddpm_ms] device: " + describe(info), flush=True)
    return info


def set_cpu_threads(ms, n):
    """Size MindSpore's CPU kernel thread pool (the one oneDNN runs on); returns n.

    MindSpore allows this once per process: a second call (a second setup_device in the
    same process) keeps the first setting.
    """
    op_tuning = getattr(getattr(getattr(ms, "device_context", None), "cpu", None), "op_tuning", None)
    if op_tuning is None:  # MindSpore < 2.5
        ms.set_context(runtime_num_threads=n)
        return n
    try:
        op_tuning.threads_num(n)
    except RuntimeError:  # "can not be set repeatedly": already set earlier in this process
        pass
    return n


def describe(info):
    """One line: 'CPU (requested), mode=graph (auto: ...), device_id=0, threads=2, seed=42'."""
    parts = [f"{info['device_target']} ({info['why']})", f"mode={info['mode']} ({info['mode_why']})"]
    parts += [f"{k}={v}" for k, v in info.items() if k not in ("device_target", "why", "mode", "mode_why")]
    return ", ".join(parts)


def set_seed(seed):
    """Seed MindSpore (ops.randn etc.), numpy, Python and the dataset pipeline."""
    import mindspore as ms
    import mindspore.dataset as ds
    ms.set_seed(seed)
    ds.config.set_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def start(device_target="auto", mode="auto", device_id=-1, seed=None, conv_impl="native",
          training=False, verbose=True):
    """Set up this process for MindSpore work; returns ``setup_device``'s info dict.

    In order: MindSpore's log level (``quiet_mindspore``); on CPU the oneDNN / thread settings
    (``cpu_env.apply_cpu_env``, which only acts before MindSpore is imported: with every conv
    a matmul (``resolve_conv_impl(conv_impl, 'CPU', training)``) oneDNN is left uncapped); then
    the device, mode and seed (``setup_device``).
    """
    quiet_mindspore()
    if device_target in ("CPU", "auto"):
        matmul = resolve_conv_impl(conv_impl, "CPU", training=training) == "matmul"
        apply_cpu_env(verbose=verbose, matmul_convs=matmul)
    return setup_device(device_target, mode, device_id, seed=seed, verbose=verbose)

# Errors that are the user's to fix: printed as one line, no traceback.
USER_ERRORS = (ConfigError,)


def user_errors():
    errors = list(USER_ERRORS)
    for mod, name in (("ddpm_ms.data", "DataError"), ("ddpm_ms.checkpoint", "CheckpointError"),
                      ("ddpm_ms.trainer", "TrainingError"), ("ddpm_ms.eval.evaluate", "EvalError"),
                      ("ddpm_ms.eval.feature_net", "FeatureNetError"),
                      ("ddpm_ms.eval.inception", "InceptionError")):
        module = sys.modules.get(mod)
        if module is not None and hasattr(module, name):
            errors.append(getattr(module, name))
    return tuple(errors)


def run_main(main, argv=None):
    """Run ``main``; a user error prints 'error: <message>' on stderr and exits 2."""
    try:
        main(argv)
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # noqa: BLE001 - re-raised unless it is a user error
        if isinstance(err, user_errors()):
            print(f"error: {err}", file=sys.stderr)
            return 2
        raise
    return 0


def prepare(argv=None, description=None, parser=None, verbose=True):
    """Parse a train config, then :func:`start` (training: ``conv_impl`` auto is matmul on CPU).

    ``device_target`` and ``mode`` come back concrete: 'auto' is resolved by
    ``setup_device`` (mode: graph on Ascend/GPU, the measured faster one on CPU), and the
    device line it prints says why. The saved config records what actually ran;
    ``cfg['_requested_mode']`` keeps what was asked for.
    """
    from .config import build_parser, load_config
    parser = parser or build_parser(description=description)
    cfg = load_config(argv, parser=parser)
    # the U-Net is the only network of a train job: with matmul convs, oneDNN may go uncapped
    info = start(cfg["device_target"], cfg["mode"], cfg["device_id"], seed=cfg["seed"],
                 conv_impl=cfg["conv_impl"], training=True, verbose=verbose)
    cfg["_requested_mode"] = cfg["mode"]
    cfg["device_target"] = info["device_target"]
    cfg["mode"] = info["mode"]
    return cfg, info


def quiet_mindspore():
    """MindSpore logs WARNINGs at import (missing Ascend plug-ins on CPU machines, deprecated
    FusedSparseAdam); show only its errors unless the user chose a level (GLOG_v)."""
    os.environ.setdefault("GLOG_v", "3")

"""What every entry script does first: config, CPU settings, device, and one-line errors."""
import os
import sys

from .config import ConfigError, build_parser, load_config

# Errors that are the user's to fix: printed as one line, no traceback.
USER_ERRORS = (ConfigError,)


def _user_errors():
    errors = list(USER_ERRORS)
    for mod, name in (("ddpm_ms.data", "DataError"), ("ddpm_ms.checkpoint", "CheckpointError"),
                      ("ddpm_ms.trainer", "TrainingError"), ("ddpm_ms.unet", "UNetConfigError")):
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
        if isinstance(err, _user_errors()):
            print(f"error: {err}", file=sys.stderr)
            return 2
        raise
    return 0


def prepare(argv=None, description=None, parser=None, verbose=True):
    """Parse the config, apply CPU settings before MindSpore loads, set up the device.

    ``device_target`` and ``mode`` come back concrete: 'auto' is resolved by
    ``device.setup_device`` (mode: graph on Ascend/GPU, the measured faster one on CPU),
    and the device line it prints says why. The saved config records what actually ran;
    ``cfg['_requested_mode']`` keeps what was asked for.
    """
    parser = parser or build_parser(description=description)
    cfg = load_config(argv, parser=parser)
    quiet_mindspore()
    if cfg["device_target"] in ("CPU", "auto"):
        from .cpu_env import apply_cpu_env
        from .device import resolve_conv_impl
        # the U-Net is the only network of a train job: with matmul convs, oneDNN may go uncapped
        apply_cpu_env(verbose=verbose, matmul_convs=resolve_conv_impl(cfg["conv_impl"], "CPU") == "matmul")
    from .device import setup_device
    info = setup_device(cfg["device_target"], cfg["mode"], cfg["device_id"], seed=cfg["seed"],
                        verbose=verbose)
    cfg["_requested_mode"] = cfg["mode"]
    cfg["device_target"] = info["device_target"]
    cfg["mode"] = info["mode"]
    return cfg, info


def quiet_mindspore():
    """MindSpore logs WARNINGs at import (missing Ascend plug-ins on CPU machines, deprecated
    FusedSparseAdam); show only its errors unless the user chose a level (GLOG_v)."""
    os.environ.setdefault("GLOG_v", "3")

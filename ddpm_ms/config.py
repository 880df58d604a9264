"""One place for every setting: defaults in code, YAML overrides them, the CLI overrides YAML.

    cfg = load_config(["--config", "configs/fashion_mnist.yaml", "--lr", "2e-4"])

An unknown key (in YAML or on the command line) is an error naming the closest valid key;
every value is type-checked when it is read, so a typo fails at start-up, not 2,000 steps in.
The resolved config is saved next to each run's outputs and inside every checkpoint.
This module does not import MindSpore.
"""
import argparse
import difflib
import json
import math
import os

from .data.sources import DATASETS, SPLITS
from .errors import ConfigError  # noqa: F401 - the name every module imports from here
from .runtime import CONV_IMPLS, DEVICE_TARGETS, JIT_LEVELS, MODES
from .samplers import SAMPLERS, SPACINGS
from .schedule import BETA_SCHEDULES, LOSS_TYPES, LOSS_WEIGHTS, OBJECTIVES

# key: (default, type, help). Types: int, float, bool, str, "ints" (list of int),
# "float?" / "str?" (may be null). Choices are checked in CHOICES below.
DEFAULTS = {
    # run
    "seed": (42, int, "seed for MindSpore, numpy and the data pipeline"),
    "device_target": ("auto", str, "Ascend | GPU | CPU | auto (first available)"),
    "device_id": (-1, int, "device id; -1 takes DEVICE_ID from the environment, else 0"),
    "mode": ("auto", str, "auto | graph | pynative; auto = graph on Ascend/GPU, the faster measured on CPU"),
    "output_dir": ("runs", str, "parent folder of run folders"),
    "run_name": ("", str, "run folder name; empty = config name"),
    # data
    "dataset": ("fashion_mnist", str, "fashion_mnist | mnist | cifar10 | image_folder"),
    "data_dir": ("data/fashion-mnist", str, "folder with the data set files"),
    "cache_dir": ("", str, "where decompressed files and folder scans go; empty = the per-user cache "
                           "($XDG_CACHE_HOME or ~/.cache)/ddpm_ms/data; never the data folder"),
    "download": (True, bool, "fetch the official files (with checksums) when missing"),
    "split": ("train", str, "train | test | all"),
    "image_size": (28, int, "image height = width"),
    "channels": (1, int, "1 (grayscale) or 3 (RGB)"),
    "random_flip": (True, bool, "random horizontal flip during training"),
    "shuffle": (True, bool, "shuffle training data; false: file order, no flip (parity tests)"),
    "shuffle_buffer": (10000, int, "dataset shuffle buffer"),
    "num_parallel_workers": (2, int, "dataset worker threads"),
    "drop_remainder": (True, bool, "drop the last incomplete batch"),
    # model (U-Net)
    "unet_family": ("tutorial", str, "tutorial (the MindSpore tutorial's U-Net) | lucid (denoising-diffusion-pytorch's "
                                     "Unet 2.3.4: RMSNorm ResNet blocks, attention with memory key/values)"),
    "dim": (28, int, "base width of the U-Net"),
    "init_dim": (0, int, "width after the first conv; 0 = dim // 3 * 2 (tutorial), dim (lucid)"),
    "out_dim": (0, int, "output channels; 0 = channels"),
    "dim_mults": ([1, 2, 4], "ints", "stage width multipliers"),
    "use_convnext": (True, bool, "tutorial: ConvNeXt blocks (true) or ResNet blocks (false)"),
    "convnext_mult": (2, int, "ConvNeXt expansion factor"),
    "resnet_block_groups": (8, int, "GroupNorm groups in ResNet blocks"),
    "attn_heads": (4, int, "attention heads"),
    "attn_head_dim": (32, int, "attention head width"),
    "dropout": (0.0, float, "dropout in the blocks"),
    "sinusoidal_theta": (10000.0, float, "lucid: theta of the sinusoidal time embedding"),
    "conv_impl": ("auto", str, "auto | native | matmul convolutions; auto = matmul on CPU (faster there, "
                               "and lets oneDNN use AVX-512), native on Ascend/GPU"),
    # diffusion
    "timesteps": (1000, int, "number of diffusion steps T"),
    "beta_schedule": ("linear", str, "linear | cosine | quadratic | sigmoid (on betas) | sigmoid_abar "
                                     "(Jabri et al. on abar, start -3 end 3 tau 1; denoising-diffusion-pytorch's sigmoid)"),
    "beta_start": (None, "float?", "first beta; null = 1e-4 * 1000 / T"),
    "beta_end": (None, "float?", "last beta; null = 0.02 * 1000 / T"),
    "objective": ("eps", str, "what the network predicts: eps | x0 | v"),
    "loss_type": ("huber", str, "huber | l1 | l2"),
    "loss_weight": ("p2", str, "p2 | min_snr | none: a weight on the eps error, converted for x0 / v"),
    "p2_gamma": (1.0, float, "p2 loss weight exponent (0 = unweighted)"),
    "p2_k": (1.0, float, "p2 loss weight offset k"),
    "min_snr_gamma": (5.0, float, "min_snr: the weight is min(snr, gamma) / snr on the eps error"),
    # optimisation
    "batch_size": (128, int, "images per step per device"),
    "optimizer": ("adam", str, "adam | adamw (decoupled weight decay with bias correction, as torch.optim.AdamW)"),
    "lr": (1e-3, float, "peak learning rate"),
    "min_lr": (1e-4, float, "final learning rate of the cosine schedule"),
    "lr_schedule": ("cosine", str, "constant | cosine (after warmup)"),
    "warmup_steps": (0, int, "linear warmup steps"),
    "weight_decay": (0.0, float, "weight decay (adamw)"),
    "adam_beta1": (0.9, float, "Adam beta1"),
    "adam_beta2": (0.999, float, "Adam beta2"),
    "grad_clip": (1.0, float, "global-norm gradient clipping; 0 = off"),
    "grad_accum": (1, int, "micro-batches per optimizer step"),
    "ema_decay": (0.999, float, "EMA decay; 0 = no EMA"),
    "ema_warmup": (True, bool, "EMA decay ramps up as (1 + n) / (10 + n)"),
    "amp_level": ("O0", str, "O0 (float32) | O1 (MindSpore's O1: convs and matmuls in float16, norms, softmax "
                             "and loss in float32, dynamic loss scaling)"),
    "jit_level": ("auto", str, "auto | O0 | O1: compile level of the train step in graph mode; O0 kernel by "
                               "kernel, O1 adds graph-kernel fusion (fewer Casts and launches). auto = O1 on "
                               "Ascend (fusion is MindSpore's documented route there), O0 on GPU and CPU (the "
                               "2.10 ms.jit docs call O1 experimental; CPU fusion needs AKG built with LLVM)"),
    "loss_scale": (65536.0, float, "initial dynamic loss scale (amp only)"),
    # stopping and logging
    "max_steps": (0, int, "stop after this many steps (0 = use epochs)"),
    "epochs": (1, int, "epochs when max_steps is 0"),
    "max_minutes": (0.0, float, "stop (and save) after this wall time; 0 = off"),
    "log_every": (50, int, "steps between metric lines"),
    "sample_every": (1000, int, "steps between preview grids; 0 = only at the end"),
    "save_every": (1000, int, "steps between checkpoints"),
    "keep_checkpoints": (3, int, "step checkpoints kept besides latest.ckpt"),
    "resume": ("", str, "'' | auto | path to a checkpoint"),
    "num_preview": (16, int, "images in preview grids"),
    "preview_minutes": (10.0, float, "with max_minutes set: minutes of wall time between preview grids "
                                     "(samples_step*.png), besides sample_every; 0 = off"),
    "inception_ckpt": ("", str, "InceptionV3 FID weights (python -m ddpm_ms.eval.inception convert) for the "
                                "FID of an RGB run's final grid; Fashion-MNIST runs use the shipped classifier"),
    # sampling
    # dpmpp2m, 20 steps, trailing: the best of bench/quality_table.py's calls table (BENCHMARKS.md,
    # "Quality against network calls"): FID 94.6 at 20 calls against DDIM's 100.3 at 50
    "sampler": ("dpmpp2m", str, "ddpm | ddim | naive | dpmpp2m (DPM-Solver++(2M), no eta)"),
    "sample_steps": (20, int, "sampler steps (ddim / naive / dpmpp2m)"),
    "eta": (0.0, float, "DDIM eta in [0, 1] (0 = deterministic, 1 = DDPM-like)"),
    # trailing starts at t = T-1, the noise level x_T really has (Lin et al. 2023); it scored
    # best or within 0.5 FID of best for DDIM and DPM-Solver++ at 10 and 20 steps (BENCHMARKS.md)
    "spacing": ("trailing", str, "leading | trailing | linspace | lucid (trunc(linspace(-1, T-1, S+1)), "
                                "denoising-diffusion-pytorch's) timestep grid"),
    "clip_x0": (True, bool, "clip predicted x0 to [-1, 1]"),
    # scale-out
    "distribute": (False, bool, "data parallel over msrun workers"),
    "data_sink": ("auto", str, "auto | on | off (sink is Ascend/GPU only)"),
    "enable_modelarts": (False, bool, "copy data/outputs from/to OBS with moxing"),
    "data_url": ("", str, "ModelArts: OBS data path"),
    "train_url": ("", str, "ModelArts: OBS output path"),
    "checkpoint_url": ("", str, "ModelArts: OBS checkpoint to resume from"),
}

# Allowed values. A vocabulary owned by a module that imports no MindSpore is read from it;
# the rest (whose owners import MindSpore, which this module must not) is defined here.
CHOICES = {
    "device_target": DEVICE_TARGETS,
    "mode": MODES,
    "jit_level": JIT_LEVELS,
    "conv_impl": CONV_IMPLS,
    "dataset": DATASETS,
    "split": SPLITS,
    "channels": (1, 3),
    "beta_schedule": BETA_SCHEDULES,
    "objective": OBJECTIVES,
    "loss_weight": LOSS_WEIGHTS,
    "loss_type": LOSS_TYPES,
    "sampler": SAMPLERS,
    "spacing": SPACINGS,
    "unet_family": ("tutorial", "lucid"),
    "optimizer": ("adam", "adamw"),
    "lr_schedule": ("constant", "cosine"),
    "amp_level": ("O0", "O1"),
    "data_sink": ("auto", "on", "off"),
}

POSITIVE = ("timesteps", "batch_size", "image_size", "dim", "grad_accum", "log_every",
            "save_every", "sample_steps", "num_preview", "convnext_mult", "attn_heads",
            "attn_head_dim", "resnet_block_groups", "sinusoidal_theta", "min_snr_gamma")
NON_NEGATIVE = ("lr", "min_lr", "max_steps", "epochs", "max_minutes", "sample_every", "preview_minutes",
                "keep_checkpoints", "grad_clip", "ema_decay", "eta", "dropout", "warmup_steps",
                "weight_decay", "init_dim", "out_dim", "p2_k")


class Config(dict):
    """The resolved settings: a plain dict (``cfg['lr']``) of every key in ``DEFAULTS``."""


# Names people bring from other projects, mapped to ours for the "did you mean" hint.
ALIASES = {"learning_rate": "lr", "num_steps": "max_steps", "steps": "max_steps",
           "train_batch_size": "batch_size", "img_size": "image_size", "resolution": "image_size",
           "num_timesteps": "timesteps", "schedule": "beta_schedule", "ema": "ema_decay",
           "gradient_accumulation_steps": "grad_accum", "clip_grad": "grad_clip", "device": "device_target"}


# Flags that training platforms add to every job's command line, accepted and ignored with a
# one-line note (the launcher's environment, not these flags, gives ranks and devices here).
# Sources: ModelArts training jobs (--data_url / --train_url are real keys above; older engines add
# --num_gpus; the ModelArts algorithm shell adds --launcher / --init_method / --rank / --world_size /
# --local_rank / --local_size) and the ModelArts/OpenI input flags used by MindSpore's model suites
# (mindcv, mindocr: --ckpt_url, --multi_data_url, --pretrain_url, --model_url).
PLATFORM_FLAGS = {
    "num_gpus": "devices come from the launcher (msrun / rank table)",
    "launcher": "devices come from the launcher (msrun / rank table)",
    "init_method": "ranks come from the launcher's environment",
    "rank": "ranks come from the launcher's environment",
    "world_size": "ranks come from the launcher's environment",
    "local_rank": "ranks come from the launcher's environment",
    "local_size": "ranks come from the launcher's environment",
    "ckpt_url": "to resume from OBS use --checkpoint_url",
    "pretrain_url": "to resume from OBS use --checkpoint_url",
    "model_url": "outputs go to --train_url",
    "multi_data_url": "give one data folder with --data_url",
}
PLATFORM_DEST = "platform:"
CODE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository root


def _closest(key):
    hits = difflib.get_close_matches(key, list(DEFAULTS) + list(ALIASES), n=1, cutoff=0.6)
    if not hits:
        return ""
    return f" (did you mean '{ALIASES.get(hits[0], hits[0])}'?)"


def _bool(value, key):
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
        return True
    if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"config key '{key}' must be true or false, got {value!r}")


def coerce(key, value):
    """Check and convert one value to the type of its default; raise ConfigError."""
    if key not in DEFAULTS:
        raise ConfigError(f"unknown config key '{key}'{_closest(key)}")
    kind = DEFAULTS[key][1]
    try:
        if kind is bool:
            value = _bool(value, key)
        elif kind in ("float?", "str?"):
            if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
                value = None
            else:
                value = float(value) if kind == "float?" else str(value)
        elif kind == "ints":
            if isinstance(value, str):
                value = [v for v in value.replace("(", "").replace(")", "").replace("[", "")
                         .replace("]", "").replace(",", " ").split()]
            if not isinstance(value, (list, tuple)) or not value:
                raise ValueError
            value = [_int(v) for v in value]
        elif kind is int:
            value = _int(value)
        elif kind is float:
            if isinstance(value, bool):
                raise ValueError
            value = float(value)
        elif kind is str:
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise ValueError
            value = str(value)
    except (TypeError, ValueError):
        names = {int: "an integer", float: "a number", str: "a string",
                 "ints": "a list of integers", "float?": "a number or null"}
        raise ConfigError(f"config key '{key}' must be {names.get(kind, kind)}, got {value!r}") from None
    return value


def _int(v):
    if isinstance(v, bool):
        raise ValueError
    if isinstance(v, float):
        if not v.is_integer():
            raise ValueError
        return int(v)
    return int(str(v).strip())


# amp_level values that earlier versions accepted and ran exactly as O1 does now.
OLD_AMP_LEVELS = ("O2", "O3", "auto")


def validate(cfg):
    """Cross-key and range checks on a full config; raise ConfigError."""
    if cfg["amp_level"] in OLD_AMP_LEVELS:
        raise ConfigError(f"amp_level {cfg['amp_level']} is not offered: ddpm_ms implements O0 (float32) and O1 "
                          "(MindSpore's O1 white list: convs and matmuls in float16), which is what "
                          f"{cfg['amp_level']} ran in earlier versions; use --amp_level O1")
    for key, allowed in CHOICES.items():
        if cfg[key] not in allowed:
            raise ConfigError(f"config key '{key}' must be one of {', '.join(map(str, allowed))}, "
                              f"got {cfg[key]!r}")
    for key in POSITIVE:
        if cfg[key] < 1:
            raise ConfigError(f"config key '{key}' must be at least 1, got {cfg[key]!r}")
    for key in NON_NEGATIVE:
        if cfg[key] < 0:
            raise ConfigError(f"config key '{key}' must not be negative, got {cfg[key]!r}")
    if cfg["timesteps"] < 2:
        raise ConfigError(f"config key 'timesteps' must be at least 2, got {cfg['timesteps']}")
    if cfg["sample_steps"] > cfg["timesteps"]:
        raise ConfigError(f"config key 'sample_steps' must be between 1 and timesteps={cfg['timesteps']}, "
                          f"got {cfg['sample_steps']}")
    if not 0 <= cfg["ema_decay"] < 1:
        raise ConfigError(f"config key 'ema_decay' must be in [0, 1), got {cfg['ema_decay']}")
    if not cfg["eta"] <= 1:
        raise ConfigError(f"config key 'eta' must be in [0, 1] (0 = deterministic DDIM, 1 = DDPM-like), "
                          f"got {cfg['eta']}")
    if cfg["max_steps"] == 0 and cfg["epochs"] == 0:
        raise ConfigError("set max_steps or epochs above 0: nothing would be trained")
    check_network(cfg)
    return cfg


def check_network(cfg):
    """The U-Net settings that would fail only when the network is built, checked when the
    config loads; each ConfigError suggests values that work."""
    mults, dim, size = cfg["dim_mults"], cfg["dim"], cfg["image_size"]
    if any(m < 1 for m in mults):
        raise ConfigError(f"config key 'dim_mults' must hold integers >= 1, got {mults}")
    if dim % 2 or dim < 4:
        raise ConfigError(f"config key 'dim' must be even and at least 4 (the time embedding is "
                          f"sin/cos pairs), got {dim}: use --dim {max(4, dim + dim % 2)}")
    if not cfg["dropout"] < 1:
        raise ConfigError(f"config key 'dropout' must be in [0, 1), got {cfg['dropout']}")
    n_down = len(mults) - 1
    step = 2 ** n_down
    if size % step:
        sizes = [s for s in (size // step * step, size // step * step + step) if s > 0]
        stages = max(k for k in range(1, len(mults) + 1) if size % 2 ** (k - 1) == 0)
        fewer = ",".join(str(m) for m in mults[:stages])
        raise ConfigError(f"image_size {size} cannot be halved {n_down} times for dim_mults {mults} "
                          f"({len(mults)} stages): use --image_size {' or '.join(map(str, sizes))} "
                          f"(a multiple of {step}), or fewer stages: --dim_mults {fewer}")
    groups = cfg["resnet_block_groups"]
    widths = sorted({dim} | {dim * m for m in mults})
    if cfg["unet_family"] == "tutorial" and not cfg["use_convnext"] and any(w % groups for w in widths):
        common = math.gcd(*widths)
        fits = [g for g in range(groups, 0, -1) if common % g == 0][:2]
        good_dim = -(-dim // groups) * groups
        good_dim += good_dim % 2
        raise ConfigError(f"ResNet blocks (use_convnext false) need every width {widths} divisible by "
                          f"resnet_block_groups={groups}: use --resnet_block_groups "
                          f"{' or '.join(map(str, fits))}, or --dim {good_dim}")


def read_yaml(path):
    """Read a YAML config file into a plain dict; ConfigError on a missing or bad file."""
    import yaml
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    try:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"config file {path} is not valid YAML{where}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of key: value")
    return data


def build_parser(extra_defaults=None, description=None):
    """argparse parser with --config and one --key per setting (all default to 'unset')."""
    # A description with line breaks (a script's docstring: example commands, one per line)
    # is shown as written; a one-line description is wrapped.
    raw = bool(description) and "\n" in description.strip()
    parser = argparse.ArgumentParser(description=description, allow_abbrev=False,
                                     argument_default=argparse.SUPPRESS,
                                     formatter_class=argparse.RawDescriptionHelpFormatter if raw
                                     else argparse.HelpFormatter)
    parser.add_argument("--config", help="YAML file overriding the defaults")
    for key, (default, kind, help_text) in DEFAULTS.items():
        shown = json.dumps(default) if not isinstance(default, str) else default
        parser.add_argument(f"--{key}", metavar=key.upper() if kind is not bool else "BOOL",
                            help=f"{help_text} [default: {shown}]")
    for key in PLATFORM_FLAGS:  # value optional: --launcher alone or --num_gpus=1 both parse
        parser.add_argument(f"--{key}", dest=PLATFORM_DEST + key, nargs="?", const="", help=argparse.SUPPRESS)
    return parser


def find_config_file(path):
    """A relative --config is looked up in the working directory, then in the code directory
    (ModelArts starts the boot file from another directory); ConfigError when in neither."""
    if os.path.isabs(path) or os.path.isfile(path):
        if not os.path.isfile(path):
            raise ConfigError(f"config file not found: {path}")
        return os.path.abspath(path)
    beside_code = os.path.join(CODE_DIR, path)
    if os.path.isfile(beside_code):
        return beside_code
    raise ConfigError(f"config file not found: {path} (looked in {os.getcwd()} and in the code "
                      f"directory {CODE_DIR})")


def resolve(overrides_yaml=None, overrides_cli=None, base=None):
    """Defaults, then YAML dict, then CLI dict; every value coerced; validated."""
    cfg = Config({k: v[0] for k, v in DEFAULTS.items()})
    if base:
        cfg.update({k: coerce(k, v) for k, v in base.items()})
    for source in (overrides_yaml or {}, overrides_cli or {}):
        for key, value in source.items():
            cfg[key] = coerce(key, value)
    return validate(cfg)


def load_config(argv=None, parser=None):
    """Parse argv (``--config X.yaml --key value ...``) into a validated Config.

    Unknown flags raise ConfigError naming the closest valid key. Extra flags that a
    script added to ``parser`` come back in ``cfg['_extra']``.
    """
    parser = parser or build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        flag = next((u for u in unknown if u.startswith("--")), unknown[0])
        key = flag.lstrip("-").split("=")[0].replace("-", "_")
        if flag.startswith("--"):
            raise ConfigError(f"unknown option '{flag}'{_closest(key)}")
        raise ConfigError(f"unexpected argument '{flag}' (options look like --key value)")
    given = vars(args)
    config_path = given.pop("config", None)
    ignored = {k[len(PLATFORM_DEST):]: given.pop(k) for k in list(given) if k.startswith(PLATFORM_DEST)}
    for key, value in ignored.items():
        shown = f"--{key}={value}" if value else f"--{key}"
        print(f"[ddpm_ms] ignoring platform flag {shown} ({PLATFORM_FLAGS[key]})", flush=True)
    extra = {k: given.pop(k) for k in list(given) if k not in DEFAULTS}
    if config_path:
        found = find_config_file(config_path)
        print(f"[ddpm_ms] config file: {found}", flush=True)
        config_path = found
    yaml_values = read_yaml(config_path) if config_path else {}
    cfg = resolve(yaml_values, given)
    if not cfg["run_name"]:
        stem = os.path.splitext(os.path.basename(config_path))[0] if config_path else "default"
        cfg["run_name"] = stem
    cfg["_config_path"] = config_path or ""
    cfg["_extra"] = extra
    cfg["_ignored_flags"] = ignored
    return cfg


def public(cfg):
    """The config without the script-only entries, for saving."""
    return {k: v for k, v in cfg.items() if not k.startswith("_")}


def save_config(cfg, path):
    """Write the resolved config as YAML (atomically)."""
    import yaml

    from .files import write_text
    write_text(path, yaml.safe_dump(public(cfg), sort_keys=True))


def config_from_dict(values):
    """Rebuild a validated Config from a saved dict (e.g. a checkpoint's); unknown keys fail.
    A checkpoint trained with amp_level O2 / O3 / auto (which ran as O1) reads as O1."""
    if values.get("amp_level") in OLD_AMP_LEVELS:
        values = dict(values, amp_level="O1")
    return resolve(base=values)


def markdown_table():
    """The settings as a Markdown table (key, default, meaning), for README."""
    rows = ["| key | default | meaning |", "| --- | --- | --- |"]
    for key, (default, _kind, help_text) in DEFAULTS.items():
        shown = json.dumps(default) if not isinstance(default, str) else (default or '""')
        rows.append(f"| `{key}` | `{shown}` | {help_text.replace('|', '/')} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown_table())

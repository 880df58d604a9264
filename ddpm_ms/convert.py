"""Import a denoising-diffusion-pytorch checkpoint: ``python -m ddpm_ms.convert``.

    python -m ddpm_ms.convert --pt results/model-10.pt --image_size 28 --out lucid.ckpt
    python sample.py --ckpt lucid.ckpt --num_samples 64

Reads a checkpoint that the library's ``Trainer.save`` wrote (``model-N.pt``: ``model``, ``ema``,
``step``, ...; a plain ``state_dict()`` of a GaussianDiffusion or a Unet works too, raw weights
only) with ``torch.load(weights_only=True)`` and writes a ddpm_ms checkpoint (see
``checkpoint.py``) holding both weight sets (``model`` as the raw weights, ``ema`` as the EMA
weights), the step and a config, plus the same config as YAML beside it (``lucid.yaml``).
The network is ``unet_family: lucid`` (``unet_lucid.py``), whose parameter names are the
library's, so the weights copy over by name.

What the file holds is read from it, not asked for:
* the U-Net's dim, init_dim, dim_mults, channels, attn_heads, attn_head_dim from the weight shapes;
* T and the schedule (linear, cosine or sigmoid_abar) from the ``betas`` buffer;
* the objective (eps / x0 / v) and the weighting (none / min_snr and its gamma) from the
  ``loss_weight`` buffer.
Only ``--image_size`` is required. Any other ddpm_ms config key may be given (``--key value`` or
``--config X.yaml``): data and training settings for continuing training, sampling settings
(``--sampling_timesteps S`` is the library's name: DDIM with S steps on its grid, eta
``--ddim_sampling_eta``; without it, DDPM over all T steps, as the library's default). A key that
the file also determines must agree with it.

Mistakes get one line: a file that is not a PyTorch checkpoint, a checkpoint of another
architecture (naming the first parameter that does not fit), a shape mismatch, options the
lucid family does not support (self-conditioning, learned variance, learned sinusoidal
embeddings, per-stage attention settings). PyTorch is imported here only, never at run time.
"""
import argparse
import os
import sys
import warnings

import numpy as np

from .config import ConfigError, build_parser, read_yaml, resolve, save_config

UNET_PREFIX = "model."               # GaussianDiffusion's attribute holding the Unet
EMA_UNET_PREFIX = "ema_model.model."  # ema_pytorch.EMA's copy of the GaussianDiffusion
SCHEDULES = ("linear", "cosine", "sigmoid_abar")
LIBRARY_OBJECTIVES = {"pred_noise": "eps", "pred_x0": "x0", "pred_v": "v"}


class ConvertError(ValueError):
    """A checkpoint that cannot be imported; the message is one line saying why."""


# ------------------------------------------------------------------------------- reading
def read_torch_checkpoint(path):
    """The dict in a ``.pt`` file, values as numpy (tensors) or Python scalars; weights_only load."""
    if not os.path.isfile(path):
        raise ConvertError(f"no such file: {path}")
    try:
        import torch
    except ImportError:
        raise ConvertError("reading a PyTorch checkpoint needs PyTorch (for the conversion only): "
                           "pip install torch==2.13.0") from None
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # zip, pickle and weights-only errors all mean: not a checkpoint we read
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
        raise ConvertError(f"{path} is not a PyTorch checkpoint that torch.load(weights_only=True) "
                           f"reads ({type(err).__name__}: {first})") from None
    if not isinstance(data, dict):
        raise ConvertError(f"{path} holds a {type(data).__name__}, not the dict of a "
                           "denoising-diffusion-pytorch Trainer checkpoint (model-N.pt)")
    return _to_numpy(data)


def _to_numpy(obj):
    if hasattr(obj, "detach") and hasattr(obj, "numpy"):
        return obj.detach().cpu().float().numpy() if obj.is_floating_point() else obj.cpu().numpy()
    if isinstance(obj, dict):
        return {k: _to_numpy(v) for k, v in obj.items()}
    return obj


def split_trainer_checkpoint(data, path):
    """(unet_raw, unet_ema or None, diffusion buffers, step) from a Trainer checkpoint dict, or from
    a plain ``state_dict()`` of a GaussianDiffusion ('model.*' keys and buffers) or of a Unet."""
    if "model" not in data and data and all(isinstance(v, np.ndarray) for v in data.values()):
        data = {"model": data if any(k.startswith(UNET_PREFIX) for k in data)
                else {UNET_PREFIX + k: v for k, v in data.items()}}
    if "model" not in data or not isinstance(data["model"], dict):
        keys = ", ".join(sorted(map(str, data))[:6])
        raise ConvertError(f"{path} has no 'model' entry (it holds {keys}): not a denoising-diffusion-pytorch "
                           "Trainer checkpoint (model-N.pt)")
    model = data["model"]
    unet = {k[len(UNET_PREFIX):]: v for k, v in model.items() if k.startswith(UNET_PREFIX)}
    if not unet:
        first = next(iter(model), "nothing")
        raise ConvertError(f"{path}: 'model' holds no U-Net parameters 'model.*' (first entry '{first}'): "
                           "not a GaussianDiffusion state dict")
    buffers = {k: v for k, v in model.items() if not k.startswith(UNET_PREFIX)}
    ema = None
    if isinstance(data.get("ema"), dict):
        ema = {k[len(EMA_UNET_PREFIX):]: v for k, v in data["ema"].items() if k.startswith(EMA_UNET_PREFIX)}
    step = data.get("step", 0)
    return unet, ema or None, buffers, int(np.asarray(step).item()) if step is not None else 0


# ------------------------------------------------------------------------------- inference
def _need(sd, key, what="the library's Unet"):
    if key not in sd:
        raise ConvertError(f"the checkpoint's network is not {what}: it has no parameter 'model.{key}'")
    return sd[key]


def infer_unet(sd):
    """The lucid-family config keys that the U-Net's weight shapes determine."""
    if "time_mlp.0.weights" in sd:
        raise ConvertError("the checkpoint uses learned / random Fourier time embeddings "
                           "(learned_sinusoidal_cond or random_fourier_features), which ddpm_ms does not support")
    init = _need(sd, "init_conv.weight")
    final = _need(sd, "final_conv.weight")
    time1 = _need(sd, "time_mlp.1.weight")
    in_ch, out_ch = init.shape[1], final.shape[0]
    if in_ch == 2 * out_ch:
        raise ConvertError("the checkpoint's Unet uses self-conditioning (self_condition=True; init_conv takes "
                           f"{in_ch} channels for {out_ch} output channels), which ddpm_ms does not support")
    if out_ch == 2 * in_ch:
        raise ConvertError("the checkpoint's Unet has learned variance (learned_variance=True; "
                           f"{out_ch} output channels for {in_ch} input channels), which ddpm_ms does not support")
    if in_ch != out_ch:
        raise ConvertError(f"the checkpoint's Unet maps {in_ch} channels to {out_ch}: ddpm_ms needs out_dim = channels")
    dim = time1.shape[1]
    stages = sorted({int(k.split(".")[1]) for k in sd if k.startswith("downs.")})
    if not stages or stages != list(range(len(stages))):
        raise ConvertError("the checkpoint's network is not the library's Unet: no 'model.downs.0.*' stages")
    mults = []
    for i in stages:
        last = i == stages[-1]
        w = _need(sd, f"downs.{i}.3.weight" if last else f"downs.{i}.3.1.weight")
        if w.shape[0] % dim:
            raise ConvertError(f"'model.downs.{i}.3' has {w.shape[0]} output channels, not a multiple of dim={dim}")
        mults.append(w.shape[0] // dim)
    mem = _need(sd, "mid_attn.mem_kv")                       # [2, heads, num_mem_kv, dim_head]
    return {"unet_family": "lucid", "dim": int(dim), "init_dim": int(init.shape[0]),
            "dim_mults": [int(m) for m in mults], "channels": int(in_ch), "out_dim": 0,
            "attn_heads": int(mem.shape[1]), "attn_head_dim": int(mem.shape[3])}


def infer_diffusion(buffers):
    """timesteps, beta_schedule, objective, loss_weight, min_snr_gamma from GaussianDiffusion's buffers
    (keys absent when the file does not hold them)."""
    from .schedule import NoiseSchedule
    found = {}
    betas = buffers.get("betas")
    if betas is None:
        return found
    T = len(betas)
    found["timesteps"] = T
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        schedules = {k: NoiseSchedule(k, T) for k in SCHEDULES}
    # rtol 1e-4: the library's float32 sigmoid betas differ from ours by up to 1.3e-5 relative
    # near t = T (T = 1000); the three schedules differ from each other by far more
    kind = next((k for k, s in schedules.items()
                 if np.allclose(s.betas.astype(np.float32), betas, rtol=1e-4, atol=1e-8)), None)
    if kind is None:
        raise ConvertError(f"the checkpoint's betas (T={T}, first {betas[0]:.4g}, last {betas[-1]:.4g}) are none of "
                           "the library's linear, cosine or sigmoid (start -3, end 3, tau 1) schedules: custom "
                           "schedule_fn_kwargs are not supported")
    found["beta_schedule"] = kind
    weight = buffers.get("loss_weight")
    if weight is not None:
        s = schedules[kind]
        fits = []
        for objective in ("eps", "x0", "v"):
            w_eps = weight / s.loss_weight("none", objective, "l2")
            if np.allclose(w_eps, 1.0, rtol=1e-4):
                fits.append({"objective": objective, "loss_weight": "none"})
                continue
            gamma = float(np.max(w_eps * s.snr))
            if np.allclose(w_eps, s.eps_loss_weight("min_snr", min_snr_gamma=gamma), rtol=1e-4):
                fits.append({"objective": objective, "loss_weight": "min_snr", "min_snr_gamma": round(gamma, 6)})
        if len(fits) == 1:
            found.update(fits[0])
    return found


# ------------------------------------------------------------------------------- loading
def torch_adam_state(data, unet_sd):
    """The library Trainer's Adam state ('opt': torch.optim.Adam's state_dict) matched to the U-Net's
    parameter names, as ({name: (exp_avg, exp_avg_sq)}, step, betas), or (None, reason).

    torch numbers the parameters in ``diffusion.parameters()`` order, which is the order of the
    'model.*' entries of its state dict (the U-Net has no buffers); every moment must have its
    parameter's shape, and every parameter the same step, or nothing is imported."""
    opt = data.get("opt")
    if not isinstance(opt, dict) or not isinstance(opt.get("state"), dict) or not opt.get("param_groups"):
        return None, "the file has no Adam state ('opt')"
    groups = opt["param_groups"]
    if len(groups) != 1:
        return None, f"its optimizer has {len(groups)} parameter groups, not the Trainer's one"
    ids, names = list(groups[0]["params"]), list(unet_sd)
    if len(ids) != len(names):
        return None, f"its optimizer holds {len(ids)} parameters for the U-Net's {len(names)}"
    moments, steps = {}, set()
    for idx, name in zip(ids, names):
        state = opt["state"].get(idx) or {}
        m, v = state.get("exp_avg"), state.get("exp_avg_sq")
        if m is None or v is None or "step" not in state:
            return None, f"no Adam moments for '{name}' (the optimizer has not stepped)"
        if tuple(m.shape) != tuple(unet_sd[name].shape) or tuple(v.shape) != tuple(unet_sd[name].shape):
            return None, f"the Adam moments of '{name}' have shape {tuple(m.shape)}, the parameter {tuple(unet_sd[name].shape)}"
        moments[name] = (np.asarray(m, np.float32), np.asarray(v, np.float32))
        steps.add(int(np.asarray(state["step"]).item()))
    if len(steps) != 1:
        return None, f"its parameters are at different Adam steps {sorted(steps)}"
    return (moments, steps.pop(), tuple(float(b) for b in groups[0].get("betas", (0.9, 0.999)))), None


def load_lucid_weights(net, sd, where="checkpoint"):
    """Copy the library's U-Net state dict ``sd`` (names without 'model.') into ``net`` (a LucidUNet).

    ConvertError names the first parameter that does not fit: one the network has and the file
    lacks, one the file has and the network lacks, or a shape mismatch."""
    import mindspore as ms
    from .checkpoint import named
    params = named(net)
    mine = {name for name, _ in params}
    for name, p in params:
        if name not in sd:
            raise ConvertError(f"{where}: the lucid U-Net's parameter '{name}' is not in the checkpoint "
                               "(another architecture, or settings the file does not determine)")
    extra = [k for k in sd if k not in mine]
    if extra:
        raise ConvertError(f"{where}: the checkpoint's parameter 'model.{extra[0]}' has no place in the lucid U-Net "
                           "(another architecture or an unsupported option, e.g. per-stage full_attn)")
    for name, p in params:
        if tuple(sd[name].shape) != tuple(p.shape):
            raise ConvertError(f"{where}: 'model.{name}' has shape {tuple(sd[name].shape)}, the lucid U-Net "
                               f"built from the file expects {tuple(p.shape)}")
        p.set_data(ms.Tensor(np.ascontiguousarray(sd[name]).astype(np.float32)))


def convert(pt_path, out_path, overrides=None, yaml_values=None):
    """Convert ``pt_path`` into the ddpm_ms checkpoint ``out_path`` (+ its config as ``.yaml``).

    overrides / yaml_values: ddpm_ms config keys given by the user (CLI over YAML); the keys the
    file determines must agree with it. Returns (config, step, has_ema, adam) with adam the Adam
    step imported, or the reason none was (a string)."""
    from . import checkpoint as ckpt
    from .unet import build_unet
    data = read_torch_checkpoint(pt_path)
    unet_sd, ema_sd, buffers, step = split_trainer_checkpoint(data, pt_path)
    arch = infer_unet(unet_sd)
    from_file = {**arch, **infer_diffusion(buffers)}
    overrides, yaml_values = dict(overrides or {}), dict(yaml_values or {})
    library = {"lr": 1e-4, "adam_beta2": 0.99, "lr_schedule": "constant", "ema_decay": 0.995,
               "grad_clip": 1.0, "loss_type": "l2", "loss_weight": "none", "clip_x0": True, "spacing": "lucid", "sampler": "ddpm",
               "random_flip": True, "channels": from_file["channels"]}
    library["dataset"] = "image_folder" if from_file["channels"] == 3 else "fashion_mnist"
    adam, why_not = torch_adam_state(data, unet_sd)
    if adam is not None:                      # the betas its moments were made with
        library["adam_beta1"], library["adam_beta2"] = adam[2]
    if "timesteps" in from_file:
        library["sample_steps"] = min(50, from_file["timesteps"])
    for source in (yaml_values, overrides):
        if "sampling_timesteps" in source:
            library.update(sampler="ddim", sample_steps=int(source.pop("sampling_timesteps")))
        if "ddim_sampling_eta" in source:
            library["eta"] = float(source.pop("ddim_sampling_eta"))
    try:
        cfg = resolve({**yaml_values}, overrides, base={**library, **from_file})
    except ConfigError as err:
        raise ConvertError(str(err)) from None
    for key, value in from_file.items():
        given = overrides.get(key, yaml_values.get(key))
        if given is not None and cfg[key] != value:
            raise ConvertError(f"--{key} {given} does not fit the checkpoint, whose "
                               f"{'weights' if key in arch else 'buffers'} say {key} {value}")
    if cfg["image_size"] % 2 ** (len(cfg["dim_mults"]) - 1):
        raise ConvertError(f"image_size {cfg['image_size']} cannot be halved {len(cfg['dim_mults']) - 1} times "
                           f"for the checkpoint's dim_mults {cfg['dim_mults']}")
    for key in ("objective", "timesteps", "beta_schedule"):
        if key not in from_file and key not in overrides and key not in yaml_values:
            raise ConvertError(f"the checkpoint does not say its {key}: pass --{key}")
    net = build_unet(cfg, conv_impl="native")
    ema_net = build_unet(cfg, conv_impl="native") if ema_sd is not None else None
    load_lucid_weights(net, unet_sd, f"{pt_path} (model)")
    items = list(ckpt.named(net))
    if ema_net is not None:
        load_lucid_weights(ema_net, ema_sd, f"{pt_path} (ema)")
        items += [(ckpt.EMA_PREFIX + name, p) for name, p in ckpt.named(ema_net)]
    if adam is not None:
        import mindspore as ms
        moments, adam_step, _ = adam
        for name, (m, v) in moments.items():
            items += [(f"{ckpt.IMPORT_ADAM}m.{name}", ms.Tensor(m)), (f"{ckpt.IMPORT_ADAM}v.{name}", ms.Tensor(v))]
        items.append((ckpt.IMPORT_ADAM + "step", ms.Tensor(np.array(adam_step, np.int32))))
    ckpt.save(out_path, items, step, cfg, kind="import")
    save_config(cfg, os.path.splitext(out_path)[0] + ".yaml")
    return cfg, step, ema_net is not None, adam[1] if adam is not None else why_not


# ------------------------------------------------------------------------------- command line
def build_arg_parser():
    parser = build_parser(description=__doc__.split("\n\n")[1])
    parser.add_argument("--pt", required=True, help="the library's Trainer checkpoint (model-N.pt)")
    parser.add_argument("--out", required=True, help="the ddpm_ms checkpoint to write (.ckpt); its config "
                                                     "goes beside it as .yaml")
    parser.add_argument("--sampling_timesteps", type=int, help="the library's DDIM steps S (default: DDPM, all T)")
    parser.add_argument("--ddim_sampling_eta", type=float, help="the library's DDIM eta")
    return parser


def main(argv=None):
    args = vars(build_arg_parser().parse_args(argv))
    pt, out, config_path = args.pop("pt"), args.pop("out"), args.pop("config", None)
    for key in ("sampling_timesteps", "ddim_sampling_eta"):
        if args.get(key) is None:
            args.pop(key, None)
    try:
        if "image_size" not in args:
            raise ConvertError("pass --image_size: the checkpoint does not hold the image size it was trained at")
        yaml_values = read_yaml(config_path) if config_path else {}
        from .runtime import quiet_mindspore
        quiet_mindspore()
        import mindspore as ms
        ms.set_context(mode=ms.PYNATIVE_MODE, device_target="CPU")
        cfg, step, has_ema, adam = convert(pt, out, args, yaml_values)
    except (ConvertError, ConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    weights = "raw and EMA weights" if has_ema else "raw weights only (no 'ema' in the file: use --weights raw)"
    print(f"[ddpm_ms] wrote {out} ({weights}, step {step}) and {os.path.splitext(out)[0]}.yaml: lucid U-Net dim "
          f"{cfg['dim']}, dim_mults {cfg['dim_mults']}, {cfg['image_size']}x{cfg['image_size']}x{cfg['channels']}; "
          f"T={cfg['timesteps']} {cfg['beta_schedule']}, objective {cfg['objective']}, loss_weight "
          f"{cfg['loss_weight']}; sampler {cfg['sampler']}", flush=True)
    if isinstance(adam, int):
        print(f"[ddpm_ms] Adam moments imported (Adam step {adam}, betas {cfg['adam_beta1']}, {cfg['adam_beta2']}): "
              "--resume continues the library's optimizer", flush=True)
    else:
        print(f"[ddpm_ms] no Adam state imported: {adam}; --resume starts the optimizer afresh", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

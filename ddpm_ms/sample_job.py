"""sample.py's body: load a checkpoint, rebuild the network, sample, write PNGs and npz."""
import argparse
import os

import numpy as np

from .config import ConfigError


def build_arg_parser():
    p = argparse.ArgumentParser(description="Sample images from a ddpm_ms checkpoint.", allow_abbrev=False)
    p.add_argument("--ckpt", required=True, help="checkpoint written by train.py")
    p.add_argument("--weights", choices=("ema", "raw"), default="ema", help="EMA (default) or raw weights")
    p.add_argument("--sampler", choices=("ddpm", "ddim", "naive"), default=None,
                   help="default: the checkpoint's config")
    p.add_argument("--steps", type=int, default=None, help="sampler steps (ddim/naive); ddpm uses all T")
    p.add_argument("--eta", type=float, default=None, help="DDIM eta")
    p.add_argument("--spacing", choices=("leading", "trailing", "linspace"), default=None)
    p.add_argument("--clip_x0", choices=("true", "false"), default=None)
    p.add_argument("--num_samples", type=int, default=64)
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="output folder (default: <ckpt folder>/samples)")
    p.add_argument("--device_target", choices=("auto", "CPU", "GPU", "Ascend"), default="auto")
    p.add_argument("--mode", choices=("graph", "pynative"), default="graph")
    p.add_argument("--device_id", type=int, default=-1)
    p.add_argument("--no_per_image", action="store_true", help="skip writing one PNG per image")
    return p


def parse_args(argv=None):
    args = build_arg_parser().parse_args(argv)
    if args.num_samples < 1 or args.batch_size < 1:
        raise ConfigError("--num_samples and --batch_size must be at least 1")
    return args


def load_network(ckpt_path, weights="ema"):
    """(network, config dict) from a checkpoint; CheckpointError with one line on a bad file."""
    from . import checkpoint as ckpt
    from .config import config_from_dict
    from .unet import build_unet
    tensors, meta = ckpt.load(ckpt_path)
    cfg = config_from_dict(meta["config"])
    net = build_unet(cfg)
    prefix = ckpt.EMA_PREFIX if weights == "ema" else ""
    if weights == "ema" and not any(k.startswith(ckpt.EMA_PREFIX) for k in tensors):
        raise ckpt.CheckpointError(f"{ckpt_path} holds no EMA weights (trained with ema_decay 0); "
                                   "use --weights raw")
    ckpt.load_into(ckpt.named(net), tensors, prefix=prefix, where=ckpt_path)
    net.set_train(False)
    return net, cfg, meta


def sample_from_args(args):
    from .cli import quiet_mindspore
    from .cpu_env import apply_cpu_env
    quiet_mindspore()
    if args.device_target in ("CPU", "auto"):
        apply_cpu_env()
    from .device import setup_device
    setup_device(args.device_target, args.mode, args.device_id, seed=args.seed)
    from .data import save_grid, to_uint8
    from .sampling import sample
    from .trainer import build_schedule

    net, cfg, meta = load_network(args.ckpt, args.weights)
    sampler = args.sampler or cfg["sampler"]
    T = cfg["timesteps"]
    steps = T if sampler == "ddpm" else (args.steps or cfg["sample_steps"])
    if args.steps is not None and not 1 <= args.steps <= T:
        raise ConfigError(f"--steps must be between 1 and T={T}, got {args.steps}")
    clip = cfg["clip_x0"] if args.clip_x0 is None else args.clip_x0 == "true"
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(args.ckpt)), "samples")
    os.makedirs(out, exist_ok=True)
    shape = (cfg["channels"], cfg["image_size"], cfg["image_size"])
    print(f"[ddpm_ms] sampling {args.num_samples} images, {sampler} {steps} steps, "
          f"{args.weights} weights of step {meta['step']}", flush=True)
    images = sample(net, build_schedule(cfg), args.num_samples, shape, sampler=sampler, num_steps=steps,
                    eta=cfg["eta"] if args.eta is None else args.eta,
                    spacing=args.spacing or cfg["spacing"], objective=cfg["objective"], clip_x0=clip,
                    batch_size=args.batch_size, seed=args.seed)
    u8 = to_uint8(images)
    np.savez_compressed(os.path.join(out, "samples.npz"), images=u8)
    save_grid(u8, os.path.join(out, "grid.png"))
    if not args.no_per_image:
        from PIL import Image
        per = os.path.join(out, "images")
        os.makedirs(per, exist_ok=True)
        for i, img in enumerate(u8):
            Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(os.path.join(per, f"{i:05d}.png"))
    print(f"[ddpm_ms] wrote {out}/grid.png, samples.npz ({u8.shape}, uint8)", flush=True)
    return u8

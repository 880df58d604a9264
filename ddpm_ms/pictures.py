"""Pictures of the diffusion process, one command each.

    # forward process of one real image at t = 0, 100, ..., 900: step by step vs closed form
    python -m ddpm_ms.pictures forward --config configs/fashion_mnist.yaml \\
        --data_dir ../shared/data/fashion-mnist --index 0 --out forward.png
    python -m ddpm_ms.pictures forward --image photo.png --image_size 64 --channels 3

    # reverse process from a checkpoint: x_t and pred_x0 strip + animated GIF of the denoising
    python -m ddpm_ms.pictures reverse --ckpt runs/fashion_mnist/latest.ckpt --sampler ddpm \\
        --out reverse.png --gif reverse.gif

    # DDIM (eta 0) interpolation between the x_T of two seeds, spherical (slerp)
    python -m ddpm_ms.pictures interpolate --ckpt X --seed_a 0 --seed_b 1 --num 10 --out interp.png

forward
    Row 1 runs the chain x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) eps_t (Ho et al. eq. 2)
    from x_{-1} = x0 (our t = 0 is the first noising step); row 2 draws each column directly,
    x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps (eq. 4, ``q_sample``). They are different draws
    of the same distribution; the command also prints mean/std over many draws of both against
    the theory: per pixel mean sqrt(abar_t) x0, std sqrt(1 - abar_t), so over all pixels
    std = sqrt(abar_t var(x0) + 1 - abar_t) and mean = sqrt(abar_t) mean(x0). Takes the config
    keys (--config, --data_dir, --timesteps, --beta_schedule, ...); needs no checkpoint.
reverse
    Samples ``--num_images`` images and shows, at ``--columns`` steps spread over the run (or
    at the grid timesteps nearest to ``--at``), the step's input x_t (top row) and the model's
    pred_x0 (bottom row); the GIF shows [x_t | pred_x0] over ``--frames`` steps, then holds
    the result.
interpolate
    x_T(seed) is the same start ``sample.py --seed S`` uses for its first image; the row
    decodes slerp(x_T(a), x_T(b), w) for w = 0 .. 1 with DDIM eta 0, so both ends are exactly
    the first images of ``sample.py --sampler ddim --eta 0 --seed a`` (and b).
"""
import argparse
import os
import sys

import numpy as np

from .data.images import tile, to_uint8

SUBCOMMANDS = ("forward", "reverse", "interpolate")


# ------------------------------------------------------------------------------ drawing

def save_rows(rows, path, row_labels=(), col_labels=(), title=None, scale=1.0):
    """A matplotlib figure of uint8 images [H, W, C] arranged as ``rows`` (list of lists).

    Grayscale images are drawn with the gray colormap on a fixed 0..255 scale.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    nrows, ncols = len(rows), max(len(r) for r in rows)
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.2 * ncols * scale + 1.2, 1.3 * nrows * scale + 0.4),
                             squeeze=False)
    for r, row in enumerate(rows):
        for c in range(ncols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            for side in ax.spines.values():
                side.set_visible(False)
            if c >= len(row):
                continue
            img = row[c]
            if img.shape[-1] == 1:
                ax.imshow(img[..., 0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            else:
                ax.imshow(img, interpolation="nearest")
            if r == 0 and c < len(col_labels):
                ax.set_title(col_labels[c], fontsize=8)
        if r < len(row_labels):
            axes[r][0].set_ylabel(row_labels[r], fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def save_gif(frames, path, duration_ms=80, hold=10, scale=4, labels=None):
    """Animated GIF (Pillow, save_all) from uint8 frames [H, W, C]; the last frame is shown
    ``hold`` times longer. Frames are enlarged ``scale`` x (nearest) and labelled when given."""
    from PIL import Image, ImageDraw
    pics = []
    for k, f in enumerate(frames):
        img = Image.fromarray(f[..., 0] if f.shape[-1] == 1 else f, "L" if f.shape[-1] == 1 else "RGB")
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST).convert("RGB")
        if labels is not None:
            band = Image.new("RGB", (img.width, 14), (0, 0, 0))
            ImageDraw.Draw(band).text((2, 1), labels[k], fill=(255, 255, 255))
            framed = Image.new("RGB", (img.width, img.height + 14))
            framed.paste(band, (0, 0))
            framed.paste(img, (0, 14))
            img = framed
        pics.append(img.convert("P", palette=Image.ADAPTIVE))
    durations = [duration_ms] * (len(pics) - 1) + [duration_ms * hold]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    pics[0].save(path, save_all=True, append_images=pics[1:], duration=durations, loop=0)
    return path


# ------------------------------------------------------------------------------ forward

def forward_process(x0, schedule, ts, rng, num_draws=1):
    """The forward process of x0 [C, H, W] at timesteps ts (ascending), two ways.

    Returns (stepwise, closed), each float64 [len(ts), num_draws, C, H, W]:
      stepwise: x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) eps_t, x_{-1} = x0, one chain
                per draw run through every t up to max(ts) (Ho et al. eq. 2);
      closed:   x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, fresh eps per column (eq. 4).
    """
    ts = [int(t) for t in ts]
    if sorted(ts) != ts or ts[0] < 0 or ts[-1] >= schedule.num_timesteps:
        raise ValueError(f"ts must be ascending in [0, {schedule.num_timesteps - 1}], got {ts}")
    x0 = np.asarray(x0, np.float64)
    x = np.broadcast_to(x0, (num_draws,) + x0.shape).copy()
    stepwise, want = [], set(ts)
    for t in range(ts[-1] + 1):
        beta = schedule.betas[t]
        x = np.sqrt(1.0 - beta) * x + np.sqrt(beta) * rng.standard_normal(x.shape)
        if t in want:
            stepwise.append(x.copy())
    closed = [schedule.q_sample(np.broadcast_to(x0, x.shape), np.full(num_draws, t), rng.standard_normal(x.shape))
              for t in ts]
    return np.stack(stepwise), np.stack(closed)


def forward_theory(x0, schedule, ts):
    """(mean, std) over all pixels and draws of x_t ~ q(x_t | x0), per t in ts:
    mean = sqrt(abar) mean(x0), std = sqrt(abar var(x0) + 1 - abar)."""
    x0 = np.asarray(x0, np.float64)
    abar = schedule.alphas_cumprod[np.asarray(ts)]
    return np.sqrt(abar) * x0.mean(), np.sqrt(abar * x0.var() + 1.0 - abar)


def _forward_image(cfg, extra):
    """x0 [C, H, W] in [-1, 1]: --image PATH, else row --index of the configured data set."""
    from .data import DataError, create_dataset
    if extra.get("image"):
        from .sample_cli import load_images
        return load_images([extra["image"]], cfg)[0]
    index = int(extra.get("index", 0))
    cfg = dict(cfg, batch_size=1, drop_remainder=False, random_flip=False)
    data = create_dataset(cfg, training=False)
    for k, (batch,) in enumerate(data.create_tuple_iterator(num_epochs=1, output_numpy=True)):
        if k == index:
            return batch[0]
    raise DataError(f"--index {index} is past the end of the {cfg['dataset']} {cfg['split']} split")


def forward_main(argv):
    from .config import ConfigError, build_parser, load_config
    parser = build_parser(description="Forward process of one image: step by step vs closed form. "
                                      "Takes the config keys; see python -m ddpm_ms.pictures --help.")
    parser.prog = "python -m ddpm_ms.pictures forward"
    parser.add_argument("--image", help="an image file instead of the configured data set")
    parser.add_argument("--index", type=int, help="which image of the data set [default: 0]")
    parser.add_argument("--every", type=int, help="column spacing in t [default: T // 10]")
    parser.add_argument("--draws", type=int, help="draws for the printed statistics [default: 256]")
    parser.add_argument("--out", help="PNG to write [default: forward.png]")
    cfg = load_config(argv, parser=parser)
    extra = cfg["_extra"]
    from .runtime import quiet_mindspore
    from .schedule import build_schedule
    quiet_mindspore()  # the data set reader loads MindSpore
    schedule = build_schedule(cfg)
    T = schedule.num_timesteps
    every = int(extra.get("every") or max(1, T // 10))
    if not 1 <= every < T:
        raise ConfigError(f"--every must be between 1 and T-1={T - 1}, got {every}")
    ts = list(range(0, T, every))
    x0 = _forward_image(cfg, extra)
    rng = np.random.default_rng(cfg["seed"])
    stepwise, closed = forward_process(x0, schedule, ts, rng, num_draws=1)
    out = extra.get("out") or "forward.png"
    rows = [[to_uint8(x0)] + [to_uint8(s[0]) for s in stepwise], [to_uint8(x0)] + [to_uint8(c[0]) for c in closed]]
    save_rows(rows, out, row_labels=("step by step", "closed form"),
              col_labels=["x0"] + [f"t={t}" for t in ts],
              title=f"forward process, {cfg['beta_schedule']} schedule, T={T}")
    draws = int(extra.get("draws") or 256)
    s_many, c_many = forward_process(x0, schedule, ts, rng, num_draws=draws)
    mean_th, std_th = forward_theory(x0, schedule, ts)
    print(f"| t | step mean | closed mean | theory mean | step std | closed std | theory std |  ({draws} draws)")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for k, t in enumerate(ts):
        print(f"| {t} | {s_many[k].mean():.4f} | {c_many[k].mean():.4f} | {mean_th[k]:.4f} | "
              f"{s_many[k].std():.4f} | {c_many[k].std():.4f} | {std_th[k]:.4f} |")
    print(f"wrote {out}")
    return out


# ------------------------------------------------------------------------------ reverse

def _model_parser(name, description):
    from .sample_cli import add_checkpoint_args, add_runtime_args, add_sampler_args
    p = argparse.ArgumentParser(prog=f"python -m ddpm_ms.pictures {name}", description=description,
                                allow_abbrev=False)
    add_checkpoint_args(p)
    add_sampler_args(p, samplers=("ddpm", "ddim", "naive") if name == "reverse" else ("ddim",))
    if name == "reverse":
        p.add_argument("--seed", type=int, default=0, help="x_T and per-step noise, as sample.py")
    add_runtime_args(p)
    return p


def pick_steps(num_steps, columns=None, timesteps=None, at=None):
    """Step indices for the strip: ``columns`` evenly spread over [0, num_steps - 1] (first and
    last included), or for each t in ``at`` the step whose timestep is nearest."""
    if at:
        ts = np.asarray(timesteps)
        return sorted({int(np.argmin(np.abs(ts - t))) for t in at})
    columns = max(1, min(columns or 10, num_steps))
    return sorted(set(np.round(np.linspace(0, num_steps - 1, columns)).astype(int).tolist()))


def reverse_main(argv):
    from .config import ConfigError
    p = _model_parser("reverse", "Strip of x_t and pred_x0 at chosen steps, and a GIF of the denoising.")
    p.add_argument("--num_images", type=int, default=1, help="images sampled side by side")
    p.add_argument("--columns", type=int, default=10, help="steps shown in the strip")
    p.add_argument("--at", type=int, nargs="+", default=None,
                   help="timesteps to show instead (nearest grid steps), e.g. --at 999 700 400 100 0")
    p.add_argument("--frames", type=int, default=50, help="GIF frames (steps spread over the run)")
    p.add_argument("--out", default="reverse.png", help="strip PNG [default: reverse.png]")
    p.add_argument("--gif", default=None, help="GIF path [default: --out with .gif]")
    args = p.parse_args(argv)
    if args.num_images < 1 or args.columns < 1 or args.frames < 1:
        raise ConfigError("--num_images, --columns and --frames must be at least 1")
    if args.seed < 0:
        raise ConfigError(f"--seed must be >= 0, got {args.seed}")
    from .checkpoint import load_network
    from .sample_cli import setup_runtime
    from .sampling import image_shape, sampling_options
    jit = setup_runtime(args, seed=args.seed)
    from .samplers import make_sampler
    from .sampling import sample
    from .schedule import build_schedule
    net, cfg, _ = load_network(args.ckpt, args.weights, args.conv_impl)
    opts = sampling_options(cfg, args.sampler, args.steps, args.eta, args.spacing, args.clip_x0)
    schedule = build_schedule(cfg)
    plan = make_sampler(schedule=schedule, **opts)
    strip = pick_steps(plan.num_steps, args.columns, plan.timesteps, args.at)
    frames = pick_steps(plan.num_steps, args.frames)
    images, snaps = sample(net, plan, args.num_images, image_shape(cfg), seed=args.seed, jit=jit,
                           record=set(strip) | set(frames))
    by_step = {i: (t, x, px) for i, t, x, px in snaps}
    rows = []
    for n in range(args.num_images):
        rows.append([to_uint8(by_step[i][1][n]) for i in strip] + [to_uint8(images[n])])
        rows.append([to_uint8(by_step[i][2][n]) for i in strip] + [to_uint8(images[n])])
    labels = ["x_t", "pred_x0"] * args.num_images
    save_rows(rows, args.out, row_labels=labels, col_labels=[f"t={by_step[i][0]}" for i in strip] + ["output"],
              title=f"{opts['name']} {plan.num_steps} steps, seed {args.seed}")
    gif = args.gif or os.path.splitext(args.out)[0] + ".gif"
    pics, texts = [], []
    for i in frames + [None]:
        if i is None:  # the result, held
            x, px, text = images, images, "output"
        else:
            t, x, px = by_step[i]
            text = f"t={t}"
        left, right = tile(to_uint8(x), padding=1), tile(to_uint8(px), padding=1)
        gap = np.full((left.shape[0], 3, left.shape[2]), 128, np.uint8)
        pics.append(np.concatenate([left, gap, right], axis=1))
        texts.append(f"{text}  x_t | pred_x0")
    save_gif(pics, gif, labels=texts)
    print(f"wrote {args.out} and {gif} (x_t | pred_x0, {len(pics)} frames)")
    return args.out, gif


# ------------------------------------------------------------------------------ interpolate

def interpolate_main(argv):
    from .config import ConfigError
    p = _model_parser("interpolate", "DDIM (eta 0) decodes of slerp(x_T(seed_a), x_T(seed_b), w), one row.")
    p.add_argument("--seed_a", type=int, default=0)
    p.add_argument("--seed_b", type=int, default=1)
    p.add_argument("--num", type=int, default=10, help="images in the row, ends included")
    p.add_argument("--out", default="interpolate.png")
    args = p.parse_args(argv)
    if args.num < 2:
        raise ConfigError("--num must be at least 2 (the two ends)")
    if min(args.seed_a, args.seed_b) < 0:
        raise ConfigError("--seed_a and --seed_b must be >= 0")
    from .checkpoint import load_network
    from .sample_cli import setup_runtime
    from .sampling import image_shape, sampling_options
    jit = setup_runtime(args, seed=args.seed_a)
    from .samplers import make_sampler
    from .sampling import initial_noise, sample, slerp
    from .schedule import build_schedule
    net, cfg, _ = load_network(args.ckpt, args.weights, args.conv_impl)
    opts = sampling_options(cfg, "ddim", args.steps, 0.0, args.spacing, args.clip_x0)
    shape = image_shape(cfg)
    weights = np.linspace(0.0, 1.0, args.num)
    x_T = slerp(initial_noise(args.seed_a, 1, shape)[0], initial_noise(args.seed_b, 1, shape)[0], weights)
    images = sample(net, make_sampler(schedule=build_schedule(cfg), **opts), args.num, shape, x_T=x_T, seed=0,
                    jit=jit)
    save_rows([[to_uint8(x) for x in images]], args.out, col_labels=[f"w={w:.2f}" for w in weights],
              title=f"DDIM {opts['num_steps']} steps, eta 0: slerp between seeds {args.seed_a} and {args.seed_b}")
    print(f"wrote {args.out}")
    return images


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in SUBCOMMANDS:
        print(__doc__)
        if argv and argv[0] not in ("-h", "--help"):
            from .config import ConfigError
            raise ConfigError(f"unknown picture {argv[0]!r}: choose one of {', '.join(SUBCOMMANDS)}")
        return None
    what, rest = argv[0], argv[1:]
    return {"forward": forward_main, "reverse": reverse_main, "interpolate": interpolate_main}[what](rest)


if __name__ == "__main__":
    from .runtime import run_main
    sys.exit(run_main(main))

"""The command line of ``sample.py`` (and of ``python -m ddpm_ms.pictures``): options, the
output folder, writers that keep finished batches, and DDIM inversion of given images.

Sampling writes into ``--out`` (default ``<ckpt folder>/samples``):
    grid.png             all images in one grid
    images/00000.png ... one PNG per image (skip with --no_per_image)
    samples.npz          ``images``: uint8 [N, H, W, C]
Inversion (``--invert IMAGE [IMAGE ...]``) writes ``inversion.png`` (each input beside its
reconstruction) and ``inversion.npz`` (``inputs``, ``reconstructions`` uint8 [N, H, W, C],
``x_T`` float32 [N, C, H, W]) and prints MSE and PSNR in [0, 255] space.

Every user mistake (missing or foreign checkpoint, --steps out of range, unreadable image)
raises ConfigError / CheckpointError / DataError, which ``runtime.run_main`` prints as one line.

Nothing is replaced silently: an output folder that already holds samples (or inversion
files) is refused unless ``--overwrite`` is given. The folder is checked for writing before
any sampling, and samples are written batch by batch as they are made, so an error or Ctrl-C
keeps the batches already done.
"""
import argparse
import glob
import math
import os
import tempfile

import numpy as np

from .config import ConfigError
from .files import atomic_write, save_npz

SAMPLE_FILES = ("grid.png", "samples.npz", "images")
INVERSION_FILES = ("inversion.png", "inversion.npz")


class OutputError(ConfigError):
    """The output folder cannot be written, or writing would replace earlier results."""


MODES_HELP = ("auto (default, as train.py): graph on Ascend and GPU, and on CPU what "
              "runtime.CPU_AUTO_MODE says; graph: every denoising step is one compiled graph (ms.jit), "
              "the fast path; pynative: op by op, for comparison and debugging")


def add_runtime_args(p):
    """--device_target/--mode/--device_id, shared with ``python -m ddpm_ms.pictures``."""
    from .runtime import CONV_IMPLS, DEVICE_TARGETS, MODES
    p.add_argument("--device_target", choices=DEVICE_TARGETS, default="auto")
    p.add_argument("--mode", choices=MODES, default="auto", help=MODES_HELP)
    p.add_argument("--device_id", type=int, default=-1)
    p.add_argument("--conv_impl", choices=CONV_IMPLS, default="auto",
                   help="how convolutions run: auto = native (for sampling, MindSpore's conv kernels are "
                        "the faster forward pass on CPU too); matmul = unfold + matmul; any choice loads any "
                        "checkpoint")


def add_checkpoint_args(p):
    """--ckpt and --weights, shared with ``python -m ddpm_ms.pictures`` and ``ddpm_ms.export``."""
    from .checkpoint import WEIGHTS
    p.add_argument("--ckpt", required=True, help="checkpoint written by train.py (holds the config)")
    p.add_argument("--weights", choices=WEIGHTS, default="ema",
                   help="EMA weights (default) or the raw trained weights")


def add_sampler_args(p, samplers=None):
    """Sampler options (``samplers``: the ones offered, default all); unset ones fall back to the
    checkpoint's config."""
    from .samplers import SAMPLERS, SPACINGS
    samplers = samplers or SAMPLERS
    if len(samplers) > 1:
        p.add_argument("--sampler", choices=samplers, default=None,
                       help="ddpm: ancestral, all T steps; ddim: DDIM on a sub-grid (eta 0 = "
                            "deterministic); naive: step toward pred_x0 (baseline); dpmpp2m: "
                            "DPM-Solver++(2M), deterministic, second order, meant for 10-20 steps. "
                            "Default: the checkpoint's config")
    p.add_argument("--steps", type=int, default=None,
                   help="sampler steps in [1, T] (ddim/naive/dpmpp2m; ddpm always runs all T). "
                        "Default: the config's sample_steps")
    if "ddim" in samplers and len(samplers) > 1:
        p.add_argument("--eta", type=float, default=None,
                       help="DDIM eta in [0, 1] (0 = deterministic, 1 = DDPM-like); ddim only")
    p.add_argument("--spacing", choices=SPACINGS, default=None,
                   help="timestep grid for ddim/naive/dpmpp2m (dpmpp2m's leading and linspace grids "
                        "leave out t = 0, as diffusers' DPM-Solver does)")
    p.add_argument("--clip_x0", choices=("true", "false"), default=None,
                   help="clip pred_x0 to [-1, 1] at every step")


def build_arg_parser():
    p = argparse.ArgumentParser(
        description="Sample images from a ddpm_ms checkpoint, or DDIM-invert real images "
                    "(--invert) and reconstruct them. Outputs: grid.png, images/*.png, samples.npz "
                    "(uint8 N x H x W x C). Same --seed, same files.",
        epilog="Pictures of the forward and reverse process and seed interpolations: "
               "python -m ddpm_ms.pictures --help",
        allow_abbrev=False)
    add_checkpoint_args(p)
    add_sampler_args(p)
    p.add_argument("--num_samples", type=int, default=64)
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0, help="x_T and the per-step noise (>= 0)")
    p.add_argument("--out", default=None, help="output folder (default: <ckpt folder>/samples)")
    p.add_argument("--no_per_image", action="store_true", help="skip writing one PNG per image")
    p.add_argument("--overwrite", action="store_true",
                   help="replace samples (or inversion files) already in the output folder; without "
                        "it such a folder is refused")
    p.add_argument("--invert", nargs="+", metavar="IMAGE", default=None,
                   help="DDIM-invert these images into x_T (eta 0, --steps steps, no clipping) and "
                        "reconstruct them with DDIM on the same grid; prints MSE/PSNR")
    add_runtime_args(p)
    return p


def parse_args(argv=None):
    args = build_arg_parser().parse_args(argv)
    if args.num_samples < 1 or args.batch_size < 1:
        raise ConfigError("--num_samples and --batch_size must be at least 1")
    if args.seed < 0:
        raise ConfigError(f"--seed must be >= 0, got {args.seed}")
    return args


def setup_runtime(args, seed=0, verbose=True):
    """``runtime.start`` from the command line's device options (sampling: conv_impl auto is
    native). Returns jit (bool): graph mode, after ``--mode auto`` is resolved for the device."""
    from .runtime import start
    info = start(args.device_target, args.mode, args.device_id, seed=seed,
                 conv_impl=getattr(args, "conv_impl", "auto"), training=False, verbose=verbose)
    return info["mode"] == "graph"


def load_images(paths, cfg):
    """Images as float32 [N, C, H, W] in [-1, 1] at the checkpoint's size and channels.

    Each file is resized (short side) and center-cropped like the image-folder data set.
    DataError (one line, naming the file) for a missing, unreadable or undecodable file.
    """
    from .data import IMAGE_EXTENSIONS, DataError, load_image
    out = []
    for path in paths:
        if os.path.isdir(path):
            raise DataError(f"--invert {path} is a folder, not an image file")
        if not os.path.isfile(path):
            raise DataError(f"--invert {path}: no such image file")
        try:
            u8 = load_image(path, channels=cfg["channels"], image_size=cfg["image_size"])
        except Exception as err:  # PIL.UnidentifiedImageError, truncated files, ...
            detail = str(err).strip().splitlines()[0] if str(err).strip() else ""
            if type(err).__name__ == "UnidentifiedImageError":
                detail = "not an image format Pillow knows"
            detail = type(err).__name__ + (f": {detail}" if detail and path not in detail else "")
            kinds = ", ".join(e.lstrip(".") for e in IMAGE_EXTENSIONS)
            raise DataError(f"--invert {path} is not a readable image ({detail}); give an image file "
                            f"({kinds})") from None
        out.append(np.transpose(u8.astype(np.float32) / 127.5 - 1.0, (2, 0, 1)))
    return np.stack(out)


def psnr(mse, peak=255.0):
    """10 log10(peak^2 / mse) in dB (inf for mse 0)."""
    return math.inf if mse == 0 else 10.0 * math.log10(peak ** 2 / mse)


def prepare_output(out, names, overwrite=False):
    """Check, before any work, that ``out`` can take the files ``names``: it is (or can be made)
    a writable folder, and it holds none of them unless ``overwrite``. OutputError otherwise.

    A folder without any write bit counts as read-only even for root (who could write anyway).
    With ``overwrite`` the earlier per-image PNGs are removed, so no stale image stays behind.
    """
    present = [n for n in names if os.path.exists(os.path.join(out, n))]
    if present and not overwrite:
        raise OutputError(f"{out} already holds {', '.join(present)} from an earlier run: pass "
                          "--overwrite to replace them, or --out DIR for a new folder")
    try:
        os.makedirs(out, exist_ok=True)
        if not os.stat(out).st_mode & 0o222:
            raise PermissionError(13, "the folder is read-only")
        fd, probe = tempfile.mkstemp(prefix=".write_test", dir=out)
        os.close(fd)
        os.remove(probe)
        if overwrite and "images" in names:
            for old in glob.glob(os.path.join(out, "images", "[0-9]*.png")):
                os.remove(old)
    except OSError as err:
        raise OutputError(f"cannot write to the output folder {out} ({err.strerror or err}): pass "
                          "--out DIR with a writable folder") from None
    return out


def _python_sigint():
    """Give Ctrl-C back to Python (KeyboardInterrupt). MindSpore's runtime installs its own
    SIGINT handler when it runs its first op, and that one ends the process at once (exit 143)."""
    import signal
    try:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    except ValueError:  # not the main thread
        pass


class SampleWriter:
    """on_batch callback of ``sampling.sample``: writes each batch as soon as it is made.

    images/NNNNN.png of every batch at once; samples.npz and grid.png of all images so far
    (each replaced atomically) after the first batch, then at most every ``flush_seconds`` and
    at the end, so a long run does not spend its time recompressing. ``flush()`` after an
    error or Ctrl-C writes them for every finished batch.
    """

    def __init__(self, out, total, per_image=True, flush_seconds=30.0):
        self.out, self.total, self.per_image = out, total, per_image
        self.flush_seconds = flush_seconds
        self.batches = []
        self.done = 0          # images finished (and their PNGs written)
        self.in_npz = 0        # images in samples.npz / grid.png
        self._last_flush = None

    def __call__(self, start, images):
        import time

        from .data import to_uint8
        _python_sigint()
        u8 = to_uint8(images)
        if self.per_image:
            try:
                write_pngs(u8, self.out, first_index=start)
            except OSError as err:
                raise OutputError(f"cannot write samples to {self.out} ({err.strerror or err}); the first "
                                  f"{self.done} of {self.total} samples were written before") from None
        self.batches.append(u8)
        self.done += len(u8)
        if (self._last_flush is None or self.done >= self.total
                or time.monotonic() - self._last_flush >= self.flush_seconds):
            self.flush()

    def flush(self, quiet=False):
        """Write samples.npz and grid.png of every finished image (quiet: ignore OSError)."""
        import time
        if not self.batches or self.in_npz == self.done:
            return
        try:
            write_collection(self.images(), self.out)
        except OSError as err:
            if quiet:
                return
            raise OutputError(f"cannot write samples to {self.out} ({err.strerror or err}); the first "
                              f"{self.in_npz} of {self.total} samples were written before") from None
        self.in_npz = self.done
        self._last_flush = time.monotonic()

    def images(self):
        return np.concatenate(self.batches) if self.batches else None


def write_pngs(u8, out, first_index=0):
    """images/NNNNN.png for uint8 [N, H, W, C], numbered from ``first_index``."""
    from PIL import Image
    per = os.path.join(out, "images")
    os.makedirs(per, exist_ok=True)
    for i, img in enumerate(u8, start=first_index):
        Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(os.path.join(per, f"{i:05d}.png"))


def write_collection(u8, out):
    """samples.npz and grid.png of uint8 [N, H, W, C], each replaced atomically."""
    from .data import save_grid
    os.makedirs(out, exist_ok=True)
    save_npz(os.path.join(out, "samples.npz"), images=u8)
    with atomic_write(os.path.join(out, "grid.png"), suffix=".png") as tmp:
        save_grid(u8, tmp)


def write_images(u8, out, per_image=True):
    """grid.png, images/NNNNN.png and samples.npz for uint8 [N, H, W, C]."""
    if per_image:
        write_pngs(u8, out)
    write_collection(u8, out)


def invert_and_reconstruct(net, cfg, x0, opts, jit=True, progress=True, batch_size=None):
    """DDIM-invert x0 [N, C, H, W] and reconstruct with DDIM eta 0 on the same grid.

    Returns (x_T float32, reconstruction float32 [N, C, H, W] in [-1, 1], mse, psnr) with the
    error measured between the uint8 images in [0, 255].
    """
    from .data import to_uint8
    from .samplers import DDIMSampler
    from .sampling import invert, sample
    from .schedule import build_schedule
    schedule = build_schedule(cfg)
    x_T = invert(net, schedule, x0, num_steps=opts["num_steps"], spacing=opts["spacing"],
                 objective=opts["objective"], batch_size=batch_size, progress=progress, jit=jit)
    ddim = DDIMSampler(schedule, opts["num_steps"], eta=0.0, spacing=opts["spacing"], objective=opts["objective"],
                       clip_x0=opts["clip_x0"])
    recon = sample(net, ddim, len(x0), x0.shape[1:], batch_size=batch_size, x_T=x_T, progress=progress, jit=jit)
    diff = to_uint8(recon).astype(np.float64) - to_uint8(x0).astype(np.float64)
    mse = float(np.mean(diff ** 2))
    return x_T, recon, mse, psnr(mse)


def run_inversion(args, net, cfg, jit, out):
    from .data import save_grid, to_uint8
    from .sampling import sampling_options
    if args.sampler not in (None, "ddim") or (args.eta or 0.0) != 0.0:
        raise ConfigError("--invert runs DDIM with eta 0 both ways; drop --sampler/--eta")
    opts = sampling_options(cfg, "ddim", args.steps, 0.0, args.spacing,
                            args.clip_x0 or "false")  # clipping is off unless asked for
    x0 = load_images(args.invert, cfg)
    prepare_output(out, INVERSION_FILES, args.overwrite)
    print(f"[ddpm_ms] inverting {len(x0)} image(s) with DDIM, {opts['num_steps']} steps "
          f"({opts['spacing']} grid), clip_x0={opts['clip_x0']}", flush=True)
    x_T, recon, mse, db = invert_and_reconstruct(net, cfg, x0, opts, jit=jit, batch_size=args.batch_size)
    inputs, recons = to_uint8(x0), to_uint8(recon)
    pairs = np.stack([inputs, recons], 1).reshape((-1,) + inputs.shape[1:])  # input, recon, input, ...
    try:
        os.makedirs(out, exist_ok=True)
        save_npz(os.path.join(out, "inversion.npz"), inputs=inputs, reconstructions=recons, x_T=x_T)
        save_grid(pairs, os.path.join(out, "inversion.png"), nrow=2)
    except OSError as err:
        raise OutputError(f"cannot write the inversion to {out} ({err.strerror or err})") from None
    print(f"inversion: steps={opts['num_steps']} mse={mse:.4f} psnr={db:.2f} dB "
          f"(uint8 [0, 255]); x_T std {x_T.std():.3f}", flush=True)
    print(f"[ddpm_ms] wrote {out}/inversion.png (input | reconstruction), inversion.npz", flush=True)
    return mse, db

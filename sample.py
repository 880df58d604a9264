"""Make images from a checkpoint: the checkpoint alone rebuilds the network.

    python sample.py --ckpt runs/fashion_mnist/latest.ckpt                      # config's sampler
    python sample.py --ckpt X --sampler ddpm --num_samples 16 --seed 1          # all T steps
    python sample.py --ckpt X --sampler ddim --steps 50 --eta 0 --out samples/
    python sample.py --ckpt X --sampler naive --steps 50                        # the baseline
    python sample.py --ckpt X --invert photo.png --steps 100                    # DDIM inversion

Writes grid.png, images/*.png and samples.npz (uint8 N x H x W x C) batch by batch (Ctrl-C
keeps the finished batches); the same --seed gives the same files. A folder that already
holds samples is refused unless --overwrite is given. Pictures of the forward / reverse process and of interpolations:
``python -m ddpm_ms.pictures --help``. Errors are one line on stderr, exit code 2.
"""
import os
import sys

from ddpm_ms.runtime import run_main


def main(argv=None):
    # 1. options, CPU settings (before MindSpore loads), device and mode
    from ddpm_ms.sample_cli import (SAMPLE_FILES, SampleWriter, parse_args, prepare_output, run_inversion,
                                    setup_runtime)
    args = parse_args(argv)
    jit = setup_runtime(args, seed=args.seed)
    from ddpm_ms.checkpoint import load_network
    from ddpm_ms.samplers import make_sampler
    from ddpm_ms.sampling import image_shape, sample, sampling_options
    from ddpm_ms.schedule import build_schedule

    # 2. the checkpoint alone rebuilds the network and the noise schedule
    net, cfg, meta = load_network(args.ckpt, args.weights, args.conv_impl)
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(args.ckpt)), "samples")
    if args.invert:
        return run_inversion(args, net, cfg, jit, out)

    # 3. the command line over the checkpoint's sampler settings; the output folder is checked
    #    before any sampling
    opts = sampling_options(cfg, args.sampler, args.steps, args.eta, args.spacing, args.clip_x0)
    sampler = make_sampler(schedule=build_schedule(cfg), **opts)
    prepare_output(out, SAMPLE_FILES, args.overwrite)
    print(f"[ddpm_ms] sampling {args.num_samples} images, {opts['name']} {sampler.num_steps} "
          f"steps, {args.weights} weights of step {meta['step']}, seed {args.seed}, into {out}", flush=True)

    # 4. sample batch by batch; every finished batch is on disk, also after an error or Ctrl-C
    writer = SampleWriter(out, args.num_samples, per_image=not args.no_per_image)
    try:
        sample(net, sampler, args.num_samples, image_shape(cfg), batch_size=args.batch_size,
               seed=args.seed, jit=jit, on_batch=writer)
    except KeyboardInterrupt:
        writer.flush(quiet=True)
        print(f"\ninterrupted: kept the {writer.done} of {args.num_samples} samples already written in "
              f"{out}", file=sys.stderr, flush=True)
        raise SystemExit(130) from None
    except Exception:
        writer.flush(quiet=True)  # keep the finished batches, then report the error
        raise
    u8 = writer.images()
    print(f"[ddpm_ms] wrote {out}/grid.png, samples.npz ({u8.shape}, uint8)", flush=True)
    return u8


if __name__ == "__main__":
    sys.exit(run_main(main))

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
import sys

from ddpm_ms.cli import run_main


def main(argv=None):
    from ddpm_ms.sample_job import parse_args, sample_from_args
    sample_from_args(parse_args(argv))


if __name__ == "__main__":
    sys.exit(run_main(main))

"""Make images from a checkpoint: the checkpoint alone rebuilds the network.

    python sample.py --ckpt runs/fashion_mnist_smoke/latest.ckpt --sampler ddim --steps 50
"""
import sys

from ddpm_ms.cli import run_main


def main(argv=None):
    from ddpm_ms.sample_job import parse_args, sample_from_args
    sample_from_args(parse_args(argv))


if __name__ == "__main__":
    sys.exit(run_main(main))

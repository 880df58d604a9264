"""Train a DDPM noise predictor.

    python train.py --config configs/fashion_mnist_smoke.yaml --device_target CPU
    python train.py --config configs/fashion_mnist.yaml --resume auto

Any config key can be given as --key value (it beats the YAML); see README for the list.
"""
import sys

from ddpm_ms.cli import run_main


def main(argv=None):
    from ddpm_ms.cli import prepare
    cfg, info = prepare(argv, description=__doc__)
    from ddpm_ms.train_job import train_from_config
    train_from_config(cfg, info)


if __name__ == "__main__":
    sys.exit(run_main(main))

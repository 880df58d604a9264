"""Train a DDPM noise predictor.

    python train.py --config configs/fashion_mnist_smoke.yaml --device_target CPU
    python train.py --config configs/fashion_mnist.yaml --resume auto
    bash scripts/run_distribute_train.sh 8 --config configs/fashion_mnist.yaml   # msrun, data parallel
    python train.py --config X.yaml --data_url obs://b/data --train_url obs://b/out  # ModelArts

Any config key can be given as --key value (it beats the YAML); see README for the list.
"""
import sys

from ddpm_ms.cli import run_main


def main(argv=None):
    from ddpm_ms.cli import prepare
    cfg, info = prepare(argv, description=__doc__)
    from ddpm_ms.train_job import run
    run(cfg, info)


if __name__ == "__main__":
    sys.exit(run_main(main))

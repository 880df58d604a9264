"""Input pipeline throughput (images/s), printed as a small markdown table.

    python bench/bench_data.py [--data_root ../shared/data] [--workers 2] [--seconds 10]

Cases: Fashion-MNIST train split (28x28x1, batch 128) and the CIFAR-10 test PNGs as an image
folder resized to 64x64 RGB (batch 128). Both shuffle and flip as in training. Caches go to
a temporary folder, so the first (decompress / scan) pass is timed separately as "setup".
"""
import argparse
import datetime
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ddpm_ms import data as D  # noqa: E402  (applies the CPU settings before MindSpore)


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def measure(cfg, seconds):
    """(setup seconds, images/s over about ``seconds`` after 2 warm-up batches)."""
    t0 = time.perf_counter()
    data = D.create_dataset(cfg, training=True, repeat=True)
    it = data.create_tuple_iterator(output_numpy=True)
    for _ in range(2):
        next(it)
    setup = time.perf_counter() - t0
    n, t1 = 0, time.perf_counter()
    while time.perf_counter() - t1 < seconds:
        n += next(it)[0].shape[0]
    return setup, n / (time.perf_counter() - t1)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data_root",
                   default=os.environ.get("DDPM_MS_DATA", str(ROOT.parent / "shared" / "data")))
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seconds", type=float, default=10.0)
    args = p.parse_args()
    root = Path(args.data_root)
    common = {"download": False, "random_flip": True, "batch_size": 128, "shuffle_buffer": 0,
              "num_parallel_workers": args.workers, "seed": 0, "drop_remainder": True,
              "split": "train"}
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_data_") as cache:
        cases = [
            ("Fashion-MNIST train, 28x28x1",
             dict(common, dataset="fashion_mnist", image_size=28, channels=1,
                  data_dir=str(root / "fashion-mnist"), cache_dir=cache)),
            ("CIFAR-10 PNG folder -> 64x64x3",
             dict(common, dataset="image_folder", image_size=64, channels=3,
                  data_dir=str(root / "cifar10-png" / "test"), cache_dir=cache)),
        ]
        for name, cfg in cases:
            setup, rate = measure(cfg, args.seconds)
            rows.append((name, cfg["batch_size"], args.workers, setup, rate))

    print(f"Command: `{' '.join(['python', 'bench/bench_data.py'] + sys.argv[1:])}`")
    print(f"Date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}; "
          f"machine: {platform.machine()}, {cpu_model()}, {os.cpu_count()} logical CPUs")
    print()
    print("| pipeline | batch | workers | setup (s) | images/s |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, batch, workers, setup, rate in rows:
        print(f"| {name} | {batch} | {workers} | {setup:.1f} | {rate:,.0f} |")


if __name__ == "__main__":
    main()

"""Where one CPU train step spends its time, by op type (MindSpore's Profiler).

    python bench/profile_step.py                          # ResNet-block U-Net, batch 32, one thread
    python bench/profile_step.py --arch tutorial --batch 16 --form batched

Builds the same train step as ``bench/bench_train.py`` (matmul convs; ``--form`` sets
``DDPM_MS_MATMUL_FORM``), runs two untimed steps, profiles ``--steps`` more, and prints each op
type's share of the summed op time (ops under 1% are pooled). The Profiler's files stay in
``--out``.
"""
import argparse
import csv
import glob
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", choices=("resnet", "tutorial"), default="resnet")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--form", choices=("", "batched", "gemm", "mixed"), default="",
                   help="matmul form (default: what matmul_form() picks on this CPU)")
    p.add_argument("--out", default="runs/profile_step")
    args = p.parse_args(argv)
    os.environ["DDPM_MS_CPU_THREADS"] = "1"
    import bench_train as bt
    spec = dict(kind="train", batch=args.batch, mode="graph", conv_impl="matmul", matmul_form=args.form,
                arch=bt.RESNET_ARCH if args.arch == "resnet" else {})
    ms = bt._setup_mindspore(spec)
    import numpy as np
    from mindspore import Profiler
    from ddpm_ms.convs import matmul_form
    from ddpm_ms.train_step import draw_t_noise
    trainer, cfg = bt.build_trainer(spec)
    x0 = ms.Tensor(np.random.default_rng(0).uniform(-1, 1, (args.batch, 1, 28, 28)).astype(np.float32))

    def step(i):
        t, noise = draw_t_noise(0, i, 0, x0.shape, cfg["timesteps"])
        bt._sync(trainer.train_step(x0, t, noise))

    for i in range(2):
        step(i)
    prof = Profiler(output_path=args.out)
    for i in range(args.steps):
        step(2 + i)
    prof.analyse()
    files = sorted(glob.glob(os.path.join(args.out, "**", "cpu_op_type_info_*.csv"), recursive=True),
                   key=os.path.getmtime)
    if not files:
        raise SystemExit(f"error: the Profiler wrote no cpu_op_type_info_*.csv under {args.out}")
    with open(files[-1]) as fh:
        rows = [(r["op_type"], float(r["total_compute_time"])) for r in csv.DictReader(fh)]
    total = sum(t for _, t in rows)
    print(f"{args.arch} U-Net, batch {args.batch}, form {matmul_form()!r}, {args.steps} steps: "
          f"{total / args.steps / 1000:.2f} s of op time per step; loadavg {os.getloadavg()[0]:.2f}")
    print("| op | share |\n| --- | --: |")
    small = 0.0
    for op, t in sorted(rows, key=lambda r: -r[1]):
        if t / total < 0.01:
            small += t
        else:
            print(f"| {op} | {100 * t / total:.1f}% |")
    print(f"| (ops under 1% each) | {100 * small / total:.1f}% |")


if __name__ == "__main__":
    main()

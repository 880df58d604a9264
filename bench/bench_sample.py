"""Sampling speed (images/s) of the tutorial-size U-Net, compiled graph vs PYNATIVE, as a markdown table.

    python bench/bench_sample.py [--batch 64] [--steps 50] [--pynative_steps 10]

Network: dim 28, dim_mults (1, 2, 4), 28x28x1, random weights (speed does not depend on
them), T = 1000. Cases: DDPM (1000 steps, noise every step) and DDIM (50 steps, eta 0), each
as one ``ms.jit`` graph per step (the sample.py default, ``--mode graph``) and op by op in
PYNATIVE mode (``--mode pynative``). Each case runs its sampler's first ``--steps`` steps
(``--pynative_steps`` for PYNATIVE) after one warm-up step (which includes compiling) and
scales the time per step to the full run: images/s = batch / (full steps x s/step). The
host-side noise draw (numpy, per image, plus the copy to a Tensor) is timed on its own.
"""
import argparse
import datetime
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ddpm_ms.cpu_env import apply_cpu_env  # noqa: E402

apply_cpu_env(verbose=False)
os.environ.setdefault("GLOG_v", "3")

import numpy as np  # noqa: E402

import mindspore as ms  # noqa: E402
from mindspore import Tensor  # noqa: E402

from ddpm_ms.runtime import setup_device  # noqa: E402
from ddpm_ms.samplers import CoefSampler, make_sampler  # noqa: E402
from ddpm_ms.sampling import initial_noise, make_step, noise_streams, run_steps  # noqa: E402
from ddpm_ms.schedule import NoiseSchedule  # noqa: E402
from ddpm_ms.unet import build_unet, count_params  # noqa: E402


def machine():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        model = next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        model = platform.processor() or "unknown"
    nproc = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    return model, nproc


def first_steps(plan, n):
    """The same sampler cut to its first n steps (the per-step work is unchanged)."""
    return CoefSampler(plan.schedule, plan.timesteps[:n], plan.coef_table[:n], plan.clip_x0)


def time_case(net, plan, batch, steps, jit):
    """(compile + first step seconds, seconds per step over ``steps`` further steps)."""
    shape = (batch, 1, 28, 28)
    step_fn = make_step(net, plan, jit=jit)
    x = Tensor(initial_noise(0, batch, shape[1:]))
    t0 = time.perf_counter()
    x, _ = run_steps(step_fn, first_steps(plan, 1), x, noise_streams(0, batch))
    x.asnumpy()
    warm = time.perf_counter() - t0
    t0 = time.perf_counter()
    x, _ = run_steps(step_fn, first_steps(plan, steps), x, noise_streams(1, batch))
    x.asnumpy()
    return warm, (time.perf_counter() - t0) / steps


def time_forward(net, batch, reps=3):
    """Seconds per call of the network alone under ms.jit (what every step must pay)."""
    x = Tensor(initial_noise(0, batch, (1, 28, 28)))
    t = Tensor(np.full(batch, 500, np.int32))

    def forward(x, t):
        return net(x, t)
    fn = ms.jit(forward)
    fn(x, t).asnumpy()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn(x, t).asnumpy()
    return (time.perf_counter() - t0) / reps


def time_noise(batch, reps=50):
    rngs = noise_streams(0, batch)
    t0 = time.perf_counter()
    for _ in range(reps):
        Tensor(np.stack([g.standard_normal((1, 28, 28), np.float32) for g in rngs]))
    return (time.perf_counter() - t0) / reps


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=50, help="steps timed per graph case")
    p.add_argument("--pynative_steps", type=int, default=10, help="steps timed per PYNATIVE case")
    p.add_argument("--modes", nargs="+", default=["graph", "pynative"], choices=("graph", "pynative"))
    args = p.parse_args()
    setup_device("CPU", "pynative", verbose=False)  # the graph cases compile with ms.jit
    net = build_unet(dict(dim=28, dim_mults=[1, 2, 4], channels=1, image_size=28))
    net.set_train(False)
    schedule = NoiseSchedule("linear", 1000)
    plans = {"DDPM": make_sampler("ddpm", schedule), "DDIM": make_sampler("ddim", schedule, num_steps=50)}
    rows = []
    for mode in args.modes:
        if mode == "graph":
            ms.set_context(mode=ms.GRAPH_MODE)
        else:
            ms.set_context(mode=ms.PYNATIVE_MODE)
        for name, plan in plans.items():
            n = min(args.steps if mode == "graph" else args.pynative_steps, plan.num_steps)
            warm, per_step = time_case(net, plan, args.batch, n, jit=mode == "graph")
            total = per_step * plan.num_steps
            rows.append((name, plan.num_steps, mode, n, warm, per_step, total, args.batch / total))
            print(f"  {name} {mode}: {per_step * 1e3:.1f} ms/step", file=sys.stderr, flush=True)
    noise = time_noise(args.batch)
    ms.set_context(mode=ms.GRAPH_MODE)
    forward = time_forward(net, args.batch)
    model, nproc = machine()
    print(f"Command: `{' '.join(['python bench/bench_sample.py'] + sys.argv[1:])}`")
    print(f"Date: {datetime.date.today()}; machine: {model}, nproc {nproc}, load average "
          f"{os.getloadavg()[0]:.1f} at the end; MindSpore {ms.__version__}, "
          f"U-Net dim 28 (1, 2, 4), {count_params(net):,} parameters, 28x28x1, batch {args.batch}.\n")
    print("| sampler | steps | mode | steps timed | warm-up s (compile + 1 step) | ms / step | "
          "s / batch (scaled) | images / s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, steps, mode, n, warm, per_step, total, ips in rows:
        mode_txt = "graph (ms.jit per step)" if mode == "graph" else "PYNATIVE (op by op)"
        scaled = "" if n == steps else f" (from {n} steps)"
        print(f"| {name} | {steps} | {mode_txt} | {n} | {warm:.1f} | {per_step * 1e3:.1f} | "
              f"{total:.1f}{scaled} | {ips:.3g} |")
    print(f"\nThe network alone (ms.jit forward, batch {args.batch}): {forward * 1e3:.1f} ms per call. "
          f"Host noise per step (numpy per-image draw + Tensor copy): {noise * 1e3:.2f} ms.")


if __name__ == "__main__":
    main()

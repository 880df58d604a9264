"""Which ``ONEDNN_MAX_CPU_ISA`` makes MindSpore's CPU convolutions and matmuls fastest here.

    python bench/bench_isa.py [--levels AVX2 AVX512_CORE ...] [--batch 32] [--verbose]

oneDNN reads the cap once, when MindSpore loads it, so each level runs in its own
subprocess (1 thread, PYNATIVE): forward + backward of a 3x3 conv (56 -> 56 channels) plus a
7x7 depthwise conv (56 channels) at 28x28, and a 1024x1024 fp32 matmul, mean of 5 calls after
one warm-up. ``--verbose`` adds the convolution implementations oneDNN chose
(``ONEDNN_VERBOSE=1``), one line per kind of call with its slowest time.
"""
import argparse
import os
import subprocess
import sys

CHILD = r"""
import os, sys, time
import numpy as np
import mindspore as ms
from mindspore import Tensor, nn, ops
ms.set_context(mode=ms.PYNATIVE_MODE)
ms.set_device("CPU")
ms.set_seed(0)
batch = int(sys.argv[1])
conv = nn.Conv2d(56, 56, 3, pad_mode="pad", padding=1, has_bias=True)
dw = nn.Conv2d(56, 56, 7, pad_mode="pad", padding=3, group=56, has_bias=True)
x = Tensor(np.random.default_rng(0).standard_normal((batch, 56, 28, 28), np.float32))
m = Tensor(np.random.default_rng(1).standard_normal((1024, 1024), np.float32))
def loss(x):
    return (conv(x) ** 2).mean() + (dw(x) ** 2).mean()
grad = ms.value_and_grad(loss, None, conv.trainable_params() + dw.trainable_params())
for name, fn in (("conv", lambda: grad(x)[0]), ("matmul", lambda: ops.matmul(m, m))):
    fn().asnumpy()
    t = time.perf_counter()
    for _ in range(5):
        out = fn()
    out.asnumpy()
    print(f"RESULT {name} {(time.perf_counter() - t) / 5 * 1000:.1f}", flush=True)
"""


def run_level(level, batch, verbose):
    env = dict(os.environ, ONEDNN_MAX_CPU_ISA=level, OMP_NUM_THREADS="1", GLOG_v="3")
    if verbose:
        env["ONEDNN_VERBOSE"] = "1"
    proc = subprocess.run([sys.executable, "-c", CHILD, str(batch)], env=env, capture_output=True, text=True)
    res = dict(line.split()[1:] for line in proc.stdout.splitlines() if line.startswith("RESULT"))
    impls = {}
    for line in proc.stdout.splitlines():
        f = line.split(",")
        if len(f) > 8 and f[3] == "exec" and f[5] == "convolution":
            key = (f[6], f[7], "depthwise 7x7" if f[-2].startswith("g") else "3x3")
            impls[key] = max(impls.get(key, 0.0), float(f[-1]))
    return res, impls


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--levels", nargs="+",
                   default=["AVX2", "AVX512_CORE", "AVX512_CORE_VNNI", "AVX512_CORE_BF16"])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args()
    print("| ONEDNN_MAX_CPU_ISA | conv fwd+bwd ms | matmul 1024 ms |\n| --- | --: | --: |")
    for level in args.levels:
        res, impls = run_level(level, args.batch, args.verbose)
        print(f"| {level} | {res.get('conv', 'failed')} | {res.get('matmul', 'failed')} |", flush=True)
        for (impl, kind, layer), ms_ in sorted(impls.items()):
            print(f"|   {layer} {kind}: `{impl}` | slowest {ms_:.0f} ms | |")


if __name__ == "__main__":
    main()

"""Forward + backward time of each conv shape the U-Nets use: MindSpore's kernels against ddpm_ms.convs.

    python bench/bench_convs.py                 # oneDNN capped at AVX2, as for native convs
    python bench/bench_convs.py --nocap         # no cap: what conv_impl matmul runs with
    python bench/bench_convs.py --threads 2 --batch 128

One process per ISA setting (oneDNN reads its cap once, when MindSpore loads). Each row is one
conv cell in GRAPH mode, ``value_and_grad`` for the input and the weights of mean(y^2), the
best of ``--reps`` calls after one compiling call; wall ms and CPU ms (process time, less
disturbed by other load on the machine). Every pair shares its weights; the loss of the matmul
path must equal the native one, and the script says so.
Shapes: the tutorial U-Net (dim 28, mults 1,2,4) at 28x28: init 7x7 1->18, depthwise 7x7 on
18/28/56 channels at 28/14/7, 3x3 28->56 and 56->56, 1x1 qkv, 4x4 stride-2 downsample and
4x4 stride-2 transposed upsample.
"""
import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def time_fwd_bwd(cell, x, reps):
    """(wall ms, CPU ms, loss): the best of ``reps`` GRAPH-mode calls, after one compiling call, of
    ``value_and_grad`` of mean(cell(x)^2) for x and the cell's weights. CPU ms is process time,
    less disturbed by other load."""
    import mindspore as ms

    def loss(x_):
        y = cell(x_)
        return (y * y).mean()

    step = ms.jit(ms.value_and_grad(loss, 0, cell.trainable_params()))
    out = step(x)
    out[0].asnumpy()
    wall, cpu = [], []
    for _ in range(reps):
        t0, c0 = time.perf_counter(), time.process_time()
        out = step(x)
        out[0].asnumpy()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return 1e3 * min(wall), 1e3 * min(cpu), float(out[0].asnumpy())


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nocap", action="store_true", help="leave oneDNN uncapped (AVX-512 where the CPU has it)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--only", default="", help="comma-separated row names")
    args = p.parse_args(argv)
    os.environ["DDPM_MS_CPU_THREADS"] = str(args.threads)
    os.environ.setdefault("GLOG_v", "3")
    from ddpm_ms.cpu_env import apply_cpu_env
    chosen = apply_cpu_env(verbose=False, matmul_convs=args.nocap)
    import numpy as np
    import mindspore as ms
    from mindspore import nn
    from ddpm_ms.convs import MatmulConv2d, MatmulConvTranspose2d
    from ddpm_ms.runtime import setup_device
    setup_device("CPU", "graph", verbose=False)
    b = args.batch
    # name: (transposed, c_in, c_out, kernel, stride, padding, group, hw)
    rows = {
        "init7x7_1to18_28": (False, 1, 18, 7, 1, 3, 1, 28),
        "dw7x7_18_28": (False, 18, 18, 7, 1, 3, 18, 28),
        "dw7x7_28_14": (False, 28, 28, 7, 1, 3, 28, 14),
        "dw7x7_56_7": (False, 56, 56, 7, 1, 3, 56, 7),
        "conv3x3_28to56_28": (False, 28, 56, 3, 1, 1, 1, 28),
        "conv3x3_56to56_28": (False, 56, 56, 3, 1, 1, 1, 28),
        "conv3x3_112to112_7": (False, 112, 112, 3, 1, 1, 1, 7),
        "qkv1x1_28to384_28": (False, 28, 384, 1, 1, 0, 1, 28),
        "down4x4s2_28_28": (False, 28, 28, 4, 2, 1, 1, 28),
        "up4x4s2_28_14": (True, 28, 28, 4, 2, 1, 1, 14),
    }
    if args.only:
        rows = {k: v for k, v in rows.items() if k in args.only.split(",")}
    rng = np.random.default_rng(0)

    print(f"oneDNN ISA: {chosen['onednn_isa']}; threads {args.threads}; batch {b}; "
          f"load {os.getloadavg()[0]:.2f}", flush=True)
    print("| conv | native wall ms | native CPU ms | matmul wall ms | matmul CPU ms | speed-up (CPU) | same loss |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | --- |")
    for name, (transposed, c_in, c_out, k, s, pad, g, hw) in rows.items():
        kw = dict(stride=s, pad_mode="pad", padding=pad, has_bias=True)
        if transposed:
            native, matmul = nn.Conv2dTranspose(c_in, c_out, k, **kw), MatmulConvTranspose2d(c_in, c_out, k, **kw)
        else:
            native, matmul = nn.Conv2d(c_in, c_out, k, group=g, **kw), MatmulConv2d(c_in, c_out, k, group=g, **kw)
        for p_n, p_m in zip(native.get_parameters(), matmul.get_parameters()):
            p_m.set_data(p_n.data.copy())
        x = ms.Tensor(rng.standard_normal((b, c_in, hw, hw)).astype(np.float32))
        nw, nc, nl = time_fwd_bwd(native, x, args.reps)
        mw, mc, ml = time_fwd_bwd(matmul, x, args.reps)
        same = "yes" if abs(nl - ml) <= 1e-5 * max(abs(nl), 1e-12) else f"NO ({nl:.6g} vs {ml:.6g})"
        print(f"| {name} | {nw:.1f} | {nc:.1f} | {mw:.1f} | {mc:.1f} | {nc / mc:.2f}x | {same} |", flush=True)


if __name__ == "__main__":
    main()

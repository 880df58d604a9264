"""Two more ways around MindSpore's CPU conv kernels, against the unfold + matmul that ddpm_ms uses
(issue 15): forward + backward of one 3x3 conv, stride 1, padding 1, no bias.

    python bench/conv_routes.py                      # 28->28 channels at 28x28, 14x14, 7x7, batch 32
    python bench/conv_routes.py --channels 56 --batch 16

Routes, all in GRAPH mode, one kernel thread, the loss mean(y^2) differentiated for x and the weight:

* ``unfold``: what ``ddpm_ms.convs.MatmulConv2d`` runs, in the form ``matmul_form()`` picks here;
* ``slices``: channels-last (x as [B, H, W, C]); pad, nine shifted slices concatenated on the
  channel axis, one GEMM [B*H*W, 9C] @ [9C, C_out]; no unfold / fold kernels, but each slice's
  backward is a padded copy;
* ``numpy``: unfold as ``unfold``, but the three products (forward, weight gradient, column
  gradient) run as ``ops.Custom(func_type="pyfunc")`` ops calling numpy's BLAS on the host
  (OpenBLAS in numpy's wheel; ``OPENBLAS_NUM_THREADS=1`` is set here).

Each row: the best of ``--reps`` calls after one compiling call, wall ms and CPU ms (process
time: less disturbed by other load), and the loss, which must agree across routes.
"""
import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from bench_convs import time_fwd_bwd  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--channels", type=int, default=28)
    p.add_argument("--sizes", default="28,14,7", help="comma-separated feature map sizes")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--reps", type=int, default=5)
    args = p.parse_args(argv)
    os.environ["DDPM_MS_CPU_THREADS"] = "1"
    os.environ["OPENBLAS_NUM_THREADS"] = "1"
    os.environ.setdefault("GLOG_v", "3")
    from ddpm_ms.cpu_env import apply_cpu_env
    apply_cpu_env(verbose=False, matmul_convs=True)
    import numpy as np
    import mindspore as ms
    from mindspore import nn, ops
    from ddpm_ms.convs import MatmulConv2d, matmul_form
    from ddpm_ms.runtime import setup_device
    setup_device("CPU", "graph", verbose=False)

    c, b = args.channels, args.batch
    k = 9 * c

    def np_forward(w, cols):                 # [C_out, K] @ [B, K, L] -> [B, C_out, L]
        return np.matmul(w, cols)

    def np_weight_grad(dy, cols):            # sum_b dy_b @ cols_b^T -> [C_out, K]
        return np.einsum("bcl,bkl->ck", dy, cols, optimize=True)

    def np_cols_grad(w, dy):                 # W^T @ dy_b -> [B, K, L]
        return np.matmul(w.T, dy)

    weight_grad = ops.Custom(np_weight_grad, out_shape=lambda dy, x: (dy[1], x[1]), out_dtype=lambda dy, x: x,
                             func_type="pyfunc")
    cols_grad = ops.Custom(np_cols_grad, out_shape=lambda w, dy: (dy[0], w[1], dy[2]), out_dtype=lambda w, dy: dy,
                           func_type="pyfunc")
    def forward_bprop(w, x, out, dout):
        return weight_grad(dout, x), cols_grad(w, dout)

    forward = ops.Custom(np_forward, out_shape=lambda w, x: (x[0], w[0], x[2]), out_dtype=lambda w, x: x,
                         func_type="pyfunc", bprop=forward_bprop)

    class Slices(nn.Cell):
        def __init__(self, w):               # w [C_out, C_in, 3, 3] -> [(ky, kx, c_in), C_out]
            super().__init__()
            self.w = ms.Parameter(ms.Tensor(w.transpose(2, 3, 1, 0).reshape(k, c)))

        def construct(self, x):              # x [B, C, H, W]; the layout change is not timed
            bb, h, w_, cc = x.shape
            xp = ops.pad(x, (0, 0, 1, 1, 1, 1))
            parts = []
            for i in range(9):
                parts.append(xp[:, i // 3:i // 3 + h, i % 3:i % 3 + w_, :])
            y = ops.matmul(ops.concat(parts, -1).reshape(bb * h * w_, k), self.w)
            return y.reshape(bb, h, w_, -1)

    class NumpyProducts(nn.Cell):
        def __init__(self, w):
            super().__init__()
            self.w = ms.Parameter(ms.Tensor(w.reshape(c, k)))

        def construct(self, x):
            bb, _, h, w_ = x.shape
            cols = ops.unfold(x, (3, 3), dilation=1, padding=(1, 1), stride=(1, 1))
            return forward(self.w, cols).reshape(bb, c, h, w_)

    print(f"3x3 conv {c}->{c}, batch {b}, one thread, unfold in the {matmul_form()!r} form; "
          f"loadavg {os.getloadavg()[0]:.2f}")
    print("| size | route | wall ms | CPU ms | CPU vs unfold | loss |")
    print("| --- | --- | --: | --: | --: | --: |")
    rng = np.random.default_rng(0)
    for size in [int(s) for s in args.sizes.split(",")]:
        x = rng.standard_normal((b, c, size, size)).astype(np.float32)
        w = (rng.standard_normal((c, c, 3, 3)) * 0.05).astype(np.float32)
        unfold = MatmulConv2d(c, c, 3, pad_mode="pad", padding=1, has_bias=False)
        unfold.weight.set_data(ms.Tensor(w))
        rows = [("unfold", time_fwd_bwd(unfold, ms.Tensor(x), args.reps)),
                ("slices", time_fwd_bwd(Slices(w), ms.Tensor(x.transpose(0, 2, 3, 1).copy()), args.reps)),
                ("numpy", time_fwd_bwd(NumpyProducts(w), ms.Tensor(x), args.reps))]
        base, ref = rows[0][1][1], rows[0][1][2]
        for name, (wall, cpu, loss) in rows:
            print(f"| {size}x{size} | {name} | {wall:.1f} | {cpu:.1f} | {cpu / base:.2f}x | {loss:.6f} |",
                  flush=True)
            if abs(loss - ref) > 1e-5 * abs(ref):
                print(f"WARNING: {name} at {size}x{size} computes a different conv: loss {loss:.6f} against "
                      f"{ref:.6f} for unfold", flush=True)


if __name__ == "__main__":
    main()

"""Export the trained U-Net (EMA weights by default) to MindIR for inference elsewhere.

    python -m ddpm_ms.export --ckpt runs/fashion_mnist/latest.ckpt --out unet.mindir

The MindIR graph is eps_theta(xt, t): xt float32 [B, C, H, W], t int32 [B] -> float32
[B, C, H, W] (or x0 / v, the checkpoint's ``objective``), for a fixed batch B
(``--batch_size``). Load it with ``mindspore.load`` and run it with ``nn.GraphCell``; the
sampler loop (``ddpm_ms.samplers``) stays in Python.
"""
import argparse
import os
import sys

import numpy as np


def example_inputs(cfg, batch_size=1):
    """(xt, t) Tensors with the shapes and dtypes the exported graph takes."""
    from mindspore import Tensor
    c, s = cfg["channels"], cfg["image_size"]
    rng = np.random.default_rng(0)
    xt = Tensor(rng.standard_normal((batch_size, c, s, s)).astype(np.float32))
    t = Tensor(rng.integers(0, cfg["timesteps"], (batch_size,)).astype(np.int32))
    return xt, t


def export_network(net, cfg, out, batch_size=1):
    """Write ``net`` as MindIR to ``out`` (``.mindir`` added when missing); returns the path."""
    import mindspore as ms
    out = os.path.abspath(out)
    stem = out[:-len(".mindir")] if out.endswith(".mindir") else out
    os.makedirs(os.path.dirname(stem), exist_ok=True)
    net.set_train(False)
    ms.export(net, *example_inputs(cfg, batch_size), file_name=stem, file_format="MINDIR")
    return stem + ".mindir"


def load_exported(path):
    """The exported graph as a callable cell: cell(xt, t) -> network output."""
    import mindspore as ms
    from mindspore import nn
    return nn.GraphCell(ms.load(path))


def export_checkpoint(ckpt_path, out, weights="ema", batch_size=1):
    """Checkpoint -> MindIR file; returns (path, network, config)."""
    from .checkpoint import load_network
    # native convs: a MindIR is for inference on Ascend / GPU, whose conv kernels are the fast path
    net, cfg, _meta = load_network(ckpt_path, weights=weights, conv_impl="native")
    return export_network(net, cfg, out, batch_size), net, cfg


def main(argv=None):
    p = argparse.ArgumentParser(description="Export a ddpm_ms checkpoint's U-Net to MindIR.", allow_abbrev=False)
    from .runtime import DEVICE_TARGETS
    from .sample_cli import add_checkpoint_args
    add_checkpoint_args(p)
    p.add_argument("--out", default="unet.mindir", help="MindIR file to write [default: unet.mindir]")
    p.add_argument("--batch_size", type=int, default=1, help="batch size the graph takes [default: 1]")
    p.add_argument("--device_target", choices=DEVICE_TARGETS, default="CPU")
    args = p.parse_args(argv)
    if args.batch_size < 1:
        from .config import ConfigError
        raise ConfigError("--batch_size must be at least 1")
    from .runtime import start
    start(args.device_target, mode="graph", verbose=False)
    path, _net, cfg = export_checkpoint(args.ckpt, args.out, args.weights, args.batch_size)
    print(f"wrote {path}: {args.weights} weights, input xt float32 "
          f"[{args.batch_size}, {cfg['channels']}, {cfg['image_size']}, {cfg['image_size']}], "
          f"t int32 [{args.batch_size}], output {cfg['objective']}")


if __name__ == "__main__":
    from .runtime import run_main
    sys.exit(run_main(main))

"""InceptionV3 pool3 features for FID on RGB data, in MindSpore.

The network is the one every published FID uses: the TensorFlow InceptionV3 graph of
2015-12-05 as ported by ``pytorch-fid`` (Seitzer), which differs from the ImageNet
InceptionV3 of model zoos in four places: 1008 output classes, average pools that do not
count padding (Mixed_5b-5d, 6b-6e, 7b), and a max pool in the last block's pool branch
(Mixed_7c). Images are resized to 299x299 (bilinear, half-pixel centres), mapped from
[0, 1] to [-1, 1], and the 2048-d global average of Mixed_7c is the feature.

Nothing is downloaded. You provide the weights once, converted from pytorch-fid's file::

    pip install torch                                        # only for the conversion
    # pt_inception-2015-12-05-6726825d.pth, from pytorch-fid's GitHub releases
    python -m ddpm_ms.eval.inception convert --pth pt_inception-2015-12-05-6726825d.pth \\
        --out inception_fid.ckpt

then ``python -m ddpm_ms.eval.evaluate --samples s.npz --ref cifar10 --data_dir DIR
--inception_ckpt inception_fid.ckpt``. Cell names follow torchvision's ``Inception3``
(``Mixed_6b.branch7x7_2.conv.weight``); only the batch-norm names change (``weight``,
``bias``, ``running_mean``, ``running_var`` -> ``gamma``, ``beta``, ``moving_mean``,
``moving_variance``), so the conversion is a renaming and nothing else.
"""
import argparse
import os
import sys

import numpy as np

import mindspore as ms
from mindspore import nn, ops

__all__ = ["InceptionError", "FIDInceptionV3", "load_inception", "inception_features", "convert_state_dict",
           "write_checkpoint", "convert_pth", "resize_bilinear_np"]

FEATURE_DIM = 2048
_BN_RENAME = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean", "running_var": "moving_variance"}


class InceptionError(Exception):
    """A one-line, user-facing problem with the Inception weights."""


def _pad4(padding):
    """PyTorch (ph, pw) -> MindSpore (top, bottom, left, right)."""
    ph, pw = (padding, padding) if isinstance(padding, int) else padding
    return (ph, ph, pw, pw)


# The conv class BasicConv2d builds: nn.Conv2d, or MatmulConv2d (same parameters) while
# FIDInceptionV3 is built in a CPU process whose oneDNN convs are slow (feature_net._conv_class).
_CONV = [nn.Conv2d]


class BasicConv2d(nn.Cell):
    """conv (no bias) -> batch norm (eps 1e-3, moving statistics) -> ReLU."""

    def __init__(self, cin, cout, kernel_size, stride=1, padding=0):
        super().__init__()
        self.conv = _CONV[0](cin, cout, kernel_size, stride=stride, pad_mode="pad", padding=_pad4(padding),
                              has_bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=1e-3)
        self.relu = nn.ReLU()

    def construct(self, x):
        return self.relu(self.bn(self.conv(x)))


class AvgPool3x3NoPad(nn.Cell):
    """3x3 stride-1 average pool with padding 1 that divides by the number of real pixels
    (PyTorch's ``count_include_pad=False``): a zero-padded sum over a padded count."""

    def __init__(self):
        super().__init__()
        self.pool = nn.AvgPool2d(kernel_size=3, stride=1, pad_mode="valid")

    def construct(self, x):
        pad = (1, 1, 1, 1)
        total = self.pool(ops.pad(x, pad))
        count = self.pool(ops.pad(ops.ones_like(x[:, :1]), pad))
        return total / count


class MaxPool3x3Same(nn.Cell):
    """3x3 stride-1 max pool with padding 1. Its input is a ReLU output (>= 0), so zero padding
    gives the same result as PyTorch's -inf padding."""

    def __init__(self):
        super().__init__()
        self.pool = nn.MaxPool2d(kernel_size=3, stride=1, pad_mode="valid")

    def construct(self, x):
        return self.pool(ops.pad(x, (1, 1, 1, 1)))


class InceptionA(nn.Cell):
    def __init__(self, cin, pool_features):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 64, 1)
        self.branch5x5_1 = BasicConv2d(cin, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.avg = AvgPool3x3NoPad()
        self.branch_pool = BasicConv2d(cin, pool_features, 1)

    def construct(self, x):
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return ops.cat((self.branch1x1(x), b5, b3, self.branch_pool(self.avg(x))), 1)


class InceptionB(nn.Cell):
    def __init__(self, cin):
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, pad_mode="valid")

    def construct(self, x):
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return ops.cat((self.branch3x3(x), b3, self.maxpool(x)), 1)


class InceptionC(nn.Cell):
    def __init__(self, cin, c7):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 192, 1)
        self.branch7x7_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.avg = AvgPool3x3NoPad()
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def construct(self, x):
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = self.branch7x7dbl_3(self.branch7x7dbl_2(self.branch7x7dbl_1(x)))
        d = self.branch7x7dbl_5(self.branch7x7dbl_4(d))
        return ops.cat((self.branch1x1(x), b7, d, self.branch_pool(self.avg(x))), 1)


class InceptionD(nn.Cell):
    def __init__(self, cin):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, pad_mode="valid")

    def construct(self, x):
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return ops.cat((b3, b7, self.maxpool(x)), 1)


class InceptionE(nn.Cell):
    """``last=False``: Mixed_7b (average pool without padding counts); ``last=True``: Mixed_7c
    (max pool), as in the TF graph."""

    def __init__(self, cin, last):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 320, 1)
        self.branch3x3_1 = BasicConv2d(cin, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.pool = MaxPool3x3Same() if last else AvgPool3x3NoPad()
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def construct(self, x):
        a = self.branch3x3_1(x)
        b3 = ops.cat((self.branch3x3_2a(a), self.branch3x3_2b(a)), 1)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = ops.cat((self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d)), 1)
        return ops.cat((self.branch1x1(x), b3, bd, self.branch_pool(self.pool(x))), 1)


class FIDInceptionV3(nn.Cell):
    """Images (N, 3, H, W) float in [0, 1] -> pool3 features (N, 2048)."""

    def __init__(self):
        super().__init__()
        from .feature_net import _conv_class
        _CONV[0] = _conv_class()     # decided once for the 94 convs
        try:
            self._build()
        finally:
            _CONV[0] = nn.Conv2d
        self.set_train(False)

    def _build(self):
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.maxpool1 = nn.MaxPool2d(kernel_size=3, stride=2, pad_mode="valid")
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.maxpool2 = nn.MaxPool2d(kernel_size=3, stride=2, pad_mode="valid")
        self.Mixed_5b = InceptionA(192, 32)
        self.Mixed_5c = InceptionA(256, 64)
        self.Mixed_5d = InceptionA(288, 64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, 128)
        self.Mixed_6c = InceptionC(768, 160)
        self.Mixed_6d = InceptionC(768, 160)
        self.Mixed_6e = InceptionC(768, 192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, last=False)
        self.Mixed_7c = InceptionE(2048, last=True)

    def construct(self, x):
        x = ops.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        x = 2.0 * x - 1.0
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = self.maxpool2(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(self.maxpool1(x))))
        x = self.Mixed_5d(self.Mixed_5c(self.Mixed_5b(x)))
        x = self.Mixed_6e(self.Mixed_6d(self.Mixed_6c(self.Mixed_6b(self.Mixed_6a(x)))))
        x = self.Mixed_7c(self.Mixed_7b(self.Mixed_7a(x)))
        return x.mean(axis=(2, 3))


def resize_bilinear_np(x, size):
    """numpy reference of the resize above: (N, C, H, W) -> (N, C, size, size), bilinear with
    half-pixel centres and edge clamping (PyTorch's ``align_corners=False`` when upsampling)."""
    def axis_weights(n_in):
        src = np.clip((np.arange(size) + 0.5) * (n_in / size) - 0.5, 0, None)
        lo = np.minimum(np.floor(src).astype(int), n_in - 1)
        hi = np.minimum(lo + 1, n_in - 1)
        w = src - lo
        m = np.zeros((size, n_in))
        np.add.at(m, (np.arange(size), lo), 1 - w)
        np.add.at(m, (np.arange(size), hi), w)
        return m
    rows, cols = axis_weights(x.shape[2]), axis_weights(x.shape[3])
    return np.einsum("ih,nchw,jw->ncij", rows, x, cols)


def _check_params(net, params, not_this_net, source, hint=""):
    """Names of ``net``'s parameters, after checking that ``params`` (name -> array or
    Parameter) has every one of them with the same shape; InceptionError otherwise."""
    want = {p.name: tuple(p.shape) for p in net.get_parameters()}
    missing = sorted(set(want) - set(params))
    if missing:
        raise InceptionError(f"{not_this_net}: {len(missing)} of {len(want)} parameters missing "
                             f"(first: {missing[0]}){hint}")
    bad = [n for n in want if tuple(params[n].shape) != want[n]]
    if bad:
        raise InceptionError(f"{source}: {bad[0]} has shape {tuple(params[bad[0]].shape)}, expected {want[bad[0]]}")
    return list(want)


def load_inception(path):
    """(FIDInceptionV3 in eval mode, sha256) from a converted checkpoint; InceptionError with
    one line when the file is missing, unreadable or holds another network."""
    path = os.path.expanduser(str(path))
    if not os.path.isfile(path):
        raise InceptionError(f"InceptionV3 checkpoint not found: {path} (convert pytorch-fid's weights: "
                             f"python -m ddpm_ms.eval.inception convert --pth pt_inception-2015-12-05-6726825d.pth "
                             f"--out {path})")
    try:
        params = ms.load_checkpoint(path)
    except Exception as e:  # noqa: BLE001 -- MindSpore raises ValueError/RuntimeError for bad files
        raise InceptionError(f"cannot read {path} as a MindSpore checkpoint: "
                             f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    net = FIDInceptionV3()
    want = _check_params(net, params, f"{path} is not an FID InceptionV3 checkpoint", path,
                         "; convert it with python -m ddpm_ms.eval.inception convert")
    ms.load_param_into_net(net, {n: params[n] for n in want})
    net.set_train(False)
    from .feature_net import sha256_file
    return net, sha256_file(path)


def inception_features(net, images, batch_size=50):
    """pool3 features (N, 2048) float64 of uint8 images (N, H, W, C), C = 1 (repeated) or 3."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] not in (1, 3) or images.dtype != np.uint8:
        raise InceptionError(f"need uint8 images (N, H, W, 1 or 3), got {images.dtype} {images.shape}")
    out = []
    for i in range(0, len(images), batch_size):
        x = images[i:i + batch_size].astype(np.float32).transpose(0, 3, 1, 2) / 255.0
        if x.shape[1] == 1:
            x = np.repeat(x, 3, axis=1)
        out.append(net(ms.Tensor(x)).asnumpy())
    return np.concatenate(out, 0).astype(np.float64)


def convert_state_dict(state):
    """pytorch-fid / torchvision Inception3 state dict (name -> array) -> {MindSpore name:
    float32 array}. Drops the classifier (``fc``), the auxiliary head and BN step counters."""
    out = {}
    for name, value in state.items():
        head = name.split(".")[0]
        if head in ("fc", "AuxLogits") or name.endswith("num_batches_tracked"):
            continue
        parts = name.split(".")
        if len(parts) >= 2 and parts[-2] == "bn":
            parts[-1] = _BN_RENAME.get(parts[-1], parts[-1])
        out[".".join(parts)] = np.asarray(value, dtype=np.float32)
    return out


def write_checkpoint(arrays, out, source="state dict"):
    """Check converted ``arrays`` against the network and write them to ``out`` atomically
    (temporary file, then rename)."""
    want = _check_params(FIDInceptionV3(), arrays, f"{source} is not an Inception3 state dict", source)
    from ..checkpoint import save_atomic
    return save_atomic([{"name": n, "data": ms.Tensor(np.asarray(arrays[n], np.float32))} for n in want], out)


def convert_pth(pth, out):
    """Convert pytorch-fid's ``.pth`` to a MindSpore checkpoint at ``out``."""
    try:
        import torch
    except ImportError:
        raise InceptionError("converting a .pth needs PyTorch once: pip install torch (CPU build is enough)") from None
    if not os.path.isfile(pth):
        raise InceptionError(f"not found: {pth}")
    try:
        state = torch.load(pth, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise InceptionError(f"cannot read {pth} with torch.load: {str(e).splitlines()[0]}") from None
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    arrays = convert_state_dict({k: v.detach().cpu().numpy() for k, v in state.items()})
    return write_checkpoint(arrays, out, source=pth)


def main(argv=None):
    from ..cpu_env import apply_cpu_env
    apply_cpu_env(verbose=False)
    p = argparse.ArgumentParser(description="FID InceptionV3 weights for ddpm_ms.eval.evaluate")
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("convert", help="pytorch-fid's pt_inception .pth -> MindSpore .ckpt (needs torch)")
    c.add_argument("--pth", required=True)
    c.add_argument("--out", required=True)
    args = p.parse_args(argv)
    try:
        out = convert_pth(args.pth, args.out)
        _, digest = load_inception(out)
    except InceptionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out} (sha256 {digest})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

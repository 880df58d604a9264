"""Convolutions computed as matrix products, and the switch that chooses them.

MindSpore 2.10's CPU convolutions are slow: its oneDNN runs plain-NCHW fp32 convs either with
im2col + GEMM capped at AVX2 (``cpu_env``) or, with AVX-512 allowed, with a reference kernel
that is 20-50x slower still; its depthwise and transposed convs are slower again in backward.
Written as ``unfold`` (im2col) + batched matmul, the same convolution trains 2-9x faster on
CPU, and faster still once no conv is left on oneDNN's conv kernels, because the matmuls may
then use AVX-512 (BENCHMARKS.md, "Convolutions as matmuls").

``MatmulConv2d`` and ``MatmulConvTranspose2d`` subclass ``nn.Conv2d`` / ``nn.Conv2dTranspose``:
same parameters (names ``weight`` / ``bias``, shapes, initialisers), only ``construct`` differs.
So a checkpoint trained with one implementation loads into the other, ``isinstance`` checks
(mixed precision, FLOP counts) see a conv, and the outputs agree with the native conv to float
rounding (tests/test_convs.py).

The switch ``conv_impl``: ``native`` (MindSpore's kernels), ``matmul`` (this module), ``auto``
(matmul on CPU; native on Ascend and GPU, whose vendor conv kernels are the fast path), is
resolved by ``runtime.resolve_conv_impl``, which imports no MindSpore: the CPU settings must
know the choice before MindSpore loads (``cpu_env.apply_cpu_env(matmul_convs=...)``).
"""
import os

import mindspore as ms
from mindspore import nn, ops

from .cpu_env import onednn_convs_slow

# How the unfolded columns meet the weight (``matmul_form``): "batched" broadcasts the weight
# over the batch, one BatchMatMul of B small products [C_out, K] @ [K, L]; "gemm" moves the batch
# next to the positions, one GEMM [C_out, K] @ [K, B*L], at the cost of two transposes and a
# second copy of the columns; its weight gradient is one GEMM too, not B products and a ReduceSum
# over the batch. "mixed" takes "gemm" where L, the output positions, is at most GEMM_MAX_L (the
# deepest, smallest feature maps, where B small products are slowest) and "batched" elsewhere.
MATMUL_FORMS = ("batched", "gemm", "mixed")
FORM_VAR = "DDPM_MS_MATMUL_FORM"
GEMM_MAX_L = 64          # 8x8 positions: the 7x7 maps of a 28x28 U-Net, the 8x8 maps of a 32x32 one


def matmul_form():
    """The form measured faster on this CPU (BENCHMARKS.md, "Matmul forms on an AVX2-only CPU").

    * AVX-512 matmuls (oneDNN uncapped on an AVX-512 CPU, what matmul training chooses there):
      "batched" (89 ms against 158 ms for one GEMM, 3x3 56 -> 56 at 28x28, batch 32);
    * otherwise (AVX2-only CPUs, or a capped oneDNN): "mixed", 1.20x the ResNet U-Net's
      training step over "batched" for 0.5 GB more; "gemm" everywhere was slower than "mixed"
      and needed twice the memory of "batched".

    ``DDPM_MS_MATMUL_FORM=batched|gemm|mixed`` overrides it (benchmarks); read when a cell is built.
    """
    form = os.environ.get(FORM_VAR, "")
    if form:
        if form not in MATMUL_FORMS:
            raise ValueError(f"{FORM_VAR} must be one of {', '.join(MATMUL_FORMS)}, got {form!r}")
        return form
    return "batched" if onednn_convs_slow() else "mixed"


def _conv_matmul(weight, cols, form):
    """weight [C_out, K] times cols [B, K, L] for every batch row -> [B, C_out, L]."""
    b, k_flat, l_out = cols.shape
    c_out = weight.shape[0]
    if form == "gemm" or (form == "mixed" and l_out <= GEMM_MAX_L):
        y = ops.matmul(weight, cols.transpose(1, 0, 2).reshape(k_flat, b * l_out))   # [C_out, B*L]
        return y.reshape(c_out, b, l_out).transpose(1, 0, 2)
    return ops.bmm(ops.broadcast_to(weight.reshape(1, c_out, k_flat), (b, c_out, k_flat)), cols)


def _geometry(cell):
    """(kh, kw, sh, sw, ph, pw) of a conv cell; ValueError unless padding is symmetric."""
    pads = (cell.padding,) * 4 if isinstance(cell.padding, int) else tuple(cell.padding)
    top, bottom, left, right = pads
    if top != bottom or left != right:
        raise ValueError(f"{type(cell).__name__} needs symmetric padding, got {cell.padding}")
    kh, kw = cell.kernel_size
    sh, sw = cell.stride[-2:] if len(cell.stride) == 4 else cell.stride
    return kh, kw, sh, sw, top, left


def _add_bias(cell, y):
    """y + bias over the channel axis; BiasAdd's gradient is about 2x a broadcast add's ReduceSum."""
    return ops.bias_add(y, cell.bias.astype(y.dtype)) if cell.has_bias else y


class MatmulConv2d(nn.Conv2d):
    """nn.Conv2d (pad_mode 'pad', dilation 1, any group) as unfold + batched matmul.

    x [B, C_in, H, W] -> [B, C_out, H_out, W_out], H_out = (H + pad_t + pad_b - k) // stride + 1.

    * 1x1, stride 1, no padding: a plain matmul over the flattened positions (no unfold).
    * group 1: cols = unfold(x) [B, C_in*k*k, L] (channel-major, the weight's flat order);
      y = W [C_out, C_in*k*k] @ cols in the ``matmul_form`` measured faster on this CPU: the
      weight broadcast over the batch (one BatchMatMul), or one GEMM over B*L.
    * depthwise (g = C_in = C_out, stride 1, "same" padding; ConvNeXt's 7x7): a full unfold
      would copy the input k*k = 49 times for a conv of almost no FLOPs, so the work is split
      by kernel row and column instead. cols = unfold(x, (kh, 1)) [B, C, kh, L] (x shifted by each kernel row);
      P = W' [C, kw, kh] @ cols [B, C, kw, L], where P_j sums the rows' taps of kernel column
      j; then ``fold`` with a (1, kw) kernel adds each P_j into the output shifted by column j.
      W' is W [C, kh, kw] transposed, its columns reversed, because fold writes column l of
      the block at offset j to w = l + j - pad (a scatter), while the conv gathers from
      w + j - pad. Two kh- and kw-fold copies instead of kh*kw: 4-5x faster (BENCHMARKS.md).
    * other groups g > 1: cols viewed as [B, g, C_in/g*k*k, L], weight as
      [g, C_out/g, C_in/g*k*k]; one broadcast matmul per group.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.pad_mode != "pad" or tuple(self.dilation) not in ((1, 1), (1, 1, 1, 1)):
            raise ValueError("MatmulConv2d supports pad_mode='pad' and dilation 1 only "
                             f"(got pad_mode={self.pad_mode!r}, dilation={self.dilation})")
        if self.data_format != "NCHW":
            raise ValueError("MatmulConv2d supports data_format NCHW only")
        self.form = matmul_form()
        self.kh, self.kw, self.sh, self.sw, self.ph, self.pw = _geometry(self)
        self.pointwise = (self.kh, self.kw, self.sh, self.sw, self.ph, self.pw) == (1, 1, 1, 1, 0, 0)
        self.k_flat = (self.in_channels // self.group) * self.kh * self.kw
        # the row/column split below needs stride 1 and "same" padding (2 * pad = k - 1)
        self.depthwise = (self.group == self.in_channels == self.out_channels and self.group > 1
                          and (self.sh, self.sw) == (1, 1) and 2 * self.ph == self.kh - 1
                          and 2 * self.pw == self.kw - 1)

    def construct(self, x):
        if self.depthwise:
            return self._depthwise(x)
        b, _, h, w = x.shape
        h_out = (h + 2 * self.ph - self.kh) // self.sh + 1
        w_out = (w + 2 * self.pw - self.kw) // self.sw + 1
        if self.pointwise:
            cols = x.reshape(b, self.in_channels, h * w)
        else:
            cols = ops.unfold(x, (self.kh, self.kw), dilation=1, padding=(self.ph, self.pw),
                              stride=(self.sh, self.sw))                       # [B, C_in*k*k, L]
        weight = self.weight.astype(x.dtype)
        if self.group == 1:
            y = _conv_matmul(weight.reshape(self.out_channels, self.k_flat), cols, self.form)   # [B, C_out, L]
        else:
            g = self.group
            cols = cols.reshape(b, g, self.k_flat, h_out * w_out)
            y = ops.matmul(weight.reshape(g, self.out_channels // g, self.k_flat), cols)
        y = y.reshape(b, self.out_channels, h_out, w_out)
        return _add_bias(self, y)

    def _depthwise(self, x):
        b, c, h, w = x.shape                        # "same" padding: the output is [B, C, H, W]
        rows = ops.unfold(x, (self.kh, 1), dilation=1, padding=(self.ph, 0), stride=1)   # [B, C*kh, H*W]
        rows = rows.reshape(b, c, self.kh, h * w)
        weight = self.weight.astype(x.dtype).reshape(c, self.kh, self.kw)
        weight = ops.flip(weight, (2,)).transpose(0, 2, 1)                              # [C, kw (rev), kh]
        cols = ops.matmul(weight, rows)                                                  # [B, C, kw, H*W]
        y = ops.fold(cols.reshape(b, c * self.kw, h * w), ms.Tensor((h, w), ms.int32),
                     (1, self.kw), dilation=1, padding=(0, self.pw), stride=1)
        return _add_bias(self, y)


class MatmulConvTranspose2d(nn.Conv2dTranspose):
    """nn.Conv2dTranspose (pad_mode 'pad', group 1, dilation 1) as matmul + fold (col2im).

    x [B, C_in, H, W] -> [B, C_out, (H-1)*s - 2p + k, ...]. The transposed conv is the adjoint
    of a conv: cols = W^T [C_out*k*k, C_in] @ x [B, C_in, H*W], then ``fold`` adds every
    column into the output window it came from. Same FLOPs as the native kernel.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.pad_mode != "pad" or self.group != 1 or tuple(self.dilation) not in ((1, 1), (1, 1, 1, 1)):
            raise ValueError("MatmulConvTranspose2d supports pad_mode='pad', group 1 and dilation 1 only")
        if self.output_padding not in (0, (0, 0)):
            raise ValueError("MatmulConvTranspose2d does not support output_padding")
        self.kh, self.kw, self.sh, self.sw, self.ph, self.pw = _geometry(self)
        self.rows = self.out_channels * self.kh * self.kw
        self.form = matmul_form()

    def construct(self, x):
        b, _, h, w = x.shape
        h_out = (h - 1) * self.sh - 2 * self.ph + self.kh
        w_out = (w - 1) * self.sw - 2 * self.pw + self.kw
        weight = self.weight.astype(x.dtype).reshape(self.in_channels, self.rows)
        cols = _conv_matmul(weight.T, x.reshape(b, self.in_channels, h * w), self.form)  # [B, C_out*k*k, H*W]
        y = ops.fold(cols, ms.Tensor((h_out, w_out), ms.int32), (self.kh, self.kw), dilation=1,
                     padding=(self.ph, self.pw), stride=(self.sh, self.sw))
        return _add_bias(self, y)

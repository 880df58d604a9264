"""U-Net noise predictor eps_theta(x_t, t) of the MindSpore "Diffusion扩散模型" tutorial.

The architecture follows the tutorial / annotated-diffusion U-Net (Ho et al. 2020 with ConvNeXt
blocks and linear attention). Differences from a literal MindSpore port of the tutorial:

* every convolution has a bias and explicit padding (MindSpore defaults to ``pad_mode='same'``
  and no bias); the qkv projections are bias-free by design;
* GELU is the exact (erf) one; MindSpore's ``nn.GELU()`` defaults to the tanh approximation;
* weights and biases are initialised like PyTorch's defaults (kaiming_uniform(a=sqrt(5)) and
  U(-1/sqrt(fan_in), 1/sqrt(fan_in))), stated explicitly so older MindSpore releases agree;
* parameters are named by their cell path (``downs.0.block1.ds_conv.weight``), never by hand.

Shapes: ``x`` is float [B, C, H, W], ``t`` is int32 [B] in [0, T-1]; the output has x's shape.
Skip connections as in the tutorial: each down stage saves one feature map (after its
attention, before downsampling); the up stages concatenate the saved maps of the deepest
stages, last saved first. The first stage's map (full resolution) is therefore not used.
"""
import math
from collections.abc import Mapping

import numpy as np
import mindspore as ms
from mindspore import nn, ops
from mindspore.common.initializer import HeUniform, Uniform

from .convs import MatmulConv2d, MatmulConvTranspose2d
from .runtime import current_device_target, resolve_conv_impl

UNET_KEYS = ("dim", "init_dim", "out_dim", "dim_mults", "channels", "use_convnext", "convnext_mult",
             "resnet_block_groups", "attn_heads", "attn_head_dim", "dropout", "image_size")
# every config key that changes the network of either family (unet_family: tutorial | lucid)
ARCH_KEYS = ("unet_family",) + UNET_KEYS + ("sinusoidal_theta",)


# ----------------------------------------------------------------------------- layers
def _bias_init(fan_in):
    return Uniform(1.0 / math.sqrt(fan_in)) if fan_in > 0 else "zeros"


def conv2d(c_in, c_out, kernel, stride=1, padding=0, group=1, has_bias=True, impl="native"):
    """nn.Conv2d with PyTorch's padding, bias and default initialisation.

    impl: 'native' (MindSpore's conv kernel) or 'matmul' (``convs.MatmulConv2d``: same
    parameters, unfold + matmul; the fast path on CPU)."""
    fan_in = (c_in // group) * kernel * kernel
    cls = MatmulConv2d if impl == "matmul" else nn.Conv2d
    return cls(c_in, c_out, kernel, stride=stride, pad_mode="pad", padding=padding, group=group,
               has_bias=has_bias, weight_init=HeUniform(math.sqrt(5)),
               bias_init=_bias_init(fan_in) if has_bias else None)


def conv_transpose2d(c_in, c_out, kernel, stride, padding, impl="native"):
    """nn.Conv2dTranspose like torch's ConvTranspose2d; H_out = (H-1)*stride - 2*padding + kernel.

    The weight is [c_in, c_out, k, k], so fan_in is c_out*k*k, as in PyTorch. impl as in conv2d.
    """
    cls = MatmulConvTranspose2d if impl == "matmul" else nn.Conv2dTranspose
    return cls(c_in, c_out, kernel, stride=stride, pad_mode="pad", padding=padding,
               has_bias=True, weight_init=HeUniform(math.sqrt(5)),
               bias_init=_bias_init(c_out * kernel * kernel))


def dense(c_in, c_out):
    """nn.Dense with PyTorch's default initialisation."""
    return nn.Dense(c_in, c_out, weight_init=HeUniform(math.sqrt(5)), bias_init=_bias_init(c_in))


def gelu():
    """Exact GELU, x * Phi(x) (MindSpore's default is the tanh approximation)."""
    return nn.GELU(approximate=False)


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 whatever the input dtype; returns the input dtype.

    [B, C, H, W] -> [B, C, H, W]. Mixed precision (``set_compute_dtype``) leaves these cells
    in float32: MindSpore's O2 lists protect BatchNorm/LayerNorm only.
    """

    def construct(self, x):
        y = ops.group_norm(x.astype(ms.float32), self.num_groups, self.gamma, self.beta, self.eps)
        return y.astype(x.dtype)


def sinusoidal_frequencies(dim):
    """Frequencies exp(-i * log(10000) / (dim/2 - 1)), i = 0..dim/2-1, float64 numpy [dim/2]."""
    half = dim // 2
    return np.exp(-math.log(10000.0) / (half - 1) * np.arange(half, dtype=np.float64))


class SinusoidalPosEmb(nn.Cell):
    """Timestep embedding of annotated-diffusion: t [B] (int or float) -> float32 [B, dim].

    emb[:, :dim/2] = sin(t * f), emb[:, dim/2:] = cos(t * f), f = ``sinusoidal_frequencies(dim)``.
    Always computed in float32.
    """

    def __init__(self, dim):
        super().__init__()
        if dim % 2 or dim < 4:
            raise ValueError(f"time embedding dim must be even and >= 4, got {dim}")
        self.dim = dim
        self.freqs = ms.Tensor(sinusoidal_frequencies(dim).astype(np.float32).reshape(1, -1))

    def construct(self, t):
        args = t.astype(ms.float32).reshape(-1, 1) * self.freqs
        return ops.concat((ops.sin(args), ops.cos(args)), axis=1)


def _as_4d(v):
    """[B, C] -> [B, C, 1, 1] for broadcasting over H, W."""
    return v.reshape(v.shape[0], v.shape[1], 1, 1)


# ----------------------------------------------------------------------------- blocks
class ConvNextBlock(nn.Cell):
    """ConvNeXt block (Liu et al. 2022) with additive time conditioning.

    x [B, c_in, H, W], t_emb [B, time_dim] or None -> [B, c_out, H, W]:
    h = dwconv7x7(x) + Dense(GELU(t_emb));
    out = conv3x3(GN(GELU(conv3x3(GN(h))))) + res_conv(x), the inner width c_out * mult.
    """

    def __init__(self, c_in, c_out, time_dim=None, mult=2, norm=True, dropout=0.0, conv_impl="native"):
        super().__init__()
        self.mlp = nn.SequentialCell([gelu(), dense(time_dim, c_in)]) if time_dim else None
        self.ds_conv = conv2d(c_in, c_in, 7, padding=3, group=c_in, impl=conv_impl)
        layers = [GroupNorm32(1, c_in)] if norm else []
        layers += [conv2d(c_in, c_out * mult, 3, padding=1, impl=conv_impl), gelu()]
        if dropout > 0:
            layers.append(nn.Dropout(p=dropout))
        layers += [GroupNorm32(1, c_out * mult), conv2d(c_out * mult, c_out, 3, padding=1, impl=conv_impl)]
        self.net = nn.SequentialCell(layers)
        self.res_conv = conv2d(c_in, c_out, 1, impl=conv_impl) if c_in != c_out else nn.Identity()

    def construct(self, x, t_emb=None):
        h = self.ds_conv(x)
        if self.mlp is not None and t_emb is not None:
            h = h + _as_4d(self.mlp(t_emb))
        return self.net(h) + self.res_conv(x)


class ConvNormAct(nn.Cell):
    """conv3x3 -> GroupNorm -> optional x*(scale+1)+shift -> SiLU; [B, c_in, H, W] -> [B, c_out, H, W]."""

    def __init__(self, c_in, c_out, groups=8, dropout=0.0, conv_impl="native"):
        super().__init__()
        self.dropout = nn.Dropout(p=dropout) if dropout > 0 else nn.Identity()
        self.proj = conv2d(c_in, c_out, 3, padding=1, impl=conv_impl)
        self.norm = GroupNorm32(groups, c_out)
        self.act = nn.SiLU()

    def construct(self, x, scale=None, shift=None):
        h = self.norm(self.proj(self.dropout(x)))
        if scale is not None:
            h = h * (scale + 1) + shift
        return self.act(h)


class ResnetBlock(nn.Cell):
    """ResNet block with time scale-shift (FiLM) conditioning, as in annotated-diffusion.

    x [B, c_in, H, W], t_emb [B, time_dim] or None -> [B, c_out, H, W].
    Dropout (if any) sits before the second convolution, as in improved-diffusion.
    """

    def __init__(self, c_in, c_out, time_dim=None, groups=8, dropout=0.0, conv_impl="native"):
        super().__init__()
        self.c_out = c_out
        self.mlp = nn.SequentialCell([nn.SiLU(), dense(time_dim, 2 * c_out)]) if time_dim else None
        self.block1 = ConvNormAct(c_in, c_out, groups, conv_impl=conv_impl)
        self.block2 = ConvNormAct(c_out, c_out, groups, dropout, conv_impl=conv_impl)
        self.res_conv = conv2d(c_in, c_out, 1, impl=conv_impl) if c_in != c_out else nn.Identity()

    def construct(self, x, t_emb=None):
        if self.mlp is not None and t_emb is not None:
            scale, shift = ops.split(_as_4d(self.mlp(t_emb)), self.c_out, axis=1)
            h = self.block1(x, scale, shift)
        else:
            h = self.block1(x)
        return self.block2(h) + self.res_conv(x)


# ----------------------------------------------------------------------------- attention
class _QKV(nn.Cell):
    """Shared part of the attentions: bias-free 1x1 qkv projection split into heads."""

    def __init__(self, dim, heads, head_dim, conv_impl="native"):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.hidden = heads * head_dim
        self.scale = head_dim ** -0.5
        self.to_qkv = conv2d(dim, 3 * self.hidden, 1, has_bias=False, impl=conv_impl)

    def _split(self, x):
        """[B, dim, H, W] -> q, k, v each [B*heads, head_dim, H*W] (channel = head*head_dim + d)."""
        b, _, h, w = x.shape
        # One Split op, not three strided slices: MindSpore 2.10's CPU StridedSlice (and its
        # gradient) was ~5x slower for this (65 vs 12 ms fwd+bwd, batch 16, 28x28).
        q, k, v = ops.split(self.to_qkv(x), self.hidden, axis=1)
        shape = (b * self.heads, self.head_dim, h * w)
        return q.reshape(shape), k.reshape(shape), v.reshape(shape)


class SoftmaxAttend(nn.Cell):
    """Softmax attention of one head per batch row: q [BH, d, n], k and v [BH, d, m] -> [BH, d, n],
    out = v softmax(q^T k * scale)^T (softmax over the m keys, in float32). Transposes are folded
    into the matmuls (no Transpose ops in forward or backward). Shared by both U-Net families."""

    def __init__(self, scale):
        super().__init__()
        self.scale = scale
        self.softmax = Softmax()
        self.bmm_tn = ops.BatchMatMul(transpose_a=True)
        self.bmm_nt = ops.BatchMatMul(transpose_b=True)

    def construct(self, q, k, v):
        attn = self.softmax(self.bmm_tn(q * self.scale, k)).astype(v.dtype)   # q^T k: [BH, n, m]
        return self.bmm_nt(v, attn)                                           # (attn v^T)^T: [BH, d, n]


class Attention(_QKV):
    """Multi-head softmax attention over the H*W positions; [B, dim, H, W] -> same.

    out = softmax(q^T k * scale) v per head; the softmax runs in float32.
    """

    def __init__(self, dim, heads=4, head_dim=32, conv_impl="native"):
        super().__init__(dim, heads, head_dim, conv_impl)
        self.to_out = conv2d(self.hidden, dim, 1, impl=conv_impl)
        self.attend = SoftmaxAttend(self.scale)

    def construct(self, x):
        b, _, h, w = x.shape
        q, k, v = self._split(x)
        return self.to_out(self.attend(q, k, v).reshape(b, self.hidden, h, w))


class LinearAttention(_QKV):
    """Linear attention (Shen et al. 2018); [B, dim, H, W] -> same, cost linear in H*W.

    q softmaxed over the channel axis, k over positions; context = k v^T [d, e];
    out = context^T q; then 1x1 conv and GroupNorm(1).
    """

    def __init__(self, dim, heads=4, head_dim=32, conv_impl="native"):
        super().__init__(dim, heads, head_dim, conv_impl)
        self.to_out = nn.SequentialCell([conv2d(self.hidden, dim, 1, impl=conv_impl), GroupNorm32(1, dim)])
        self.softmax_q, self.softmax_k = Softmax(), Softmax()
        self.bmm_nt = ops.BatchMatMul(transpose_b=True)
        self.bmm_tt = ops.BatchMatMul(transpose_a=True, transpose_b=True)

    def construct(self, x):
        b, _, h, w = x.shape
        q, k, v = self._split(x)
        # softmax over d as a last-axis softmax of q^T: MindSpore's CPU softmax over a middle
        # axis was ~2x slower than transpose + last-axis softmax (fwd+bwd)
        q_t = self.softmax_q(q.transpose(0, 2, 1)) * self.scale                 # [BH, n, d], float32
        k = self.softmax_k(k)
        q_t, k = q_t.astype(v.dtype), k.astype(v.dtype)
        context = self.bmm_nt(k, v)                                     # k v^T: [BH, d, e]
        out = self.bmm_tt(context, q_t)                                 # context^T q: [BH, e, n]
        return self.to_out(out.reshape(b, self.hidden, h, w))


class Softmax(nn.Cell):
    """Softmax over the last axis in float32, with a hand-written backward.

    dx = y * (dy - sum(dy * y, -1)); the sum runs as a matmul with a ones vector. MindSpore's
    own softmax gradient expands into a ReduceSum that is about 2x slower on CPU for these
    shapes ([B*heads, n, 32] and [B*heads, 32, n]); the values are the same.
    """

    def construct(self, x):
        return ops.softmax(x.astype(ms.float32), axis=-1)

    def bprop(self, x, out, dout):
        d = out.shape[-1]
        ones = ops.ones((d, 1), out.dtype)
        s = ops.matmul((dout * out).reshape(-1, d), ones).reshape(out.shape[:-1] + (1,))
        return ((out * (dout - s)).astype(x.dtype),)


class PreNorm(nn.Cell):
    """fn(GroupNorm(1, dim)(x))."""

    def __init__(self, dim, fn):
        super().__init__()
        self.norm = GroupNorm32(1, dim)
        self.fn = fn

    def construct(self, x):
        return self.fn(self.norm(x))


class Residual(nn.Cell):
    """x + fn(x)."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def construct(self, x):
        return x + self.fn(x)


# ----------------------------------------------------------------------------- stages
class DownStage(nn.Cell):
    """block(c_in, c_out), block(c_out, c_out), linear attention, then 4x4/2 conv or identity.

    x [B, c_in, H, W] -> (skip [B, c_out, H, W], x [B, c_out, H/2, W/2] or [.., H, W]).
    """

    def __init__(self, c_in, c_out, make_block, attn, downsample, conv_impl="native"):
        super().__init__()
        self.block1 = make_block(c_in, c_out)
        self.block2 = make_block(c_out, c_out)
        self.attn = Residual(PreNorm(c_out, LinearAttention(c_out, *attn, conv_impl=conv_impl)))
        self.downsample = (conv2d(c_out, c_out, 4, stride=2, padding=1, impl=conv_impl) if downsample
                           else nn.Identity())

    def construct(self, x, t_emb):
        x = self.block1(x, t_emb)
        x = self.block2(x, t_emb)
        skip = self.attn(x)
        return skip, self.downsample(skip)


class MidStage(nn.Cell):
    """block, full softmax attention, block at the lowest resolution; [B, c, h, w] -> same."""

    def __init__(self, c, make_block, attn, conv_impl="native"):
        super().__init__()
        self.block1 = make_block(c, c)
        self.attn = Residual(PreNorm(c, Attention(c, *attn, conv_impl=conv_impl)))
        self.block2 = make_block(c, c)

    def construct(self, x, t_emb):
        return self.block2(self.attn(self.block1(x, t_emb)), t_emb)


class UpStage(nn.Cell):
    """concat(x, skip), block(2*c_out, c_in), block(c_in, c_in), linear attention, 2x upsample.

    x and skip [B, c_out, H, W] -> [B, c_in, 2H, 2W] (or [.., H, W] without upsampling).
    """

    def __init__(self, c_in, c_out, make_block, attn, upsample, conv_impl="native"):
        super().__init__()
        self.block1 = make_block(2 * c_out, c_in)
        self.block2 = make_block(c_in, c_in)
        self.attn = Residual(PreNorm(c_in, LinearAttention(c_in, *attn, conv_impl=conv_impl)))
        self.upsample = conv_transpose2d(c_in, c_in, 4, 2, 1, impl=conv_impl) if upsample else nn.Identity()

    def construct(self, x, skip, t_emb):
        x = ops.concat((x, skip), axis=1)
        x = self.block1(x, t_emb)
        x = self.block2(x, t_emb)
        return self.upsample(self.attn(x))


# ----------------------------------------------------------------------------- U-Net
def valid_image_sizes(n_down, limit=256):
    """Sizes up to ``limit`` that n_down halvings divide exactly."""
    step = 2 ** n_down
    return list(range(step, limit + 1, step))


class UNet(nn.Cell):
    """eps_theta(x_t, t): x [B, channels, H, W] float, t [B] int32 -> [B, out_dim, H, W] float32.

    Stage widths are dim * dim_mults; H and W must be divisible by 2**(len(dim_mults)-1)
    (checked here when ``image_size`` is given). ``self.arch`` holds the architecture in
    ``UNET_KEYS`` form (0 for automatic sizes), so ``build_unet(net.arch)`` rebuilds it.
    """

    def __init__(self, dim, init_dim=None, out_dim=None, dim_mults=(1, 2, 4), channels=3,
                 use_convnext=True, convnext_mult=2, resnet_block_groups=8, attn_heads=4,
                 attn_head_dim=32, dropout=0.0, image_size=None, conv_impl="native"):
        super().__init__()
        if conv_impl not in ("native", "matmul"):
            raise ValueError(f"UNet conv_impl must be 'native' or 'matmul' (resolve 'auto' with "
                             f"convs.resolve_conv_impl first), got {conv_impl!r}")
        self.conv_impl = conv_impl
        dim_mults = tuple(int(m) for m in dim_mults)
        if not dim_mults:
            raise ValueError("dim_mults must not be empty")
        n_down = len(dim_mults) - 1
        if image_size:
            sizes = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
            if any(s % 2 ** n_down for s in sizes):
                raise ValueError(
                    f"image_size {image_size} cannot be halved {n_down} times (dim_mults={dim_mults}): "
                    f"it must be a multiple of {2 ** n_down}, e.g. {valid_image_sizes(n_down, 64)}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.arch = {"dim": dim, "init_dim": init_dim or 0, "out_dim": out_dim or 0,
                     "dim_mults": list(dim_mults), "channels": channels, "use_convnext": bool(use_convnext),
                     "convnext_mult": convnext_mult, "resnet_block_groups": resnet_block_groups,
                     "attn_heads": attn_heads, "attn_head_dim": attn_head_dim, "dropout": float(dropout),
                     "image_size": image_size or 0}
        init_dim = init_dim or dim // 3 * 2
        out_dim = out_dim or channels
        widths = [dim * m for m in dim_mults]
        if not use_convnext and any(w % resnet_block_groups for w in [dim] + widths):
            raise ValueError(f"ResNet blocks need every width {sorted(set([dim] + widths))} divisible by "
                             f"resnet_block_groups={resnet_block_groups}")
        self.channels, self.out_dim = channels, out_dim
        time_dim = 4 * dim
        attn = (attn_heads, attn_head_dim)

        def make_block(c_in, c_out, with_time=True):
            t_dim = time_dim if with_time else None
            if use_convnext:
                return ConvNextBlock(c_in, c_out, t_dim, mult=convnext_mult, dropout=dropout, conv_impl=conv_impl)
            return ResnetBlock(c_in, c_out, t_dim, groups=resnet_block_groups, dropout=dropout,
                               conv_impl=conv_impl)

        self.time_mlp = nn.SequentialCell([SinusoidalPosEmb(dim), dense(dim, time_dim), gelu(),
                                           dense(time_dim, time_dim)])
        self.init_conv = conv2d(channels, init_dim, 7, padding=3, impl=conv_impl)
        dims = [init_dim] + widths
        in_out = list(zip(dims[:-1], dims[1:]))
        self.downs = nn.CellList([DownStage(a, b, make_block, attn, downsample=i < n_down, conv_impl=conv_impl)
                                  for i, (a, b) in enumerate(in_out)])
        self.mid = MidStage(dims[-1], make_block, attn, conv_impl=conv_impl)
        # Mirror of the deeper stages; every up stage doubles the resolution back.
        self.ups = nn.CellList([UpStage(a, b, make_block, attn, upsample=True, conv_impl=conv_impl)
                                for a, b in reversed(in_out[1:])])
        self.final = nn.SequentialCell([make_block(dim, dim, with_time=False),
                                        conv2d(dim, out_dim, 1, impl=conv_impl)])

    def construct(self, x, t):
        x = self.init_conv(x)
        t_emb = self.time_mlp(t)
        # A tuple, not list.pop(): in GRAPH mode MindSpore 2.10 mis-types list.pop() results.
        skips = ()
        for down in self.downs:
            skip, x = down(x, t_emb)
            skips = skips + (skip,)
        x = self.mid(x, t_emb)
        for up in self.ups:
            x = up(x, skips[-1], t_emb)
            skips = skips[:-1]
        return self.final(x).astype(ms.float32)


# ----------------------------------------------------------------------------- helpers
def build_unet(cfg, conv_impl=None, device_target=None):
    """UNet from a dict or object with the ``UNET_KEYS`` fields (0 = automatic for init_dim,
    out_dim and image_size). Missing fields take UNet's defaults; other fields are ignored.
    ``unet_family: lucid`` builds ``unet_lucid.LucidUNet`` from its ``LUCID_KEYS`` instead.

    conv_impl: 'auto' | 'native' | 'matmul'; None takes cfg's ``conv_impl`` (else 'auto').
    'auto' is resolved for ``device_target`` (None: the device MindSpore is set to): matmul
    convolutions on CPU, native ones on Ascend and GPU. The choice is not part of the
    architecture: both give the same parameters, so checkpoints move between them."""
    get = (lambda k: cfg[k] if k in cfg else None) if isinstance(cfg, Mapping) else \
        (lambda k: getattr(cfg, k, None))
    impl = conv_impl or get("conv_impl") or "auto"
    if impl == "auto" and device_target is None:
        device_target = current_device_target()
    impl = resolve_conv_impl(impl, device_target)
    if get("unet_family") == "lucid":
        from .unet_lucid import build_lucid_unet
        return build_lucid_unet(get, impl)
    return UNet(conv_impl=impl, **unet_kwargs(get, UNET_KEYS))


def unet_kwargs(get, keys):
    """{key: get(key)} for the ``keys`` that ``get`` has (not None), with 0 -> None for the
    automatic sizes init_dim, out_dim and image_size; ValueError when 'dim' is missing."""
    kwargs = {k: get(k) for k in keys if get(k) is not None}
    if "dim" not in kwargs:
        raise ValueError("U-Net config needs 'dim'")
    for k in ("init_dim", "out_dim", "image_size"):
        if k in kwargs and not kwargs[k]:
            kwargs[k] = None
    return kwargs


def count_params(net):
    """Number of trainable parameter values."""
    return int(sum(p.size for p in net.trainable_params()))


def model_summary(net):
    """Trainable parameter counts per part (time_mlp, init_conv, downs.i, mid, ups.i, final), one a line."""
    parts = {}
    for name, p in net.parameters_and_names():  # paths relative to net, whatever wraps it
        if not p.requires_grad:
            continue
        names = name.split(".")
        key = ".".join(names[:2]) if names[0] in ("downs", "ups") else names[0]
        parts[key] = parts.get(key, 0) + p.size
    width = max(len(k) for k in parts) + 2
    lines = [f"{k:<{width}}{v:>12,}" for k, v in parts.items()]
    lines.append(f"{'total':<{width}}{sum(parts.values()):>12,}")
    impl = getattr(net, "conv_impl", None)
    if impl:
        how = "unfold + matmul (ddpm_ms.convs)" if impl == "matmul" else "MindSpore's conv kernels"
        lines.append(f"convolutions: {impl} ({how})")
    return "\n".join(lines)


def set_compute_dtype(net, dtype):
    """Run convolutions and Dense layers (and the attention matmuls fed by them) in ``dtype``
    (ms.float16 / ms.bfloat16; ms.float32 undoes it). Parameters stay float32; GroupNorm,
    softmax and the sinusoidal embedding compute in float32; UNet returns float32. Returns net.

    MindSpore 2.10's CPU backend has float16 convolutions but no bfloat16 ones (Ascend has both).
    """
    if dtype not in (ms.float16, ms.bfloat16, ms.float32):
        raise ValueError(f"compute dtype must be float16, bfloat16 or float32, got {dtype}")
    for _, cell in net.cells_and_names():
        if isinstance(cell, (nn.Conv2d, nn.Conv2dTranspose, nn.Dense)):
            cell.to_float(dtype)
    return net

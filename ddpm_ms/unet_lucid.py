"""The U-Net of denoising-diffusion-pytorch 2.3.4 (``denoising_diffusion_pytorch.Unet``), in MindSpore.

The second U-Net family (``unet_family: lucid``; the tutorial U-Net of ``unet.py`` is the
default). Same structure, same defaults, and parameters named like the library's
``state_dict`` keys, so importing its weights is a rename-free copy (``ddpm_ms.convert``):

* ``init_conv``: 7x7 conv to ``init_dim`` (0 = ``dim``); its output ``r`` is kept for the end;
* ``time_mlp``: sinusoidal embedding (``theta``, default 10000) -> Linear(dim, 4 dim) -> GELU
  (exact) -> Linear(4 dim, 4 dim); keys ``time_mlp.1.*``, ``time_mlp.3.*``;
* ``ResnetBlock``: Block(conv3x3 -> RMSNorm -> x (scale + 1) + shift -> SiLU -> dropout) then
  Block without conditioning or dropout, plus a 1x1 ``res_conv`` when the width changes;
* ``LinearAttention`` (every stage but the innermost) and ``Attention`` (innermost stage and
  middle), both with RMSNorm in front and ``num_mem_kv`` = 4 learned memory key/values;
* ``downs.i`` = [block, block, attention, downsample]: pixel-unshuffle + 1x1 conv
  (``downs.i.3.1``), or a 3x3 conv on the last stage (``downs.i.3``);
* ``ups.i`` = [block, block, attention, upsample]: nearest x2 + 3x3 conv (``ups.i.3.1``), or a
  3x3 conv on the last stage (``ups.i.3``); every down block's output is a skip, two per stage;
* ``final_res_block`` on concat(x, r), then the 1x1 ``final_conv``.

RMSNorm is ``F.normalize(x, dim=1) * g * sqrt(C)`` (L2 norm over channels, eps 1e-12).
Not supported (the library's options that change the structure): self-conditioning,
learned variance, learned / random Fourier time embeddings, per-stage ``attn_heads`` /
``attn_dim_head`` / ``full_attn``. ``flash_attn`` is the same maths and needs nothing.

Mixed precision and convolutions as in ``unet.py``: every conv is ``unet.conv2d`` (the
``conv_impl`` switch), ``unet.set_compute_dtype`` casts convs and Dense layers; RMSNorm,
softmax and the time embedding compute in float32; the output is float32.
Shapes: x float [B, C, H, W] with H, W divisible by 2**(len(dim_mults) - 1), t int [B].
"""
import math

import numpy as np
import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops

from .unet import Softmax, SoftmaxAttend, conv2d, dense, gelu, unet_kwargs

LUCID_KEYS = ("dim", "init_dim", "out_dim", "dim_mults", "channels", "attn_heads", "attn_head_dim",
              "dropout", "image_size", "sinusoidal_theta")


def lucid_frequencies(dim, theta=10000.0):
    """float32 [dim/2]: exp(-i log(theta) / (dim/2 - 1)). As in the library's float32 torch code,
    i * -c is rounded to float32 before the exp (the exp itself is rounded once here; torch's may
    differ by one ulp), so the embeddings agree to float32 rounding."""
    half = dim // 2
    c = np.float32(-math.log(theta) / (half - 1))
    return np.exp((np.arange(half, dtype=np.float32) * c).astype(np.float64)).astype(np.float32)


class SinusoidalTimeEmbedding(nn.Cell):
    """t [B] -> float32 [B, dim]: [sin(t f), cos(t f)], f = ``lucid_frequencies(dim, theta)``."""

    def __init__(self, dim, theta=10000.0):
        super().__init__()
        if dim % 2 or dim < 4:
            raise ValueError(f"time embedding dim must be even and >= 4, got {dim}")
        self.freqs = Tensor(lucid_frequencies(dim, theta).reshape(1, -1))

    def construct(self, t):
        args = t.astype(ms.float32).reshape(-1, 1) * self.freqs
        return ops.concat((ops.sin(args), ops.cos(args)), axis=1)


class RMSNorm(nn.Cell):
    """x / max(||x||_2 over C, 1e-12) * g * sqrt(C) in float32; [B, C, H, W] -> same, x's dtype.
    ``g`` [1, C, 1, 1] (ones) is the library's ``norm.g``."""

    def __init__(self, dim):
        super().__init__()
        self.scale = float(dim) ** 0.5
        self.g = Parameter(Tensor(np.ones((1, dim, 1, 1), np.float32)))

    def construct(self, x):
        x32 = x.astype(ms.float32)
        norm = ops.sqrt((x32 * x32).sum(axis=1, keepdims=True))
        y = x32 / ops.maximum(norm, 1e-12) * (self.g * self.scale)
        return y.astype(x.dtype)


def _as_4d(v):
    return v.reshape(v.shape[0], v.shape[1], 1, 1)


class Block(nn.Cell):
    """conv3x3 -> RMSNorm -> optional x (scale + 1) + shift -> SiLU -> dropout."""

    def __init__(self, c_in, c_out, dropout=0.0, conv_impl="native"):
        super().__init__()
        self.proj = conv2d(c_in, c_out, 3, padding=1, impl=conv_impl)
        self.norm = RMSNorm(c_out)
        self.act = nn.SiLU()
        self.dropout = nn.Dropout(p=dropout) if dropout > 0 else nn.Identity()

    def construct(self, x, scale=None, shift=None):
        x = self.norm(self.proj(x))
        if scale is not None:
            x = x * (scale + 1) + shift
        return self.dropout(self.act(x))


class ResnetBlock(nn.Cell):
    """x [B, c_in, H, W], t_emb [B, time_dim] -> [B, c_out, H, W]: block2(block1(x, FiLM(t))) + res(x).
    ``mlp`` = [SiLU, Linear(time_dim, 2 c_out)] gives (scale, shift); dropout in block1 only."""

    def __init__(self, c_in, c_out, time_dim, dropout=0.0, conv_impl="native"):
        super().__init__()
        self.c_out = c_out
        self.mlp = nn.SequentialCell([nn.SiLU(), dense(time_dim, 2 * c_out)])
        self.block1 = Block(c_in, c_out, dropout, conv_impl)
        self.block2 = Block(c_out, c_out, 0.0, conv_impl)
        self.res_conv = conv2d(c_in, c_out, 1, impl=conv_impl) if c_in != c_out else nn.Identity()

    def construct(self, x, t_emb):
        scale, shift = ops.split(_as_4d(self.mlp(t_emb)), self.c_out, axis=1)
        h = self.block2(self.block1(x, scale, shift))
        return h + self.res_conv(x)


class _HeadsQKV(nn.Cell):
    """RMSNorm, bias-free 1x1 qkv conv, split into heads: q, k, v each [B*heads, head_dim, H*W]."""

    def __init__(self, dim, heads, head_dim, conv_impl):
        super().__init__()
        self.heads, self.head_dim, self.hidden = heads, head_dim, heads * head_dim
        self.scale = head_dim ** -0.5
        self.norm = RMSNorm(dim)
        self.to_qkv = conv2d(dim, 3 * self.hidden, 1, has_bias=False, impl=conv_impl)

    def qkv(self, x):
        b, _, h, w = x.shape
        q, k, v = ops.split(self.to_qkv(self.norm(x)), self.hidden, axis=1)
        shape = (b * self.heads, self.head_dim, h * w)
        return q.reshape(shape), k.reshape(shape), v.reshape(shape)

    def memory(self, mem, b, dtype):
        """mem [heads, head_dim, m] -> [B*heads, head_dim, m] in dtype (the same for every image)."""
        m = mem.shape[-1]
        mem = ops.broadcast_to(mem.astype(dtype).reshape(1, self.heads, self.head_dim, m),
                               (b, self.heads, self.head_dim, m))
        return mem.reshape(b * self.heads, self.head_dim, m)


class LinearAttention(_HeadsQKV):
    """Linear attention with memory key/values; [B, dim, H, W] -> same (the residual is outside).

    k, v get the ``num_mem_kv`` memory columns in front (``mem_kv`` [2, heads, head_dim, m]);
    q softmaxed over head_dim and scaled, k softmaxed over positions (memory included);
    context = k v^T [d, e]; out = context^T q; then 1x1 conv (``to_out.0``) and RMSNorm (``to_out.1``).
    """

    def __init__(self, dim, heads=4, head_dim=32, num_mem_kv=4, conv_impl="native"):
        super().__init__(dim, heads, head_dim, conv_impl)
        self.mem_kv = Parameter(Tensor(np.random.standard_normal((2, heads, head_dim, num_mem_kv))
                                       .astype(np.float32)))
        self.to_out = nn.SequentialCell([conv2d(self.hidden, dim, 1, impl=conv_impl), RMSNorm(dim)])
        self.softmax_q, self.softmax_k = Softmax(), Softmax()
        self.bmm_nt = ops.BatchMatMul(transpose_b=True)
        self.bmm_tt = ops.BatchMatMul(transpose_a=True, transpose_b=True)

    def construct(self, x):
        b, _, h, w = x.shape
        q, k, v = self.qkv(x)
        k = ops.concat((self.memory(self.mem_kv[0], b, k.dtype), k), axis=2)     # [BH, d, m + n]
        v = ops.concat((self.memory(self.mem_kv[1], b, v.dtype), v), axis=2)
        q_t = self.softmax_q(q.transpose(0, 2, 1)) * self.scale                  # [BH, n, d], float32
        k = self.softmax_k(k)
        context = self.bmm_nt(k.astype(v.dtype), v)                              # [BH, d, e]
        out = self.bmm_tt(context, q_t.astype(v.dtype))                          # [BH, e, n]
        return self.to_out(out.reshape(b, self.hidden, h, w))


class Attention(_HeadsQKV):
    """Softmax attention with memory key/values; [B, dim, H, W] -> same (the residual is outside).

    ``mem_kv`` [2, heads, m, head_dim] (the library's layout) is put in front of k and v;
    out = softmax(q^T k / sqrt(d)) v per head, softmax in float32; then 1x1 conv ``to_out``.
    """

    def __init__(self, dim, heads=4, head_dim=32, num_mem_kv=4, conv_impl="native"):
        super().__init__(dim, heads, head_dim, conv_impl)
        self.mem_kv = Parameter(Tensor(np.random.standard_normal((2, heads, num_mem_kv, head_dim))
                                       .astype(np.float32)))
        self.to_out = conv2d(self.hidden, dim, 1, impl=conv_impl)
        self.attend = SoftmaxAttend(self.scale)

    def construct(self, x):
        b, _, h, w = x.shape
        q, k, v = self.qkv(x)
        k = ops.concat((self.memory(self.mem_kv[0].transpose(0, 2, 1), b, k.dtype), k), axis=2)  # [BH, d, m + n]
        v = ops.concat((self.memory(self.mem_kv[1].transpose(0, 2, 1), b, v.dtype), v), axis=2)
        return self.to_out(self.attend(q, k, v).reshape(b, self.hidden, h, w))


class PixelUnshuffle(nn.Cell):
    """[B, C, H, W] -> [B, 4C, H/2, W/2], channel c*4 + 2*p1 + p2 (einops 'b c (h p1) (w p2) -> b (c p1 p2) h w')."""

    def construct(self, x):
        b, c, h, w = x.shape
        x = x.reshape(b, c, h // 2, 2, w // 2, 2).transpose(0, 1, 3, 5, 2, 4)
        return x.reshape(b, c * 4, h // 2, w // 2)


class UpsampleNearest(nn.Cell):
    """Nearest-neighbour x2: [B, C, H, W] -> [B, C, 2H, 2W]."""

    def construct(self, x):
        b, c, h, w = x.shape
        x = ops.broadcast_to(x.reshape(b, c, h, 1, w, 1), (b, c, h, 2, w, 2))
        return x.reshape(b, c, 2 * h, 2 * w)


class LucidUNet(nn.Cell):
    """denoising_diffusion_pytorch.Unet (2.3.4) with its defaults: x [B, channels, H, W], t [B] ->
    float32 [B, out_dim, H, W]. Arguments as the library's (``attn_head_dim`` is its
    ``attn_dim_head``, ``theta`` its ``sinusoidal_pos_emb_theta``, ``num_mem_kv`` fixed at 4 there).
    ``self.arch`` holds the settings in ``LUCID_KEYS`` form (0 for automatic sizes)."""

    def __init__(self, dim, init_dim=None, out_dim=None, dim_mults=(1, 2, 4, 8), channels=3,
                 attn_heads=4, attn_head_dim=32, dropout=0.0, image_size=None, theta=10000.0,
                 num_mem_kv=4, conv_impl="native"):
        super().__init__()
        if conv_impl not in ("native", "matmul"):
            raise ValueError(f"LucidUNet conv_impl must be 'native' or 'matmul', got {conv_impl!r}")
        dim_mults = tuple(int(m) for m in dim_mults)
        if not dim_mults:
            raise ValueError("dim_mults must not be empty")
        n_down = len(dim_mults) - 1
        if image_size and image_size % 2 ** n_down:
            raise ValueError(f"image_size {image_size} cannot be halved {n_down} times "
                             f"(dim_mults={dim_mults}): use a multiple of {2 ** n_down}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.conv_impl = conv_impl
        self.arch = {"unet_family": "lucid", "dim": dim, "init_dim": init_dim or 0, "out_dim": out_dim or 0,
                     "dim_mults": list(dim_mults), "channels": channels, "attn_heads": attn_heads,
                     "attn_head_dim": attn_head_dim, "dropout": float(dropout), "image_size": image_size or 0,
                     "sinusoidal_theta": float(theta)}
        init_dim = init_dim or dim
        self.channels, self.out_dim = channels, out_dim or channels
        time_dim = 4 * dim
        attn = dict(heads=attn_heads, head_dim=attn_head_dim, num_mem_kv=num_mem_kv, conv_impl=conv_impl)

        def block(c_in, c_out):
            return ResnetBlock(c_in, c_out, time_dim, dropout, conv_impl)

        self.init_conv = conv2d(channels, init_dim, 7, padding=3, impl=conv_impl)
        self.time_mlp = nn.SequentialCell([SinusoidalTimeEmbedding(dim, theta), dense(dim, time_dim), gelu(),
                                           dense(time_dim, time_dim)])
        dims = [init_dim] + [dim * m for m in dim_mults]
        in_out = list(zip(dims[:-1], dims[1:]))
        downs = []
        for i, (c_in, c_out) in enumerate(in_out):
            last = i == n_down
            att = Attention(c_in, **attn) if last else LinearAttention(c_in, **attn)
            down = (conv2d(c_in, c_out, 3, padding=1, impl=conv_impl) if last else
                    nn.SequentialCell([PixelUnshuffle(), conv2d(4 * c_in, c_out, 1, impl=conv_impl)]))
            downs.append(nn.CellList([block(c_in, c_in), block(c_in, c_in), att, down]))
        self.downs = nn.CellList(downs)
        mid = dims[-1]
        self.mid_block1 = block(mid, mid)
        self.mid_attn = Attention(mid, **attn)
        self.mid_block2 = block(mid, mid)
        ups = []
        for i, (c_in, c_out) in enumerate(reversed(in_out)):
            last = i == n_down
            att = LinearAttention(c_out, **attn) if i > 0 else Attention(c_out, **attn)
            up = (conv2d(c_out, c_in, 3, padding=1, impl=conv_impl) if last else
                  nn.SequentialCell([UpsampleNearest(), conv2d(c_out, c_in, 3, padding=1, impl=conv_impl)]))
            ups.append(nn.CellList([block(c_out + c_in, c_out), block(c_out + c_in, c_out), att, up]))
        self.ups = nn.CellList(ups)
        self.final_res_block = block(2 * init_dim, init_dim)
        self.final_conv = conv2d(init_dim, self.out_dim, 1, impl=conv_impl)

    def construct(self, x, t):
        x = self.init_conv(x)
        r = x
        t_emb = self.time_mlp(t)
        skips = ()  # a tuple, not list.pop(): see unet.UNet
        for stage in self.downs:
            x = stage[0](x, t_emb)
            skips = skips + (x,)
            x = stage[1](x, t_emb)
            x = stage[2](x) + x
            skips = skips + (x,)
            x = stage[3](x)
        x = self.mid_block1(x, t_emb)
        x = self.mid_attn(x) + x
        x = self.mid_block2(x, t_emb)
        for stage in self.ups:
            x = stage[0](ops.concat((x, skips[-1]), axis=1), t_emb)
            x = stage[1](ops.concat((x, skips[-2]), axis=1), t_emb)
            skips = skips[:-2]
            x = stage[2](x) + x
            x = stage[3](x)
        x = self.final_res_block(ops.concat((x, r), axis=1), t_emb)
        return self.final_conv(x).astype(ms.float32)


def build_lucid_unet(get, conv_impl):
    """LucidUNet from a config getter ``get(key) -> value or None`` (``LUCID_KEYS``; 0 = automatic
    for init_dim, out_dim and image_size) and a resolved conv_impl ('native' | 'matmul');
    ``unet.build_unet`` calls it for ``unet_family: lucid``."""
    kwargs = unet_kwargs(get, LUCID_KEYS)
    if "sinusoidal_theta" in kwargs:
        kwargs["theta"] = kwargs.pop("sinusoidal_theta")
    return LucidUNet(conv_impl=conv_impl, **kwargs)

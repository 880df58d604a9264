"""U-Net: shapes, size check, GRAPH == PYNATIVE, gradients, time embedding, MindSpore defaults,
parameter count, mixed precision, summary. Tiny widths so the file runs in well under a minute."""
import math

import numpy as np
import pytest
import mindspore as ms
from mindspore import nn

from ddpm_ms.unet import (UNET_KEYS, GroupNorm32, SinusoidalPosEmb, UNet, build_unet, count_params,
                          model_summary, set_compute_dtype)

TINY = dict(attn_heads=2, attn_head_dim=8)   # attention width 16 instead of 128


def _inputs(b, c, h, seed=0):
    rng = np.random.default_rng(seed)
    x = ms.Tensor(rng.standard_normal((b, c, h, h)).astype(np.float32))
    t = ms.Tensor(rng.integers(0, 1000, size=b).astype(np.int32))
    return x, t


def _erf_gelu(x):
    erf = np.vectorize(math.erf)
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


@pytest.mark.parametrize("size,channels,dim,mults", [
    (28, 1, 8, (1, 2, 4)),        # Fashion-MNIST: 28 -> 14 -> 7 and back
    (32, 3, 8, (1, 2, 4)),
    (64, 3, 8, (1, 2, 4, 8)),
    (128, 3, 4, (1, 2, 4, 8)),
])
def test_output_shape_matches_input(size, channels, dim, mults):
    net = UNet(dim, dim_mults=mults, channels=channels, image_size=size, **TINY)
    x, t = _inputs(2, channels, size)
    y = net(x, t)
    assert y.shape == x.shape
    assert y.dtype == ms.float32
    assert np.isfinite(y.asnumpy()).all()


def test_out_dim_differs_from_channels():
    net = UNet(8, channels=3, out_dim=6, **TINY)
    x, t = _inputs(2, 3, 16)
    assert net(x, t).shape == (2, 6, 16, 16)


def test_bad_image_size_is_a_clear_error():
    with pytest.raises(ValueError, match=r"image_size 30 .*multiple of 4"):
        UNet(8, dim_mults=(1, 2, 4), image_size=30)
    with pytest.raises(ValueError, match=r"multiple of 8"):
        UNet(8, dim_mults=(1, 2, 4, 8), image_size=28)
    UNet(8, dim_mults=(1, 2, 4), image_size=28, **TINY)   # 28 = 4 * 7 is fine


def test_resnet_groups_must_divide_widths():
    with pytest.raises(ValueError, match="resnet_block_groups"):
        UNet(28, use_convnext=False, resnet_block_groups=8)


@pytest.mark.parametrize("use_convnext", [True, False])
def test_graph_mode_matches_pynative(use_convnext):
    ms.set_seed(1)
    net = UNet(8, channels=1, use_convnext=use_convnext, resnet_block_groups=4, **TINY)
    net.set_train(False)
    x, t = _inputs(2, 1, 28)
    y_py = net(x, t).asnumpy()
    ms.set_context(mode=ms.GRAPH_MODE)
    y_graph = net(x, t).asnumpy()
    np.testing.assert_allclose(y_graph, y_py, atol=1e-5, rtol=0)


@pytest.mark.parametrize("use_convnext", [True, False])
def test_gradients_reach_every_parameter(use_convnext):
    ms.set_seed(2)
    net = UNet(8, channels=1, use_convnext=use_convnext, resnet_block_groups=4, **TINY)
    params = net.trainable_params()
    x, t = _inputs(2, 1, 16, seed=3)
    target = ms.Tensor(np.random.default_rng(4).standard_normal((2, 1, 16, 16)).astype(np.float32))

    def loss_fn(x, t):
        return ((net(x, t) - target) ** 2).mean()

    _, grads = ms.value_and_grad(loss_fn, None, params)(x, t)
    assert len(grads) == len(params) > 0
    bad = [p.name for p, g in zip(params, grads)
           if not np.isfinite(g.asnumpy()).all() or not np.any(g.asnumpy())]
    assert not bad, f"zero or non-finite gradients: {bad}"


def test_time_embedding_matches_numpy():
    dim = 16
    t = np.array([0, 1, 7, 250, 999], dtype=np.int32)
    got = SinusoidalPosEmb(dim)(ms.Tensor(t)).asnumpy()
    half = dim // 2
    freqs = np.exp(np.arange(half) * -(math.log(10000) / (half - 1)))
    args = t[:, None].astype(np.float64) * freqs[None, :]
    want = np.concatenate([np.sin(args), np.cos(args)], axis=1)
    assert got.shape == (5, dim) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=2e-4)   # float32 sin/cos of arguments up to 999
    with pytest.raises(ValueError):
        SinusoidalPosEmb(7)


def test_parameter_names_unique_and_from_cell_paths():
    net = UNet(8, channels=1, **TINY)
    names = [p.name for p in net.get_parameters()]
    assert len(names) == len(set(names))
    assert "downs.0.block1.ds_conv.weight" in names
    assert "ups.1.attn.fn.fn.to_out.1.gamma" in names
    assert "mid.attn.fn.fn.to_qkv.weight" in names


def test_convs_have_bias_padding_and_pytorch_init():
    net = UNet(8, channels=1, **TINY)
    n_conv = 0
    for name, cell in net.cells_and_names():
        if not isinstance(cell, (nn.Conv2d, nn.Conv2dTranspose)):
            continue
        n_conv += 1
        assert cell.pad_mode == "pad", name
        w = cell.weight.asnumpy()
        # [out, in/group, k, k]; transposed convs store [in, out, k, k], fan_in = out*k*k as in torch
        fan_in = w.shape[1] * w.shape[2] * w.shape[3]
        bound = 1.0 / math.sqrt(fan_in)                              # kaiming_uniform(a=sqrt(5))
        assert np.abs(w).max() <= bound + 1e-7, name
        assert np.abs(w).max() > 0.5 * bound, name                   # not a tiny normal init
        if name.endswith("to_qkv"):
            assert not cell.has_bias, name
        else:
            assert cell.has_bias, name
            assert np.abs(cell.bias.asnumpy()).max() <= bound + 1e-7, name
    assert n_conv > 20


def test_gelu_is_exact():
    net = UNet(8, channels=1, **TINY)
    gelus = [c for _, c in net.cells_and_names() if isinstance(c, nn.GELU)]
    assert gelus
    x = np.linspace(-4, 4, 81).astype(np.float32)
    exact = _erf_gelu(x.astype(np.float64))
    for g in gelus:
        np.testing.assert_allclose(g(ms.Tensor(x)).asnumpy(), exact, atol=1e-5)
    # the tanh approximation is ~5e-4 away, so the check above can fail
    assert np.abs(nn.GELU()(ms.Tensor(x)).asnumpy() - exact).max() > 1e-4


def test_parameter_count_of_tutorial_config():
    net = UNet(28, channels=1, dim_mults=(1, 2, 4), convnext_mult=2)
    n = count_params(net)
    print(f"\ntutorial U-Net (dim 28, channels 1, mults 1,2,4, ConvNeXt x2): {n:,} parameters")
    print(model_summary(net))
    # Independent count of the first down stage (18 -> 28 channels, time dim 112, attention 4x32):
    conv = lambda a, b, k, bias=True: a * b * k * k + (b if bias else 0)   # noqa: E731
    convnext = lambda a, b: (112 * a + a) + conv(1, a, 7) + 2 * a + conv(a, 2 * b, 3) + 4 * b \
        + conv(2 * b, b, 3) + (conv(a, b, 1) if a != b else 0)           # noqa: E731
    lin_attn = lambda c: 2 * c + conv(c, 384, 1, False) + conv(128, c, 1) + 2 * c   # noqa: E731
    down0 = convnext(18, 28) + convnext(28, 28) + lin_attn(28) + conv(28, 28, 4)
    got_down0 = sum(p.size for p in net.trainable_params() if p.name.startswith("downs.0."))
    assert got_down0 == down0
    # Pinned: the tutorial's ConvNeXt U-Net with biases. (The ~2.03 M often quoted is the later
    # ResNet-only annotated-diffusion U-Net with two skips per stage, a different network.)
    assert n == 2_996_315


def test_mixed_precision_float16():
    ms.set_seed(5)
    net = UNet(8, channels=1, **TINY)
    net.set_train(False)
    x, t = _inputs(2, 1, 16, seed=6)
    y32 = net(x, t).asnumpy()
    set_compute_dtype(net, ms.float16)
    y16 = net(x, t)
    assert y16.dtype == ms.float32
    y16 = y16.asnumpy()
    assert np.isfinite(y16).all()
    err = np.abs(y16 - y32).max()
    assert err < 0.05 * np.abs(y32).max() + 1e-3, err
    assert err > 0, "float16 had no effect"
    for name, cell in net.cells_and_names():
        flags = cell.get_flags()
        if isinstance(cell, GroupNorm32):
            assert not flags.get("fp16", False), name
            assert cell.gamma.dtype == ms.float32 and cell.beta.dtype == ms.float32
        elif isinstance(cell, (nn.Conv2d, nn.Conv2dTranspose, nn.Dense)):
            assert flags.get("fp16", False), name
    for p in net.get_parameters():
        assert p.dtype == ms.float32, p.name
    ms.set_context(mode=ms.GRAPH_MODE)
    y16_graph = net(x, t)
    assert y16_graph.dtype == ms.float32
    assert np.abs(y16_graph.asnumpy() - y32).max() < 0.05 * np.abs(y32).max() + 1e-3
    ms.set_context(mode=ms.PYNATIVE_MODE)
    set_compute_dtype(net, ms.float32)
    np.testing.assert_allclose(net(x, t).asnumpy(), y32, atol=1e-6)


def test_groupnorm32_on_float16_input():
    """Float16 in, float16 out, statistics right for inputs whose squares overflow float16.

    MindSpore's CPU kernel upcasts float16 internally anyway, so on CPU the float32 guarantee is
    checked through the cell flags in test_mixed_precision_float16; this pins the dtype contract.
    """
    rng = np.random.default_rng(7)
    x16 = (300 + 30 * rng.standard_normal((2, 4, 8, 8))).astype(np.float16)
    gn = GroupNorm32(1, 4)
    y = gn(ms.Tensor(x16))
    assert y.dtype == ms.float16
    x = x16.astype(np.float64).reshape(2, -1)
    want = ((x - x.mean(1, keepdims=True)) / np.sqrt(x.var(1, keepdims=True) + 1e-5)).reshape(x16.shape)
    np.testing.assert_allclose(y.asnumpy().astype(np.float64), want, atol=5e-3)


def test_model_summary_total_and_parts():
    net = UNet(8, channels=1, dim_mults=(1, 2, 4), **TINY)
    text = model_summary(net)
    lines = text.splitlines()
    assert lines[-1] == "convolutions: native (MindSpore's conv kernels)"
    parts = {ln.split()[0]: int(ln.split()[1].replace(",", "")) for ln in lines[:-1]}
    total = parts.pop("total")
    assert total == sum(p.size for p in net.trainable_params()) == count_params(net)
    assert sum(parts.values()) == total
    assert list(parts) == ["time_mlp", "init_conv", "downs.0", "downs.1", "downs.2", "mid",
                           "ups.0", "ups.1", "final"]


def test_build_unet_from_dict_and_object_and_arch_roundtrip():
    cfg = dict(dim=8, init_dim=0, out_dim=0, dim_mults=[1, 2], channels=1, use_convnext=False,
               convnext_mult=2, resnet_block_groups=4, attn_heads=2, attn_head_dim=8, dropout=0.1,
               image_size=16, lr=1e-3)
    assert set(UNET_KEYS) <= set(cfg)
    net = build_unet(cfg)
    assert net.arch == {k: cfg[k] for k in UNET_KEYS}
    assert any(isinstance(c, nn.Dropout) for _, c in net.cells_and_names())

    class Obj:
        pass
    obj = Obj()
    obj.__dict__.update(cfg)
    assert count_params(build_unet(obj)) == count_params(net) == count_params(build_unet(net.arch))
    net.set_train(False)
    x, t = _inputs(2, 1, 16)
    np.testing.assert_array_equal(net(x, t).asnumpy(), net(x, t).asnumpy())   # dropout off in eval


@pytest.mark.parametrize("mode", ["graph", "pynative"])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_softmax_cell_gradient_matches_softmax_gradient(mode, dtype):
    """unet.Softmax's hand-written backward against numpy's y * (w - sum(w * y))."""
    from ddpm_ms.unet import Softmax
    old = ms.get_context("mode")
    ms.set_context(mode=ms.GRAPH_MODE if mode == "graph" else ms.PYNATIVE_MODE)
    try:
        rng = np.random.default_rng(5)
        x = (3 * rng.standard_normal((3, 5, 7))).astype(dtype)
        w = rng.standard_normal((3, 5, 7)).astype(np.float32)
        cell, wt = Softmax(), ms.Tensor(w)

        def loss(x_):
            return (cell(x_) * wt).sum()

        fn = ms.grad(loss)
        if mode == "graph":
            fn = ms.jit(fn)
        g = fn(ms.Tensor(x))
        assert g.dtype == (ms.float16 if dtype == np.float16 else ms.float32)
        y = np.exp(x.astype(np.float64) - x.max(-1, keepdims=True))
        y /= y.sum(-1, keepdims=True)
        want = y * (w - (w * y).sum(-1, keepdims=True))
        np.testing.assert_allclose(g.asnumpy().astype(np.float64), want, atol=1e-6 if dtype == np.float32 else 2e-3)
        np.testing.assert_allclose(cell(ms.Tensor(x)).asnumpy(), y, atol=1e-6)
    finally:
        ms.set_context(mode=old)


# ----------------------------------------------------------------- numpy references (einsum)
# Independent float64 numpy versions of the blocks, written from the papers / annotated-diffusion
# with einsum (not from unet.py's bmm-and-transpose code), fed the cells' own weights.

def _np_conv(x, conv, padding=0, groups=1):
    """Cross-correlation of x [B, C, H, W] with conv's weight [O, C/groups, k, k] and bias."""
    w = conv.weight.asnumpy().astype(np.float64)
    out_c, cg, k, _ = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    win = np.lib.stride_tricks.sliding_window_view(xp, (k, k), axis=(2, 3))   # [B, C, H', W', k, k]
    b, _, ho, wo = win.shape[:4]
    win = win.reshape(b, groups, cg, ho, wo, k, k)
    out = np.einsum("bgchwij,gocij->bgohw", win, w.reshape(groups, out_c // groups, cg, k, k))
    out = out.reshape(b, out_c, ho, wo)
    if conv.has_bias:
        out = out + conv.bias.asnumpy().astype(np.float64)[None, :, None, None]
    return out


def _np_group_norm(x, gn, groups):
    b = x.shape[0]
    xg = x.reshape(b, groups, -1)
    y = (xg - xg.mean(-1, keepdims=True)) / np.sqrt(xg.var(-1, keepdims=True) + 1e-5)
    y = y.reshape(x.shape)
    return y * gn.gamma.asnumpy()[None, :, None, None] + gn.beta.asnumpy()[None, :, None, None]


def _np_softmax(x, axis):
    e = np.exp(x - x.max(axis, keepdims=True))
    return e / e.sum(axis, keepdims=True)


def _np_heads(x, cell):
    """qkv projection split into heads: q, k, v each [B, heads, d, n] (channel = head * d + i)."""
    b, _, h, w = x.shape
    qkv = _np_conv(x, cell.to_qkv)
    q, k, v = np.split(qkv, 3, axis=1)
    return [a.reshape(b, cell.heads, cell.head_dim, h * w) for a in (q, k, v)]


def _np_attention(x, cell):
    """Softmax attention: sim_ij = (q_i . k_j) / sqrt(d); out_i = sum_j softmax_j(sim_ij) v_j."""
    b, _, h, w = x.shape
    q, k, v = _np_heads(x, cell)
    sim = np.einsum("bhdi,bhdj->bhij", q / np.sqrt(cell.head_dim), k)
    out = np.einsum("bhij,bhdj->bhdi", _np_softmax(sim, -1), v)
    return _np_conv(out.reshape(b, -1, h, w), cell.to_out)


def _np_linear_attention(x, cell):
    """Shen et al. 2018: q softmaxed over d, k over positions; context = k v^T; out = context^T q."""
    b, _, h, w = x.shape
    q, k, v = _np_heads(x, cell)
    q = _np_softmax(q, 2) / np.sqrt(cell.head_dim)
    k = _np_softmax(k, 3)
    context = np.einsum("bhdn,bhen->bhde", k, v)
    out = np.einsum("bhde,bhdn->bhen", context, q).reshape(b, -1, h, w)
    conv, gn = cell.to_out[0], cell.to_out[1]
    return _np_group_norm(_np_conv(out, conv), gn, 1)


def _np_dense(x, dense_cell):
    return x @ dense_cell.weight.asnumpy().T.astype(np.float64) + dense_cell.bias.asnumpy()


def _np_convnext(x, t_emb, cell):
    """h = dwconv7(x) + Dense(GELU(t_emb)); out = conv3(GN(GELU(conv3(GN(h))))) + res_conv(x)."""
    c_in = x.shape[1]
    h = _np_conv(x, cell.ds_conv, padding=3, groups=c_in)
    h = h + _np_dense(_erf_gelu(t_emb), cell.mlp[1])[:, :, None, None]
    gn1, conv1, _, gn2, conv2 = cell.net
    h = _np_conv(_np_group_norm(h, gn1, 1), conv1, padding=1)
    h = _np_conv(_np_group_norm(_erf_gelu(h), gn2, 1), conv2, padding=1)
    res = _np_conv(x, cell.res_conv) if isinstance(cell.res_conv, (nn.Conv2d,)) else x
    return h + res


def _randomize_norms(cell, seed):
    """GroupNorm gamma/beta away from their 1/0 init, so the reference checks they are used."""
    rng = np.random.default_rng(seed)
    for _, sub in cell.cells_and_names():
        if isinstance(sub, nn.GroupNorm):
            sub.gamma.set_data(ms.Tensor((1 + 0.3 * rng.standard_normal(sub.gamma.shape)).astype(np.float32)))
            sub.beta.set_data(ms.Tensor((0.3 * rng.standard_normal(sub.beta.shape)).astype(np.float32)))


def _close(got, want, tol=1e-5):
    """|got - want| <= tol * max|want| elementwise (float32 against float64)."""
    err = np.abs(got.astype(np.float64) - want).max()
    assert err <= tol * np.abs(want).max(), f"max error {err:.3g}, scale {np.abs(want).max():.3g}"


@pytest.mark.parametrize("conv_impl", ["native", "matmul"])
def test_softmax_attention_matches_numpy_einsum(conv_impl):
    from ddpm_ms.unet import Attention
    ms.set_seed(11)
    cell = Attention(6, heads=2, head_dim=4, conv_impl=conv_impl)
    x = np.random.default_rng(12).standard_normal((2, 6, 5, 3))   # n = 15 positions, H != W
    _close(cell(ms.Tensor(x.astype(np.float32))).asnumpy(), _np_attention(x, cell))


@pytest.mark.parametrize("conv_impl", ["native", "matmul"])
def test_linear_attention_matches_numpy_einsum(conv_impl):
    from ddpm_ms.unet import LinearAttention
    ms.set_seed(13)
    cell = LinearAttention(6, heads=2, head_dim=4, conv_impl=conv_impl)
    _randomize_norms(cell, 14)
    x = np.random.default_rng(15).standard_normal((2, 6, 5, 3))
    _close(cell(ms.Tensor(x.astype(np.float32))).asnumpy(), _np_linear_attention(x, cell))


@pytest.mark.parametrize("c_in,c_out", [(4, 6), (6, 6)])        # with and without the 1x1 res conv
@pytest.mark.parametrize("conv_impl", ["native", "matmul"])
def test_convnext_block_matches_numpy(c_in, c_out, conv_impl):
    from ddpm_ms.unet import ConvNextBlock
    ms.set_seed(16)
    cell = ConvNextBlock(c_in, c_out, time_dim=8, mult=2, conv_impl=conv_impl)
    _randomize_norms(cell, 17)
    rng = np.random.default_rng(18)
    x, t_emb = rng.standard_normal((2, c_in, 9, 9)), rng.standard_normal((2, 8))
    got = cell(ms.Tensor(x.astype(np.float32)), ms.Tensor(t_emb.astype(np.float32))).asnumpy()
    _close(got, _np_convnext(x, t_emb, cell))


# ----------------------------------------------------------------- overfit one batch
def test_overfits_one_fixed_batch():
    """30 Adam steps of the project's train step on one fixed (x0, t, noise) batch fit it.

    The bound, from the batch itself (closed forms, float64):
    * L_const = mean_pixels Var_batch(noise): the least MSE of any predictor that ignores its
      input (the best one is the batch mean of the targets);
    * L_scale = mean_b min_k |noise_b - k x_t,b|^2 / n: the least MSE of any per-sample rescaling
      of its input, the scale even chosen knowing the answer. For Gaussian data with known
      moments the best denoiser that knows only the noise level is such a rescaling.
    A network below a quarter of the smaller one has fitted this batch (memorised x0 from x_t and
    t), which needs the loss, its gradients and the optimizer update all to work. The loss is
    recomputed at the end in numpy from the network's output on numpy-made x_t, so a q_sample or
    target that disagrees with the maths cannot pass by fitting the wrong thing.
    """
    from ddpm_ms.losses import DiffusionLoss
    from ddpm_ms.schedule import NoiseSchedule
    from ddpm_ms.train_step import make_train_step

    ms.set_seed(0)
    sched = NoiseSchedule("linear", 1000)
    net = UNet(8, channels=1, dim_mults=(1, 2), image_size=8, **TINY)
    rng = np.random.default_rng(0)
    x0 = np.clip(0.5 * rng.standard_normal((4, 1, 8, 8)), -1, 1).astype(np.float32)
    t = np.array([20, 250, 500, 750], np.int32)
    noise = rng.standard_normal((4, 1, 8, 8)).astype(np.float32)

    ab = sched.alphas_cumprod[t][:, None, None, None]
    xt = np.sqrt(ab) * x0 + np.sqrt(1 - ab) * noise                        # float64
    eps, xf = noise.reshape(4, -1).astype(np.float64), xt.reshape(4, -1)
    l_const = ((eps - eps.mean(0)) ** 2).mean()
    l_scale = (((eps ** 2).sum(1) - (xf * eps).sum(1) ** 2 / (xf ** 2).sum(1)) / eps.shape[1]).mean()
    bound = 0.25 * min(l_const, l_scale)

    loss_cell = DiffusionLoss(net, sched, objective="eps", loss_type="l2", p2_gamma=0.0)
    step = make_train_step(loss_cell, nn.Adam(net.trainable_params(), learning_rate=3e-3), None)
    args = [ms.Tensor(a) for a in (x0, t, noise)]
    losses = [float(step(*args).asnumpy()) for _ in range(30)]

    net.set_train(False)
    out = net(ms.Tensor(xt.astype(np.float32)), ms.Tensor(t)).asnumpy().astype(np.float64)
    final = ((out - noise) ** 2).mean()
    assert float(loss_cell(*args).asnumpy()) == pytest.approx(final, rel=1e-4)
    assert losses[0] > bound, (losses[0], bound)      # not fitted before training
    assert final < bound, f"loss {final:.4g} after 30 steps, bound {bound:.4g} (L_const " \
        f"{l_const:.3g}, L_scale {l_scale:.3g}); losses {np.round(losses, 4)}"

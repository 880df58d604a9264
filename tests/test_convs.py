"""Matmul convolutions (ddpm_ms.convs) against MindSpore's own conv kernels.

For every conv shape the U-Nets use, the matmul cell and the native cell share one set of
weights; outputs, input gradients and weight/bias gradients must agree to 1e-5 relative (of
the largest magnitude), in GRAPH and PYNATIVE mode. A numpy direct convolution pins the
native result too, so a shared mistake in both cannot pass.
"""
import numpy as np
import pytest

import mindspore as ms
from mindspore import nn

from ddpm_ms import convs as convs_mod
from ddpm_ms.convs import MATMUL_FORMS, MatmulConv2d, MatmulConvTranspose2d
from ddpm_ms.runtime import resolve_conv_impl

# (c_in, c_out, kernel, stride, padding, group, has_bias, hw): the U-Nets' conv shapes
CONV_CASES = {
    "init7x7": (1, 6, 7, 1, 3, 1, True, 12),
    "depthwise7x7": (5, 5, 7, 1, 3, 5, True, 10),          # row/column split path
    "depthwise3x3_pad0": (4, 4, 3, 1, 0, 4, False, 7),     # not "same": the grouped path
    "depthwise5x5_s2": (4, 4, 5, 2, 2, 4, True, 9),        # strided: the grouped path
    "conv3x3": (4, 6, 3, 1, 1, 1, True, 9),
    "conv1x1": (6, 4, 1, 1, 0, 1, True, 8),
    "qkv1x1_nobias": (4, 12, 1, 1, 0, 1, False, 7),
    "down4x4s2": (4, 4, 4, 2, 1, 1, True, 8),
    "grouped3x3": (4, 6, 3, 1, 1, 2, True, 6),
}


def _np_conv(x, w, b, stride, pad, group):
    """Direct cross-correlation in float64: x [B, C, H, W], w [O, C/g, k, k]."""
    x = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    bsz, c, hp, wp = x.shape
    o, cg, k, _ = w.shape
    ho, wo = (hp - k) // stride + 1, (wp - k) // stride + 1
    out = np.zeros((bsz, o, ho, wo))
    og = o // group
    for oc in range(o):
        g = oc // og
        for i in range(k):
            for j in range(k):
                patch = x[:, g * cg:(g + 1) * cg, i:i + stride * ho:stride, j:j + stride * wo:stride]
                out[:, oc] += np.einsum("bchw,c->bhw", patch, w[oc, :, i, j])
    if b is not None:
        out += b.reshape(1, -1, 1, 1)
    return out


def _pair(cls_native, cls_matmul, *args, **kwargs):
    native = cls_native(*args, **kwargs)
    matmul = cls_matmul(*args, **kwargs)
    for p_n, p_m in zip(native.get_parameters(), matmul.get_parameters()):
        assert p_n.name == p_m.name and p_n.shape == p_m.shape
        p_m.set_data(p_n.data.copy())
    return native, matmul


def _grads(cell, x):
    params = cell.trainable_params()

    def loss(x_):
        y = cell(x_)
        return (y * y).sum() * 0.5

    fn = ms.value_and_grad(loss, 0, params)
    if ms.get_context("mode") == ms.GRAPH_MODE:
        fn = ms.jit(fn)
    (value, (gx, gparams)) = fn(x)
    return cell(x).asnumpy(), gx.asnumpy(), [g.asnumpy() for g in gparams]


def _close(a, b, rel=1e-5):
    scale = max(np.abs(b).max(), 1e-12)
    assert np.abs(a - b).max() <= rel * scale, f"max diff {np.abs(a - b).max():.3g} vs scale {scale:.3g}"


@pytest.fixture(params=["graph", "pynative"])
def mode(request):
    old = ms.get_context("mode")
    ms.set_context(mode=ms.GRAPH_MODE if request.param == "graph" else ms.PYNATIVE_MODE)
    yield request.param
    ms.set_context(mode=old)


@pytest.mark.parametrize("form", MATMUL_FORMS)
@pytest.mark.parametrize("case", sorted(CONV_CASES))
def test_matmul_conv_matches_native_outputs_and_grads(case, form, mode):
    c_in, c_out, k, s, p, g, bias, hw = CONV_CASES[case]
    if case == "depthwise7x7":
        assert MatmulConv2d(c_in, c_out, k, stride=s, pad_mode="pad", padding=p, group=g).depthwise
    native, matmul = _pair(nn.Conv2d, MatmulConv2d, c_in, c_out, k, stride=s, pad_mode="pad", padding=p,
                           group=g, has_bias=bias, bias_init="uniform" if bias else None)
    matmul.form = form
    rng = np.random.default_rng(len(case))
    x = ms.Tensor(rng.standard_normal((3, c_in, hw, hw + 3)).astype(np.float32))   # H != W on purpose
    y_n, gx_n, gp_n = _grads(native, x)
    y_m, gx_m, gp_m = _grads(matmul, x)
    w = native.weight.asnumpy()
    b = native.bias.asnumpy() if bias else None
    _close(y_n, _np_conv(x.asnumpy(), w, b, s, p, g))
    _close(y_m, y_n)
    _close(gx_m, gx_n)
    assert len(gp_m) == len(gp_n) == (2 if bias else 1)
    for a, r in zip(gp_m, gp_n):
        _close(a, r)


@pytest.mark.parametrize("form", MATMUL_FORMS)
def test_matmul_conv_transpose_matches_native(form, mode):
    native, matmul = _pair(nn.Conv2dTranspose, MatmulConvTranspose2d, 4, 6, 4, stride=2, pad_mode="pad",
                           padding=1, has_bias=True, bias_init="uniform")
    matmul.form = form
    rng = np.random.default_rng(7)
    x = ms.Tensor(rng.standard_normal((2, 4, 5, 5)).astype(np.float32))
    y_n, gx_n, gp_n = _grads(native, x)
    y_m, gx_m, gp_m = _grads(matmul, x)
    assert y_m.shape == (2, 6, 10, 10)
    # the transposed conv of x is the adjoint of the conv: <convT(x), z> = <x, conv(z)> (bias off)
    z = rng.standard_normal(y_n.shape)
    w = native.weight.asnumpy()                                    # [C_in, C_out, k, k]
    conv_z = _np_conv(z, w, None, 2, 1, 1)                         # [B, C_in, 5, 5]
    lhs = ((y_n - native.bias.asnumpy().reshape(1, -1, 1, 1)) * z).sum()
    assert abs(lhs - (x.asnumpy() * conv_z).sum()) <= 1e-4 * abs(lhs)
    _close(y_m, y_n)
    _close(gx_m, gx_n)
    for a, r in zip(gp_m, gp_n):
        _close(a, r)


def test_matmul_form_follows_the_isa_and_the_override(monkeypatch):
    """"batched" where oneDNN is uncapped on an AVX-512 CPU, "mixed" elsewhere; the variable overrides."""
    monkeypatch.delenv(convs_mod.FORM_VAR, raising=False)
    for slow, form in ((True, "batched"), (False, "mixed")):
        monkeypatch.setattr(convs_mod, "onednn_convs_slow", lambda slow=slow: slow)
        assert convs_mod.matmul_form() == form
        assert MatmulConv2d(2, 2, 3, pad_mode="pad", padding=1).form == form
        assert MatmulConvTranspose2d(2, 2, 4, stride=2, pad_mode="pad", padding=1).form == form
    monkeypatch.setenv(convs_mod.FORM_VAR, "batched")
    assert convs_mod.matmul_form() == "batched"
    monkeypatch.setenv(convs_mod.FORM_VAR, "bmm")
    with pytest.raises(ValueError, match="DDPM_MS_MATMUL_FORM must be one of batched, gemm, mixed, got .bmm."):
        convs_mod.matmul_form()


def test_float16_compute_matches_float32_within_half_precision():
    ms.set_context(mode=ms.PYNATIVE_MODE)
    native, matmul = _pair(nn.Conv2d, MatmulConv2d, 4, 6, 3, pad_mode="pad", padding=1, has_bias=True,
                           bias_init="uniform")
    x = ms.Tensor(np.random.default_rng(3).standard_normal((2, 4, 6, 6)).astype(np.float32))
    ref = native(x).asnumpy()
    y16 = matmul(x.astype(ms.float16))
    assert y16.dtype == ms.float16
    _close(y16.asnumpy().astype(np.float32), ref, rel=2e-3)


def test_resolve_conv_impl_and_unsupported_settings():
    assert resolve_conv_impl("auto", "CPU") == "matmul"
    assert resolve_conv_impl("auto", "Ascend") == "native"
    assert resolve_conv_impl("auto", "GPU") == "native"
    assert resolve_conv_impl("native", "CPU") == "native"
    assert resolve_conv_impl("matmul", "Ascend") == "matmul"
    assert resolve_conv_impl("auto", "CPU", training=False) == "native"     # sampling: forward only
    assert resolve_conv_impl("matmul", "CPU", training=False) == "matmul"
    with pytest.raises(ValueError, match="conv_impl"):
        resolve_conv_impl("fast", "CPU")
    with pytest.raises(ValueError, match="pad_mode"):
        MatmulConv2d(2, 2, 3, pad_mode="same")
    with pytest.raises(ValueError, match="group 1"):
        MatmulConvTranspose2d(2, 2, 4, stride=2, pad_mode="pad", padding=1, group=2)


@pytest.mark.parametrize("use_convnext,form", [(True, "batched"), (False, "gemm")])
def test_unet_matmul_equals_native_and_checkpoints_swap(use_convnext, form, mode, monkeypatch):
    """The whole U-Net: same parameter names and shapes; a native state dict loaded into the
    matmul net gives the same output and the same gradient for every parameter."""
    from ddpm_ms.unet import build_unet
    monkeypatch.setenv(convs_mod.FORM_VAR, form)
    arch = dict(dim=8, dim_mults=[1, 2], channels=1, image_size=8, use_convnext=use_convnext,
                resnet_block_groups=4, attn_heads=2, attn_head_dim=8)
    native = build_unet(arch, conv_impl="native")
    matmul = build_unet(arch, conv_impl="matmul")
    assert native.conv_impl == "native" and matmul.conv_impl == "matmul"
    n_params = {p.name: p for p in native.get_parameters()}
    m_params = {p.name: p for p in matmul.get_parameters()}
    assert list(n_params) == list(m_params)
    ms.load_param_into_net(matmul, {k: ms.Parameter(v.data.copy(), name=k) for k, v in n_params.items()},
                           strict_load=True)
    convs = [c for _, c in matmul.cells_and_names() if isinstance(c, (nn.Conv2d, nn.Conv2dTranspose))]
    assert convs and all(isinstance(c, (MatmulConv2d, MatmulConvTranspose2d)) and c.form == form for c in convs)
    rng = np.random.default_rng(0)
    x = ms.Tensor(rng.standard_normal((2, 1, 8, 8)).astype(np.float32))
    t = ms.Tensor(np.array([3, 700], np.int32))

    def grads(net):
        params = net.trainable_params()

        def loss(x_, t_):
            y = net(x_, t_)
            return (y * y).mean()

        fn = ms.value_and_grad(loss, None, params)
        if mode == "graph":
            fn = ms.jit(fn)
        value, g = fn(x, t)
        return net(x, t).asnumpy(), [a.asnumpy() for a in g]

    y_n, g_n = grads(native)
    y_m, g_m = grads(matmul)
    _close(y_m, y_n)
    assert len(g_n) == len(g_m) == len(n_params)
    for name, a, r in zip(n_params, g_m, g_n):
        assert np.abs(a - r).max() <= 1e-4 * max(np.abs(r).max(), 1e-8), name


def test_build_unet_auto_resolves_for_the_device():
    from ddpm_ms.unet import build_unet
    arch = dict(dim=8, dim_mults=[1, 2], channels=1, attn_heads=2, attn_head_dim=8)
    assert build_unet(arch).conv_impl == "matmul"                         # tests run on CPU
    assert build_unet(dict(arch, conv_impl="native")).conv_impl == "native"
    assert build_unet(dict(arch, conv_impl="native"), conv_impl="matmul").conv_impl == "matmul"
    assert build_unet(arch, device_target="Ascend").conv_impl == "native"

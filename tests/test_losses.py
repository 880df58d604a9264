"""DiffusionLoss against a numpy reference of the same formula, in PYNATIVE and GRAPH mode."""
import numpy as np
import pytest

import mindspore as ms
from mindspore import nn

from ddpm_ms.losses import DiffusionLoss
from ddpm_ms.schedule import LOSS_TYPES, OBJECTIVES, NoiseSchedule

C = 2
SHAPE = (4, C, 3, 3)
T_VALUES = np.array([3, 250, 600, 999], np.int32)


class TinyNet(nn.Cell):
    """Deterministic stand-in: a 1x1 conv with bias, scaled by (1 + t / 1000)."""

    def __init__(self, weight, bias, out_dtype=ms.float32):
        super().__init__()
        self.conv = nn.Conv2d(C, C, 1, has_bias=True, weight_init=ms.Tensor(weight[:, :, None, None]),
                              bias_init=ms.Tensor(bias))
        self.out_dtype = out_dtype

    def construct(self, x, t):
        scale = 1.0 + t.astype(ms.float32).reshape((-1, 1, 1, 1)) / 1000.0
        return (self.conv(x) * scale).astype(self.out_dtype)


@pytest.fixture(scope="module")
def case():
    rng = np.random.default_rng(0)
    return dict(
        weight=rng.standard_normal((C, C)).astype(np.float32),
        bias=rng.standard_normal(C).astype(np.float32),
        x0=rng.uniform(-1, 1, SHAPE).astype(np.float32),
        noise=rng.standard_normal(SHAPE).astype(np.float32),
        schedule=NoiseSchedule("linear", 1000),
    )


def numpy_loss(case, objective, loss_type, gamma=1.0, k=1.0):
    """The loss written out independently in float64."""
    s, t = case["schedule"], T_VALUES
    x0, noise = case["x0"].astype(np.float64), case["noise"].astype(np.float64)
    ab = s.alphas_cumprod[t][:, None, None, None]
    xt = np.sqrt(ab) * x0 + np.sqrt(1 - ab) * noise
    out = np.einsum("oc,bchw->bohw", case["weight"].astype(np.float64), xt)
    out = out + case["bias"][None, :, None, None]
    out = out * (1 + t[:, None, None, None] / 1000.0)
    tgt = {"eps": noise, "x0": x0, "v": np.sqrt(ab) * noise - np.sqrt(1 - ab) * x0}[objective]
    d = out - tgt
    per = {"l2": d ** 2, "l1": np.abs(d),
           "huber": np.where(np.abs(d) < 1, 0.5 * d ** 2, np.abs(d) - 0.5)}[loss_type]
    # p2 is defined on the eps error; an output error maps to eps as r * error with
    # r^2 = 1 (eps), snr (x0), abar (v), so the objective's weight is p2 * r^2 (r for l1)
    r2 = {"eps": np.ones_like(ab), "x0": ab / (1 - ab), "v": ab}[objective].ravel()
    weight = (k + ab / (1 - ab)).ravel() ** -gamma * r2 ** (0.5 if loss_type == "l1" else 1.0)
    return float(np.mean(per.reshape(len(t), -1).mean(axis=1) * weight)), d


def make_loss(case, objective="eps", loss_type="huber", gamma=1.0, k=1.0, out_dtype=ms.float32):
    net = TinyNet(case["weight"], case["bias"], out_dtype)
    return DiffusionLoss(net, case["schedule"], objective=objective, loss_type=loss_type,
                         p2_gamma=gamma, p2_k=k)


def run(loss, case):
    return loss(ms.Tensor(case["x0"]), ms.Tensor(T_VALUES), ms.Tensor(case["noise"]))


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("objective", OBJECTIVES)
def test_loss_matches_numpy_reference(case, objective, loss_type):
    ref, d = numpy_loss(case, objective, loss_type)
    assert np.any(np.abs(d) < 1) and np.any(np.abs(d) > 1)   # both huber branches are exercised
    got = run(make_loss(case, objective, loss_type), case)
    assert got.shape == () and got.dtype == ms.float32
    np.testing.assert_allclose(float(got), ref, rtol=1e-6)


def test_p2_gamma_changes_the_loss(case):
    ref0, _ = numpy_loss(case, "eps", "l2", gamma=0.0)
    ref1, _ = numpy_loss(case, "eps", "l2", gamma=1.0)
    got0 = float(run(make_loss(case, "eps", "l2", gamma=0.0), case))
    np.testing.assert_allclose(got0, ref0, rtol=1e-6)
    assert abs(ref0 - ref1) > 0.1 * ref0


def test_tables_are_float32_tensors_not_parameters(case):
    loss = make_loss(case)
    assert len(loss.trainable_params()) == 2                       # the conv's weight and bias only
    for tab in (loss.sqrt_alphas_cumprod, loss.sqrt_one_minus_alphas_cumprod, loss.weight,
                loss.target_x0_coef, loss.target_eps_coef):
        assert not isinstance(tab, ms.Parameter) and tab.dtype == ms.float32


def test_float16_network_output_keeps_float32_loss(case):
    got = run(make_loss(case, "v", "l2", out_dtype=ms.float16), case)
    ref, _ = numpy_loss(case, "v", "l2")
    assert got.dtype == ms.float32
    np.testing.assert_allclose(float(got), ref, rtol=1e-2)


def test_gradient_is_finite(case):
    loss = make_loss(case, "v", "huber")
    grad_fn = ms.value_and_grad(loss, None, loss.trainable_params())
    value, grads = grad_fn(ms.Tensor(case["x0"]), ms.Tensor(T_VALUES), ms.Tensor(case["noise"]))
    assert np.isfinite(float(value))
    assert len(grads) == 2
    for g in grads:
        g = g.asnumpy()
        assert np.all(np.isfinite(g)) and np.any(g != 0)


def test_graph_mode_matches_pynative(case):
    loss = make_loss(case, "v", "huber")
    grad_fn = ms.value_and_grad(loss, None, loss.trainable_params())
    inputs = (ms.Tensor(case["x0"]), ms.Tensor(T_VALUES), ms.Tensor(case["noise"]))
    value_py, grads_py = grad_fn(*inputs)
    ms.set_context(mode=ms.GRAPH_MODE)   # conftest switches back to PYNATIVE
    value_graph, grads_graph = grad_fn(*inputs)
    np.testing.assert_allclose(float(value_graph), float(value_py), rtol=1e-6)
    for gg, gp in zip(grads_graph, grads_py):
        np.testing.assert_allclose(gg.asnumpy(), gp.asnumpy(), rtol=1e-5, atol=1e-7)
    ref, _ = numpy_loss(case, "v", "huber")
    np.testing.assert_allclose(float(run(make_loss(case, "x0", "l1"), case)),
                               numpy_loss(case, "x0", "l1")[0], rtol=1e-6)
    np.testing.assert_allclose(float(value_graph), ref, rtol=1e-6)


@pytest.mark.parametrize("kwargs, match", [
    (dict(objective="score"), r"objective must be one of 'eps', 'x0', 'v'"),
    (dict(loss_type="mse"), r"loss_type must be one of 'huber', 'l1', 'l2'"),
])
def test_bad_arguments(case, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_loss(case, **kwargs)

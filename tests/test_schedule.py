"""Noise-schedule tables against hand-computed values and closed forms (numpy only)."""
import math
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from ddpm_ms.schedule import (BETA_SCHEDULES, LOSS_TYPES, OBJECTIVES, NoiseSchedule, check_choice,
                              extract, predict_eps, predict_x0, q_sample, target, to_tensor_tables)

T = 1000


@pytest.fixture(scope="module")
def linear():
    return NoiseSchedule("linear", T)


def test_every_listed_mode_is_implemented_and_others_are_refused():
    """What the mode tuples promise, not their spelling: every beta schedule builds a valid schedule
    of its own at T = 1000 that ends near pure noise (no warning), every objective has a target of
    its own, and a name outside a tuple is refused with each allowed value named."""
    seen = {}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for kind in BETA_SCHEDULES:
            s = NoiseSchedule(kind, T)
            assert np.all((s.betas > 0) & (s.betas < 1)) and np.all(np.diff(s.alphas_cumprod) < 0), kind
            assert s.alphas_cumprod[-1] < 1e-3, kind
            same = [k for k, b in seen.items() if np.allclose(s.betas, b)]
            assert not same, f"{kind} gives the betas of {same}"
            seen[kind] = s.betas
    rng = np.random.default_rng(3)
    x0, eps = rng.standard_normal(6), rng.standard_normal(6)
    targets = {o: target(o, x0, eps, 0.5) for o in OBJECTIVES}
    for o in OBJECTIVES:
        assert [p for p in OBJECTIVES if np.allclose(targets[p], targets[o])] == [o]
    for name, bad, allowed in (("beta_schedule", "laplace", BETA_SCHEDULES), ("objective", "score", OBJECTIVES),
                               ("loss_type", "l3", LOSS_TYPES)):
        with pytest.raises(ValueError, match=f"{name} must be one of .*got '{bad}'") as err:
            check_choice(name, bad, allowed)
        assert all(repr(a) in str(err.value) for a in allowed)
        assert check_choice(name, allowed[-1], allowed) == allowed[-1]


def test_linear_T1000_hand_values(linear):
    # independent: betas by the textbook formula, product by a plain Python loop
    prod, abar = 1.0, {}
    for t in range(T):
        beta = 1e-4 + (0.02 - 1e-4) * t / (T - 1)
        prod *= 1.0 - beta
        abar[t] = prod
    for t in (0, 499, 999):
        assert linear.alphas_cumprod[t] == pytest.approx(abar[t], rel=1e-12)
    assert linear.alphas_cumprod[0] == pytest.approx(0.9999, rel=1e-15)
    assert linear.alphas_cumprod[999] == pytest.approx(4.036e-5, rel=1e-3)  # the well-known abar_T
    assert linear.betas[0] == pytest.approx(1e-4) and linear.betas[-1] == pytest.approx(0.02)
    assert linear.num_timesteps == T
    for name in ("betas", "alphas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
                 "sqrt_one_minus_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
                 "posterior_mean_coef1", "posterior_mean_coef2", "snr"):
        arr = getattr(linear, name)
        assert arr.dtype == np.float64 and arr.shape == (T,), name


def test_cumprod_and_prev(linear):
    s = linear
    np.testing.assert_allclose(s.alphas, 1.0 - s.betas, rtol=0, atol=0)
    np.testing.assert_allclose(s.alphas_cumprod[1:], s.alphas_cumprod[:-1] * s.alphas[1:], rtol=1e-14)
    assert s.alphas_cumprod_prev[0] == 1.0
    np.testing.assert_array_equal(s.alphas_cumprod_prev[1:], s.alphas_cumprod[:-1])
    np.testing.assert_allclose(s.sqrt_alphas_cumprod ** 2 + s.sqrt_one_minus_alphas_cumprod ** 2, 1.0,
                               rtol=1e-14)
    np.testing.assert_allclose(s.snr, s.alphas_cumprod / (1 - s.alphas_cumprod), rtol=1e-14)


def test_posterior_against_gaussian_conditioning(linear):
    s = linear
    for t in (1, 5, 500, 999):
        # x_{t-1} | x0 ~ N(sqrt(abar_{t-1}) x0, 1 - abar_{t-1})
        # x_t | x_{t-1} ~ N(sqrt(alpha_t) x_{t-1}, beta_t)
        ab_prev, alpha, beta = s.alphas_cumprod[t - 1], 1 - s.betas[t], s.betas[t]
        precision = 1 / (1 - ab_prev) + alpha / beta
        var = 1 / precision
        assert s.posterior_variance[t] == pytest.approx(var, rel=1e-10)
        assert s.posterior_mean_coef1[t] == pytest.approx(var * math.sqrt(ab_prev) / (1 - ab_prev), rel=1e-10)
        assert s.posterior_mean_coef2[t] == pytest.approx(var * math.sqrt(alpha) / beta, rel=1e-10)
    assert s.posterior_variance[0] == 0.0
    assert s.posterior_log_variance_clipped[0] == pytest.approx(math.log(s.posterior_variance[1]))
    np.testing.assert_allclose(s.posterior_log_variance_clipped[1:], np.log(s.posterior_variance[1:]))


def test_p2_weight(linear):
    s = linear
    np.testing.assert_array_equal(s.p2_weight(gamma=0.0), np.ones(T))
    # k = 1, gamma = 1: 1 / (1 + abar / (1 - abar)) = 1 - abar
    np.testing.assert_allclose(s.p2_weight(1.0, 1.0), 1 - s.alphas_cumprod, rtol=1e-12)
    t = 300
    assert s.p2_weight(0.5, 2.0)[t] == pytest.approx((2.0 + s.snr[t]) ** -0.5, rel=1e-14)


def test_cosine_closed_form():
    n, s_ = 100, 0.008
    s = NoiseSchedule("cosine", n)
    f = [math.cos((u / n + s_) / (1 + s_) * math.pi / 2) ** 2 for u in range(n + 1)]
    for t in range(n - 1):  # the last beta is capped at max_beta
        assert s.alphas_cumprod[t] == pytest.approx(f[t + 1] / f[0], rel=1e-10)
    assert s.alphas_cumprod[-1] < 1e-3
    # max_beta caps exactly the betas whose closed-form value 1 - f(t+1)/f(t) exceeds it
    raw = np.array([1 - f[u + 1] / f[u] for u in range(n)])
    for cap in (0.999, 0.5):
        capped = NoiseSchedule("cosine", n, max_beta=cap).betas
        np.testing.assert_allclose(capped, np.minimum(raw, cap), rtol=1e-10)
        assert (capped == cap).sum() == (raw > cap).sum() >= 1


def test_quadratic_and_sigmoid_formulas():
    q = NoiseSchedule("quadratic", 1001, beta_start=1e-4, beta_end=0.02)
    assert q.betas[0] == pytest.approx(1e-4) and q.betas[-1] == pytest.approx(0.02)
    assert q.betas[500] == pytest.approx(((0.01 + math.sqrt(0.02)) / 2) ** 2)
    sg = NoiseSchedule("sigmoid", T)
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    assert sg.betas[0] == pytest.approx(sig(-6) * (0.02 - 1e-4) + 1e-4)
    assert sg.betas[-1] == pytest.approx(sig(6) * (0.02 - 1e-4) + 1e-4)
    assert np.all(np.diff(sg.betas) > 0)


def test_small_T_scaling_and_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = NoiseSchedule("linear", 200)  # ends scaled by 1000/200
    assert s.betas[0] == pytest.approx(5e-4) and s.betas[-1] == pytest.approx(0.1)
    assert s.alphas_cumprod[-1] < 1e-3
    with pytest.warns(UserWarning, match=r"alphas_cumprod\[T-1\]=0\.13"):
        tut = NoiseSchedule("linear", 200, beta_start=1e-4, beta_end=0.02)  # the tutorial's schedule
    assert 0.13 < tut.alphas_cumprod[-1] < 0.14


@pytest.mark.parametrize("kwargs, match", [
    (dict(kind="laplace"), r"beta_schedule must be one of 'linear', 'cosine', 'quadratic', 'sigmoid'"),
    (dict(timesteps=1), r"timesteps must be an integer >= 2"),
    (dict(timesteps=10), r"\(0, 1\).*beta_start/beta_end"),      # default ends scale to 0.001..2
    (dict(beta_start=0.0, beta_end=0.02), r"\(0, 1\)"),
    (dict(kind="cosine", max_beta=1.0), r"max_beta must be in \(0, 1\)"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        NoiseSchedule(**kwargs)


def test_extract_and_q_sample_numpy(linear):
    rng = np.random.default_rng(0)
    x0, noise = rng.standard_normal((3, 2, 4, 4)), rng.standard_normal((3, 2, 4, 4))
    t = np.array([0, 499, 999])
    coef = extract(linear.sqrt_alphas_cumprod, t, 4)
    assert coef.shape == (3, 1, 1, 1)
    np.testing.assert_array_equal(coef.ravel(), linear.sqrt_alphas_cumprod[t])
    xt = linear.q_sample(x0, t, noise)
    for i, ti in enumerate(t):
        ab = linear.alphas_cumprod[ti]
        np.testing.assert_allclose(xt[i], math.sqrt(ab) * x0[i] + math.sqrt(1 - ab) * noise[i], rtol=1e-12)


def test_extract_and_q_sample_mindspore(linear):
    import mindspore as ms
    tabs = to_tensor_tables(linear, ["sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod"])
    assert all(v.dtype == ms.float32 and v.shape == (T,) for v in tabs.values())
    rng = np.random.default_rng(1)
    x0 = rng.standard_normal((2, 1, 3, 3)).astype(np.float32)
    noise = rng.standard_normal((2, 1, 3, 3)).astype(np.float32)
    t = np.array([7, 900], np.int32)
    got = q_sample(tabs["sqrt_alphas_cumprod"], tabs["sqrt_one_minus_alphas_cumprod"],
                   ms.Tensor(x0), ms.Tensor(t), ms.Tensor(noise))
    assert extract(tabs["sqrt_alphas_cumprod"], ms.Tensor(t), 4).shape == (2, 1, 1, 1)
    np.testing.assert_allclose(got.asnumpy(), linear.q_sample(x0, t, noise), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_objective_conversions_invert_target(objective):
    rng = np.random.default_rng(2)
    x0, eps = rng.standard_normal((2, 5)), rng.standard_normal((2, 5))
    abar = np.array([[0.97], [0.2]])
    xt = np.sqrt(abar) * x0 + np.sqrt(1 - abar) * eps
    out = target(objective, x0, eps, abar)
    expected = {"eps": eps, "x0": x0, "v": np.sqrt(abar) * eps - np.sqrt(1 - abar) * x0}[objective]
    np.testing.assert_allclose(out, expected, rtol=1e-12)
    np.testing.assert_allclose(predict_x0(objective, xt, out, abar), x0, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(predict_eps(xt, x0, abar), eps, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="objective must be one of 'eps', 'x0', 'v'"):
        target("score", x0, eps, abar)


def test_schedule_and_samplers_import_without_mindspore():
    code = ("import sys; import ddpm_ms.schedule, ddpm_ms.samplers; "
            "assert 'mindspore' not in sys.modules, 'mindspore imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])

"""Samplers against oracles: a perfect denoiser, the DDPM posterior, the eps-form update."""
import math

import numpy as np
import pytest

from ddpm_ms.samplers import (COEF_NAMES, Coefs, make_coef_table, SPACINGS, DDIMInverter, DDIMSampler, DDPMSampler,
                              DPMSolverPP2MSampler, NaiveSampler, generic_update, make_sampler,
                              timestep_grid)
from ddpm_ms.schedule import OBJECTIVES, NoiseSchedule, target

T = 1000
SHAPE = (2, 1, 4, 4)


@pytest.fixture(scope="module")
def sched():
    return NoiseSchedule("linear", T)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    x0 = rng.uniform(-0.9, 0.9, SHAPE)       # inside [-1, 1], so clipping is a no-op for exact pred_x0
    eps0 = rng.standard_normal(SHAPE)
    z = rng.standard_normal(SHAPE)
    return x0, eps0, z


def abar(s, t):
    return 1.0 if t < 0 else s.alphas_cumprod[t]


def perfect_eps(s, x0, x, t):
    """The eps that makes pred_x0 exact: (x - sqrt(abar_t) x0) / sqrt(1 - abar_t)."""
    ab = abar(s, t)
    return (x - math.sqrt(ab) * x0) / math.sqrt(1 - ab)


def perfect_out(s, objective, x0, x, t):
    return target(objective, x0, perfect_eps(s, x0, x, t), abar(s, t))


def test_grids_by_hand():
    assert timestep_grid(T, 10, "leading").tolist() == list(range(0, 1000, 100))
    assert timestep_grid(T, 10, "trailing").tolist() == list(range(99, 1000, 100))
    assert timestep_grid(T, 10, "linspace").tolist() == [0, 111, 222, 333, 444, 555, 666, 777, 888, 999]
    assert timestep_grid(T, 3, "trailing").tolist() == [332, 666, 999]
    assert timestep_grid(T, 6, "linspace").tolist() == [0, 200, 400, 599, 799, 999]  # rounded, not floored
    assert timestep_grid(T, 3, "leading").tolist() == [0, 333, 666]
    for spacing in SPACINGS:
        assert timestep_grid(T, T, spacing).tolist() == list(range(T))
        assert len(timestep_grid(T, 1, spacing)) == 1


def test_t_prev_from_grid(sched):
    s = DDIMSampler(sched, 3, spacing="trailing")
    assert s.timesteps == [999, 666, 332]
    assert s.t_prev == [666, 332, -1]    # not t - T // S
    assert s.coef_table.shape == (3, len(COEF_NAMES))
    assert s.coefs(332).e == 1.0      # abar_prev = 1 on the last step
    assert DDPMSampler(sched).timesteps == list(range(T - 1, -1, -1))


@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("num_steps", [1, 10, 50, 1000])
def test_ddim_eta0_perfect_denoiser_lands_on_x0(sched, data, spacing, num_steps):
    x0, eps0, _ = data
    sampler = DDIMSampler(sched, num_steps, eta=0.0, spacing=spacing)
    x = eps0.copy()
    for t in sampler.timesteps:
        x, pred_x0 = sampler.step(perfect_eps(sched, x0, x, t), t, x)
    np.testing.assert_allclose(x, x0, rtol=0, atol=1e-9)


def test_ddim_eta0_constant_eps_follows_forward_marginals(sched, data):
    """With the true noise as model output, every DDIM step lands on q_sample(x0, t_prev, eps0)."""
    x0, eps0, _ = data
    sampler = DDIMSampler(sched, 7, eta=0.0, spacing="linspace", clip_x0=False)
    x = sched.q_sample(x0, np.full(2, sampler.timesteps[0]), eps0)
    for t, t_prev in zip(sampler.timesteps, sampler.t_prev):
        x, pred_x0 = sampler.step(eps0, t, x)
        np.testing.assert_allclose(pred_x0, x0, atol=1e-10)
        ab = abar(sched, t_prev)
        np.testing.assert_allclose(x, math.sqrt(ab) * x0 + math.sqrt(1 - ab) * eps0, atol=1e-10)


def test_ddpm_noise0_is_posterior_mean(sched, data):
    x0, eps0, _ = data
    sampler = DDPMSampler(sched, clip_x0=True)
    for t in (0, 1, 400, 999):
        xt = sched.q_sample(x0, np.full(2, t), eps0)
        x_prev, pred_x0 = sampler.step(eps0, t, xt, noise=np.zeros(SHAPE))
        np.testing.assert_allclose(pred_x0, x0, atol=1e-9)
        # Ho et al. eq. 7, written out from betas and alphas_cumprod
        ab, ab_prev, beta = abar(sched, t), abar(sched, t - 1), sched.betas[t]
        mean = (math.sqrt(ab_prev) * beta / (1 - ab) * x0
                + math.sqrt(1 - beta) * (1 - ab_prev) / (1 - ab) * xt)
        np.testing.assert_allclose(x_prev, mean, atol=1e-9)
    assert sampler.coefs(0).sigma == 0.0
    assert sampler.coefs(500).sigma ** 2 == pytest.approx(sched.posterior_variance[500], rel=1e-12)


def test_ddpm_unclipped_equals_tutorial_eps_form(sched, data):
    x0, eps0, z = data
    sampler = DDPMSampler(sched, clip_x0=False)
    rng = np.random.default_rng(5)
    x = rng.standard_normal(SHAPE) * 3.0        # far from the data, so clipping would matter
    model_out = rng.standard_normal(SHAPE)
    for t in (999, 500, 10, 1):
        beta, ab = sched.betas[t], abar(sched, t)
        sigma = math.sqrt(beta * (1 - abar(sched, t - 1)) / (1 - ab))
        expected = 1 / math.sqrt(1 - beta) * (x - beta / math.sqrt(1 - ab) * model_out) + sigma * z
        got, _ = sampler.step(model_out, t, x, noise=z)
        np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-10)
    got_clipped, _ = DDPMSampler(sched, clip_x0=True).step(model_out, 500, x, noise=z)
    assert not np.allclose(got_clipped, got)


def test_ddim_eta1_all_steps_is_ddpm_variance(sched):
    ddim, ddpm = DDIMSampler(sched, T, eta=1.0), DDPMSampler(sched)
    sigma_ddim = ddim.column("sigma")
    sigma_ddpm = ddpm.column("sigma")
    assert ddim.timesteps == ddpm.timesteps
    np.testing.assert_allclose(sigma_ddim ** 2, sched.posterior_variance[::-1], rtol=1e-10, atol=1e-300)
    np.testing.assert_allclose(sigma_ddim, sigma_ddpm, rtol=1e-10)


@pytest.mark.parametrize("make", [
    lambda s, o: DDPMSampler(s, objective=o),
    lambda s, o: DDIMSampler(s, 20, eta=0.5, spacing="trailing", objective=o),
    lambda s, o: NaiveSampler(s, 20, objective=o),
    lambda s, o: DDIMInverter(s, 20, objective=o),
])
def test_objectives_agree_with_perfect_outputs(sched, data, make):
    x0, eps0, z = data
    results = {}
    for objective in OBJECTIVES:
        sampler = make(sched, objective)
        t = sampler.timesteps[len(sampler.timesteps) // 2]
        x = sched.q_sample(x0, np.full(2, t), eps0)
        results[objective] = sampler.step(perfect_out(sched, objective, x0, x, t), t, x, noise=z)[0]
    np.testing.assert_allclose(results["x0"], results["eps"], rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(results["v"], results["eps"], rtol=1e-9, atol=1e-9)


def test_naive_coefficients(sched, data):
    x0, eps0, _ = data
    sampler = NaiveSampler(sched, 4, spacing="leading")
    assert sampler.timesteps == [750, 500, 250, 0]
    for t, m in zip(sampler.timesteps, (1 / 4, 1 / 3, 1 / 2, 1.0)):
        c = sampler.coefs(t)
        assert (c.e, c.g, c.f, c.sigma) == pytest.approx((m, 1 - m, 0.0, 0.0), abs=1e-15)
    x = eps0.copy()
    out = perfect_eps(sched, x0, x, 500)
    got, pred_x0 = sampler.step(out, 500, x)
    np.testing.assert_allclose(pred_x0, x0, atol=1e-9)
    np.testing.assert_allclose(got, 2 / 3 * x + 1 / 3 * x0, atol=1e-9)


@pytest.mark.parametrize("spacing", SPACINGS)
def test_inversion_round_trip(sched, data, spacing):
    x0, eps0, _ = data
    inverter = DDIMInverter(sched, 25, spacing=spacing)
    assert inverter.timesteps == sorted(inverter.timesteps) and inverter.t_from[0] == -1
    # (1) the true noise as model output: inversion follows q_sample(x0, t, eps0) exactly
    x = x0.copy()
    for t in inverter.timesteps:
        x, _ = inverter.step(eps0, t, x)
        np.testing.assert_allclose(x, sched.q_sample(x0, np.full(2, t), eps0), atol=1e-10)
    sampler = DDIMSampler(sched, 25, eta=0.0, spacing=spacing, clip_x0=False)
    assert sampler.timesteps == inverter.timesteps[::-1]
    for t in sampler.timesteps:
        x, _ = sampler.step(eps0, t, x)
    np.testing.assert_allclose(x, x0, atol=1e-10)
    # (2) the x-dependent perfect denoiser: invert then reconstruct returns the image
    x = x0.copy()
    for t in inverter.timesteps:
        x, _ = inverter.step(perfect_eps(sched, x0, x, t), t, x)
    for t in sampler.timesteps:
        x, _ = sampler.step(perfect_eps(sched, x0, x, t), t, x)
    np.testing.assert_allclose(x, x0, atol=1e-9)


def test_inverter_first_step_by_hand(sched, data):
    x0, eps0, _ = data
    inverter = DDIMInverter(sched, 10, spacing="trailing")
    t = inverter.timesteps[0]
    assert t == 99
    got, _ = inverter.step(eps0, t, x0)   # from clean: x = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps
    ab = sched.alphas_cumprod[99]
    np.testing.assert_allclose(got, math.sqrt(ab) * x0 + math.sqrt(1 - ab) * eps0, atol=1e-12)


def test_generic_update_linear_form():
    coefs = Coefs(a=2.0, b=3.0, c=0.5, d=-1.0, e=0.25, f=4.0, g=-2.0, sigma=0.1, e_last=0.0)
    x, out, noise = np.array([0.1, -0.3]), np.array([0.2, 0.8]), np.array([1.0, -1.0])
    x_prev, pred_x0 = generic_update(coefs, out, x, noise, clip_x0=True)
    p = np.clip(2.0 * x + 3.0 * out, -1, 1)              # [0.8, 1.8] -> [0.8, 1.0]
    np.testing.assert_allclose(pred_x0, [0.8, 1.0])
    e = 0.5 * x - p
    np.testing.assert_allclose(x_prev, 0.25 * p + 4.0 * e - 2.0 * x + 0.1 * noise)
    last = np.array([0.3, -0.7])
    np.testing.assert_array_equal(generic_update(coefs, out, x, noise, True, last)[0], x_prev)  # e_last = 0
    got, _ = generic_update(coefs._replace(e_last=1.5), out, x, noise, True, last)
    np.testing.assert_allclose(got, x_prev + 1.5 * last)


@pytest.mark.parametrize("make", [
    lambda s: DDPMSampler(s),
    lambda s: DDIMSampler(s, 10, eta=0.7, spacing="trailing", objective="v"),
    lambda s: NaiveSampler(s, 10, objective="x0"),
    lambda s: DDIMInverter(s, 10),
])
def test_numpy_and_mindspore_give_the_same_numbers(sched, make):
    import mindspore as ms
    sampler = make(sched)
    rng = np.random.default_rng(3)
    x = rng.standard_normal(SHAPE).astype(np.float32)
    out = rng.standard_normal(SHAPE).astype(np.float32)
    z = rng.standard_normal(SHAPE).astype(np.float32)
    t = sampler.timesteps[3]
    ref = sampler.step(out, t, x, noise=z)
    got = sampler.step(ms.Tensor(out), t, ms.Tensor(x), noise=ms.Tensor(z))
    for r, g in zip(ref, got):
        assert isinstance(g, ms.Tensor) and g.dtype == ms.float32
        np.testing.assert_allclose(g.asnumpy(), r, rtol=1e-5, atol=1e-5)
    drawn, _ = sampler.step(ms.Tensor(out), t, ms.Tensor(x))   # noise drawn inside, MindSpore kind
    assert isinstance(drawn, ms.Tensor) and drawn.shape == SHAPE


def test_noise_drawn_only_when_needed(sched, data):
    x0, eps0, _ = data
    ddim = DDIMSampler(sched, 10, eta=0.0)
    a = ddim.step(eps0, 900, eps0)[0]
    b = ddim.step(eps0, 900, eps0)[0]
    np.testing.assert_array_equal(a, b)            # eta = 0: deterministic without a noise argument
    ddpm = DDPMSampler(sched)
    assert not np.array_equal(ddpm.step(eps0, 900, eps0)[0], ddpm.step(eps0, 900, eps0)[0])


def test_make_sampler(sched):
    assert isinstance(make_sampler("ddpm", sched, 50, 0.0, "leading", "eps", True), DDPMSampler)
    ddim = make_sampler("ddim", sched, 25, 0.5, "linspace", "v", False)
    assert isinstance(ddim, DDIMSampler) and ddim.num_steps == 25 and ddim.eta == 0.5
    assert ddim.objective == "v" and not ddim.clip_x0
    assert isinstance(make_sampler("naive", sched, num_steps=5), NaiveSampler)


def test_coef_table_columns_by_name(sched):
    """make_coef_table puts each named column where COEF_NAMES (the Coefs fields) says, a
    sampler's column(name) and coefs(t) read it back by name, and a missing name is an error."""
    cols = {name: np.arange(3) + 10 * k for k, name in enumerate(COEF_NAMES)}
    table = make_coef_table(**cols)
    assert table.shape == (3, 9) and table.dtype == np.float64
    for k, name in enumerate(COEF_NAMES):
        np.testing.assert_array_equal(table[:, k], cols[name])
    assert make_coef_table(**{**cols, "sigma": 0.0})[:, COEF_NAMES.index("sigma")].tolist() == [0, 0, 0]
    with pytest.raises(TypeError):
        make_coef_table(**{k: v for k, v in cols.items() if k != "e_last"})
    ddim = DDIMSampler(sched, 10, eta=1.0)
    t = ddim.timesteps[3]
    abar, abar_prev = sched.alphas_cumprod[t], sched.alphas_cumprod[ddim.t_prev[3]]
    row = ddim.coefs(t)
    assert row.e == pytest.approx(math.sqrt(abar_prev), rel=1e-12)                    # DDIM eq. 12
    assert row.sigma ** 2 == pytest.approx((1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev), rel=1e-12)
    assert row.f ** 2 == pytest.approx(1 - abar_prev - row.sigma ** 2, rel=1e-12)
    assert ddim.column("sigma")[3] == row.sigma and ddim.column("e")[3] == row.e


@pytest.mark.parametrize("build, match", [
    (lambda s: DDIMSampler(s, 10, eta=-0.1), r"eta must be in \[0, 1\]"),
    (lambda s: DDIMSampler(s, 10, eta=1.5), r"eta must be in \[0, 1\] .*got 1.5"),
    (lambda s: DDIMSampler(s, 0), r"num_steps must be an integer in \[1, 1000\]"),
    (lambda s: DDIMSampler(s, 1001), r"num_steps must be an integer in \[1, 1000\]"),
    (lambda s: NaiveSampler(s, 2.5), r"num_steps must be an integer in \[1, 1000\]"),
    (lambda s: DDIMSampler(s, 10, spacing="uniform"),
     r"spacing must be one of 'leading', 'trailing', 'linspace'"),
    (lambda s: DDIMInverter(s, 10, spacing="quad"), r"spacing must be one of"),
    (lambda s: DDPMSampler(s, objective="score"), r"objective must be one of 'eps', 'x0', 'v'"),
    (lambda s: make_sampler("plms", s), r"sampler must be one of 'ddpm', 'ddim', 'naive'"),
    (lambda s: DDIMSampler(s, 10).step(np.zeros(1), 5, np.zeros(1)), r"t=5 is not one of"),
])
def test_bad_arguments(sched, build, match):
    with pytest.raises(ValueError, match=match):
        build(sched)


# ----------------------------------------------------------------------------- DPM-Solver++(2M)


def diffusers_dpm_grid(T, S, spacing):
    """DPMSolverMultistepScheduler.set_timesteps' grids (descending), from diffusers' formulas."""
    if spacing == "linspace":
        return np.linspace(0, T - 1, S + 1).round()[::-1][:-1].astype(np.int64)
    if spacing == "leading":
        return (np.arange(0, S + 1) * (T // (S + 1))).round()[::-1][:-1].astype(np.int64)
    return np.arange(T, 0, -T / S).round().astype(np.int64) - 1


def dpmpp2m_reference(sched, objective, timesteps, model, x, final="zero", lower_order_final=True,
                      max_order=2):
    """DPM-Solver++(2M) written out from Lu et al. 2022 (Algorithm 2) and diffusers' step,
    independently of ddpm_ms' coefficient tables. model(i, x) -> output at step i;
    max_order=1 gives first order (DDIM) everywhere. Returns x after each step (float64 list)."""
    abar = np.cumprod(1.0 - sched.betas)
    levels = [(math.sqrt(abar[t]), math.sqrt(1.0 - abar[t])) for t in timesteps]
    levels.append((1.0, 0.0) if final == "zero" else (math.sqrt(abar[0]), math.sqrt(1.0 - abar[0])))
    with np.errstate(divide="ignore"):
        lam = [np.log(a) - np.log(s) for a, s in levels]  # +inf for clean data
    n, data_preds, xs = len(timesteps), [], []
    for i in range(n):
        (alpha_s, sigma_s), (alpha_t, sigma_t) = levels[i], levels[i + 1]
        out = model(i, x)
        if objective == "eps":
            m0 = (x - sigma_s * out) / alpha_s
        elif objective == "x0":
            m0 = out
        else:
            m0 = alpha_s * x - sigma_s * out
        data_preds.append(m0)
        h = lam[i + 1] - lam[i]
        last = i == n - 1
        first_order = max_order == 1 or i == 0 or (
            last and (final == "zero" or (lower_order_final and n < 15)))
        if first_order:
            x = (sigma_t / sigma_s) * x - alpha_t * (np.exp(-h) - 1.0) * m0
        else:
            r = (lam[i] - lam[i - 1]) / h
            d0, d1 = m0, (1.0 / r) * (m0 - data_preds[-2])
            x = ((sigma_t / sigma_s) * x - alpha_t * (np.exp(-h) - 1.0) * d0
                 - 0.5 * alpha_t * (np.exp(-h) - 1.0) * d1)
        xs.append(x)
    return xs


def run_dpm(sampler, model, x):
    xs, pred_x0 = [], None
    for i, t in enumerate(sampler.timesteps):
        x, pred_x0 = sampler.step(model(i, x), t, x, last_x0=pred_x0)
        xs.append(x)
    return xs


DPM_CASES = [(1, "leading"), (2, "trailing"), (3, "linspace"), (5, "trailing"), (10, "leading"),
             (14, "linspace"), (15, "trailing"), (20, "linspace"), (25, "leading"), (50, "trailing")]


@pytest.mark.parametrize("objective", OBJECTIVES)
@pytest.mark.parametrize("num_steps, spacing", DPM_CASES)
def test_dpmpp2m_matches_numpy_reference_step_by_step(sched, objective, num_steps, spacing):
    rng = np.random.default_rng(num_steps)
    x_T = rng.standard_normal(SHAPE)
    outs = rng.standard_normal((num_steps,) + SHAPE)   # random model outputs, one per step

    def model(i, x):
        return outs[i] + 0.1 * x                        # depends on x too

    for final in ("zero", "sigma_min"):
        for lower_order_final in (True, False):
            sampler = DPMSolverPP2MSampler(sched, num_steps, spacing=spacing, objective=objective,
                                           clip_x0=False, lower_order_final=lower_order_final,
                                           final_sigmas_type=final)
            assert sampler.timesteps == diffusers_dpm_grid(T, num_steps, spacing).tolist()
            want = dpmpp2m_reference(sched, objective, sampler.timesteps, model, x_T, final,
                                     lower_order_final)
            got = run_dpm(sampler, model, x_T)
            for i, (g, w) in enumerate(zip(got, want)):
                np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-6, err_msg=f"{final} {i}")
    if num_steps >= 3:  # the check has teeth: first order everywhere is far from got
        first = dpmpp2m_reference(sched, objective, sampler.timesteps, model, x_T, final,
                                  lower_order_final, max_order=1)
        assert max(np.abs(g - f).max() for g, f in zip(got, first)) > 1e-3


def test_dpmpp2m_orders_and_final_step(sched):
    s = DPMSolverPP2MSampler(sched, 10, spacing="leading")
    assert s.timesteps == [900, 810, 720, 630, 540, 450, 360, 270, 180, 90]   # t = 0 never evaluated
    assert s.t_prev == s.timesteps[1:] + [-1]
    assert s.orders == [1] + [2] * 8 + [1]          # the step to clean data is always first order
    last = s.coefs(90)
    assert (last.g, last.e, last.e_last) == (0.0, 1.0, 0.0)   # x_0 = pred_x0
    assert s.uses_last_x0
    m = DPMSolverPP2MSampler(sched, 10, spacing="trailing", final_sigmas_type="sigma_min")
    assert m.t_prev[-1] == 0 and m.orders[-1] == 1  # S < 15: lower_order_final
    assert DPMSolverPP2MSampler(sched, 10, final_sigmas_type="sigma_min",
                                lower_order_final=False).orders[-1] == 2
    assert DPMSolverPP2MSampler(sched, 15, final_sigmas_type="sigma_min").orders[-1] == 2
    assert DPMSolverPP2MSampler(sched, 1).orders == [1]
    assert DPMSolverPP2MSampler(sched, T, spacing="linspace").timesteps == list(range(T - 1, -1, -1))
    for other in (DDPMSampler(sched), DDIMSampler(sched, 10, eta=1.0), NaiveSampler(sched, 10),
                  DDIMInverter(sched, 10)):
        assert not other.uses_last_x0 and not other.column("e_last").any()


def test_dpmpp2m_first_order_step_is_ddim(sched, data):
    """First order DPM-Solver++ is DDIM with eta 0 (Lu et al. 2022): same (t, t_prev), same x."""
    x0, eps0, _ = data
    rng = np.random.default_rng(7)
    x, out = rng.standard_normal(SHAPE), rng.standard_normal(SHAPE)
    dpm = DPMSolverPP2MSampler(sched, 10, spacing="trailing", objective="v", clip_x0=False)
    ddim = DDIMSampler(sched, 10, eta=0.0, spacing="trailing", objective="v", clip_x0=False)
    assert dpm.timesteps == ddim.timesteps and dpm.t_prev == ddim.t_prev
    for t in (dpm.timesteps[0], dpm.timesteps[-1]):   # the two first-order steps
        np.testing.assert_allclose(dpm.step(out, t, x)[0], ddim.step(out, t, x)[0], rtol=1e-12, atol=1e-12)
    t = dpm.timesteps[3]
    with pytest.raises(ValueError, match="needs last_x0"):
        dpm.step(out, t, x)
    second = dpm.step(out, t, x, last_x0=x0)[0]
    assert np.abs(second - ddim.step(out, t, x)[0]).max() > 1e-3


@pytest.mark.parametrize("objective", OBJECTIVES)
@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("num_steps", [1, 2, 10, 25])
def test_dpmpp2m_perfect_denoiser_lands_on_x0(sched, data, objective, spacing, num_steps):
    x0, eps0, _ = data
    sampler = DPMSolverPP2MSampler(sched, num_steps, spacing=spacing, objective=objective)
    x, pred_x0 = eps0.copy(), None
    for t in sampler.timesteps:
        x, pred_x0 = sampler.step(perfect_out(sched, objective, x0, x, t), t, x, last_x0=pred_x0)
        np.testing.assert_allclose(pred_x0, x0, atol=1e-9)
    np.testing.assert_allclose(x, x0, rtol=0, atol=1e-9)


def test_dpmpp2m_true_noise_follows_forward_marginals(sched, data):
    """With the true noise as model output every step lands on q_sample(x0, t_prev, eps0)."""
    x0, eps0, _ = data
    sampler = DPMSolverPP2MSampler(sched, 12, spacing="linspace", clip_x0=False,
                                   final_sigmas_type="sigma_min", lower_order_final=False)
    x, pred_x0 = sched.q_sample(x0, np.full(2, sampler.timesteps[0]), eps0), None
    for t, t_prev in zip(sampler.timesteps, sampler.t_prev):
        x, pred_x0 = sampler.step(eps0, t, x, last_x0=pred_x0)
        ab = abar(sched, t_prev)
        np.testing.assert_allclose(x, math.sqrt(ab) * x0 + math.sqrt(1 - ab) * eps0, atol=1e-10)


def test_dpmpp2m_is_second_order_on_gaussian_data(sched):
    """Data x0 ~ N(mu, s^2): the exact denoiser is linear and the probability-flow ODE keeps
    (x - alpha mu) / sqrt(alpha^2 s^2 + sigma^2) constant. From t = 999 to t = 199 (on every
    trailing grid below) the error of DPM-Solver++(2M) shrinks about 4x per doubling of S
    (DDIM: about 2x)."""
    mu, s = 0.3, 0.5
    x_T = np.random.default_rng(0).standard_normal(SHAPE)

    def exact(t_from, t_to, x):
        (a0, a1) = (abar(sched, t_from), abar(sched, t_to))
        z = (x - math.sqrt(a0) * mu) / math.sqrt(a0 * s * s + 1 - a0)
        return math.sqrt(a1) * mu + math.sqrt(a1 * s * s + 1 - a1) * z

    def error(sampler):
        x, pred_x0 = x_T, None
        for t, t_prev in zip(sampler.timesteps, sampler.t_prev):
            ab = abar(sched, t)
            x0_hat = mu + math.sqrt(ab) * s * s / (ab * s * s + 1 - ab) * (x - math.sqrt(ab) * mu)
            x, pred_x0 = sampler.step(x0_hat, t, x, last_x0=pred_x0)
            if t_prev == 199:
                return np.abs(x - exact(999, 199, x_T)).max()
        raise AssertionError("199 is not on the grid")

    def errors(make):
        return [error(make(n)) for n in (20, 40, 80)]
    dpm = errors(lambda n: DPMSolverPP2MSampler(sched, n, spacing="trailing", objective="x0", clip_x0=False))
    ddim = errors(lambda n: DDIMSampler(sched, n, spacing="trailing", objective="x0", clip_x0=False))
    assert dpm[0] < ddim[0] / 5     # measured: 0.0059 against 0.036 at S = 20
    for coarse, fine in zip(dpm, dpm[1:]):
        assert 3.0 < coarse / fine < 5.0, dpm
    for coarse, fine in zip(ddim, ddim[1:]):
        assert 1.5 < coarse / fine < 2.5, ddim


def test_dpmpp2m_compiled_step_matches_numpy():
    """sampling.sample (one compiled SamplingStep, last_x0 fed back) against the numpy
    sampler.step loop with the same network."""
    import mindspore as ms
    from mindspore import Tensor, nn

    from ddpm_ms.sampling import initial_noise, sample

    class Linear(nn.Cell):
        def __init__(self):
            super().__init__()
            self.w = Tensor(np.float32(0.7))

        def construct(self, x, t):
            return self.w * x + 0.002 * t.astype(ms.float32).reshape((-1, 1, 1, 1)) - 0.5

    sched50 = NoiseSchedule("linear", 50)
    net = Linear()
    x_T = initial_noise(4, 2, (1, 4, 4))
    for objective in ("eps", "v"):
        sampler = DPMSolverPP2MSampler(sched50, 8, spacing="linspace", objective=objective, clip_x0=True)
        x, pred_x0, wrong = x_T.astype(np.float64), None, x_T.astype(np.float64)
        for t in sampler.timesteps:
            def out(x_):
                return 0.7 * x_ + 0.002 * t - 0.5
            x, pred_x0 = sampler.step(out(x), t, x, last_x0=pred_x0)
            wrong, _ = sampler.step(out(wrong), t, wrong, last_x0=np.zeros_like(wrong))
        got = sample(net, sampler, 2, (1, 4, 4), x_T=x_T, progress=False, jit=True)
        np.testing.assert_allclose(got, np.clip(x, -1, 1), atol=1e-5)
        assert np.abs(np.clip(wrong, -1, 1) - got).max() > 1e-3   # last_x0 does reach the graph


def test_dpmpp2m_against_diffusers():
    """diffusers' DPMSolverMultistepScheduler(algorithm_type='dpmsolver++', solver_order=2), step by
    step (bench/check_dpmsolver.py); skipped where diffusers is not installed."""
    pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "bench" / "check_dpmsolver.py"
    spec = importlib.util.spec_from_file_location("check_dpmsolver", path)
    check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check)
    for objective in OBJECTIVES:
        for num_steps, spacing in DPM_CASES:
            for final in ("zero", "sigma_min"):
                kw = dict(objective=objective, spacing=spacing, num_steps=num_steps, final_sigmas_type=final)
                r = check.compare(outputs="random", **kw)
                assert r["timesteps_equal"], kw
                assert r["max_rel_diff"] < 1e-5, (kw, r)
                if num_steps >= 5:  # below, eps at t = 999 divides diffusers' float32 rounding by 0.0064
                    assert check.compare(outputs="denoiser", **kw)["max_abs_diff"] < 1e-5, kw

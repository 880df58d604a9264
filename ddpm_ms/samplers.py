"""Reverse-process samplers: small objects with ``.timesteps`` and ``.step``; the caller owns the loop.

    x = noise
    for t in sampler.timesteps:
        x, pred_x0 = sampler.step(model(x, t), t, x)

Every sampler reduces its update to ONE linear form driven by a per-step coefficient row
``Coefs(a, b, c, d, e, f, g, sigma, e_last)`` (a named tuple; ``COEF_NAMES`` are its field
names and the column order of ``coef_table``), applied by ``generic_update``:

    pred_x0 = a * x + b * model_out          objective conversion at abar_t (schedule.x0_coefs)
    pred_x0 = clip(pred_x0, -1, 1)           if clip_x0
    eps     = c * x + d * pred_x0            eps re-derived from the (clipped) pred_x0 (schedule.eps_coefs)
    x_prev  = e * pred_x0 + f * eps + g * x + sigma * noise + e_last * last_x0

``last_x0`` is the pred_x0 the previous step returned. Only the multistep DPM-Solver++(2M)
uses it (``e_last`` is 0 in every row of DDPM, DDIM, naive and the inverter, whose numbers are
those of the 8-term form), so the loop with a multistep solver reads

    x, pred_x0 = noise, None
    for t in sampler.timesteps:
        x, pred_x0 = sampler.step(model(x, t), t, x, last_x0=pred_x0)

``sampler.coef_table`` (float64 [num_steps, 9], row i for ``timesteps[i]``, columns in
``COEF_NAMES`` order) holds the rows; read a column with ``sampler.column("sigma")`` and a row
with ``sampler.coefs(t)``. The same ``generic_update`` runs on numpy arrays, on MindSpore
tensors and, with rows gathered from a tensor step index, inside a compiled MindSpore graph.
MindSpore is imported lazily.
"""
from typing import NamedTuple

import numpy as np

from ddpm_ms.schedule import OBJECTIVES, check_choice, eps_coefs, x0_coefs



class Coefs(NamedTuple):
    """The coefficients of one step of the linear update (module docstring); each a Python float,
    a numpy array or a tensor broadcastable to x."""
    a: object       # pred_x0 = a * x + b * model_out
    b: object
    c: object       # eps = c * x + d * pred_x0
    d: object
    e: object       # x_prev = e * pred_x0 + f * eps + g * x + sigma * noise + e_last * last_x0
    f: object
    g: object
    sigma: object
    e_last: object


COEF_NAMES = Coefs._fields   # the column order of every coef_table


def make_coef_table(**columns):
    """float64 [S, 9] table from the nine columns given by name (arrays of length S; scalars
    broadcast); a missing or unknown name is a TypeError."""
    cols = Coefs(**columns)
    n = max(np.size(v) for v in cols)
    return np.stack([np.broadcast_to(np.asarray(v, np.float64), (n,)) for v in cols], axis=1)

SAMPLERS = ("ddpm", "ddim", "naive", "dpmpp2m")
SPACINGS = ("leading", "trailing", "linspace", "lucid")
FINAL_SIGMAS = ("zero", "sigma_min")


def generic_update(coefs, model_out, x, noise, clip_x0, last_x0=0.0):
    """One reverse step in the linear form above; returns (x_prev, pred_x0), both shaped like x.

    coefs: a ``Coefs``; model_out, x, noise, last_x0: [B, C, H, W] arrays or tensors (noise and
    last_x0 may be 0.0); clip_x0: Python bool. The e_last term is added last, so a row with
    e_last = 0 gives bit for bit the 8-term result (x + 0.0 == x).
    """
    return linear_update(coefs.a, coefs.b, coefs.c, coefs.d, coefs.e, coefs.f, coefs.g, coefs.sigma,
                         coefs.e_last, model_out, x, noise, clip_x0, last_x0)


def linear_update(a, b, c, d, e, f, g, sigma, e_last, model_out, x, noise, clip_x0, last_x0=0.0):
    """``generic_update`` with the nine coefficients as separate arguments: the form a compiled
    step calls, because building a ``Coefs`` named tuple inside a MindSpore graph falls back to
    Python on the host (PyExecute nodes, found by ``ddpm_ms.lint_graph``)."""
    pred_x0 = a * x + b * model_out
    if clip_x0:
        pred_x0 = pred_x0.clip(-1.0, 1.0)
    eps = c * x + d * pred_x0
    x_prev = e * pred_x0 + f * eps + g * x + sigma * noise
    x_prev = x_prev + e_last * last_x0
    return x_prev, pred_x0


def timestep_grid(num_timesteps, num_steps, spacing="leading"):
    """Ascending sub-sequence of [0, T-1] with ``num_steps`` distinct timesteps (int64 array).

    leading:  i * (T // S)                          for i in range(S)     (DDIM paper, diffusers)
    trailing: round(T - i * T / S) - 1              for i in range(S)     (Lin et al. 2023, ends at T-1)
    linspace: round(linspace(0, T - 1, S))
    lucid:    trunc(linspace(-1, T - 1, S + 1))[1:]                    (denoising-diffusion-pytorch's DDIM
              grid, ends at T-1; ``lucid_grid`` rounds the linspace as its float32 torch code does)
    """
    check_choice("spacing", spacing, SPACINGS)
    T, S = num_timesteps, num_steps
    if int(S) != S or not 1 <= S <= T:
        raise ValueError(f"num_steps must be an integer in [1, {T}] (the schedule's T), got {S!r}")
    S = int(S)
    if spacing == "leading":
        grid = np.arange(S) * (T // S)
    elif spacing == "trailing":
        grid = np.round(T - np.arange(S) * T / S).astype(np.int64)[::-1] - 1
    elif spacing == "lucid":
        grid = lucid_grid(T, S)
    else:
        grid = np.round(np.linspace(0, T - 1, S)).astype(np.int64)
    grid = np.asarray(grid, dtype=np.int64)
    assert len(np.unique(grid)) == S and grid[0] >= 0 and grid[-1] <= T - 1, grid
    return grid


def lucid_grid(num_timesteps, num_steps):
    """int64 [S]: trunc(linspace(-1, T - 1, S + 1))[1:], the linspace in float32 rounded exactly as
    torch 2.x's CPU ``torch.linspace`` computes it (step = (end - start) / S in float32; entry i =
    start + step * i below the middle, end - step * (S - i) from it, each a fused multiply-add),
    so truncation lands where denoising-diffusion-pytorch's ``ddim_sample`` lands (a float64
    linspace truncates e.g. 511 where torch has 510.99997 for T = 1024, S = 14)."""
    T, S = int(num_timesteps), int(num_steps)
    start, end = np.float32(-1.0), np.float32(T - 1)
    step = np.float64(np.float32((end - start) / np.float32(S)))
    i = np.arange(S + 1, dtype=np.float64)
    # float32 products are exact in float64, so one rounding to float32 is the fused result
    values = np.where(i < (S + 1) // 2, start + step * i, end - step * (S - i)).astype(np.float32)
    return np.trunc(values).astype(np.int64)[1:]


def _draw_noise(x):
    """N(0, I) shaped and typed like x: numpy for numpy x, MindSpore (ops.randn) otherwise."""
    if isinstance(x, np.ndarray):
        return np.random.standard_normal(x.shape).astype(x.dtype)
    from mindspore import ops
    return ops.randn(tuple(x.shape), dtype=x.dtype)


class CoefSampler:
    """Base: a descending list ``timesteps`` and a float64 ``coef_table`` [len(timesteps), 9]."""

    def __init__(self, schedule, timesteps, coef_table, clip_x0):
        self.schedule = schedule
        self.timesteps = [int(t) for t in timesteps]
        self.coef_table = np.asarray(coef_table, dtype=np.float64)
        self.clip_x0 = bool(clip_x0)
        self._index = {t: i for i, t in enumerate(self.timesteps)}
        assert self.coef_table.shape == (len(self.timesteps), len(COEF_NAMES))

    @property
    def num_steps(self):
        return len(self.timesteps)

    def index(self, t):
        """Row of ``coef_table`` for timestep t (ValueError if t is not on this sampler's grid)."""
        try:
            return self._index[int(t)]
        except KeyError:
            raise ValueError(f"t={t} is not one of this sampler's timesteps "
                             f"({self.timesteps[0]} ... {self.timesteps[-1]})") from None

    def coefs(self, t):
        """The coefficients for timestep t as a ``Coefs`` of Python floats."""
        return Coefs(*self.coef_table[self.index(t)].tolist())

    def column(self, name):
        """One coefficient over all steps, float64 [num_steps] (row i for ``timesteps[i]``)."""
        return self.coef_table[:, COEF_NAMES.index(name)]

    @property
    def uses_last_x0(self):
        """True when some step reads the previous step's pred_x0 (multistep solvers)."""
        return bool(np.any(self.column("e_last") != 0.0))

    def step(self, model_out, t, x, noise=None, last_x0=None):
        """One step at timestep t (Python int) -> (x_prev, pred_x0).

        model_out, x: [B, C, H, W] numpy arrays or MindSpore tensors (same kind); noise: the
        N(0, I) draw for this step, drawn here when None (not drawn when sigma = 0);
        last_x0: the pred_x0 the previous step returned (needed where e_last != 0, ignored
        elsewhere).
        """
        row = self.coefs(t)  # Python floats: work with either array kind
        if row.sigma == 0.0:
            noise = 0.0
        elif noise is None:
            noise = _draw_noise(x)
        if row.e_last == 0.0:
            last_x0 = 0.0
        elif last_x0 is None:
            raise ValueError(f"step t={t} of this multistep sampler needs last_x0, the pred_x0 "
                             "returned by the previous step")
        return generic_update(row, model_out, x, noise, self.clip_x0, last_x0)


def _conversion_coefs(objective, abar):
    """Columns a, b, c, d (objective conversion and eps re-derivation) at levels abar [S]."""
    check_choice("objective", objective, OBJECTIVES)
    a, b = x0_coefs(objective, abar)
    c, d = eps_coefs(abar)
    return [np.broadcast_to(v, abar.shape) for v in (a, b, c, d)]


class DDPMSampler(CoefSampler):
    """Ancestral DDPM sampling over all T steps (Ho et al. Algorithm 2, via the posterior, eq. 7).

    x_{t-1} = coef1_t * pred_x0 + coef2_t * x_t + sqrt(posterior_variance_t) * z   (z = 0 at t = 0)
    With the eps objective and clip_x0=False this equals Ho et al. eq. 11:
    1/sqrt(alpha_t) (x_t - beta_t / sqrt(1 - abar_t) eps) + sigma_t z, sigma_t^2 = beta~_t.
    """

    def __init__(self, schedule, objective="eps", clip_x0=True):
        T = schedule.num_timesteps
        ts = np.arange(T - 1, -1, -1)
        abar = schedule.alphas_cumprod[ts]
        a, b, c, d = _conversion_coefs(objective, abar)
        e = schedule.posterior_mean_coef1[ts]
        g = schedule.posterior_mean_coef2[ts]
        sigma = np.sqrt(schedule.posterior_variance[ts])  # 0 at t = 0 since abar_prev = 1
        table = make_coef_table(a=a, b=b, c=c, d=d, e=e, f=0.0, g=g, sigma=sigma, e_last=0.0)
        super().__init__(schedule, ts, table, clip_x0)
        self.objective = objective
        self.t_prev = [t - 1 for t in self.timesteps]


def _descending_grid(schedule, num_steps, spacing):
    grid = timestep_grid(schedule.num_timesteps, num_steps, spacing)
    ts = grid[::-1]
    t_prev = np.append(ts[1:], -1)  # from the grid itself; -1 = clean data (abar = 1)
    return ts, t_prev


def _abar(schedule, ts):
    """abar at timesteps ts, with 1 for t = -1 (clean data)."""
    ts = np.asarray(ts)
    return np.where(ts >= 0, schedule.alphas_cumprod[np.maximum(ts, 0)], 1.0)


class DDIMSampler(CoefSampler):
    """DDIM (Song et al. 2020) on a sub-grid of S timesteps, eq. 12 with sigma from eq. 16.

    x_prev = sqrt(abar_prev) pred_x0 + sqrt(1 - abar_prev - sigma^2) eps + sigma z
    sigma  = eta * sqrt((1 - abar_prev) / (1 - abar_t)) * sqrt(1 - abar_t / abar_prev)
    t_prev is the next (lower) entry of the grid, abar_prev = 1 on the last step. eta = 0 is
    deterministic DDIM; eta = 1 over all T steps is DDPM's posterior variance.
    """

    def __init__(self, schedule, num_steps=50, eta=0.0, spacing="leading", objective="eps",
                 clip_x0=True):
        if not 0.0 <= eta <= 1.0:   # beyond 1, sigma^2 can exceed 1 - abar_prev (f imaginary)
            raise ValueError(f"eta must be in [0, 1] (0 = deterministic DDIM, 1 = DDPM-like), got {eta!r}")
        ts, t_prev = _descending_grid(schedule, num_steps, spacing)
        abar, abar_prev = _abar(schedule, ts), _abar(schedule, t_prev)
        a, b, c, d = _conversion_coefs(objective, abar)
        sigma = eta * np.sqrt((1.0 - abar_prev) / (1.0 - abar)) * np.sqrt(1.0 - abar / abar_prev)
        e = np.sqrt(abar_prev)
        f = np.sqrt(np.maximum(1.0 - abar_prev - sigma ** 2, 0.0))  # >= 0 for eta <= 1; max absorbs rounding
        table = make_coef_table(a=a, b=b, c=c, d=d, e=e, f=f, g=0.0, sigma=sigma, e_last=0.0)
        super().__init__(schedule, ts, table, clip_x0)
        self.eta, self.spacing, self.objective = float(eta), spacing, objective
        self.t_prev = [int(t) for t in t_prev]


class NaiveSampler(CoefSampler):
    """The baseline people try first: at step i of n, move a fraction m = 1/(n - i) of the way
    from x to pred_x0 (x = (1 - m) x + m pred_x0); the last step lands on pred_x0. No noise.
    Timesteps as DDIM's grid."""

    def __init__(self, schedule, num_steps=50, spacing="leading", objective="eps", clip_x0=True):
        ts, t_prev = _descending_grid(schedule, num_steps, spacing)
        n = len(ts)
        a, b, c, d = _conversion_coefs(objective, _abar(schedule, ts))
        m = 1.0 / (n - np.arange(n))
        table = make_coef_table(a=a, b=b, c=c, d=d, e=m, f=0.0, g=1.0 - m, sigma=0.0, e_last=0.0)
        super().__init__(schedule, ts, table, clip_x0)
        self.spacing, self.objective = spacing, objective
        self.t_prev = [int(t) for t in t_prev]


class DDIMInverter(CoefSampler):
    """Deterministic DDIM inversion (DDIM eq. 13 run forward): clean x0 -> x at the top of the grid.

    Convention (as diffusers' DDIMInverseScheduler and null-text inversion): ``timesteps`` is the
    DDIM grid ascending; at step i the model is evaluated at t = timesteps[i] on x, which sits at
    the level t_from = timesteps[i-1] (clean, abar = 1, for i = 0), and the step maps x to level t:

        eps    = the model's eps at t (eps_coefs(abar_t) applied to x and x0_coefs(abar_t))
        x_next = sqrt(abar_t) * pred_x0_from + sqrt(1 - abar_t) * eps,
        pred_x0_from = (x - sqrt(1 - abar_from) eps) / sqrt(abar_from)

    i.e. x_next / sqrt(abar_t) = x / sqrt(abar_from) + (sqrt(1/abar_t - 1) - sqrt(1/abar_from - 1)) eps.
    In the generic form: e = 0, f = sqrt(1-abar_t) - sqrt(abar_t (1-abar_from) / abar_from),
    g = sqrt(abar_t / abar_from), sigma = 0, no clipping. If eps(x, t) equals the noise of
    x = q_sample(x0, t_from, noise) the step lands exactly on q_sample(x0, t, noise), so
    ``DDIMSampler`` (eta = 0) on the same grid retraces the path back to x0. The pred_x0
    returned by ``step`` is the model's estimate at level t. ``timesteps`` are the target levels
    and ``t_from`` the starting levels.
    """

    def __init__(self, schedule, num_steps=50, spacing="leading", objective="eps"):
        ts = timestep_grid(schedule.num_timesteps, num_steps, spacing)
        t_from = np.append(-1, ts[:-1])
        abar, abar_from = _abar(schedule, ts), _abar(schedule, t_from)
        a, b, c, d = _conversion_coefs(objective, abar)
        f = np.sqrt(1.0 - abar) - np.sqrt(abar * (1.0 - abar_from) / abar_from)
        g = np.sqrt(abar / abar_from)
        table = make_coef_table(a=a, b=b, c=c, d=d, e=0.0, f=f, g=g, sigma=0.0, e_last=0.0)
        super().__init__(schedule, ts, table, clip_x0=False)
        self.spacing, self.objective = spacing, objective
        self.t_from = [int(t) for t in t_from]


def solver_timestep_grid(num_timesteps, num_steps, spacing="leading"):
    """Ascending grid (int64 [S]) for a solver whose last step goes to clean data (DPM-Solver++).

    As diffusers' DPMSolverMultistepScheduler: ``leading`` and ``linspace`` take the (S+1)-point
    ``timestep_grid`` and drop its t = 0, so no network call is spent at t = 0 (abar_0 = 0.9999,
    almost clean already); ``trailing`` is ``timestep_grid`` itself (it holds t = 0 only at S = T).
        leading:  i * (T // (S + 1))                 for i in 1 .. S
        linspace: round(linspace(0, T - 1, S + 1))[1:]
        trailing: round(T - i * T / S) - 1           for i in range(S)
        lucid:    ``lucid_grid`` itself (it ends at T - 1, like trailing)
    With S = T every spacing gives all T timesteps.
    """
    grid = timestep_grid(num_timesteps, num_steps, spacing)  # validates spacing and S in [1, T]
    if spacing in ("trailing", "lucid") or len(grid) == num_timesteps:
        return grid
    return timestep_grid(num_timesteps, len(grid) + 1, spacing)[1:]


class DPMSolverPP2MSampler(CoefSampler):
    """DPM-Solver++(2M) (Lu et al. 2022, arXiv 2211.01095, Algorithm 2): the multistep
    second-order solver of the probability-flow ODE in data-prediction form. Deterministic.

    alpha = sqrt(abar), sigma = sqrt(1 - abar), lambda = log(alpha / sigma). A step goes from
    s = timesteps[i] to t = t_prev[i] with h = lambda_t - lambda_s; the previous step had size
    h_last = lambda_s - lambda_{s_last}, r = h_last / h, and D0 = pred_x0 (the model's data
    prediction at s), D1 = (1 / r) (pred_x0 - last_x0):

        x_t = (sigma_t / sigma_s) x - alpha_t (e^{-h} - 1) D0 - 0.5 alpha_t (e^{-h} - 1) D1

    A first-order step drops D1; it is DDIM with eta 0 (Lu et al. 2022, sec. 3.1). In the linear
    form, with A = alpha_t (1 - e^{-h}):
        g = sigma_t / sigma_s,  e = A (1 + h / (2 h_last)),  e_last = -A h / (2 h_last)
    (first order: e = A, e_last = 0); a, b convert the objective to pred_x0; f = sigma = 0.

    Order: 1 on the first step (no last_x0 yet), 2 afterwards, except the last step:
    - final_sigmas_type 'zero' (default, as diffusers): the last step goes to clean data
      (t_prev = -1, sigma = 0, lambda = inf), where x_t = pred_x0. It is first order whatever
      ``lower_order_final`` says: the D1 weight h / h_last is infinite there.
    - 'sigma_min': the last step goes to the level of t = 0 (abar_0), the returned x keeps noise
      of std sqrt(1 - abar_0); ``lower_order_final`` makes that step first order when S < 15.
    Timesteps: ``solver_timestep_grid`` (diffusers' grids for this solver).
    """

    def __init__(self, schedule, num_steps=20, spacing="leading", objective="eps", clip_x0=True,
                 lower_order_final=True, final_sigmas_type="zero"):
        check_choice("final_sigmas_type", final_sigmas_type, FINAL_SIGMAS)
        ts = solver_timestep_grid(schedule.num_timesteps, num_steps, spacing)[::-1]
        t_prev = np.append(ts[1:], -1 if final_sigmas_type == "zero" else 0)
        abar, abar_t = _abar(schedule, ts), _abar(schedule, t_prev)
        n = len(ts)
        with np.errstate(divide="ignore", invalid="ignore"):
            lam_s = 0.5 * (np.log(abar) - np.log1p(-abar))
            lam_t = 0.5 * (np.log(abar_t) - np.log1p(-abar_t))   # +inf for clean data
            h = lam_t - lam_s
            orders = np.where(np.arange(n) >= 1, 2, 1)
            if final_sigmas_type == "zero" or (lower_order_final and n < 15):
                orders[-1] = 1
            h_last = np.append(np.nan, h[:-1])                    # lambda_s - lambda_{s_last}
            inv_r = np.where(orders == 2, h / h_last, 0.0)        # 1 / r
        big_a = -np.sqrt(abar_t) * np.expm1(-h)                   # alpha_t (1 - e^{-h}); 1 to clean data
        g = np.sqrt(1.0 - abar_t) / np.sqrt(1.0 - abar)
        e = big_a * (1.0 + 0.5 * inv_r)
        e_last = -0.5 * big_a * inv_r + 0.0                       # + 0.0: no -0.0 entries
        a, b, c, d = _conversion_coefs(objective, abar)
        table = make_coef_table(a=a, b=b, c=c, d=d, e=e, f=0.0, g=g, sigma=0.0, e_last=e_last)
        super().__init__(schedule, ts, table, clip_x0)
        self.spacing, self.objective = spacing, objective
        self.lower_order_final, self.final_sigmas_type = bool(lower_order_final), final_sigmas_type
        self.t_prev = [int(t) for t in t_prev]
        self.orders = [int(o) for o in orders]


def make_sampler(name, schedule, num_steps=50, eta=0.0, spacing="leading", objective="eps",
                 clip_x0=True):
    """Build a sampler by name: 'ddpm' (all T steps; num_steps, eta and spacing unused),
    'ddim', 'naive' (eta unused) or 'dpmpp2m' (DPM-Solver++(2M), eta unused)."""
    check_choice("sampler", name, SAMPLERS)
    if name == "ddpm":
        return DDPMSampler(schedule, objective=objective, clip_x0=clip_x0)
    if name == "ddim":
        return DDIMSampler(schedule, num_steps=num_steps, eta=eta, spacing=spacing,
                           objective=objective, clip_x0=clip_x0)
    if name == "dpmpp2m":
        return DPMSolverPP2MSampler(schedule, num_steps=num_steps, spacing=spacing,
                                    objective=objective, clip_x0=clip_x0)
    return NaiveSampler(schedule, num_steps=num_steps, spacing=spacing, objective=objective,
                        clip_x0=clip_x0)

"""Noise schedules and the closed-form maths of the forward process.

Everything here is float64 numpy and framework-free, except the helpers that say otherwise
(``to_float32_tensor``, ``to_tensor_tables``), which import MindSpore lazily.

Conventions (Ho et al. 2020, Song et al. 2020): ``t`` is an integer in [0, T-1]; x_0 is the
data and t = 0 is the first noising step, so ``alphas_cumprod[t] = prod_{s<=t} (1 - betas[s])``
is the signal level of x_{t+1} in the paper's 1-based numbering. "t = -1" means clean data
(abar = 1). Shorthand: abar = alphas_cumprod[t].

Objective conversions are written once, as coefficient pairs, so the same functions serve numpy
arrays, Python floats and MindSpore tensors (they only use ``*``, ``+``, ``-`` and ``** 0.5``):

* ``x0_coefs``:        pred_x0 = a * xt + b * model_out
* ``eps_coefs``:       eps     = c * xt + d * pred_x0
* ``target_coefs``:    target  = u * x0 + w * eps
"""
import math
import warnings

import numpy as np

BETA_SCHEDULES = ("linear", "cosine", "quadratic", "sigmoid", "sigmoid_abar")
LOSS_WEIGHTS = ("p2", "min_snr", "none")
OBJECTIVES = ("eps", "x0", "v")
LOSS_TYPES = ("huber", "l1", "l2")

# abar at the last step above this leaves visible signal where sampling starts from pure noise.
MAX_FINAL_ALPHA_CUMPROD = 1e-3


def check_choice(name, value, allowed):
    """Return ``value`` if it is in ``allowed``, else raise ValueError naming the allowed values."""
    if value not in allowed:
        choices = ", ".join(repr(a) for a in allowed)
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


# --------------------------------------------------------------------------------------------
# betas


def _default_beta_range(timesteps, beta_start, beta_end):
    """1e-4..0.02 at T=1000 (Ho et al.), both ends scaled by 1000/T for other T."""
    scale = 1000.0 / timesteps
    start = scale * 1e-4 if beta_start is None else float(beta_start)
    end = scale * 0.02 if beta_end is None else float(beta_end)
    return start, end


def cosine_alphas_cumprod(t, timesteps, s=0.008):
    """Nichol & Dhariwal (2021) eq. 17: abar(t) = f(t) / f(0), f(t) = cos((t/T + s)/(1 + s) * pi/2)^2.

    ``t`` is continuous in [0, T] in the paper's numbering (abar(0) = 1, clean data).
    """
    def f(u):
        return np.cos((np.asarray(u, dtype=np.float64) / timesteps + s) / (1 + s) * math.pi / 2) ** 2
    return f(t) / f(0)


def sigmoid_alphas_cumprod(t, timesteps, start=-3.0, end=3.0, tau=1.0):
    """Jabri et al. (2022, arXiv 2212.11972, Fig. 8) on abar: abar(t) = (s(end/tau) - s((u (end - start)
    + start)/tau)) / (s(end/tau) - s(start/tau)), u = t/T, s the logistic sigmoid; abar(0) = 1.

    ``t`` is continuous in [0, T] in the paper's numbering (denoising-diffusion-pytorch's
    ``sigmoid_beta_schedule``; the defaults are its start -3, end 3, tau 1).
    """
    def s(x):
        return 1.0 / (1.0 + np.exp(-x))
    u = np.asarray(t, dtype=np.float64) / timesteps
    v_start, v_end = s(start / tau), s(end / tau)
    abar = (v_end - s((u * (end - start) + start) / tau)) / (v_end - v_start)
    return abar / abar[0] if abar.ndim else abar


def make_betas(kind="linear", timesteps=1000, beta_start=None, beta_end=None,
               cosine_s=0.008, max_beta=0.999):
    """Betas of shape [T], float64, every entry in (0, 1).

    linear:    linspace(start, end, T)
    quadratic: linspace(sqrt(start), sqrt(end), T) ** 2
    sigmoid:   sigmoid(linspace(-6, 6, T)) * (end - start) + start (a sigmoid on the betas)
    cosine:    beta_t = min(1 - abar(t+1)/abar(t), max_beta), abar from ``cosine_alphas_cumprod``
    sigmoid_abar: the same with abar from ``sigmoid_alphas_cumprod`` (Jabri et al.; a sigmoid
               on abar, denoising-diffusion-pytorch's default ``sigmoid``); start/end unused
    start/end default to 1e-4/0.02 at T = 1000 and are scaled by 1000/T otherwise.
    """
    check_choice("beta_schedule", kind, BETA_SCHEDULES)
    if int(timesteps) != timesteps or timesteps < 2:
        raise ValueError(f"timesteps must be an integer >= 2, got {timesteps!r}")
    timesteps = int(timesteps)
    if not 0.0 < max_beta < 1.0:
        raise ValueError(f"max_beta must be in (0, 1), got {max_beta!r}")
    start, end = _default_beta_range(timesteps, beta_start, beta_end)
    if kind == "linear":
        betas = np.linspace(start, end, timesteps, dtype=np.float64)
    elif kind == "quadratic":
        betas = np.linspace(start ** 0.5, end ** 0.5, timesteps, dtype=np.float64) ** 2
    elif kind == "sigmoid":
        x = np.linspace(-6.0, 6.0, timesteps, dtype=np.float64)
        betas = 1.0 / (1.0 + np.exp(-x)) * (end - start) + start
    else:  # cosine, sigmoid_abar
        t = np.arange(timesteps + 1)
        abar = (cosine_alphas_cumprod(t, timesteps, cosine_s) if kind == "cosine"
                else sigmoid_alphas_cumprod(t, timesteps))
        betas = np.minimum(1.0 - abar[1:] / abar[:-1], max_beta)
    if not (np.all(betas > 0.0) and np.all(betas < 1.0)):
        raise ValueError(
            f"{kind} betas must lie in (0, 1) but range over [{betas.min():.4g}, {betas.max():.4g}] "
            f"(beta_start={start:.4g}, beta_end={end:.4g}, T={timesteps}); the default ends are "
            f"1e-4..0.02 scaled by 1000/T, so for small T pass beta_start/beta_end or use 'cosine'")
    return betas


# --------------------------------------------------------------------------------------------
# the schedule object


class NoiseSchedule:
    """All per-timestep tables of a DDPM forward process, float64 numpy arrays of shape [T].

    Attributes: betas, alphas, alphas_cumprod (abar), alphas_cumprod_prev (abar_{t-1}, 1 at
    t = 0), sqrt_alphas_cumprod, sqrt_one_minus_alphas_cumprod, snr = abar / (1 - abar), and
    the posterior q(x_{t-1} | x_t, x_0) = N(coef1 * x0 + coef2 * xt, posterior_variance)
    (Ho et al. eq. 6-7):
        posterior_variance   = betas * (1 - abar_prev) / (1 - abar)
        posterior_mean_coef1 = betas * sqrt(abar_prev) / (1 - abar)
        posterior_mean_coef2 = (1 - abar_prev) * sqrt(alphas) / (1 - abar)
    posterior_log_variance_clipped is log(posterior_variance) with the 0 at t = 0 replaced by
    the value at t = 1 (as improved-diffusion).
    """

    def __init__(self, kind="linear", timesteps=1000, beta_start=None, beta_end=None,
                 cosine_s=0.008, max_beta=0.999):
        self.kind = kind
        betas = make_betas(kind, timesteps, beta_start, beta_end, cosine_s, max_beta)
        self.num_timesteps = len(betas)
        self.betas = betas
        self.alphas = 1.0 - betas
        self.alphas_cumprod = np.cumprod(self.alphas)
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
        self.sqrt_alphas_cumprod = np.sqrt(self.alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - self.alphas_cumprod)
        self.snr = self.alphas_cumprod / (1.0 - self.alphas_cumprod)

        one_minus_abar = 1.0 - self.alphas_cumprod
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / one_minus_abar
        self.posterior_log_variance_clipped = np.log(
            np.append(self.posterior_variance[1], self.posterior_variance[1:]))
        self.posterior_mean_coef1 = betas * np.sqrt(self.alphas_cumprod_prev) / one_minus_abar
        self.posterior_mean_coef2 = (1.0 - self.alphas_cumprod_prev) * np.sqrt(self.alphas) / one_minus_abar

        final = self.alphas_cumprod[-1]
        if final > MAX_FINAL_ALPHA_CUMPROD:
            warnings.warn(
                f"The {kind} schedule with T={self.num_timesteps} ends at alphas_cumprod[T-1]="
                f"{final:.3g} > {MAX_FINAL_ALPHA_CUMPROD:g}: x_T keeps {final ** 0.5:.0%} of the "
                f"signal but sampling starts from pure noise. Use the default 1000/T-scaled betas, "
                f"more timesteps or the cosine schedule.", stacklevel=2)

    def __repr__(self):
        return f"NoiseSchedule(kind={self.kind!r}, timesteps={self.num_timesteps})"

    def p2_weight(self, gamma=1.0, k=1.0):
        """Perception-prioritized loss weight (Choi et al. 2022), shape [T]: (k + snr) ** -gamma.

        gamma = 0 gives all ones (no weighting).
        """
        return (k + self.snr) ** -float(gamma)

    def eps_loss_weight(self, weighting="p2", p2_gamma=1.0, p2_k=1.0, min_snr_gamma=5.0):
        """Weight [T] on the squared eps error ||eps_pred - eps||^2 (every weighting is defined here):

        none:    1
        p2:      (p2_k + snr) ** -p2_gamma          (Choi et al. 2022; gamma 0 = none)
        min_snr: min(snr, min_snr_gamma) / snr      (Hang et al. 2023, "min-SNR-gamma")
        """
        check_choice("loss_weight", weighting, LOSS_WEIGHTS)
        if weighting == "p2":
            return self.p2_weight(p2_gamma, p2_k)
        if weighting == "min_snr":
            return np.minimum(self.snr, float(min_snr_gamma)) / self.snr
        return np.ones_like(self.snr)

    def loss_weight(self, weighting="p2", objective="eps", loss_type="l2", p2_gamma=1.0, p2_k=1.0,
                    min_snr_gamma=5.0):
        """Weight [T] for the loss on ``objective``'s output that equals ``eps_loss_weight`` on eps.

        With x_t fixed, an error in the network's output maps to eps per element as
        eps_err = r * out_err, r = 1 (eps), sqrt(snr) (x0), sqrt(abar) (v; x0 = sqrt(abar) xt -
        sqrt(1-abar) v). So the weight is eps_loss_weight * r**p, p = 2 for l2 (exact) and huber
        (its quadratic part), p = 1 for l1 (exact). For x0 and v with l2 this is
        denoising-diffusion-pytorch's loss_weight (snr resp. snr / (snr + 1) times the eps weight).
        """
        check_choice("objective", objective, OBJECTIVES)
        check_choice("loss_type", loss_type, LOSS_TYPES)
        r2 = {"eps": np.ones_like(self.snr), "x0": self.snr, "v": self.alphas_cumprod}[objective]
        power = 0.5 if loss_type == "l1" else 1.0
        return self.eps_loss_weight(weighting, p2_gamma, p2_k, min_snr_gamma) * r2 ** power

    def q_sample(self, x0, t, noise):
        """Draw x_t ~ q(x_t | x_0) (Ho et al. eq. 4): sqrt(abar_t) x0 + sqrt(1 - abar_t) noise.

        x0, noise: numpy [B, ...]; t: int array [B]. Returns float64 [B, ...].
        """
        return q_sample(self.sqrt_alphas_cumprod, self.sqrt_one_minus_alphas_cumprod, x0, t, noise)


# --------------------------------------------------------------------------------------------
# array-agnostic helpers (numpy arrays or MindSpore tensors, also inside a MindSpore graph)


def build_schedule(cfg):
    """The NoiseSchedule a config (or a checkpoint's config) describes."""
    return NoiseSchedule(cfg["beta_schedule"], cfg["timesteps"], beta_start=cfg["beta_start"],
                         beta_end=cfg["beta_end"])


def extract(table, t, ndim):
    """Gather ``table[t]`` per sample and reshape to [B, 1, ..., 1] (``ndim`` dims in total).

    table: 1-D [T] numpy array or MindSpore Tensor; t: integer [B] of the same kind.
    Tensor indexing by a tensor is a gather, so the one line serves both.
    """
    return table[t].reshape((t.shape[0],) + (1,) * (ndim - 1))


def q_sample(sqrt_alphas_cumprod, sqrt_one_minus_alphas_cumprod, x0, t, noise):
    """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise (Ho et al. eq. 4), per-sample t.

    Tables [T] and x0/noise [B, ...] are all numpy or all MindSpore; t is integer [B].
    """
    ndim = len(x0.shape)
    return (extract(sqrt_alphas_cumprod, t, ndim) * x0
            + extract(sqrt_one_minus_alphas_cumprod, t, ndim) * noise)


def x0_coefs(objective, abar):
    """(a, b) with pred_x0 = a * xt + b * model_out for a model output at signal level abar.

    eps: x0 = (xt - sqrt(1-abar) eps) / sqrt(abar)   (Ho et al. eq. 4 solved for x0)
    x0:  x0 = model_out
    v:   x0 = sqrt(abar) xt - sqrt(1-abar) v         (Salimans & Ho 2022)
         with v = sqrt(abar) eps - sqrt(1-abar) x0
    abar: float, numpy array or tensor, values in (0, 1].
    """
    check_choice("objective", objective, OBJECTIVES)
    if objective == "eps":
        return abar ** -0.5, -((1.0 - abar) / abar) ** 0.5
    if objective == "x0":
        return abar * 0.0, abar * 0.0 + 1.0
    return abar ** 0.5, -(1.0 - abar) ** 0.5


def eps_coefs(abar):
    """(c, d) with eps = c * xt + d * pred_x0 = (xt - sqrt(abar) pred_x0) / sqrt(1 - abar); abar < 1."""
    return (1.0 - abar) ** -0.5, -(abar / (1.0 - abar)) ** 0.5


def target_coefs(objective, abar):
    """(u, w) with training target = u * x0 + w * eps for the given objective at level abar.

    eps: eps;  x0: x0;  v: sqrt(abar) eps - sqrt(1-abar) x0 (Salimans & Ho 2022).
    """
    check_choice("objective", objective, OBJECTIVES)
    if objective == "eps":
        return abar * 0.0, abar * 0.0 + 1.0
    if objective == "x0":
        return abar * 0.0 + 1.0, abar * 0.0
    return -(1.0 - abar) ** 0.5, abar ** 0.5


def predict_x0(objective, xt, model_out, abar):
    """pred_x0 from a model output at level abar (see ``x0_coefs``); abar broadcastable to xt."""
    a, b = x0_coefs(objective, abar)
    return a * xt + b * model_out


def predict_eps(xt, pred_x0, abar):
    """eps = (xt - sqrt(abar) pred_x0) / sqrt(1 - abar) (see ``eps_coefs``)."""
    c, d = eps_coefs(abar)
    return c * xt + d * pred_x0


def target(objective, x0, eps, abar):
    """Training target for ``objective`` (see ``target_coefs``); abar broadcastable to x0."""
    u, w = target_coefs(objective, abar)
    return u * x0 + w * eps


# --------------------------------------------------------------------------------------------
# MindSpore tables


def to_float32_tensor(array):
    """float64 numpy table -> float32 MindSpore Tensor (the one place tables change dtype)."""
    import mindspore as ms
    return ms.Tensor(np.asarray(array, dtype=np.float32))


def to_tensor_tables(schedule, names):
    """{name: float32 Tensor [T]} for the named NoiseSchedule attributes."""
    return {name: to_float32_tensor(getattr(schedule, name)) for name in names}

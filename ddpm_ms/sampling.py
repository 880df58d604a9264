"""Compiled sampling: one graph per denoising step (network + sampler update).

The sampler objects in :mod:`ddpm_ms.samplers` describe every update as one linear form with
a per-step coefficient row (``coef_table`` [S, 9]). ``SamplingStep`` takes that table and the
timestep grid as tensors and gathers row ``i`` inside the graph from a tensor step index, so
every step of a run (DDPM, DDIM, naive, DPM-Solver++(2M), and DDIM inversion) runs the same
compiled graph:

    x_prev, pred_x0 = step(x, i, noise, last_x0, coefs, timesteps)
                    = generic_update(coefs[i], network(x, timesteps[i]), x, noise, last_x0)

``last_x0`` is the previous step's pred_x0 for the multistep DPM-Solver++(2M), zeros otherwise.

The tables are inputs, padded to T rows (``step_tables``), so the graph does not depend on
the sampler or its step count: ``make_step`` compiles once per (network, clip_x0, batch
shape) and reuses that graph for later runs in the process (previews during training,
pictures, tests).

Randomness lives on the host, in numpy Generators seeded per image: image ``k`` of a run with
seed ``s`` draws x_T from ``default_rng([s, k, 0])`` and its per-step noise from
``default_rng([s, k, 1])``. So the same seed gives the same images in any process, in GRAPH or
PYNATIVE mode, whatever the batch size, and calling ``sample`` twice in one process repeats
itself. (MindSpore's in-graph ``ops.randn_like`` after ``set_seed`` repeats across fresh
processes but not within one: a compiled graph keeps advancing its own stream after a
re-seed, and GRAPH and PYNATIVE draw different streams.) The per-step cost is one host draw of
B*C*H*W normals and its copy to the device, only on steps with sigma > 0 (measured in
bench/bench_sample.py); deterministic samplers pass one zeros tensor throughout.
"""
import numpy as np

import mindspore as ms
from mindspore import Tensor, nn, ops

from .config import ConfigError
from .samplers import COEF_NAMES, DDIMInverter, linear_update


class SamplingStep(nn.Cell):
    """(x_prev, pred_x0) = step(x, i, noise, last_x0, coefs, timesteps).

    x, noise, last_x0: float32 [B, C, H, W] (last_x0: the previous step's pred_x0, or zeros);
    i: int32 scalar tensor; coefs: float32 [R, 9], one tensor whose columns are the
    ``samplers.Coefs`` fields in ``COEF_NAMES`` order (row i gives ``linear_update`` its nine coefficients);
    timesteps: int32 [R]. The network is called as network(x, t) with t int32 [B] =
    timesteps[i]; its output (any float dtype) is cast to float32 and fed to
    ``linear_update`` (``generic_update``'s form) with row i:

        pred_x0 = a x + b out  (clipped to [-1, 1] when clip_x0)
        eps     = c x + d pred_x0
        x_prev  = e pred_x0 + f eps + g x + sigma noise + e_last last_x0
    """

    def __init__(self, network, clip_x0):
        super().__init__()
        self.network = network
        self.clip_x0 = bool(clip_x0)

    def construct(self, x, i, noise, last_x0, coefs, timesteps):
        row = ops.gather(coefs, i, 0)            # [9]
        t = ops.gather(timesteps, i, 0)          # scalar
        t_batch = ops.broadcast_to(t.reshape((1,)), (x.shape[0],))
        out = self.network(x, t_batch).astype(ms.float32)
        # the nine columns as separate arguments (COEF_NAMES order): a Coefs tuple built here
        # would run on the host as a Python fallback at every step
        return linear_update(row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7], row[8],
                             out, x, noise, self.clip_x0, last_x0)


def step_tables(sampler):
    """(coefs float32 [T, 9], timesteps int32 [T]) Tensors: the sampler's ``coef_table`` and
    ``timesteps`` with zero rows appended up to T = schedule.num_timesteps, so every sampler
    of one schedule feeds the graph tensors of the same shape."""
    rows = max(sampler.schedule.num_timesteps, sampler.num_steps)
    coefs = np.zeros((rows, len(COEF_NAMES)), np.float32)
    coefs[:sampler.num_steps] = sampler.coef_table
    timesteps = np.zeros(rows, np.int32)
    timesteps[:sampler.num_steps] = sampler.timesteps
    return Tensor(coefs), Tensor(timesteps)


_CACHE_ATTR = "_ddpm_ms_sampling_steps"


def _jitted(network, clip_x0):
    """The jitted step for (network, clip_x0), kept in the network's own __dict__ (set with
    object.__setattr__, so it is not a sub-cell) and freed with the network."""
    cache = network.__dict__.get(_CACHE_ATTR)
    if cache is None:
        cache = {}
        object.__setattr__(network, _CACHE_ATTR, cache)
    if clip_x0 not in cache:
        cell = SamplingStep(network, clip_x0)

        def step(x, i, noise, last_x0, coefs, timesteps):
            return cell(x, i, noise, last_x0, coefs, timesteps)
        cache[clip_x0] = ms.jit(step)
    return cache[clip_x0]


def make_step(network, sampler, jit=True):
    """step_fn(x, i, noise, last_x0=None) -> (x_prev, pred_x0) for the steps of ``sampler`` (any
    CoefSampler, including ``DDIMInverter``, which never clips). last_x0: the previous step's
    pred_x0 for multistep samplers (``sampler.uses_last_x0``); None feeds zeros.

    jit=True: one ``ms.jit`` graph, whatever the context mode, cached per (network, clip_x0)
    and compiled again only for a new batch shape. jit=False: the cell itself (op by op in
    PYNATIVE mode; still compiled per call in GRAPH mode).
    """
    coefs, timesteps = step_tables(sampler)
    run = _jitted(network, sampler.clip_x0) if jit else SamplingStep(network, sampler.clip_x0)

    zeros = {}

    def step_fn(x, i, noise, last_x0=None):
        if last_x0 is None:
            shape = tuple(x.shape)
            if shape not in zeros:
                zeros[shape] = Tensor(np.zeros(shape, np.float32))
            last_x0 = zeros[shape]
        return run(x, i, noise, last_x0, coefs, timesteps)
    return step_fn


# ------------------------------------------------------------------------------ host noise

def _seed(seed):
    """A non-negative int seed; None draws one from the OS."""
    if seed is None:
        return int(np.random.SeedSequence().entropy % (2 ** 63))
    if int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def initial_noise(seed, num, image_shape, start=0):
    """x_T for images start .. start+num-1 of a run with ``seed``: float32 [num, *image_shape],
    image k from ``default_rng([seed, k, 0])`` (independent of the batch size)."""
    seed = _seed(seed)
    return np.stack([np.random.default_rng([seed, k, 0]).standard_normal(image_shape, np.float32)
                     for k in range(start, start + num)])


def noise_streams(seed, num, start=0):
    """One numpy Generator per image for the per-step noise (``default_rng([seed, k, 1])``)."""
    seed = _seed(seed)
    return [np.random.default_rng([seed, k, 1]) for k in range(start, start + num)]


def run_steps(step_fn, sampler, x, rngs=None, record=(), bar=None):
    """Apply all ``sampler`` steps to x (float32 Tensor [B, C, H, W]); returns (x, snapshots).

    rngs: per-image Generators for the steps whose sigma > 0 (required then). record: step
    indices whose snapshot ``(i, t, x_t, pred_x0)`` (numpy; x_t is the step's input) is kept.
    Only recorded steps read values back to the host. A multistep sampler
    (``sampler.uses_last_x0``) gets each step's pred_x0 back as the next step's last_x0;
    the others are called as step_fn(x, i, noise).
    """
    sigmas = sampler.column("sigma")
    shape = tuple(x.shape)
    zeros = Tensor(np.zeros(shape, np.float32))
    index = [Tensor(i, ms.int32) for i in range(len(sigmas))]
    record = set(int(i) for i in record)
    snapshots = []
    for i, sigma in enumerate(sigmas):
        if sigma > 0.0:
            noise = Tensor(np.stack([g.standard_normal(shape[1:], np.float32) for g in rngs]))
        else:
            noise = zeros
        x_in = x
        if sampler.uses_last_x0:
            x, pred_x0 = step_fn(x, index[i], noise, pred_x0 if i else zeros)
        else:
            x, pred_x0 = step_fn(x, index[i], noise)
        if i in record:
            snapshots.append((i, sampler.timesteps[i], x_in.asnumpy(), pred_x0.asnumpy()))
        if bar is not None:
            bar.update(1)
    return x, snapshots


# ------------------------------------------------------------------------------ entry points

def sample(network, sampler, num_samples, image_shape, batch_size=None, seed=None, progress=True,
           x_T=None, record=None, jit=True, on_batch=None):
    """Draw ``num_samples`` images with ``sampler``'s steps, each one compiled graph.

    sampler: a ``samplers.CoefSampler`` (DDPM, DDIM, naive, DPM-Solver++(2M)), e.g.
    ``make_sampler(schedule=..., **sampling_options(cfg))`` from config / command-line strings.
    image_shape: (C, H, W). x_T: optional float
    [num_samples, C, H, W] start (else ``initial_noise(seed, ...)``). seed: see the module
    docstring; None = fresh entropy. record: step indices to snapshot (first batch only).
    jit: compile each step with ``ms.jit`` (False: run the cell as the context mode says).
    on_batch(start, images): called with each batch (float32 [b, C, H, W] in [-1, 1], images
    start .. start+b-1) as soon as it is done, e.g. to write it before the next batch.

    Returns float32 numpy [N, C, H, W] clipped to [-1, 1]; with ``record`` also the list of
    snapshots ``(i, t, x_t, pred_x0)`` from ``run_steps``.
    """
    from tqdm import tqdm
    plan = sampler
    seed = _seed(seed)
    image_shape = tuple(image_shape)
    if x_T is not None:
        x_T = np.asarray(x_T, np.float32)
        if x_T.shape != (num_samples,) + image_shape:
            raise ValueError(f"x_T has shape {x_T.shape}, expected {(num_samples,) + image_shape}")
    network.set_train(False)
    step_fn = make_step(network, plan, jit)
    batch_size = batch_size or num_samples
    n_batches = -(-num_samples // batch_size)
    bar = tqdm(total=plan.num_steps * n_batches, disable=not progress, unit="step", leave=False,
               desc=f"{type(plan).__name__} {plan.num_steps} steps")
    outputs, snapshots = [], []
    for start in range(0, num_samples, batch_size):
        b = min(batch_size, num_samples - start)
        x0 = x_T[start:start + b] if x_T is not None else initial_noise(seed, b, image_shape, start)
        x, snaps = run_steps(step_fn, plan, Tensor(np.ascontiguousarray(x0)),
                             noise_streams(seed, b, start), record=(record or ()) if start == 0 else (),
                             bar=bar)
        snapshots += snaps
        outputs.append(np.clip(x.asnumpy(), -1.0, 1.0))
        if on_batch is not None:
            on_batch(start, outputs[-1])
    bar.close()
    images = np.concatenate(outputs, 0)
    return (images, snapshots) if record is not None else images


def invert(network, schedule, x0, num_steps=50, spacing="leading", objective="eps",
           batch_size=None, progress=True, jit=True):
    """Deterministic DDIM inversion (``samplers.DDIMInverter``): clean images -> x_T.

    x0: float [N, C, H, W] in [-1, 1]. Runs the inverter's steps (ascending grid, no clipping,
    no noise) through the same compiled ``SamplingStep``. Returns float32 numpy [N, C, H, W]
    at the level of the grid's top timestep; ``sample`` with ``DDIMSampler(schedule, num_steps,
    eta=0, spacing=spacing)`` and ``x_T=result`` maps it back to (approximately) x0.
    """
    from tqdm import tqdm
    plan = DDIMInverter(schedule, num_steps=num_steps, spacing=spacing, objective=objective)
    assert not plan.clip_x0  # clipping pred_x0 would break the inverse
    x0 = np.asarray(x0, np.float32)
    network.set_train(False)
    step_fn = make_step(network, plan, jit)
    batch_size = batch_size or len(x0)
    bar = tqdm(total=plan.num_steps * -(-len(x0) // batch_size), disable=not progress, unit="step",
               leave=False, desc=f"ddim inversion {plan.num_steps} steps")
    outputs = []
    for start in range(0, len(x0), batch_size):
        x, _ = run_steps(step_fn, plan, Tensor(np.ascontiguousarray(x0[start:start + batch_size])),
                         bar=bar)
        outputs.append(x.asnumpy())
    bar.close()
    return np.concatenate(outputs, 0)


def slerp(a, b, weights):
    """Spherical interpolation between two arrays of the same shape, one result per weight.

    slerp(a, b, w) = sin((1 - w) theta) / sin(theta) a + sin(w theta) / sin(theta) b,
    cos(theta) = <a, b> / (|a| |b|); falls back to linear interpolation when a and b are
    (anti)parallel. Returns float32 [len(weights), *a.shape]. Keeps the norm of Gaussian
    samples typical (linear interpolation shrinks it near w = 0.5).
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    cos = np.sum(a * b) / (np.linalg.norm(a) * np.linalg.norm(b))
    theta = np.arccos(np.clip(cos, -1.0, 1.0))
    out = []
    for w in np.asarray(weights, np.float64):
        if np.sin(theta) < 1e-6:
            out.append((1 - w) * a + w * b)
        else:
            out.append((np.sin((1 - w) * theta) * a + np.sin(w * theta) * b) / np.sin(theta))
    return np.stack(out).astype(np.float32)


# The command-line options each sampler has no use for, and why (one line names them all).
UNUSED_OPTIONS = {"ddim": (), "ddpm": ("steps", "eta", "spacing"), "naive": ("eta",),
                  "dpmpp2m": ("eta",)}
UNUSED_WHY = {
    "ddpm": "ddpm always runs all T={T} steps, on every timestep, with the posterior variance "
            "(for fewer steps or another eta use --sampler ddim; --eta 1 is DDPM-like)",
    "naive": "naive adds no noise, so it has no eta",
    "dpmpp2m": "DPM-Solver++(2M) solves the deterministic probability-flow ODE and has no eta "
               "(for eta > 0 use --sampler ddim)",
}


def sampling_options(cfg, sampler=None, steps=None, eta=None, spacing=None, clip_x0=None):
    """Keyword arguments for ``samplers.make_sampler`` (all but ``schedule``) from the command
    line over the config: ``make_sampler(schedule=s, **sampling_options(cfg, ...))``.

    steps/eta/spacing/clip_x0 are the values given on the command line (None = not given; the
    config's value is used). Raises ConfigError with one line that names every given option
    the sampler does not use (``UNUSED_OPTIONS``; --steps T is accepted for ddpm), then for
    --steps outside [1, T] or an eta outside [0, 1]. ``eta`` in the result is None for samplers
    without one.
    """
    T = cfg["timesteps"]
    who = f"--sampler {sampler}" if sampler else f"the checkpoint's sampler {cfg['sampler']}"
    sampler = sampler or cfg["sampler"]
    given = dict(steps=steps, eta=eta, spacing=spacing)
    unused = [f"--{k} {given[k]}" for k in UNUSED_OPTIONS[sampler]
              if given[k] is not None and not (k == "steps" and given[k] == T)]
    if unused:
        raise ConfigError(f"{who} does not use {', '.join(unused)}: "
                          f"{UNUSED_WHY[sampler].format(T=T)}; drop {'it' if len(unused) == 1 else 'them'}")
    if steps is not None and not 1 <= steps <= T:
        raise ConfigError(f"--steps must be between 1 and T={T} (the checkpoint's timesteps), got {steps}")
    if sampler == "ddim":
        eta = cfg["eta"] if eta is None else eta
        if not 0 <= eta <= 1:
            raise ConfigError(f"--eta must be in [0, 1] (0 = deterministic DDIM, 1 = DDPM-like), got {eta}")
    else:
        eta = None
    clip = cfg["clip_x0"] if clip_x0 is None else clip_x0 in (True, "true")
    num_steps = T if sampler == "ddpm" else steps or cfg["sample_steps"]
    return dict(name=sampler, num_steps=num_steps, eta=eta,
                spacing=spacing or cfg["spacing"], objective=cfg["objective"], clip_x0=clip)


def image_shape(cfg):
    return (cfg["channels"], cfg["image_size"], cfg["image_size"])

"""Compiled sampling: one graph per denoising step (network + sampler update).

The sampler objects in :mod:`ddpm_ms.samplers` describe every update as one linear form
with a per-step coefficient row (``coef_table``). ``SamplingStep`` holds that table and
the timestep grid as tensors and gathers row ``i`` inside the graph, so every step of a
run reuses one compiled graph and nothing returns to the host between steps.
"""
import numpy as np

import mindspore as ms
from mindspore import Tensor, nn, ops

from .samplers import generic_update, make_sampler


class SamplingStep(nn.Cell):
    """x_prev, pred_x0 = step(x, i) for step index ``i`` (int32 scalar tensor).

    x: (B, C, H, W) float32. The network is called as net(x, t) with t int32 [B]. The
    step's N(0, I) draw is made inside the graph (``ops.randn_like``, seeded by
    ``mindspore.set_seed``); it is multiplied by sigma, which is 0 for deterministic samplers.
    """

    def __init__(self, network, sampler):
        super().__init__()
        self.network = network
        self.clip_x0 = bool(sampler.clip_x0)
        self.coefs = Tensor(np.asarray(sampler.coef_table, np.float32))
        self.timesteps = Tensor(np.asarray(sampler.timesteps, np.int32))

    def construct(self, x, i):
        row = ops.gather(self.coefs, i, 0)
        t = ops.gather(self.timesteps, i, 0)
        t_batch = ops.broadcast_to(t.reshape((1,)), (x.shape[0],))
        out = self.network(x, t_batch).astype(ms.float32)
        coefs = [row[k] for k in range(8)]
        noise = ops.randn_like(x)
        return generic_update(coefs, out, x, noise, self.clip_x0)


def sample(network, schedule, num_samples, image_shape, sampler="ddim", num_steps=50, eta=0.0,
           spacing="leading", objective="eps", clip_x0=True, batch_size=None, seed=None,
           progress=True, x_T=None, record_every=0):
    """Draw images with a compiled per-step graph.

    Returns float32 numpy (N, C, H, W) in [-1, 1] (clipped); with ``record_every`` > 0 also a
    list of (step index, t, x_t, pred_x0) numpy snapshots of the first batch.
    x_T comes from a numpy Generator seeded with ``seed`` (or is given, (N, C, H, W), for
    deterministic DDIM uses); the per-step noise is drawn in the graph after
    ``mindspore.set_seed(seed)``, so the same seed in a fresh process gives the same images.
    """
    from tqdm import tqdm
    plan = make_sampler(sampler, schedule, num_steps=num_steps, eta=eta, spacing=spacing,
                        objective=objective, clip_x0=clip_x0)
    if seed is not None:
        ms.set_seed(seed)
    step = SamplingStep(network, plan)
    network.set_train(False)
    rng = np.random.default_rng(seed)
    batch_size = batch_size or num_samples
    outputs, snapshots = [], []
    n_steps = len(plan.timesteps)
    bar = tqdm(total=n_steps * ((num_samples + batch_size - 1) // batch_size), disable=not progress,
               desc=f"{sampler} {n_steps} steps", unit="step", leave=False)
    for start in range(0, num_samples, batch_size):
        b = min(batch_size, num_samples - start)
        shape = (b, *image_shape)
        if x_T is not None:
            x = Tensor(np.asarray(x_T[start:start + b], np.float32))
        else:
            x = Tensor(rng.standard_normal(shape).astype(np.float32))
        for i in range(n_steps):
            x, pred_x0 = step(x, Tensor(i, ms.int32))
            if record_every and start == 0 and (i % record_every == 0 or i == n_steps - 1):
                snapshots.append((i, int(plan.timesteps[i]), x.asnumpy(), pred_x0.asnumpy()))
            bar.update(1)
        outputs.append(np.clip(x.asnumpy(), -1.0, 1.0))
    bar.close()
    images = np.concatenate(outputs, 0)
    return (images, snapshots) if record_every else images

"""The compiled train step and what it updates: EMA, learning rates, optimizer, loss scaling,
and the per-step draws of t and noise.

* :class:`EMA` keeps an exponential moving average of the weights in a second U-Net, updated
  inside the train-step graph.
* :func:`make_train_step` builds one step (loss, gradients, optional all-reduce, global-norm
  clipping, optimizer update, EMA update) as one ``ms.jit`` graph; :func:`make_accum_steps`
  the same with gradient accumulation. With mixed precision (``amp_level`` other than O0) the
  step scales the loss, unscales the gradients and skips the update (and the EMA) when they are
  not finite (dynamic loss scaling, :func:`make_loss_scaler`).
* Timesteps and noise are drawn per step from a counter-based numpy generator keyed on
  (seed, step, micro-batch, global row) (:func:`draw_t_noise`): a resumed run, a run on another
  device and a data-parallel run over N ranks all draw exactly the same numbers, and each rank
  draws only its own rows (MindSpore's in-graph random ops keep a state that cannot be saved,
  and its generator-based random ops do not run on CPU).

The loop that calls these is :class:`ddpm_ms.trainer.Trainer`.
"""
import math

import numpy as np

import mindspore as ms
from mindspore import Parameter, ParameterTuple, Tensor, nn, ops
from mindspore.amp import DynamicLossScaler, all_finite

from .config import ConfigError

# Checkpoint names of the dynamic loss scaler's state (mixed precision only).
LOSS_SCALE_VALUE, LOSS_SCALE_COUNTER = "loss_scale.value", "loss_scale.counter"
LOSS_SCALE_WINDOW = 1000  # finite steps before the scale doubles

# The Assign / AssignAdd primitives: the functional ops.assign / ops.assign_add are marked
# "removed after 2.9.0" in MindSpore 2.10; the primitives run the same kernels.
_assign, _assign_add = ops.Assign(), ops.AssignAdd()
_reduce_sum = ops.ReduceSum(keep_dims=False)

_ema_op = ops.MultitypeFuncGraph("ema_op")
_accum_op = ops.MultitypeFuncGraph("accum_op")
_mean_op = ops.MultitypeFuncGraph("mean_op")
_zero_op = ops.MultitypeFuncGraph("zero_op")
_square_sum_op = ops.MultitypeFuncGraph("square_sum_op")
_clip_op = ops.MultitypeFuncGraph("clip_op")
_adamw_op = ops.MultitypeFuncGraph("adamw_op")


@_ema_op.register("Tensor", "Tensor", "Tensor")
def _ema_update(d, ema, w):
    return _assign(ema, ema * d + w * (1.0 - d))


@_accum_op.register("Tensor", "Tensor")
def _accum_add(total, g):
    return _assign_add(total, g)


@_mean_op.register("Number", "Tensor")
def _accum_mean(n, total):
    return total / n


@_zero_op.register("Tensor")
def _accum_zero(total):
    return _assign(total, ops.zeros_like(total))


@_square_sum_op.register("Tensor")
def _square_sum(g):
    return ops.expand_dims(ops.cast(_reduce_sum(ops.square(g), ()), ms.float32), 0)


@_clip_op.register("Tensor", "Tensor", "Tensor")
def _clip_scale(clip_norm, global_norm, g):
    return ops.cast(g * clip_norm / global_norm, ops.dtype(g))


def clip_by_global_norm(grads, clip_norm):
    """g * clip_norm / max(global_norm, clip_norm) for every g, global_norm = sqrt(sum over all
    gradients of their squares), in float32: what ``ops.clip_by_global_norm`` computes, op for
    op (MindSpore 2.10 marks it "removed after 2.9.0")."""
    hyper_map = ops.HyperMap()
    clip = Tensor([clip_norm], ms.float32)
    norm = ops.sqrt(ops.addn(hyper_map(_square_sum_op, grads)))
    norm = ops.select(norm >= clip, norm, clip)
    return hyper_map(ops.partial(_clip_op, clip, norm), grads)


class EMA(nn.Cell):
    """ema = d * ema + (1 - d) * w after each optimizer step, inside the graph.

    d = min(decay, (1 + n) / (10 + n)) with warmup (n = number of updates), else decay.
    ``ema_net`` is a full copy of the network whose parameters are the averages, so it
    can be used for sampling directly.
    """

    def __init__(self, net, ema_net, decay, warmup=True):
        super().__init__()
        self.weights = ParameterTuple(net.trainable_params())
        self.ema_weights = ParameterTuple(ema_net.trainable_params())
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.num_updates = Parameter(Tensor(0.0, ms.float32), name="ema_num_updates", requires_grad=False)
        self.hyper_map = ops.HyperMap()

    def copy_weights(self):
        """Start the average at the current weights."""
        for e, w in zip(self.ema_weights, self.weights):
            e.set_data(w.value().copy())

    def construct(self):
        n = self.num_updates + 1.0
        d = Tensor(self.decay, ms.float32)
        if self.warmup:
            d = ops.minimum(d, (1.0 + n) / (10.0 + n))
        d = ops.depend(d, _assign(self.num_updates, n))
        updates = self.hyper_map(ops.partial(_ema_op, d), self.ema_weights, self.weights)
        return ops.depend(d, updates)


def lr_schedule(cfg, total_steps):
    """Per-step learning rates: linear warmup to lr, then constant or cosine to min_lr."""
    steps = np.arange(total_steps, dtype=np.float64)
    warm = max(cfg["warmup_steps"], 0)
    lr = np.full(total_steps, cfg["lr"], np.float64)
    if cfg["lr_schedule"] == "cosine":
        span = max(total_steps - warm, 1)
        progress = np.clip((steps - warm) / span, 0.0, 1.0)
        lr = cfg["min_lr"] + 0.5 * (cfg["lr"] - cfg["min_lr"]) * (1 + np.cos(math.pi * progress))
    if warm:
        lr = np.where(steps < warm, cfg["lr"] * (steps + 1) / warm, lr)
    return lr.astype(np.float32)


@_adamw_op.register("Tensor", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor", "Bool", "Tensor",
                    "Tensor", "Tensor", "Tensor")
def _adamw_update(lr, wd, b1, b2, eps, bc1, bc2, decay, w, m, v, g):
    m_new = b1 * m + (1.0 - b1) * g
    v_new = b2 * v + (1.0 - b2) * g * g
    w_new = w - lr * (m_new / bc1) / (ops.sqrt(v_new / bc2) + eps)
    if decay:
        w_new = w_new - lr * wd * w
    done = ops.depend(_assign(m, m_new), _assign(v, v_new))
    return ops.depend(_assign(w, w_new), done)


class AdamW(nn.Optimizer):
    """Adam with decoupled weight decay (Loshchilov and Hutter 2019), torch.optim.AdamW's update:
    m, v as Adam; w <- w - lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps) - lr * wd * w.

    Replaces nn.AdamWeightDecay, which MindSpore 2.10 marks "removed after 2.9.0" (and which has
    no bias correction; mint.optim.AdamW takes no per-step learning-rate list). Norm gammas and
    betas are not decayed, as nn.AdamWeightDecay's default. State: ``adamw_m.<name>``,
    ``adamw_v.<name>`` and ``adamw_step``; a checkpoint of the old optimizer resumes through
    :func:`legacy_optimizer_state`.
    """

    def __init__(self, params, learning_rate, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0):
        # the base class keeps weight_decay as a tensor and decay_flags (no decay on names with
        # gamma or beta); its decay_weight (an L2 term on the gradients) is not called here
        super().__init__(learning_rate, params, weight_decay)
        self.b1, self.b2 = Tensor(beta1, ms.float32), Tensor(beta2, ms.float32)
        self.eps = Tensor(eps, ms.float32)
        self.moment1 = self._parameters.clone(prefix="adamw_m", init="zeros")
        self.moment2 = self._parameters.clone(prefix="adamw_v", init="zeros")
        self.step_count = Parameter(Tensor(0.0, ms.float32), name="adamw_step", requires_grad=False)

    def construct(self, gradients):
        lr = self.get_lr()   # lrs[global_step]; advancing global_step is the subclass's job (as nn.Adam)
        lr = ops.depend(lr, _assign_add(self.global_step, self.global_step_increase_tensor))
        t = self.step_count + 1.0
        t = ops.depend(t, _assign(self.step_count, t))
        bc1, bc2 = 1.0 - ops.pow(self.b1, t), 1.0 - ops.pow(self.b2, t)
        return self.hyper_map(ops.partial(_adamw_op, lr, self.weight_decay, self.b1, self.b2, self.eps, bc1, bc2),
                              self.decay_flags, self._parameters, self.moment1, self.moment2, gradients)


def legacy_optimizer_state(tensors):
    """A checkpoint written with nn.AdamWeightDecay (``optimizer: adamw`` before AdamW above)
    holds ``adam_m.*`` / ``adam_v.*``: the same moments under AdamW's names, and ``adamw_step`` set
    to the steps taken (its bias corrections are then as if it had always been AdamW). Returns
    ``tensors`` unchanged when there is nothing to rename."""
    if not any(k.startswith("adam_m.") for k in tensors) or any(k.startswith("adamw_m.") for k in tensors):
        return tensors
    out = dict(tensors)
    for key in tensors:
        for old, new in (("adam_m.", "adamw_m."), ("adam_v.", "adamw_v.")):
            if key.startswith(old):
                out[new + key[len(old):]] = out.pop(key)
    if "global_step" in tensors:
        out["adamw_step"] = Tensor(float(np.asarray(tensors["global_step"]).reshape(-1)[0]), ms.float32)
    return out


def build_optimizer(cfg, params, lrs):
    lr = Tensor(lrs)
    if cfg["optimizer"] == "adamw":
        return AdamW(params, learning_rate=lr, beta1=cfg["adam_beta1"], beta2=cfg["adam_beta2"],
                     weight_decay=cfg["weight_decay"])
    return nn.Adam(params, learning_rate=lr, beta1=cfg["adam_beta1"], beta2=cfg["adam_beta2"],
                   weight_decay=cfg["weight_decay"])


def _apply_update(grads, optimizer, ema, grad_clip):
    """Clip (global norm), apply the optimizer, then the EMA; shared by every step variant."""
    if grad_clip > 0:
        grads = clip_by_global_norm(grads, grad_clip)
    done = optimizer(grads)
    if ema is not None:
        done = ops.depend(done, ema())
    return done


def make_train_step(loss_cell, optimizer, ema, grad_clip=0.0, grad_reducer=None, jit=True,
                    loss_scaler=None, loss_reducer=None, flag_reducer=None, jit_level="O0"):
    """step(x0, t, noise) -> loss: gradients, reduce, clip, update, EMA, in one graph.

    jit: compile with ``ms.jit(..., jit_level=jit_level)`` (O0 | O1); False returns the plain
    function (PyNative, or for a caller that compiles it, e.g. data sink).

    loss_reducer: averages the loss over ranks (data parallel), for logging only.
    loss_scaler (mixed precision): a ``mindspore.amp.DynamicLossScaler``; the step then returns
    (loss, finite): the scaled loss is differentiated, the gradients are unscaled and, when any
    is inf/NaN, neither the optimizer nor the EMA is applied and the scale is lowered.
    """
    weights = optimizer.parameters
    if loss_scaler is None:
        grad_fn = ms.value_and_grad(loss_cell, None, weights)

        def step(x0, t, noise):
            loss, grads = grad_fn(x0, t, noise)
            if grad_reducer is not None:
                grads = grad_reducer(grads)
            loss = ops.depend(loss, _apply_update(grads, optimizer, ema, grad_clip))
            if loss_reducer is not None:
                loss = loss_reducer(loss)
            return loss

        return ms.jit(step, jit_level=jit_level) if jit else step

    def scaled_loss(x0, t, noise):
        return loss_scaler.scale(loss_cell(x0, t, noise))

    scaled_grad_fn = ms.value_and_grad(scaled_loss, None, weights)

    def amp_step(x0, t, noise):
        scaled, grads = scaled_grad_fn(x0, t, noise)
        loss = loss_scaler.unscale(scaled)
        grads = loss_scaler.unscale(grads)
        if grad_reducer is not None:  # an overflow on any rank reaches every rank's sum
            grads = grad_reducer(grads)
        if loss_reducer is not None:
            loss = loss_reducer(loss)
        finite = all_finite(grads)
        if flag_reducer is not None:  # every rank skips or applies the same step
            finite = flag_reducer(finite)
        loss_scaler.adjust(finite)
        if finite:
            loss = ops.depend(loss, _apply_update(grads, optimizer, ema, grad_clip))
        return loss, finite

    return ms.jit(amp_step, jit_level=jit_level) if jit else amp_step


def make_accum_steps(loss_cell, optimizer, ema, accum, grad_clip=0.0, grad_reducer=None, jit=True,
                     loss_scaler=None, loss_reducer=None, flag_reducer=None, jit_level="O0"):
    """Gradient accumulation: micro(x0, t, noise) -> loss adds grads; apply() updates.

    With ``loss_scaler`` the micro-steps add unscaled gradients and apply() returns whether
    they were finite (the update, the EMA and the scale change happen only in apply()).
    """
    weights = optimizer.parameters

    def scaled_loss(x0, t, noise):
        return loss_scaler.scale(loss_cell(x0, t, noise))

    grad_fn = ms.value_and_grad(loss_cell if loss_scaler is None else scaled_loss, None, weights)
    sums = weights.clone(prefix="grad_accum", init="zeros")
    hyper_map = ops.HyperMap()

    def micro(x0, t, noise):
        loss, grads = grad_fn(x0, t, noise)
        if loss_scaler is not None:
            loss, grads = loss_scaler.unscale(loss), loss_scaler.unscale(grads)
        if loss_reducer is not None:
            loss = loss_reducer(loss)
        return ops.depend(loss, hyper_map(_accum_op, sums, grads))

    def apply():
        grads = hyper_map(ops.partial(_mean_op, float(accum)), sums)
        if grad_reducer is not None:
            grads = grad_reducer(grads)
        done = _apply_update(grads, optimizer, ema, grad_clip)
        return ops.depend(done, hyper_map(_zero_op, sums))

    def amp_apply():
        grads = hyper_map(ops.partial(_mean_op, float(accum)), sums)
        if grad_reducer is not None:
            grads = grad_reducer(grads)
        finite = all_finite(grads)
        if flag_reducer is not None:
            finite = flag_reducer(finite)
        loss_scaler.adjust(finite)
        if finite:
            finite = ops.depend(finite, _apply_update(grads, optimizer, ema, grad_clip))
        return ops.depend(finite, hyper_map(_zero_op, sums))

    if loss_scaler is not None:
        apply = amp_apply
    if not jit:
        return micro, apply
    return ms.jit(micro, jit_level=jit_level), ms.jit(apply, jit_level=jit_level)


def clear_overflow_status(x):
    """On the float-status path (910A; 910B in saturation mode) ``all_finite`` reads *and clears*
    the NPU's global overflow register; called (on any small tensor) before a step, it drops what
    earlier graphs (previews, sampling, the last update) left there. Elsewhere a cheap no-op check."""
    return all_finite((x,))


def make_loss_scaler(cfg):
    """DynamicLossScaler(loss_scale, factor 2, window 1000) with checkpoint-friendly names."""
    if cfg["loss_scale"] < 1:
        raise ConfigError(f"config key 'loss_scale' must be at least 1 with amp_level "
                          f"{cfg['amp_level']}, got {cfg['loss_scale']}")
    scaler = DynamicLossScaler(scale_value=float(cfg["loss_scale"]), scale_factor=2,
                               scale_window=LOSS_SCALE_WINDOW)
    scaler.scale_value.name = LOSS_SCALE_VALUE
    scaler.counter.name = LOSS_SCALE_COUNTER
    return scaler


def draw_t_noise(seed, step, micro, batch_shape, timesteps, rank=0, world=1):
    """t ~ U{0..T-1} and eps ~ N(0, I) for rank ``rank``'s rows of one global micro-batch.

    Contract: row g of the global batch (world * B rows) gets its t and its noise from a stream
    of its own, keyed on (seed, step, micro, g) and nothing else. Rank r holds global rows
    r, r + world, ..., r + (B - 1) * world, which are the rows MindSpore's sharded reader gives
    that rank when not shuffling (its DistributedSampler deals row i to shard i % world). So N
    ranks together draw exactly what one process with the global batch draws, row for row, and a
    rank draws only its own B rows: the cost does not grow with world.
    Returns Tensors int32 [B], float32 batch_shape.
    """
    t, noise = draw_t_noise_np(seed, step, micro, batch_shape, timesteps, rank, world)
    return Tensor(t), Tensor(noise)


def draw_t_noise_np(seed, step, micro, batch_shape, timesteps, rank=0, world=1):
    """:func:`draw_t_noise` as contiguous numpy arrays (for data pipelines).

    Each row's stream is Philox with key (seed, step * 1024 + micro) started at counter
    (0, 0, g, 0): distinct rows use disjoint counter ranges (a row would need 2**64 blocks to
    reach the next), and Philox output at distinct counters is independent.
    """
    b = batch_shape[0]
    t = np.empty((b,), np.int32)
    noise = np.empty(batch_shape, np.float32)
    key = [seed, step * 1024 + micro]
    for i in range(b):
        rng = np.random.Generator(np.random.Philox(key=key, counter=[0, 0, rank + i * world, 0]))
        t[i] = rng.integers(0, timesteps, dtype=np.int32)
        rng.standard_normal(batch_shape[1:], dtype=np.float32, out=noise[i])
    return t, noise

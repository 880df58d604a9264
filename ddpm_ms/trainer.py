"""Training: a compiled train step, EMA, checkpoints, exact resume, clean stops.

The loop is visible in :func:`train`; the pieces it calls are small:

* :class:`EMA` keeps an exponential moving average of the weights in a second U-Net,
  updated inside the train-step graph.
* :func:`make_train_step` builds the step (loss, gradients, optional all-reduce,
  global-norm clipping, optimizer update, EMA update) as one ``ms.jit`` graph. With mixed
  precision (``amp_level`` other than O0) the U-Net's convolutions and matmuls run in
  float16 and the step scales the loss, unscales the gradients and skips the update (and
  the EMA) when they are not finite (dynamic loss scaling).
* Data parallel (:mod:`ddpm_ms.distributed`): gradients are averaged over the ranks inside
  the step, the logged loss is the global-batch loss, and only rank 0 writes files.
* Timesteps and noise are drawn per step from a counter-based numpy generator keyed on
  (seed, step): a resumed run, a run on another device and a data-parallel run over N
  ranks all draw exactly the same numbers (MindSpore's in-graph random ops keep a state
  that cannot be saved, and its generator-based random ops do not run on CPU).
"""
import json
import math
import os
import signal
import sys
import time

import numpy as np

import mindspore as ms
from mindspore import Parameter, ParameterTuple, Tensor, nn, ops
from mindspore.amp import DynamicLossScaler, all_finite

from . import checkpoint as ckpt
from .config import ConfigError, public, save_config
from .device import resolve_mode
from .losses import DiffusionLoss
from .schedule import NoiseSchedule
from .unet import UNET_KEYS, build_unet, model_summary, set_compute_dtype

# Settings that must match for a checkpoint to load into a network.
ARCH_KEYS = tuple(UNET_KEYS) + ("image_size", "channels")
# Checkpoint names of the dynamic loss scaler's state (mixed precision only).
LOSS_SCALE_VALUE, LOSS_SCALE_COUNTER = "loss_scale.value", "loss_scale.counter"
LOSS_SCALE_WINDOW = 1000  # finite steps before the scale doubles
# Data parallel: steps between stop votes (an AllReduce plus a host sync), so a SIGTERM or
# max_minutes on one rank stops every rank at the same step, at most this many steps later.
STOP_VOTE_EVERY = 10


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite loss, ...); message is one line."""


def build_schedule(cfg):
    return NoiseSchedule(cfg["beta_schedule"], cfg["timesteps"], beta_start=cfg["beta_start"],
                         beta_end=cfg["beta_end"])


_ema_op = ops.MultitypeFuncGraph("ema_op")
_accum_op = ops.MultitypeFuncGraph("accum_op")
_mean_op = ops.MultitypeFuncGraph("mean_op")
_zero_op = ops.MultitypeFuncGraph("zero_op")


@_ema_op.register("Tensor", "Tensor", "Tensor")
def _ema_update(d, ema, w):
    return ops.assign(ema, ema * d + w * (1.0 - d))


@_accum_op.register("Tensor", "Tensor")
def _accum_add(total, g):
    return ops.assign_add(total, g)


@_mean_op.register("Number", "Tensor")
def _accum_mean(n, total):
    return total / n


@_zero_op.register("Tensor")
def _accum_zero(total):
    return ops.assign(total, ops.zeros_like(total))


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
        d = ops.depend(d, ops.assign(self.num_updates, n))
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


def build_optimizer(cfg, params, lrs):
    lr = Tensor(lrs)
    if cfg["optimizer"] == "adamw":
        return nn.AdamWeightDecay(params, learning_rate=lr, beta1=cfg["adam_beta1"],
                                  beta2=cfg["adam_beta2"], weight_decay=cfg["weight_decay"])
    return nn.Adam(params, learning_rate=lr, beta1=cfg["adam_beta1"], beta2=cfg["adam_beta2"],
                   weight_decay=cfg["weight_decay"])


def _apply_update(grads, optimizer, ema, grad_clip):
    """Clip (global norm), apply the optimizer, then the EMA; shared by every step variant."""
    if grad_clip > 0:
        grads = ops.clip_by_global_norm(grads, grad_clip)
    done = optimizer(grads)
    if ema is not None:
        done = ops.depend(done, ema())
    return done


def make_train_step(loss_cell, optimizer, ema, grad_clip=0.0, grad_reducer=None, jit=True,
                    loss_scaler=None, loss_reducer=None, flag_reducer=None):
    """step(x0, t, noise) -> loss: gradients, reduce, clip, update, EMA, in one graph.

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

        return ms.jit(step) if jit else step

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

    return ms.jit(amp_step) if jit else amp_step


def make_accum_steps(loss_cell, optimizer, ema, accum, grad_clip=0.0, grad_reducer=None, jit=True,
                     loss_scaler=None, loss_reducer=None, flag_reducer=None):
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
    return (ms.jit(micro), ms.jit(apply)) if jit else (micro, apply)


def _clear_overflow_status(x):
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


def use_data_sink(cfg, device_target):
    """Resolve ``data_sink`` (auto | on | off) for a device; ConfigError when it cannot be on.

    auto = on for Ascend and GPU (without gradient accumulation), off on CPU: MindSpore's
    data sink (``mindspore.data_sink``) does not run on CPU.
    """
    mode = cfg["data_sink"]
    accel = device_target in ("Ascend", "GPU")
    if mode == "on" and not accel:
        raise ConfigError(f"data_sink on needs Ascend or GPU; MindSpore cannot sink data on "
                          f"{device_target}: use --data_sink auto (or off)")
    if mode == "on" and cfg["grad_accum"] > 1:
        raise ConfigError("data_sink on does not combine with grad_accum > 1: use --data_sink off")
    return mode == "on" or (mode == "auto" and accel and cfg["grad_accum"] == 1)


def draw_t_noise(seed, step, micro, batch_shape, timesteps, rank=0, world=1):
    """t ~ U{0..T-1} and eps ~ N(0, I) for one micro-batch, keyed on (seed, step, micro).

    The draw is made for the global batch (world * B) and rank r takes rows r::world,
    which are the rows MindSpore's sharded reader gives that rank when not shuffling (its
    DistributedSampler deals row i to shard i % world), so N ranks together see what one
    process with the global batch sees. Returns Tensors int32 [B], float32 batch_shape.
    """
    t, noise = draw_t_noise_np(seed, step, micro, batch_shape, timesteps, rank, world)
    return Tensor(t), Tensor(noise)


def draw_t_noise_np(seed, step, micro, batch_shape, timesteps, rank=0, world=1):
    """:func:`draw_t_noise` as contiguous numpy arrays (for data pipelines)."""
    b = batch_shape[0]
    rng = np.random.Generator(np.random.Philox(key=[seed, step * 1024 + micro]))
    t = rng.integers(0, timesteps, size=(b * world,), dtype=np.int32)[rank::world]
    noise = rng.standard_normal((b * world, *batch_shape[1:]), dtype=np.float32)[rank::world]
    return np.ascontiguousarray(t), np.ascontiguousarray(noise)


class Trainer:
    """Everything a run needs, built from a resolved Config; ``run()`` trains.

    Data parallel: pass ``comm`` (a :class:`ddpm_ms.distributed.Comm`; it gives rank, world,
    the gradient reducer, the loss mean and the stop vote), or rank / world /
    grad_reducer_factory by hand. Only rank 0 (``is_main``) writes files or logs.
    ``save_hooks``: callables run with the path after each checkpoint is written (rank 0),
    e.g. the ModelArts upload.
    """

    def __init__(self, cfg, rank=0, world=1, grad_reducer_factory=None, log=print, comm=None):
        if comm is not None:
            rank, world = comm.rank, comm.world
            grad_reducer_factory = grad_reducer_factory or comm.grad_reducer
        self.cfg, self.rank, self.world, self.comm = cfg, rank, world, comm
        self.is_main = rank == 0
        self.log = log if self.is_main else (lambda *_a, **_k: None)
        self.run_dir = os.path.join(cfg["output_dir"], cfg["run_name"])
        self.schedule = build_schedule(cfg)
        self.net = build_unet(cfg)
        self.amp = cfg["amp_level"] != "O0"
        if self.amp:  # O1/O2/O3/auto: convs and matmuls in float16; norms, softmax, loss in float32
            set_compute_dtype(self.net, ms.float16)
        self.ema_net = build_unet(cfg) if cfg["ema_decay"] > 0 else None
        if self.ema_net is not None:
            self.ema_net.update_parameters_name(ckpt.EMA_PREFIX)
        self.loss_cell = DiffusionLoss(self.net, self.schedule, objective=cfg["objective"],
                                       loss_type=cfg["loss_type"], p2_gamma=cfg["p2_gamma"],
                                       p2_k=cfg["p2_k"])
        self.dataset = None
        self.steps_per_epoch = None
        self.total_steps = None
        self.grad_reducer_factory = grad_reducer_factory
        self.loss_scaler = None
        self.save_hooks = []
        self.sink = False
        self._sink_fn = None
        self.step = 0
        self.stop_reason = None
        self.stop_vote_every = STOP_VOTE_EVERY
        self.last_saved = None  # (step, path) of the newest checkpoint written or resumed from

    # ----------------------------------------------------------------- set-up
    def setup(self, dataset_factory, steps_per_epoch, sink_dataset_factory=None):
        """Optimizer, EMA and compiled steps. ``dataset_factory(epoch, skip)`` gives an epoch's
        batches; with data sink (Ascend/GPU) ``sink_dataset_factory(start_step)`` gives one
        endless dataset with columns (x0, t, noise) instead."""
        cfg = self.cfg
        self.sink = use_data_sink(cfg, ms.get_context("device_target"))
        if self.sink:
            if sink_dataset_factory is None:
                raise ValueError("data sink needs sink_dataset_factory")
            self.sink_dataset_factory = sink_dataset_factory
            dataset_factory = _step_tokens(steps_per_epoch)
        self.dataset_factory = dataset_factory
        self.steps_per_epoch = max(1, steps_per_epoch // cfg["grad_accum"])
        self.total_steps = cfg["max_steps"] or cfg["epochs"] * self.steps_per_epoch
        self.lrs = lr_schedule(cfg, self.total_steps)
        self.optimizer = build_optimizer(cfg, self.net.trainable_params(), self.lrs)
        self.ema = None
        if self.ema_net is not None:
            self.ema = EMA(self.net, self.ema_net, cfg["ema_decay"], cfg["ema_warmup"])
            self.ema.copy_weights()
        reducer = self.grad_reducer_factory(self.optimizer.parameters) if self.grad_reducer_factory else None
        loss_reducer = self.comm.loss_reducer() if self.comm is not None and self.world > 1 else None
        self.loss_scaler = make_loss_scaler(cfg) if self.amp else None
        jit = resolve_mode(cfg["mode"], ms.get_context("device_target"))[0] == "graph"
        flag_reducer, self._clear_status = None, None
        if self.amp:  # how this device detects overflow (ddpm_ms/ascend.py)
            from .ascend import chip, overflow_check
            device = ms.get_context("device_target")
            self.overflow_check = overflow_check(device, chip(device), os.environ, self.world)
            self.log(f"loss scaling: overflow check {self.overflow_check.method} ({self.overflow_check.why})")
            if self.overflow_check.reduce_flag and self.comm is not None:
                flag_reducer = self.comm.finite_reducer()
            if self.overflow_check.clear_first:
                self._clear_status = ms.jit(_clear_overflow_status) if jit else _clear_overflow_status
                self._status_probe = Tensor(np.zeros((1,), np.float32))
        self.net.set_train(True)
        if cfg["grad_accum"] > 1:
            self.micro_step, self.apply_step = make_accum_steps(
                self.loss_cell, self.optimizer, self.ema, cfg["grad_accum"], cfg["grad_clip"], reducer, jit,
                loss_scaler=self.loss_scaler, loss_reducer=loss_reducer, flag_reducer=flag_reducer)
        else:
            self.train_step = make_train_step(self.loss_cell, self.optimizer, self.ema,
                                              cfg["grad_clip"], reducer, jit,
                                              loss_scaler=self.loss_scaler, loss_reducer=loss_reducer,
                                              flag_reducer=flag_reducer)

    def state_tensors(self):
        """(name, tensor) pairs of everything a resume needs."""
        items = ckpt.named(self.net)
        if self.ema_net is not None:
            items += [(ckpt.EMA_PREFIX + name, p) for name, p in ckpt.named(self.ema_net)]
            items.append((self.ema.num_updates.name, self.ema.num_updates))
        return items + self._optimizer_state() + self._loss_scale_state()

    def _loss_scale_state(self):
        """(name, Parameter) of the dynamic loss scaler (mixed precision), so resume is exact."""
        if self.loss_scaler is None:
            return []
        return [(LOSS_SCALE_VALUE, self.loss_scaler.scale_value),
                (LOSS_SCALE_COUNTER, self.loss_scaler.counter)]

    def _optimizer_state(self):
        """(name, Parameter) of the optimizer's own state (moments, step, beta powers)."""
        weights = {id(p) for p in self.optimizer.parameters}
        return [(p.name, p) for p in self.optimizer.get_parameters()
                if id(p) not in weights and p.name != "learning_rate"]

    def save(self, epoch):
        """Write step_<n>.ckpt and point latest.ckpt at it (rank 0 only)."""
        if not self.is_main:
            return None
        path = os.path.join(self.run_dir, f"step_{self.step:08d}.ckpt")
        ckpt.save(path, self.state_tensors(), self.step, self.cfg, epoch=epoch)
        ckpt.link_latest(path, self.run_dir)
        self.last_saved = (self.step, path)
        ckpt.rotate(self.run_dir, max(self.cfg["keep_checkpoints"], 1))
        for hook in self.save_hooks:
            hook(path)
        return path

    def restore(self, path, loaded=None):
        """Load a checkpoint written by save() (``loaded``: its ``ckpt.load`` result, when
        already read); returns the epoch it was in."""
        tensors, meta = loaded or ckpt.load(path)
        ckpt.check_compatible(meta["config"], self.cfg, ARCH_KEYS)
        ckpt.load_into(ckpt.named(self.net), tensors, where=path)
        ckpt.load_into(self._optimizer_state(), tensors, where=path)
        if self.ema_net is not None:
            ckpt.load_into(ckpt.named(self.ema_net), tensors, prefix=ckpt.EMA_PREFIX, where=path)
            ckpt.load_into([(self.ema.num_updates.name, self.ema.num_updates)], tensors, where=path)
        if self.loss_scaler is not None:
            if LOSS_SCALE_VALUE in tensors:
                ckpt.load_into(self._loss_scale_state(), tensors, where=path)
            else:
                self.log(f"{path} has no loss-scale state (trained without amp); starting at "
                         f"loss_scale={self.cfg['loss_scale']}")
        self.step = int(meta["step"])
        self.last_saved = (self.step, path)
        return int(meta.get("epoch", 0))

    def find_resume(self):
        """(path, ckpt.load result) of the checkpoint to resume from, or (None, None).

        ``--resume auto`` takes latest.ckpt, or, when it cannot be read, the newest readable
        step checkpoint, and says so; with no checkpoint at all it says it starts at step 0.
        """
        resume = self.cfg["resume"]
        if not resume:
            return None, None
        if resume != "auto":
            path = ckpt.find_resume(resume, self.run_dir)
            return path, ckpt.load(path)
        candidates = ckpt.auto_resume_candidates(self.run_dir)
        if not candidates:
            self.log(f"no checkpoint in {self.run_dir}: starting from step 0")
            return None, None
        path, loaded, skipped = ckpt.load_first_readable(candidates)
        if skipped:
            bad = ", ".join(os.path.basename(p) for p, _ in skipped)
            self.log(f"warning: {bad} in {self.run_dir} cannot be read (corrupt or truncated); resuming "
                     f"from {os.path.basename(path)} (step {loaded[1]['step']}), the newest readable checkpoint")
        return path, loaded

    # ------------------------------------------------------------------ loop
    def run(self):
        """Train until max_steps / epochs / max_minutes / a signal; returns the final step."""
        from tqdm import tqdm

        from .logging_utils import MetricsLog
        cfg = self.cfg
        resume, loaded = self.find_resume()
        epoch = 0
        if resume:  # before config.yaml is written: a rejected checkpoint leaves the run as it was
            epoch = self.restore(resume, loaded)
        if self.is_main:
            os.makedirs(self.run_dir, exist_ok=True)
            save_config(cfg, os.path.join(self.run_dir, "config.yaml"))
            self.log(model_summary(self.net))
            self.log("config: " + json.dumps(public(cfg), sort_keys=True))
        if resume:
            self.log(f"resumed from {resume} at step {self.step}")
        if self.comm is not None and self.world > 1 and not self.comm.same_on_all(self.step):
            raise TrainingError(f"rank {self.rank} starts at step {self.step} but another rank does not: "
                                "every node must see the same checkpoint (a shared run folder, or "
                                "--resume PATH / --checkpoint_url available on every node)")
        metrics = MetricsLog(self.run_dir, enabled=self.is_main, resume_step=self.step)
        previous = _install_signal_handlers(self)
        start = time.time()
        bar = tqdm(total=self.total_steps, initial=self.step, disable=not self.is_main,
                   unit="step", dynamic_ncols=True, file=sys.stdout)
        loss_sum, loss_count, window_start, window_images = None, 0, time.time(), 0
        applied = None  # amp: number of applied (finite) steps in the window, as a tensor
        images_per_step = cfg["batch_size"] * cfg["grad_accum"] * self.world
        multi = self.comm is not None and self.world > 1
        stopping = False  # the stop every rank agreed on (one process: its own stop_reason)
        try:
            while self.step < self.total_steps and not stopping and (multi or self.stop_reason is None):
                epoch = self.step // self.steps_per_epoch
                skip = (self.step % self.steps_per_epoch) * cfg["grad_accum"]
                for micro_batches in _groups(self.dataset_factory(epoch, skip), cfg["grad_accum"]):
                    loss = self._one_step(micro_batches)
                    if isinstance(loss, tuple):  # amp: a skipped (overflowed) step adds no loss
                        loss, finite = loss
                        loss = ops.select(finite, loss, ops.zeros_like(loss))
                        finite = finite.astype(ms.float32)
                        applied = finite if applied is None else applied + finite
                    self.step += 1
                    loss_sum = loss if loss_sum is None else loss_sum + loss
                    loss_count += 1
                    window_images += images_per_step
                    at_end = self.step >= self.total_steps
                    if self.stop_reason is None and cfg["max_minutes"] and (time.time() - start) / 60 >= cfg["max_minutes"]:
                        self.stop_reason = f"max_minutes={cfg['max_minutes']} reached"
                    if not multi:
                        stopping = self.stop_reason is not None
                    elif self.step % self.stop_vote_every == 0 and not at_end:  # same step on every rank
                        stopping = self.comm.any_true(self.stop_reason is not None)
                        if stopping and self.stop_reason is None:
                            self.stop_reason = "another rank stopped (signal or max_minutes); saved and exiting"
                    if self.step % cfg["log_every"] == 0 or at_end or stopping:
                        good = loss_count if applied is None else int(round(float(applied.asnumpy())))
                        row = {}
                        if applied is not None:
                            row = {"skipped_steps": loss_count - good,
                                   "loss_scale": float(self.loss_scaler.scale_value.asnumpy())}
                        mean_loss = float(loss_sum.asnumpy()) / good if good else None
                        if good == 0 and row["loss_scale"] <= 1.0:
                            raise TrainingError(
                                f"every step from {self.step - loss_count + 1} to {self.step} overflowed "
                                "even at loss scale 1; stopped without saving (last good checkpoint kept). "
                                "Lower lr, enable grad_clip or use amp_level O0")
                        if mean_loss is not None and not math.isfinite(mean_loss):
                            first = self.step - loss_count + 1
                            when = (f"at step {self.step}" if first == self.step else
                                    f"in steps {first}-{self.step} (their mean loss)")
                            raise TrainingError(f"loss became {mean_loss} {when}; " + self._not_finite_advice())
                        speed = window_images / max(time.time() - window_start, 1e-9)
                        lr = float(self.lrs[min(self.step - 1, len(self.lrs) - 1)])
                        metrics.write(step=self.step, epoch=epoch, loss=mean_loss, lr=lr,
                                      images_per_s=speed, elapsed_s=time.time() - start, **row)
                        shown = "skipped" if mean_loss is None else f"{mean_loss:.4f}"
                        bar.set_postfix(loss=shown, lr=f"{lr:.2e}", img_s=f"{speed:.1f}")
                        loss_sum, loss_count, window_start, window_images = None, 0, time.time(), 0
                        applied = None
                    bar.update(1)
                    if self.step % cfg["save_every"] == 0 or at_end or stopping:
                        self._check_finite()
                        self.save(epoch)
                    if self.is_main and cfg["sample_every"] and self.step % cfg["sample_every"] == 0:
                        self.preview(f"samples_step{self.step:08d}.png")
                    if at_end or stopping:
                        break
        finally:
            bar.close()
            _restore_signal_handlers(previous)
        if self.is_main:
            metrics.plot(os.path.join(self.run_dir, "loss.png"))
            self.preview("samples.png")
        why = self.stop_reason or f"reached step {self.step}"
        self.log(f"stopped: {why}; checkpoint {os.path.join(self.run_dir, 'latest.ckpt')}")
        return self.step

    def _one_step(self, micro_batches):
        """One optimizer step over ``grad_accum`` micro-batches; returns the mean loss tensor
        (amp: a tuple (loss, finite) where finite False means the step was skipped)."""
        cfg = self.cfg
        if self._clear_status is not None:  # float-status path: count only this step's overflows
            self._clear_status(self._status_probe)
        if self.sink:
            return self._sink_step()
        draws = [draw_t_noise(cfg["seed"], self.step, m, x0.shape, cfg["timesteps"], self.rank, self.world)
                 for m, x0 in enumerate(micro_batches)]
        if cfg["grad_accum"] == 1:
            return self.train_step(micro_batches[0], *draws[0])
        total = None
        for x0, (t, noise) in zip(micro_batches, draws):
            loss = self.micro_step(x0, t, noise)
            total = loss if total is None else total + loss
        finite = self.apply_step()
        loss = total / len(micro_batches)
        return (loss, finite) if self.loss_scaler is not None else loss

    def _sink_step(self):
        """Data sink (Ascend/GPU only, written from the MindSpore docs; not run on CPU): the
        dataset (x0, t, noise) is fed to the device queue and the same train step reads it."""
        if self._sink_fn is None:
            dataset = self.sink_dataset_factory(self.step)
            self._sink_fn = ms.data_sink(self.train_step, dataset, sink_size=1)
        return self._sink_fn()

    def _check_finite(self):
        for p in self.net.trainable_params()[:1] + self.net.trainable_params()[-1:]:
            if not np.isfinite(p.asnumpy()).all():
                raise TrainingError(f"parameter {p.name} is not finite at step {self.step}; "
                                    + self._not_finite_advice())

    def _not_finite_advice(self):
        """The rest of the non-finite message: what was kept, and the causes that apply to this
        config (a setting already at its safe value is not suggested)."""
        cfg = self.cfg
        if self.last_saved is None:
            kept = "stopped before the first checkpoint, nothing saved"
        else:
            kept = (f"stopped without saving; the last good checkpoint is step {self.last_saved[0]} "
                    f"({self.last_saved[1]})")
        causes = [f"lr {cfg['lr']:g} too high (try --lr {cfg['lr'] / 4:g})"]
        if cfg["grad_clip"] <= 0:
            causes.append("no gradient clipping (try --grad_clip 1)")
        elif cfg["grad_clip"] > 1:
            causes.append(f"grad_clip {cfg['grad_clip']:g} is loose (try --grad_clip 1)")
        if cfg["warmup_steps"] == 0:
            causes.append(f"no lr warmup (try --warmup_steps {max(10, min(1000, (self.total_steps or 0) // 20))})")
        if self.amp:
            causes.append(f"float16 overflow with amp_level {cfg['amp_level']} (try --amp_level O0)")
        fix = "; ".join(causes)
        return f"{kept}. Likely causes for this config: {fix}. Then continue with --resume auto"

    def preview(self, name):
        """A grid of EMA (or raw) samples with the configured sampler, few steps."""
        from .data import save_grid, to_uint8
        from .sampling import sample
        cfg = self.cfg
        net = self.ema_net if self.ema_net is not None else self.net
        images = sample(net, self.schedule, cfg["num_preview"], (cfg["channels"], cfg["image_size"],
                        cfg["image_size"]), sampler=cfg["sampler"], num_steps=cfg["sample_steps"],
                        eta=cfg["eta"], spacing=cfg["spacing"], objective=cfg["objective"],
                        clip_x0=cfg["clip_x0"], seed=cfg["seed"], progress=False)
        self.net.set_train(True)
        path = os.path.join(self.run_dir, name)
        save_grid(to_uint8(images), path)
        return path


def _step_tokens(steps_per_epoch):
    """A dataset_factory for data sink: the loop only counts steps, the device reads the data."""
    def factory(_epoch, skip):
        return iter([None] * max(steps_per_epoch - skip, 0))
    return factory


def _groups(iterator, n):
    """Lists of n consecutive items (a trailing incomplete group is dropped)."""
    group = []
    for item in iterator:
        group.append(item)
        if len(group) == n:
            yield group
            group = []


def _install_signal_handlers(trainer):
    """SIGTERM / SIGINT ask the loop to stop after the current step and save."""
    def handler(signum, _frame):
        name = signal.Signals(signum).name
        if trainer.stop_reason is not None:  # second signal: give up at once
            raise KeyboardInterrupt
        trainer.stop_reason = f"{name} received; saved and exiting (resume with --resume auto)"
    previous = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            previous[sig] = signal.signal(sig, handler)
        except ValueError:  # not the main thread
            pass
    return previous


def _restore_signal_handlers(previous):
    for sig, h in previous.items():
        signal.signal(sig, h)

"""The training loop: :class:`Trainer` builds the network, loss, optimizer and compiled step
from a config, reads the data, and runs until the end, a time limit or a signal, writing
checkpoints that resume exactly.

* The pieces of the step (EMA, learning rates, optimizer, loss scaling, the t / noise draws)
  are in :mod:`ddpm_ms.train_step`; the data pipeline in :mod:`ddpm_ms.data`.
* Data parallel (:mod:`ddpm_ms.distributed`): gradients are averaged over the ranks inside
  the step, the logged loss is the global-batch loss, and only rank 0 writes files.
* Data sink (Ascend / GPU): the decision (:func:`use_data_sink`), the sunk data set with its
  t / noise columns (:func:`sink_dataset`) and the sunk step all live here.
"""
import json
import math
import os
import signal
import sys
import time

import numpy as np

import mindspore as ms
from mindspore import Tensor, ops

from . import checkpoint as ckpt
from . import data
from .config import ConfigError, public, save_config
from .losses import DiffusionLoss
from .runtime import current_device_target, resolve_jit_level, resolve_mode, set_seed
from .schedule import build_schedule
from .train_step import (EMA, LOSS_SCALE_COUNTER, LOSS_SCALE_VALUE, AdamW, build_optimizer, clear_overflow_status,
                         draw_t_noise, draw_t_noise_np, legacy_optimizer_state, lr_schedule, make_accum_steps,
                         make_loss_scaler, make_train_step)
from .unet import ARCH_KEYS, build_unet, model_summary, set_compute_dtype

# Data parallel: steps between stop votes (an AllReduce plus a host sync), so a SIGTERM or
# max_minutes on one rank stops every rank at the same step, at most this many steps later.
STOP_VOTE_EVERY = 10
SINK_SIZE_MAX = 100  # the device queue of data sink caches at most 100 batches (mindspore.data_sink)


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite loss, ...); message is one line."""


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


class _AddTNoise:
    """Batch map of the sunk data set: x0 -> (x0, t, noise), drawn by ``draw_t_noise`` on a step
    counter, so a sunk run draws what the host loop draws."""

    def __init__(self, cfg, start_step, shard_id, num_shards):
        self.seed, self.timesteps = cfg["seed"], cfg["timesteps"]
        self.step, self.rank, self.world = start_step, shard_id, num_shards

    def __call__(self, x0):
        t, noise = draw_t_noise_np(self.seed, self.step, 0, x0.shape, self.timesteps, self.rank, self.world)
        self.step += 1
        return x0, t, noise


def sink_size(cfg, start_step, total_steps, vote_every=None):
    """Steps per ``mindspore.data_sink`` call: the largest K <= SINK_SIZE_MAX dividing every step
    the loop acts on (log, checkpoint, preview, stop vote, the last step) and the step it starts
    from, so that a call never straddles one of them."""
    k = 0
    for every in (cfg["log_every"], cfg["save_every"], cfg["sample_every"], vote_every, total_steps, start_step):
        if every:
            k = math.gcd(k, every)
    return max(d for d in range(1, min(k, SINK_SIZE_MAX) + 1) if k % d == 0)


def sink_dataset(cfg, start_step, steps_per_epoch=None, num_shards=1, shard_id=0):
    """The endless data set of (x0, t, noise) batches that data sink feeds to the device.

    The same draws as the host loop. The first pass is seeded like the host loop's epoch
    ``start_step // steps_per_epoch`` and skips only ``start_step % steps_per_epoch`` batches
    (a resume does not decode every batch since step 0); later epochs come from ``repeat``
    (the reader reshuffles each pass), so their order differs from the host loop's per-epoch
    seeds, and a resumed sink run does not repeat the uninterrupted run's order exactly.
    Without ``steps_per_epoch`` the whole ``start_step`` is skipped from seed + 0.
    """
    epoch, skip = divmod(start_step, steps_per_epoch) if steps_per_epoch else (0, start_step)
    dataset = data.create_dataset(data.epoch_config(cfg, epoch), num_shards=num_shards, shard_id=shard_id,
                                  training=cfg["shuffle"], repeat=True)
    if skip:
        dataset = dataset.skip(skip)
    # one worker, in order: the step counter must follow the batches
    return dataset.map(operations=_AddTNoise(cfg, start_step, shard_id, num_shards),
                       input_columns=["image"], output_columns=["image", "t", "noise"],
                       num_parallel_workers=1, python_multiprocessing=False)


class Trainer:
    """Everything a run needs, built from a resolved config: ``setup()`` then ``run()``.

    Data parallel: pass ``comm`` (a :class:`ddpm_ms.distributed.Comm`; it gives rank, world,
    the gradient reducer, the loss mean and the stop vote), or rank / world /
    grad_reducer_factory by hand. Only rank 0 (``is_main``) writes files or logs.
    ``save_hooks``: callables run with the path after each checkpoint is written (rank 0),
    e.g. the ModelArts upload.
    """

    def __init__(self, cfg, rank=0, world=1, grad_reducer_factory=None, log=print, comm=None,
                 save_hooks=()):
        if comm is not None:
            rank, world = comm.rank, comm.world
            grad_reducer_factory = grad_reducer_factory or comm.grad_reducer
        self.cfg, self.rank, self.world, self.comm = cfg, rank, world, comm
        self.is_main = rank == 0
        self.log = log if self.is_main else (lambda *_a, **_k: None)
        self.run_dir = os.path.join(cfg["output_dir"], cfg["run_name"])
        self.schedule = build_schedule(cfg)
        set_seed(cfg["seed"])  # the initial weights depend on the config only, not on what ran before
        self.net = build_unet(cfg)
        self.amp = cfg["amp_level"] != "O0"
        if self.amp:  # O1: convs and matmuls in float16; norms, softmax, loss in float32
            set_compute_dtype(self.net, ms.float16)
        self.ema_net = build_unet(cfg) if cfg["ema_decay"] > 0 else None
        if self.ema_net is not None:
            self.ema_net.update_parameters_name(ckpt.EMA_PREFIX)
        self.loss_cell = DiffusionLoss(self.net, self.schedule, objective=cfg["objective"],
                                       loss_type=cfg["loss_type"], p2_gamma=cfg["p2_gamma"],
                                       p2_k=cfg["p2_k"], loss_weight=cfg["loss_weight"],
                                       min_snr_gamma=cfg["min_snr_gamma"])
        self.steps_per_epoch = None
        self.total_steps = None
        self.grad_reducer_factory = grad_reducer_factory
        self.loss_scaler = None
        self.save_hooks = list(save_hooks)
        self.sink = False
        self.sink_size = 1  # steps per data_sink call (set when the sink starts)
        self._sink_fn = None
        self.step = 0
        self.stop_reason = None
        self.stop_vote_every = STOP_VOTE_EVERY
        self.last_saved = None  # (step, path) of the newest checkpoint written or resumed from

    # ----------------------------------------------------------------- set-up
    def setup(self, epoch_batches=None, steps_per_epoch=None):
        """Data, optimizer, EMA and compiled steps.

        The data is the config's data set, sharded over the ranks (``data.epoch_batches``). Tests
        and benchmarks may pass ``epoch_batches(epoch, skip)`` -> iterator of x0 batches, and
        ``steps_per_epoch``, instead. With data sink (Ascend/GPU) the device reads
        :func:`sink_dataset` and the loop only counts steps.
        """
        cfg = self.cfg
        if steps_per_epoch is None:
            steps_per_epoch = data.create_dataset(cfg, num_shards=self.world, shard_id=self.rank,
                                                  training=cfg["shuffle"]).get_dataset_size()
        device = current_device_target()
        self.sink = use_data_sink(cfg, device)
        if self.sink:
            epoch_batches = _step_tokens(steps_per_epoch)
        elif epoch_batches is None:
            def epoch_batches(epoch, skip):
                return data.epoch_batches(cfg, epoch, skip, num_shards=self.world, shard_id=self.rank)
        self.epoch_batches = epoch_batches
        self.batches_per_epoch = steps_per_epoch
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
        jit = resolve_mode(cfg["mode"], device)[0] == "graph"
        self.jit = jit
        self.jit_level, why = resolve_jit_level(cfg["jit_level"], device)
        if jit:
            self.log(f"train step compiled with jit_level {self.jit_level} ({why})")
        flag_reducer, self._clear_status = None, None
        if self.amp:  # how this device detects overflow (ddpm_ms/ascend.py)
            from .ascend import chip, overflow_check
            self.overflow_check = overflow_check(device, chip(device), os.environ, self.world)
            self.log(f"loss scaling: overflow check {self.overflow_check.method} ({self.overflow_check.why})")
            if self.overflow_check.reduce_flag and self.comm is not None:
                flag_reducer = self.comm.finite_reducer()
            if self.overflow_check.clear_first:
                self._clear_status = ms.jit(clear_overflow_status) if jit else clear_overflow_status
                self._status_probe = Tensor(np.zeros((1,), np.float32))
        self.net.set_train(True)
        if cfg["grad_accum"] > 1:
            self.micro_step, self.apply_step = make_accum_steps(
                self.loss_cell, self.optimizer, self.ema, cfg["grad_accum"], cfg["grad_clip"], reducer, jit,
                loss_scaler=self.loss_scaler, loss_reducer=loss_reducer, flag_reducer=flag_reducer,
                jit_level=self.jit_level)
        else:
            self.train_step = make_train_step(self.loss_cell, self.optimizer, self.ema,
                                              cfg["grad_clip"], reducer, jit and not self.sink,
                                              loss_scaler=self.loss_scaler, loss_reducer=loss_reducer,
                                              flag_reducer=flag_reducer, jit_level=self.jit_level)

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
        imported = meta.get("kind") == "import"    # python -m ddpm_ms.convert: weights, maybe Adam moments
        if imported and ckpt.IMPORT_ADAM + "step" in tensors:
            adam_step = self._load_imported_adam(tensors, path)
            self.log(f"{path} holds imported weights and the library's Adam moments (Adam step {adam_step}); "
                     "the EMA warm-up starts afresh")
        elif imported:
            self.log(f"{path} holds imported weights only: the optimizer state and the EMA warm-up start afresh")
        else:
            ckpt.load_into(self._optimizer_state(), legacy_optimizer_state(tensors), where=path)
        if self.ema_net is not None:
            ckpt.load_into(ckpt.named(self.ema_net), tensors, prefix=ckpt.EMA_PREFIX, where=path)
            if not imported:
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

    def _load_imported_adam(self, tensors, path):
        """Put the library's Adam moments (``checkpoint.IMPORT_ADAM``) into this run's optimizer: m and v
        per parameter, and the step count as nn.Adam's beta powers or AdamW's step. Returns the step."""
        step = int(np.asarray(tensors[ckpt.IMPORT_ADAM + "step"].asnumpy()).reshape(-1)[0])
        names = {id(p): name for name, p in ckpt.named(self.net)}
        opt = self.optimizer
        for p, m, v in zip(opt.parameters, opt.moment1, opt.moment2):
            name = names[id(p)]
            ckpt.load_into([(f"m.{name}", m), (f"v.{name}", v)], tensors, prefix=ckpt.IMPORT_ADAM, where=path)
        if isinstance(opt, AdamW):
            opt.step_count.set_data(Tensor(float(step), ms.float32))
        else:   # nn.Adam: lr_t = lr sqrt(1 - b2^t) / (1 - b1^t) from its running beta powers
            opt.beta1_power.set_data(Tensor(self.cfg["adam_beta1"] ** step, ms.float32))
            opt.beta2_power.set_data(Tensor(self.cfg["adam_beta2"] ** step, ms.float32))
        return step

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

        from .logging_utils import MetricsLog, loss_label
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
        # previews by the clock as well (max_minutes runs): every preview_minutes of wall time
        preview_every = 60 * cfg["preview_minutes"] if cfg["max_minutes"] else 0
        next_preview = start + preview_every
        bar = tqdm(total=self.total_steps, initial=self.step, disable=not self.is_main,
                   unit="step", dynamic_ncols=True, file=sys.stdout)
        loss_sum, loss_count, window_start, window_images = None, 0, time.time(), 0
        applied = None  # amp: number of applied (finite) steps in the window, as a tensor
        images_per_step = cfg["batch_size"] * cfg["grad_accum"] * self.world
        multi = self.comm is not None and self.world > 1
        stopping = False  # the stop every rank agreed on (one process: its own stop_reason)
        try:
            # (a data-sink call runs sink_size steps: a stop waits for the end of the call's group)
            while self.step < self.total_steps and not stopping and (
                    multi or self.stop_reason is None or self.step % self.sink_size):
                epoch = self.step // self.steps_per_epoch
                skip = (self.step % self.steps_per_epoch) * cfg["grad_accum"]
                for micro_batches in _groups(self.epoch_batches(epoch, skip), cfg["grad_accum"]):
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
                        stopping = self.stop_reason is not None and self.step % self.sink_size == 0
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
                    elif (self.is_main and preview_every and time.time() >= next_preview
                          and not (at_end or stopping)):  # the end has its own preview
                        self.log(f"preview at {(time.time() - start) / 60:.1f} min: samples_step{self.step:08d}.png")
                        self.preview(f"samples_step{self.step:08d}.png")
                    if preview_every and time.time() >= next_preview:  # the next multiple of preview_every
                        next_preview = start + (math.floor((time.time() - start) / preview_every) + 1) * preview_every
                    if at_end or stopping:
                        break
        finally:
            bar.close()
            _restore_signal_handlers(previous)
        if self.is_main:
            metrics.plot(os.path.join(self.run_dir, "loss.png"), loss_label(cfg))
            self.score_grid(self.preview("samples.png"))
        why = self.stop_reason or f"reached step {self.step}"
        self.log(f"stopped at step {self.step}: {why}; checkpoint {os.path.join(self.run_dir, 'latest.ckpt')}")
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
        dataset (x0, t, noise) is fed to the device queue and the same train step reads it.

        One ``data_sink`` call runs :func:`sink_size` steps and returns the last step's output;
        ``jit_config`` compiles the queue read and the train step as one graph with the run's
        jit_level (without it data_sink runs them in PyNative). The loop still counts single steps: the call is made on the
        first step of each group and the group's other steps report its output, so the loss
        and overflow counts logged with data sink are those of each group's last step."""
        if self._sink_fn is None:
            multi = self.comm is not None and self.world > 1
            self.sink_size = sink_size(self.cfg, self.step, self.total_steps,
                                       self.stop_vote_every if multi else None)
            dataset = sink_dataset(self.cfg, self.step, self.batches_per_epoch, self.world, self.rank)
            jit_config = ms.JitConfig(jit_level=self.jit_level) if self.jit else None
            self._sink_fn = ms.data_sink(self.train_step, dataset, sink_size=self.sink_size,
                                         jit_config=jit_config)
            self.log(f"data sink: {self.sink_size} steps per call")
        if self.step % self.sink_size == 0:
            self._sink_out = self._sink_fn()
        return self._sink_out

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
        from .samplers import make_sampler
        from .sampling import image_shape, sample, sampling_options
        cfg = self.cfg
        net = self.ema_net if self.ema_net is not None else self.net
        sampler = make_sampler(schedule=self.schedule, **sampling_options(cfg))
        images = sample(net, sampler, cfg["num_preview"], image_shape(cfg), seed=cfg["seed"], progress=False)
        self.net.set_train(True)
        images = to_uint8(images)
        save_grid(images, os.path.join(self.run_dir, name))
        return images

    def score_grid(self, images):
        """Print the FID of the final grid's uint8 images and write it to ``grid_fid.json``, or
        print one line saying why it is skipped (ddpm_ms.eval.grid_fid). Returns the FID or None."""
        from .eval.grid_fid import fid_plan, grid_fid
        from .files import write_text
        from .runtime import user_errors
        network, why_not = fid_plan(self.cfg)
        if network is None:
            self.log(f"grid FID skipped: {why_not}")
            return None
        try:
            fid, sha, ref = grid_fid(images, self.cfg)
        except user_errors() + (OSError,) as e:  # a missing reference must not fail a finished run
            self.log(f"grid FID skipped: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
            return None
        self.log(f"grid FID {fid:.2f} ({len(images)} samples of samples.png against {ref}, {network}, "
                 f"sha256 {sha[:12]}...; few samples bias it upwards: compare runs with the same num_preview)")
        write_text(os.path.join(self.run_dir, "grid_fid.json"), json.dumps(
            {"step": self.step, "fid": fid, "num_samples": len(images), "ref": ref, "network": network,
             "sha256": sha}, indent=2) + "\n")
        return fid


def _step_tokens(steps_per_epoch):
    """epoch_batches for data sink: the loop only counts steps, the device reads the data."""
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

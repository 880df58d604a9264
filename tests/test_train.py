"""Training: exact resume, atomic checkpoints, incompatible checkpoints, EMA, lr schedule, NaN stop."""
import json
import os

import numpy as np
import pytest

import mindspore as ms

from ddpm_ms import checkpoint as ckpt
from ddpm_ms.config import resolve
from ddpm_ms.train_step import EMA, draw_t_noise, lr_schedule
from ddpm_ms.trainer import Trainer, TrainingError


def tiny_cfg(folder, out, **over):
    base = dict(dataset="image_folder", data_dir=str(folder), image_size=8, channels=3, dim=8,
                dim_mults=[1, 2], attn_heads=1, attn_head_dim=8, timesteps=50, batch_size=4,
                max_steps=6, lr=1e-3, lr_schedule="cosine", warmup_steps=2, ema_decay=0.9,
                log_every=1, save_every=2, sample_every=0, num_preview=2, sample_steps=2,
                output_dir=str(out), run_name="run", shuffle_buffer=32, num_parallel_workers=1,
                mode="graph", device_target="CPU", seed=3, random_flip=True)
    base.update(over)
    return resolve(base=base)


def run_trainer(cfg, stop_after=None):
    ms.set_context(mode=ms.GRAPH_MODE if cfg["mode"] == "graph" else ms.PYNATIVE_MODE)
    trainer = Trainer(cfg, log=lambda *_: None)
    trainer.setup()
    if stop_after is not None:  # what the SIGTERM handler does, at a chosen step
        one_step = trainer._one_step

        def stopping_step(batches):
            loss = one_step(batches)
            if trainer.step + 1 >= stop_after:
                trainer.stop_reason = "test stop"
            return loss
        trainer._one_step = stopping_step
    trainer.run()
    return trainer


def params_of(trainer):
    state = {name: p.asnumpy().copy() for name, p in trainer.state_tensors()}
    return state


@pytest.mark.parametrize("optimizer", ["adam", "adamw"])
def test_exact_resume_matches_uninterrupted_run(tiny_folder, tmp_path, optimizer):
    # 24 images / batch 4 = 6 steps per epoch; 9 steps crosses an epoch boundary
    opt = dict(optimizer=optimizer, weight_decay=0.05 if optimizer == "adamw" else 0.0)
    full = run_trainer(tiny_cfg(tiny_folder, tmp_path / "a", max_steps=9, **opt))
    first = run_trainer(tiny_cfg(tiny_folder, tmp_path / "b", max_steps=9, **opt), stop_after=4)
    assert first.step == 4
    resumed = run_trainer(tiny_cfg(tiny_folder, tmp_path / "b", max_steps=9, resume="auto", **opt))
    assert resumed.step == 9
    a, b = params_of(full), params_of(resumed)
    moment = "moment1." if optimizer == "adam" else "adamw_m."
    assert a.keys() == b.keys() and any(k.startswith("ema.") for k in a) and any(moment in k for k in a)
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=1e-5, atol=1e-6, err_msg=k)
    # and the run really trained: weights moved away from a fresh initialisation
    fresh = Trainer(tiny_cfg(tiny_folder, tmp_path / "c"), log=lambda *_: None)
    name, p = ckpt.named(fresh.net)[0]
    assert not np.allclose(p.asnumpy(), dict(ckpt.named(full.net))[name].asnumpy())


def test_checkpoint_rotation_latest_and_outputs(tiny_folder, tmp_path):
    cfg = tiny_cfg(tiny_folder, tmp_path, max_steps=8, save_every=2, keep_checkpoints=2)
    run_trainer(cfg)
    run_dir = tmp_path / "run"
    steps = [s for s, _ in ckpt.step_checkpoints(str(run_dir))]
    assert steps == [6, 8]
    assert os.path.samefile(run_dir / "latest.ckpt", run_dir / "step_00000008.ckpt")
    for name in ("config.yaml", "metrics.jsonl", "loss.png", "samples.png"):
        assert (run_dir / name).stat().st_size > 0, name
    _, meta = ckpt.load(str(run_dir / "latest.ckpt"))
    assert meta["step"] == 8 and meta["config"]["dim"] == 8
    assert not list(run_dir.glob("*.tmp*")), "temporary files left behind"


def test_failed_write_keeps_latest_intact(tiny_folder, tmp_path, monkeypatch):
    cfg = tiny_cfg(tiny_folder, tmp_path, max_steps=2, save_every=2)
    trainer = run_trainer(cfg)
    run_dir = tmp_path / "run"
    before = (run_dir / "latest.ckpt").read_bytes()

    def broken_save(items, path, append_dict=None):  # dies half-way through the write
        with open(path, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")
    monkeypatch.setattr(ms, "save_checkpoint", broken_save)
    trainer.step = 4
    with pytest.raises(OSError, match="disk full"):
        trainer.save(epoch=0)
    assert (run_dir / "latest.ckpt").read_bytes() == before
    assert not (run_dir / "step_00000004.ckpt").exists()
    assert not list(run_dir.glob("*.tmp*"))
    _, meta = ckpt.load(str(run_dir / "latest.ckpt"))
    assert meta["step"] == 2


def test_incompatible_checkpoint_is_one_clear_line(tiny_folder, tmp_path):
    run_trainer(tiny_cfg(tiny_folder, tmp_path, max_steps=2, save_every=2))
    other = tiny_cfg(tiny_folder, tmp_path, dim=12, resume="auto", max_steps=4)
    with pytest.raises(ckpt.CheckpointError, match=r"different architecture \(dim: checkpoint 8 vs config 12\)"):
        run_trainer(other)
    with pytest.raises(ckpt.CheckpointError, match="not a readable MindSpore checkpoint"):
        bad = tmp_path / "bad.ckpt"
        bad.write_bytes(b"not a checkpoint at all")
        ckpt.load(str(bad))


def test_lr_schedule_warmup_then_cosine():
    cfg = resolve(base=dict(lr=1.0, min_lr=0.1, warmup_steps=4, lr_schedule="cosine", max_steps=14))
    lrs = lr_schedule(cfg, 14)
    np.testing.assert_allclose(lrs[:4], [0.25, 0.5, 0.75, 1.0], rtol=1e-6)
    # after warmup: 0.1 + 0.45 (1 + cos(pi (s - 4) / 10))
    s = np.arange(4, 14)
    np.testing.assert_allclose(lrs[4:], 0.1 + 0.45 * (1 + np.cos(np.pi * (s - 4) / 10)), rtol=1e-6)
    const = lr_schedule(resolve(base=dict(lr=0.3, lr_schedule="constant", max_steps=5)), 5)
    np.testing.assert_allclose(const, 0.3)


def test_ema_update_matches_formula():
    from ddpm_ms.unet import UNet
    net, ema_net = UNet(dim=8, dim_mults=(1, 2), channels=1, attn_heads=1, attn_head_dim=8), \
        UNet(dim=8, dim_mults=(1, 2), channels=1, attn_heads=1, attn_head_dim=8)
    ema_net.update_parameters_name("ema.")
    ema = EMA(net, ema_net, decay=0.99, warmup=True)
    ema.copy_weights()
    w0 = net.trainable_params()[0]
    start = w0.asnumpy().copy()
    w0.set_data(ms.Tensor(start + 1.0))
    d = float(ema().asnumpy())
    assert d == pytest.approx(2 / 11)  # warmup: min(0.99, (1 + 1) / (10 + 1))
    np.testing.assert_allclose(ema_net.trainable_params()[0].asnumpy(), d * start + (1 - d) * (start + 1.0),
                               rtol=1e-6)
    d2 = float(ema().asnumpy())
    assert d2 == pytest.approx(3 / 12)


def test_draw_t_noise_any_split_of_the_global_batch_draws_the_same_rows():
    """Row g of the global batch gets the same t and noise whatever the number of ranks: one
    process with 8 rows, 2 ranks with 4, 4 ranks with 2 (rank r holds rows r::world)."""
    t_full, n_full = (a.asnumpy() for a in draw_t_noise(7, 5, 0, (8, 1, 2, 2), 100))
    for world in (2, 4):
        for r in range(world):
            t, noise = draw_t_noise(7, 5, 0, (8 // world, 1, 2, 2), 100, rank=r, world=world)
            np.testing.assert_array_equal(t.asnumpy(), t_full[r::world])
            np.testing.assert_array_equal(noise.asnumpy(), n_full[r::world])
    again = draw_t_noise(7, 5, 0, (8, 1, 2, 2), 100)
    np.testing.assert_array_equal(again[1].asnumpy(), n_full)
    for other in (draw_t_noise(7, 6, 0, (8, 1, 2, 2), 100), draw_t_noise(7, 5, 1, (8, 1, 2, 2), 100)):
        assert not np.array_equal(other[1].asnumpy(), n_full)  # another step, another micro-batch
    assert len(set(n_full[:, 0, 0, 0])) == 8  # rows differ from each other
    assert t_full.min() >= 0 and t_full.max() < 100 and len(set(t_full)) > 1


def test_draw_t_noise_cost_does_not_grow_with_world():
    """A rank allocates (and so draws) its own B rows only: the peak memory of rank 5's draw at
    world 64 is that of a single-process draw of B rows, not of 64 * B rows."""
    import tracemalloc

    from ddpm_ms.train_step import draw_t_noise_np
    shape = (4, 3, 16, 16)
    rows = 4 * 3 * 16 * 16 * 4  # bytes of one rank's noise

    def peak(world, rank):
        tracemalloc.start()
        try:
            draw_t_noise_np(1, 2, 0, shape, 1000, rank, world)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    alone, wide = peak(1, 0), peak(64, 5)
    assert rows <= alone < 2 * rows and wide < 2 * rows, (alone, wide)


def test_nan_loss_stops_without_saving(tiny_folder, tmp_path):
    cfg = tiny_cfg(tiny_folder, tmp_path, max_steps=4, save_every=2, log_every=1, mode="pynative")
    ms.set_context(mode=ms.PYNATIVE_MODE)
    trainer = Trainer(cfg, log=lambda *_: None)
    trainer.setup()
    one_step = trainer._one_step

    def poisoned(batches):
        loss = one_step(batches)
        return loss * float("nan") if trainer.step >= 2 else loss
    trainer._one_step = poisoned
    with pytest.raises(TrainingError, match=r"loss became nan at step 3; stopped without saving; the last "
                                            r"good checkpoint is step 2 \(.*step_00000002.ckpt\)") as err:
        trainer.run()
    _, meta = ckpt.load(str(tmp_path / "run" / "latest.ckpt"))
    assert meta["step"] == 2
    # the causes named are those that apply: grad_clip is on (1.0) and warmup is on here
    msg = str(err.value)
    assert "\n" not in msg and "lr 0.001 too high (try --lr 0.00025)" in msg, msg
    assert "grad_clip" not in msg and "warmup" not in msg, msg


def _fake_sink(monkeypatch, stop_on_call=None):
    """Data sink on CPU with ms.data_sink mocked: records its arguments and counts the calls
    (each stands for sink_size device steps); call number ``stop_on_call`` sends a stop."""
    from ddpm_ms import trainer as trainer_mod
    seen = {"calls": 0}

    def fake_data_sink(fn, dataset, sink_size=1, jit_config=None, input_signature=None):
        seen.update(fn=fn, dataset=dataset, sink_size=sink_size, jit_config=jit_config)

        def run():
            seen["calls"] += 1
            if seen["calls"] == stop_on_call:
                seen["trainer"].stop_reason = "test stop"
            return ms.Tensor(0.5, ms.float32)
        return run
    monkeypatch.setattr(trainer_mod, "use_data_sink", lambda cfg, device: True)
    monkeypatch.setattr(trainer_mod, "sink_dataset", lambda *args: ("sink dataset",) + args[1:])
    monkeypatch.setattr(ms, "data_sink", fake_data_sink)
    return seen


@pytest.mark.parametrize("stop_on_call, last_step", [(None, 16), (2, 8)])
def test_sink_step_runs_groups_of_sink_size_steps(tiny_folder, tmp_path, monkeypatch, stop_on_call, last_step):
    """log 4, save 8, 16 steps: 4 steps per data_sink call (compiled with the run's jit_level),
    the loop counts 16 steps in 4 calls, logs and saves on its usual steps; a stop sent during
    the call for steps 4-7 takes effect at step 8, after the group, not at step 5."""
    seen = _fake_sink(monkeypatch, stop_on_call)
    cfg = tiny_cfg(tiny_folder, tmp_path, max_steps=16, log_every=4, save_every=8, sample_every=0,
                   keep_checkpoints=5)
    ms.set_context(mode=ms.GRAPH_MODE)
    trainer = Trainer(cfg, log=lambda *_: None)
    seen["trainer"] = trainer
    trainer.setup()
    assert trainer.run() == last_step
    assert seen["sink_size"] == 4 and seen["calls"] == last_step // 4
    assert seen["fn"] is trainer.train_step and seen["dataset"] == ("sink dataset", 0, 6, 1, 0)
    assert seen["jit_config"].jit_config_dict["jit_level"] == trainer.jit_level == "O0"
    steps = [json.loads(line)["step"] for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert steps == [4, 8, 12, 16][:last_step // 4]
    saved = sorted(f for f in os.listdir(tmp_path / "run") if f.startswith("step_"))
    assert saved == [f"step_{s:08d}.ckpt" for s in (8, 16) if s <= last_step]


def test_sink_size_divides_every_step_the_loop_acts_on():
    from ddpm_ms.trainer import sink_size
    cfg = {"log_every": 50, "save_every": 1000, "sample_every": 0}
    assert sink_size(cfg, 0, 20000) == 50
    assert sink_size(cfg, 0, 20000, vote_every=10) == 10
    assert sink_size(cfg, 1234, 20000) == 2           # resumed at step 1234
    assert sink_size(dict(cfg, sample_every=500), 0, 20025) == 25
    assert sink_size({"log_every": 1000, "save_every": 1000, "sample_every": 0}, 0, 10000) == 100  # capped


def test_jit_level_reaches_the_train_step_jit(tiny_folder, tmp_path, monkeypatch):
    """jit_level O1 from the config is what ms.jit compiles the train step (and the accumulation
    steps) with; auto resolves per device (O1 on Ascend, O0 elsewhere); O2 is refused in one line."""
    from ddpm_ms import train_step
    from ddpm_ms.config import ConfigError
    from ddpm_ms.runtime import resolve_jit_level
    levels = []
    real_jit = ms.jit

    def spying_jit(fn, **kwargs):
        levels.append(kwargs.get("jit_level"))
        return real_jit(fn, **kwargs)
    monkeypatch.setattr(train_step.ms, "jit", spying_jit)
    for accum, compiled in ((1, 1), (2, 2)):
        levels.clear()
        Trainer(tiny_cfg(tiny_folder, tmp_path, jit_level="O1", grad_accum=accum), log=lambda *_: None).setup()
        assert levels == ["O1"] * compiled
    assert [resolve_jit_level("auto", d)[0] for d in ("Ascend", "GPU", "CPU")] == ["O1", "O0", "O0"]
    assert resolve_jit_level("O0", "Ascend") == ("O0", "requested")
    with pytest.raises(ConfigError, match="jit_level"):
        tiny_cfg(tiny_folder, tmp_path, jit_level="O2")


@pytest.mark.parametrize("clip_norm", [0.5, 100.0])
def test_clip_by_global_norm_is_mindspores_op_for_op(clip_norm):
    """train_step's own global-norm clip (ops.clip_by_global_norm is marked removed after 2.9)
    gives MindSpore's numbers bit for bit, in a graph too, and the closed form in numpy."""
    from mindspore import ops

    from ddpm_ms.train_step import clip_by_global_norm
    rng = np.random.default_rng(0)
    grads = tuple(ms.Tensor(rng.standard_normal(s).astype(np.float32)) for s in ((3, 4), (5,), (2, 2, 2)))
    ours = [g.asnumpy() for g in ms.jit(clip_by_global_norm)(grads, clip_norm)]
    theirs = [g.asnumpy() for g in ops.clip_by_global_norm(grads, clip_norm)]
    for a, b in zip(ours, theirs):
        np.testing.assert_array_equal(a, b)
    norm = np.sqrt(sum(float((g.asnumpy().astype(np.float64) ** 2).sum()) for g in grads))
    for a, g in zip(ours, grads):
        np.testing.assert_allclose(a, g.asnumpy() * clip_norm / max(norm, clip_norm), rtol=1e-6)

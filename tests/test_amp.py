"""Mixed precision: float16 U-Net compute, dynamic loss scaling, skipped overflow steps, exact state in checkpoints."""
import json

import numpy as np
import pytest

import mindspore as ms

from ddpm_ms import checkpoint as ckpt
from ddpm_ms.config import ConfigError, resolve
from ddpm_ms.train_step import LOSS_SCALE_COUNTER, LOSS_SCALE_VALUE
from ddpm_ms.trainer import Trainer


def amp_cfg(out, **over):
    base = dict(dataset="image_folder", data_dir=str(out), image_size=8, channels=3, dim=8, dim_mults=[1, 2],
                attn_heads=1, attn_head_dim=8, timesteps=50, batch_size=4, max_steps=4, lr=1e-3,
                ema_decay=0.9, log_every=1, save_every=2, sample_every=0, num_preview=2, sample_steps=2,
                output_dir=str(out), run_name="run", device_target="CPU", seed=3, amp_level="O1",
                loss_scale=1024.0, mode="graph")
    base.update(over)
    return resolve(base=base)


def batches(n, seed=0):
    rng = np.random.default_rng(seed)
    return [ms.Tensor(rng.uniform(-1, 1, (4, 3, 8, 8)).astype(np.float32)) for _ in range(n)]


def snapshot(trainer):
    return {name: p.asnumpy().copy() for name, p in trainer.state_tensors()}


def make_trainer(cfg, data):
    ms.set_context(mode=ms.GRAPH_MODE if cfg["mode"] == "graph" else ms.PYNATIVE_MODE)
    trainer = Trainer(cfg, log=lambda *_: None)
    trainer.setup(lambda epoch, skip: iter(data[skip:]), len(data))
    return trainer


@pytest.mark.parametrize("mode", ["graph", "pynative"])
def test_overflow_step_is_skipped_and_scale_lowered(tmp_path, mode):
    trainer = make_trainer(amp_cfg(tmp_path, mode=mode), [])
    convs = [c for _, c in trainer.net.cells_and_names() if isinstance(c, ms.nn.Conv2d)]
    assert convs and all("FP16" in str(c.mixed_precision_type) for c in convs)
    x0 = batches(1)[0]
    poisoned = x0.asnumpy().copy()
    poisoned[0, 0, 0, 0] = np.inf  # its gradients are inf/NaN
    before = snapshot(trainer)
    loss, finite = trainer._one_step([ms.Tensor(poisoned)])
    after = snapshot(trainer)
    assert not bool(finite.asnumpy())
    assert after[LOSS_SCALE_VALUE] == 512.0 and after[LOSS_SCALE_COUNTER] == 0
    changed = [k for k in before if not np.array_equal(before[k], after[k])]
    assert changed == [LOSS_SCALE_VALUE], changed  # weights, EMA, Adam moments and step untouched

    loss, finite = trainer._one_step([x0])
    applied = snapshot(trainer)
    assert bool(finite.asnumpy()) and np.isfinite(loss.asnumpy())
    assert applied[LOSS_SCALE_VALUE] == 512.0 and applied[LOSS_SCALE_COUNTER] == 1
    moved = [k for k in after if not np.array_equal(after[k], applied[k])]
    assert any(k.startswith("ema.") for k in moved) and any("moment1" in k for k in moved)
    assert len(moved) >= len(after) - 2


def test_amp_run_logs_skips_and_checkpoint_restores_scale(tmp_path):
    data = batches(4)
    bad = data[1].asnumpy().copy()
    bad[1, 2, 3, 4] = np.nan
    data[1] = ms.Tensor(bad)
    cfg = amp_cfg(tmp_path, max_steps=4, save_every=4, log_every=2)
    trainer = make_trainer(cfg, data)
    trainer.run()  # the NaN batch does not stop the run (only its step is skipped)
    rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert [r["skipped_steps"] for r in rows] == [1, 0]
    assert all(np.isfinite(r["loss"]) for r in rows) and rows[-1]["loss_scale"] == 512.0
    tensors, meta = ckpt.load(str(tmp_path / "run" / "latest.ckpt"))
    assert meta["step"] == 4
    assert float(tensors[LOSS_SCALE_VALUE].asnumpy()) == 512.0
    assert int(tensors[LOSS_SCALE_COUNTER].asnumpy()) == 2
    fresh = make_trainer(amp_cfg(tmp_path, max_steps=4), [])
    fresh.restore(str(tmp_path / "run" / "latest.ckpt"))
    want, got = snapshot(trainer), snapshot(fresh)
    assert want.keys() == got.keys()
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def test_amp_loss_scale_below_one_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="loss_scale"):
        make_trainer(amp_cfg(tmp_path, loss_scale=0.5), [])


def test_overflow_in_one_micro_batch_skips_the_accumulated_step(tmp_path):
    trainer = make_trainer(amp_cfg(tmp_path, grad_accum=2), [])
    good = batches(2, seed=5)
    poisoned = good[1].asnumpy().copy()
    poisoned[2, 1, 5, 5] = -np.inf
    before = snapshot(trainer)
    _, finite = trainer._one_step([good[0], ms.Tensor(poisoned)])
    after = snapshot(trainer)
    assert not bool(finite.asnumpy())
    assert [k for k in before if not np.array_equal(before[k], after[k])] == [LOSS_SCALE_VALUE]
    loss, finite = trainer._one_step(good)  # finite only if the skipped step cleared the accumulators
    assert bool(finite.asnumpy()) and np.isfinite(loss.asnumpy())
    applied = snapshot(trainer)
    assert applied[LOSS_SCALE_VALUE] == 512.0 and applied[LOSS_SCALE_COUNTER] == 1
    assert any(not np.array_equal(after[k], applied[k]) for k in after if k.startswith("ema."))

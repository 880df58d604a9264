"""Ascend decisions with the device faked: overflow detection for loss scaling (mirrors
mindspore/amp.py 2.10), the operator precision mode per amp_level and chip, and the train step's
use of them (register cleared before each step, finite flag agreed over ranks), run on CPU."""
import numpy as np
import pytest

import mindspore as ms
from mindspore import nn

from ddpm_ms import ascend
from ddpm_ms.ascend import ALLFINITE, FLOAT_STATUS, ISFINITE, overflow_check, precision_mode
from ddpm_ms.train_step import LOSS_SCALE_VALUE
from ddpm_ms.trainer import Trainer

import test_amp  # noqa: E402 (sibling test module: the shared tiny amp config)


@pytest.mark.parametrize("device, chip, env, world, method, clear, reduce", [
    ("CPU", None, {}, 1, ISFINITE, False, False),
    ("CPU", None, {}, 2, ISFINITE, False, True),
    ("GPU", None, {}, 8, ISFINITE, False, True),
    # Atlas training (910A): only saturation mode -> the global float-status register, msrun or rank table
    ("Ascend", "910A", {}, 1, FLOAT_STATUS, True, False),
    ("Ascend", "910A", {"RANK_TABLE_FILE": "/r.json"}, 8, FLOAT_STATUS, True, True),
    # Atlas A2 (910B): INF/NaN mode by default -> value checks; AllFinite kernel unless a rank table
    ("Ascend", "910B", {}, 8, ALLFINITE, False, True),
    ("Ascend", "910B", {"RANK_TABLE_FILE": "/r.json"}, 8, ISFINITE, False, True),
    ("Ascend", "910B", {"MS_DEV_RUNTIME_CONF": "all_finite:False"}, 1, ISFINITE, False, False),
    ("Ascend", "910B", {"MS_ASCEND_CHECK_OVERFLOW_MODE": "SATURATION_MODE"}, 8, FLOAT_STATUS, True, True),
    ("Ascend", "910B", {"MS_ASCEND_CHECK_OVERFLOW_MODE": "INFNAN_MODE"}, 1, ALLFINITE, False, False),
])
def test_overflow_check_per_device_and_launch(device, chip, env, world, method, clear, reduce):
    check = overflow_check(device, chip, env, world)
    assert (check.method, check.clear_first, check.reduce_flag) == (method, clear, reduce), check.why
    assert check.why


def test_precision_mode_per_amp_level_and_chip():
    assert precision_mode("O0", "910A") == "force_fp32"   # default allow_fp32_to_fp16 would run convs in fp16
    assert precision_mode("O0", "910B") == "must_keep_origin_dtype"
    assert precision_mode("O1", "910A") == "allow_fp32_to_fp16"
    assert precision_mode("O1", "910B") == "must_keep_origin_dtype"
    assert precision_mode("O0", "unknown") is None and precision_mode("O1", None) is None


def test_apply_precision_mode_sets_it_only_on_a_known_ascend_chip(monkeypatch):
    calls, lines = [], []
    monkeypatch.setattr(ms.device_context.ascend.op_precision, "precision_mode", calls.append)
    assert ascend.apply_precision_mode("O0", "CPU", log=lines.append) is None
    assert calls == [] and lines == []
    monkeypatch.setattr(ascend, "chip", lambda device: "910A")
    assert ascend.apply_precision_mode("O0", "Ascend", log=lines.append) == "force_fp32"
    assert calls == ["force_fp32"] and "910A" in lines[-1] and "force_fp32" in lines[-1]
    monkeypatch.setattr(ascend, "chip", lambda device: "unknown")
    assert ascend.apply_precision_mode("O0", "Ascend", log=lines.append) is None
    assert calls == ["force_fp32"] and "not recognised" in lines[-1]


def test_chip_off_ascend_is_none():
    assert ascend.chip("CPU") is None and ascend.chip("GPU") is None


# ------------------------------------------------------------------ the train step on CPU
class _Identity(nn.Cell):
    def construct(self, x):
        return x


class _OtherRankOverflowed(nn.Cell):
    """Stands in for the all-reduced finite flag when another rank's gradients overflowed."""

    def construct(self, finite):
        return finite & False


class FakeComm:
    rank, world, local_rank = 0, 2, 0

    def __init__(self, flag_cell):
        self.flag_cell, self.flag_cells = flag_cell, 0

    def grad_reducer(self, params):
        return _Identity()

    def loss_reducer(self):
        return _Identity()

    def finite_reducer(self):
        self.flag_cells += 1
        return self.flag_cell

    def same_on_all(self, value):
        return True

    def any_true(self, flag):
        return bool(flag)


def amp_cfg(out, **over):
    """test_amp's tiny float16 config, in PYNATIVE unless told otherwise."""
    return test_amp.amp_cfg(out, **dict({"mode": "pynative"}, **over))


def batch(seed=0):
    return ms.Tensor(np.random.default_rng(seed).uniform(-1, 1, (4, 3, 8, 8)).astype(np.float32))


@pytest.mark.parametrize("accum", [1, 2])
def test_finite_flag_is_agreed_over_ranks(tmp_path, accum):
    """Finite gradients here, but the (faked) all-reduced flag says another rank overflowed:
    this rank skips the update too and lowers its scale, as the other rank does."""
    comm = FakeComm(_OtherRankOverflowed())
    trainer = Trainer(amp_cfg(tmp_path, grad_accum=accum), log=lambda *_: None, comm=comm)
    trainer.setup(lambda epoch, skip: iter([]), 8)
    assert comm.flag_cells == 1 and trainer.overflow_check.reduce_flag
    before = trainer.net.trainable_params()[0].asnumpy().copy()
    loss, finite = trainer._one_step([batch(m) for m in range(accum)])
    assert np.isfinite(loss.asnumpy()) and not bool(finite.asnumpy())
    assert float(trainer.loss_scaler.scale_value.asnumpy()) == 512.0
    assert np.array_equal(before, trainer.net.trainable_params()[0].asnumpy())

    # the real flag cell passes a finite step through (no other rank overflowed)
    comm = FakeComm(_Identity())
    trainer = Trainer(amp_cfg(tmp_path, grad_accum=accum), log=lambda *_: None, comm=comm)
    trainer.setup(lambda epoch, skip: iter([]), 8)
    loss, finite = trainer._one_step([batch(m) for m in range(accum)])
    assert bool(finite.asnumpy()) and float(trainer.loss_scaler.scale_value.asnumpy()) == 1024.0


@pytest.mark.parametrize("mode", ["pynative", "graph"])
def test_float_status_path_clears_before_every_step(tmp_path, monkeypatch, mode):
    """Device faked as 910A: the trainer clears the register before each step (here the CPU
    all_finite, which compiles and runs the same call), and a single process reduces nothing."""
    monkeypatch.setattr(ascend, "overflow_check",
                        lambda device, chip, env, world: ascend.OverflowCheck(FLOAT_STATUS, True, world > 1, "faked 910A"))
    ms.set_context(mode=ms.GRAPH_MODE if mode == "graph" else ms.PYNATIVE_MODE)
    lines = []
    trainer = Trainer(amp_cfg(tmp_path, mode=mode), log=lines.append)
    trainer.setup(lambda epoch, skip: iter([]), 8)
    assert any("overflow check float_status (faked 910A)" in line for line in lines)
    cleared = []
    real = trainer._clear_status
    trainer._clear_status = lambda x: cleared.append(real(x))
    for i in range(2):
        loss, finite = trainer._one_step([batch(i)])
        assert bool(finite.asnumpy())
    assert len(cleared) == 2 and all(bool(c.asnumpy()) for c in cleared)
    names = [n for n, _ in trainer.state_tensors()]
    assert LOSS_SCALE_VALUE in names


def test_o0_has_no_overflow_machinery(tmp_path):
    trainer = Trainer(amp_cfg(tmp_path, amp_level="O0"), log=lambda *_: None, comm=FakeComm(_Identity()))
    trainer.setup(lambda epoch, skip: iter([]), 8)
    assert trainer._clear_status is None and trainer.loss_scaler is None

"""AdamW (train_step.AdamW, which replaced nn.AdamWeightDecay): the update against a numpy closed
form, the norm parameters it does not decay, and the resume of a checkpoint of the old optimizer."""
import numpy as np
import pytest

import mindspore as ms
from mindspore import Parameter, Tensor, nn

from ddpm_ms.train_step import AdamW, legacy_optimizer_state


class _Two(nn.Cell):
    def __init__(self):
        super().__init__()
        self.weight = Parameter(Tensor(np.array([[0.5, -1.0], [2.0, 0.25]], np.float32)), name="weight")
        self.gamma = Parameter(Tensor(np.array([1.0, 3.0], np.float32)), name="gamma")


def _reference(w, g_steps, lrs, b1, b2, eps, wd, decay):
    """torch.optim.AdamW's update written out (bias-corrected moments, decoupled decay)."""
    w = w.astype(np.float64)
    m = np.zeros_like(w)
    v = np.zeros_like(w)
    for t, (g, lr) in enumerate(zip(g_steps, lrs), start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        w = w - lr * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps) - (lr * wd * w if decay else 0)
    return w


@pytest.mark.parametrize("jit", [False, True])
def test_update_matches_the_closed_form(jit):
    cell = _Two()
    w0, g0 = cell.weight.asnumpy().copy(), cell.gamma.asnumpy().copy()
    lrs = np.array([1e-2, 5e-2, 2e-2, 2e-2], np.float32)
    opt = AdamW(cell.trainable_params(), Tensor(lrs), beta1=0.8, beta2=0.9, eps=1e-8, weight_decay=0.3)
    rng = np.random.default_rng(0)
    grads = [(rng.normal(size=(2, 2)).astype(np.float32), rng.normal(size=2).astype(np.float32)) for _ in range(3)]
    step = ms.jit(opt) if jit else opt
    for gw, gg in grads:
        step((Tensor(gw), Tensor(gg)))
    want_w = _reference(w0, [g[0] for g in grads], lrs[:3], 0.8, 0.9, 1e-8, 0.3, decay=True)
    want_g = _reference(g0, [g[1] for g in grads], lrs[:3], 0.8, 0.9, 1e-8, 0.3, decay=False)
    np.testing.assert_allclose(cell.weight.asnumpy(), want_w, rtol=1e-5)
    np.testing.assert_allclose(cell.gamma.asnumpy(), want_g, rtol=1e-5)   # norm scale: not decayed
    assert float(opt.step_count.asnumpy()) == 3.0
    # without decay the two differ: the decay term is really applied to 'weight'
    assert not np.allclose(want_w, _reference(w0, [g[0] for g in grads], lrs[:3], 0.8, 0.9, 1e-8, 0.3, False))


def test_state_names_and_the_old_optimizers_checkpoint():
    cell = _Two()
    opt = AdamW(cell.trainable_params(), Tensor(np.full(4, 1e-3, np.float32)))
    names = sorted(p.name for p in opt.get_parameters())
    assert {"adamw_m.weight", "adamw_v.weight", "adamw_m.gamma", "adamw_v.gamma", "adamw_step"} <= set(names)
    old = {"weight": 1, "adam_m.weight": Tensor(np.ones((2, 2), np.float32)), "adam_v.weight": 2,
           "global_step": Tensor(np.array([7], np.int32))}
    new = legacy_optimizer_state(old)
    assert set(new) == {"weight", "adamw_m.weight", "adamw_v.weight", "global_step", "adamw_step"}
    assert new["adamw_v.weight"] == 2 and float(new["adamw_step"].asnumpy()) == 7.0
    current = {"adamw_m.weight": 1}
    assert legacy_optimizer_state(current) is current

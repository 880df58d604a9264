"""Loss weightings are defined once on the eps error and converted per objective.

For every objective, the weighted loss of a perturbed prediction must equal the eps-space weight
times the error of the eps that prediction implies (exact for l2 and l1): so p2 and min-SNR mean
the same thing whether the network predicts eps, x0 or v.
"""
import numpy as np
import pytest

import mindspore as ms
from mindspore import nn

from ddpm_ms.losses import DiffusionLoss
from ddpm_ms.schedule import LOSS_WEIGHTS, OBJECTIVES, NoiseSchedule

SHAPE = (5, 2, 3, 3)
T_VALUES = np.array([0, 40, 300, 700, 999], np.int32)


class FixedOutput(nn.Cell):
    """A 'network' that returns a given prediction whatever x_t and t are."""

    def __init__(self, out):
        super().__init__()
        self.out = ms.Tensor(out.astype(np.float32))
        self.w = ms.Parameter(ms.Tensor(np.zeros(1, np.float32)))   # one parameter, as a network has

    def construct(self, x, t):
        return self.out + self.w


@pytest.fixture(scope="module")
def case():
    rng = np.random.default_rng(1)
    return dict(x0=rng.uniform(-1, 1, SHAPE), noise=rng.standard_normal(SHAPE),
                delta=0.1 * rng.standard_normal(SHAPE), schedule=NoiseSchedule("cosine", 1000))


def eps_space_loss(case, objective, weighting, loss_type):
    """The eps error the prediction implies, weighted in eps-space, written out in float64."""
    s, t = case["schedule"], T_VALUES
    ab = s.alphas_cumprod[t][:, None, None, None]
    x0, noise = case["x0"], case["noise"]
    xt = np.sqrt(ab) * x0 + np.sqrt(1 - ab) * noise
    target = {"eps": noise, "x0": x0, "v": np.sqrt(ab) * noise - np.sqrt(1 - ab) * x0}[objective]
    out = target + case["delta"]
    pred_x0 = {"eps": (xt - np.sqrt(1 - ab) * out) / np.sqrt(ab), "x0": out,
               "v": np.sqrt(ab) * xt - np.sqrt(1 - ab) * out}[objective]
    pred_eps = (xt - np.sqrt(ab) * pred_x0) / np.sqrt(1 - ab)
    err = pred_eps - noise
    per = (err ** 2 if loss_type == "l2" else np.abs(err)).reshape(len(t), -1).mean(axis=1)
    snr = s.snr[t]
    w_eps = {"none": np.ones_like(snr), "p2": (1.0 + snr) ** -1.0,
             "min_snr": np.minimum(snr, 5.0) / snr}[weighting]
    return float(np.mean(w_eps * per)), out


@pytest.mark.parametrize("loss_type", ["l2", "l1"])
@pytest.mark.parametrize("weighting", LOSS_WEIGHTS)
@pytest.mark.parametrize("objective", OBJECTIVES)
def test_weighted_loss_equals_eps_space_loss(case, objective, weighting, loss_type):
    ref, out = eps_space_loss(case, objective, weighting, loss_type)
    loss = DiffusionLoss(FixedOutput(out), case["schedule"], objective=objective, loss_type=loss_type,
                         p2_gamma=1.0, p2_k=1.0, loss_weight=weighting, min_snr_gamma=5.0)
    got = float(loss(ms.Tensor(case["x0"].astype(np.float32)), ms.Tensor(T_VALUES),
                     ms.Tensor(case["noise"].astype(np.float32))))
    np.testing.assert_allclose(got, ref, rtol=2e-4)


def test_weightings_differ(case):
    """The check above could not pass by accident: the three weightings give different losses."""
    values = [eps_space_loss(case, "v", w, "l2")[0] for w in LOSS_WEIGHTS]
    assert min(abs(a - b) for i, a in enumerate(values) for b in values[i + 1:]) > 0.05 * max(values)


def test_min_snr_matches_denoising_diffusion_pytorch_tables():
    """Hang et al.'s weights as the library writes them for its objectives: clipped_snr / snr (eps),
    clipped_snr (x0), clipped_snr / (snr + 1) (v), clipped_snr = min(snr, 5)."""
    s = NoiseSchedule("sigmoid_abar", 1000)
    clipped = np.minimum(s.snr, 5.0)
    for objective, expected in (("eps", clipped / s.snr), ("x0", clipped), ("v", clipped / (s.snr + 1))):
        np.testing.assert_allclose(s.loss_weight("min_snr", objective, "l2"), expected, rtol=1e-12)
    np.testing.assert_allclose(s.loss_weight("none", "x0", "l2"), s.snr, rtol=1e-12)


def test_unknown_weighting_is_an_error():
    with pytest.raises(ValueError, match=r"loss_weight must be one of 'p2', 'min_snr', 'none'"):
        NoiseSchedule("linear", 100).loss_weight("snr")

"""The DDPM training loss as a MindSpore Cell (runs in PYNATIVE and GRAPH mode).

The loss takes ``t`` and ``noise`` as inputs, so it draws no random numbers and can be tested
against a numpy reference; the train step draws them.
"""
import mindspore as ms
from mindspore import nn, ops

from ddpm_ms.schedule import (LOSS_TYPES, OBJECTIVES, check_choice, extract, q_sample,
                              target_coefs, to_float32_tensor, to_tensor_tables)


class DiffusionLoss(nn.Cell):
    """Weighted denoising loss (Ho et al. eq. 14 generalised to objectives, loss types and weightings).

        xt     = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise
        out    = network(xt, t)
        target = noise (eps) | x0 (x0) | sqrt(abar_t) noise - sqrt(1 - abar_t) x0 (v)
        loss   = mean_b [ weight[t_b] * mean_{c,h,w} rho(out - target) ]
        rho    = huber (smooth L1, beta 1) | |.| (l1) | (.)^2 (l2)
        weight = ``NoiseSchedule.loss_weight``: the weighting (p2 (p2_gamma, p2_k) | min_snr
                 (min_snr_gamma) | none) is defined on the eps error and converted to the
                 objective's output, so p2 means the same with eps, x0 and v

    construct(x0 float32 [B, C, H, W], t int32 [B], noise float32 [B, C, H, W]) -> float32 scalar.
    The network is called as network(xt, t); its output is cast to float32, so the loss and the
    schedule tables (float32 Tensors, not Parameters) stay float32 under mixed precision.
    """

    def __init__(self, network, schedule, objective="eps", loss_type="huber", p2_gamma=1.0, p2_k=1.0,
                 loss_weight="p2", min_snr_gamma=5.0):
        super().__init__()
        self.network = network
        self.objective = check_choice("objective", objective, OBJECTIVES)
        self.loss_type = check_choice("loss_type", loss_type, LOSS_TYPES)
        tables = to_tensor_tables(schedule, ("sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod"))
        self.sqrt_alphas_cumprod = tables["sqrt_alphas_cumprod"]
        self.sqrt_one_minus_alphas_cumprod = tables["sqrt_one_minus_alphas_cumprod"]
        # target = u * x0 + w * noise, the coefficients computed in float64 then stored as float32
        u, w = target_coefs(objective, schedule.alphas_cumprod)
        self.target_x0_coef = to_float32_tensor(u)
        self.target_eps_coef = to_float32_tensor(w)
        self.weight = to_float32_tensor(schedule.loss_weight(loss_weight, objective, loss_type, p2_gamma,
                                                             p2_k, min_snr_gamma))

    def construct(self, x0, t, noise):
        ndim = len(x0.shape)
        xt = q_sample(self.sqrt_alphas_cumprod, self.sqrt_one_minus_alphas_cumprod, x0, t, noise)
        out = self.network(xt, t).astype(ms.float32)
        target = extract(self.target_x0_coef, t, ndim) * x0 + extract(self.target_eps_coef, t, ndim) * noise
        diff = out - target
        if self.loss_type == "l2":
            per_elem = diff * diff
        elif self.loss_type == "l1":
            per_elem = ops.abs(diff)
        else:  # huber, i.e. smooth L1 with beta = 1
            abs_diff = ops.abs(diff)
            per_elem = ops.where(abs_diff < 1.0, 0.5 * diff * diff, abs_diff - 0.5)
        per_sample = per_elem.reshape((per_elem.shape[0], -1)).mean(axis=1)
        return (per_sample * self.weight[t]).mean()

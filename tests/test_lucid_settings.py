"""denoising-diffusion-pytorch's diffusion settings in ddpm_ms, checked against hand-computed values
(tests/test_parity_lucid.py checks them against the installed library itself)."""
import math

import numpy as np
import pytest

from ddpm_ms.config import ConfigError, resolve
from ddpm_ms.samplers import DDIMSampler, lucid_grid, timestep_grid
from ddpm_ms.schedule import NoiseSchedule, sigmoid_alphas_cumprod


def test_sigmoid_abar_is_a_sigmoid_on_abar_not_on_betas():
    T = 1000
    s = NoiseSchedule("sigmoid_abar", T)
    # abar(u) = (s(3) - s(6u - 3)) / (s(3) - s(-3)): 1/2 at u = 1/2 by symmetry; table index t is u = (t+1)/T
    assert s.alphas_cumprod[T // 2 - 1] == pytest.approx(0.5, abs=1e-12)
    sig = 1 / (1 + math.exp(-3.0))
    u = 0.1
    expected = (sig - 1 / (1 + math.exp(-(6 * u - 3)))) / (sig - (1 - sig))
    assert s.alphas_cumprod[int(u * T) - 1] == pytest.approx(expected, rel=1e-12)
    assert s.betas[-1] == 0.999                                      # abar(1) = 0: the last beta is clipped
    assert not np.allclose(s.betas, NoiseSchedule("sigmoid", T).betas, rtol=0.1)
    assert sigmoid_alphas_cumprod(np.array([0.0, 500.0, 1000.0]), T) == pytest.approx([1.0, 0.5, 0.0], abs=1e-12)


def test_lucid_grid_hand_values():
    assert timestep_grid(1000, 50, "lucid").tolist() == list(range(19, 1000, 20))
    assert timestep_grid(50, 50, "lucid").tolist() == list(range(50))
    assert timestep_grid(1000, 3, "lucid").tolist() == [332, 665, 999]   # -1 + 1000 i / 3 = 332.3, 665.7, 999
    # torch's float32 linspace gives 510.99997 at i = 7 (T = 1024, S = 14): 510, where float64 says 511
    assert lucid_grid(1024, 14)[6] == 510
    assert math.trunc(np.linspace(-1, 1023, 15)[7]) == 511


def test_ddim_on_lucid_grid_ends_on_clean_data():
    sampler = DDIMSampler(NoiseSchedule("linear", 1000), num_steps=50, spacing="lucid")
    assert sampler.timesteps[0] == 999 and sampler.timesteps[-1] == 19 and sampler.t_prev[-1] == -1


def test_config_accepts_the_lucid_settings():
    cfg = resolve(base=dict(unet_family="lucid", beta_schedule="sigmoid_abar", loss_weight="min_snr",
                            spacing="lucid", objective="v", use_convnext=False, resnet_block_groups=7))
    assert cfg["unet_family"] == "lucid"      # no GroupNorm in the lucid blocks: groups are not checked
    with pytest.raises(ConfigError, match="unet_family' must be one of tutorial, lucid"):
        resolve(base=dict(unet_family="karras"))
    with pytest.raises(ConfigError, match="loss_weight' must be one of p2, min_snr, none"):
        resolve(base=dict(loss_weight="snr"))


def test_lucid_unet_under_mixed_precision():
    """The tutorial family's rule: convs and Dense layers in float16, RMSNorm / softmax / time
    embedding in float32, float32 out; the float16 result stays close to the float32 one."""
    import mindspore as ms

    from ddpm_ms.unet import set_compute_dtype
    from ddpm_ms.unet_lucid import LucidUNet, RMSNorm
    net = LucidUNet(8, dim_mults=(1, 2), channels=1, attn_heads=2, attn_head_dim=8, conv_impl="matmul")
    rng = np.random.default_rng(0)
    x = ms.Tensor(rng.standard_normal((2, 1, 16, 16)).astype(np.float32))
    t = ms.Tensor(np.array([5, 900], np.int32))
    ref = net(x, t).asnumpy()
    seen = {}

    def hook(cell, inputs, output):
        seen.setdefault(type(cell).__name__, set()).add(output.dtype)
    norms = [c for _, c in net.cells_and_names() if isinstance(c, RMSNorm)]
    handles = [c.register_forward_hook(hook) for c in norms]
    set_compute_dtype(net, ms.float16)
    out = net(x, t)
    for h in handles:
        h.remove()
    assert out.dtype == ms.float32
    assert seen["RMSNorm"] == {ms.float16}          # computed in float32, handed on in the conv's dtype
    err = np.abs(out.asnumpy() - ref).max() / np.abs(ref).max()
    assert 0 < err < 2e-2, err                       # float16 did run, and stayed close


def test_checkpoints_older_than_unet_family_still_resume():
    """A config saved before unet_family / sinusoidal_theta existed counts as their defaults."""
    from ddpm_ms import checkpoint as ckpt
    from ddpm_ms.unet import ARCH_KEYS, UNET_KEYS
    cfg = resolve(base=dict(dim=8))
    saved = {k: cfg[k] for k in UNET_KEYS}
    ckpt.check_compatible(saved, cfg, ARCH_KEYS)
    with pytest.raises(ckpt.CheckpointError, match=r"unet_family: checkpoint 'tutorial' vs config 'lucid'"):
        ckpt.check_compatible(saved, resolve(base=dict(dim=8, unet_family="lucid")), ARCH_KEYS)

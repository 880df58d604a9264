"""Parity with the installed denoising-diffusion-pytorch 2.3.4 (the test extra, requirements-parity*.txt).

The library is the independent reference: with the same weights (copied by ``ddpm_ms.convert``),
or the same x0, t and noise, ddpm_ms must give
* the same U-Net output (1e-5 of the output's scale), for 28x28x1 (1, 2, 4) and 32x32x3 (1, 2, 2, 2);
* the same training loss (its ``p_losses``) for eps / x0 / v with each weighting (1e-5), and the
  same U-Net gradients (1e-4 of each gradient's norm);
* the same images from a whole DDIM-50 run (eta 0 and 1, its grid) and a DDPM run (T = 50) from
  the same x_T and the same per-step noise (1e-3);
* the same samples from a converted Trainer checkpoint as its ``GaussianDiffusion.sample``.
Skipped, with the reason, where torch or the library cannot be imported.
"""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
INSTALL = "pip install -r requirements-parity.txt && pip install --no-deps -r requirements-parity-nodeps.txt"

torch = pytest.importorskip("torch", reason=f"torch is not installed (test extra: {INSTALL})")
try:
    import torchvision  # noqa: F401  (the library imports it at module load, uses it only in Trainer)
except Exception:
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]
    sys.path.insert(0, str(ROOT / "bench" / "peer_stub"))    # a stand-in whose functions all raise
try:
    import denoising_diffusion_pytorch.denoising_diffusion_pytorch as lucid
    from ema_pytorch import EMA
except Exception as err:  # noqa: BLE001  (any import failure means: no reference here)
    pytest.skip(f"denoising_diffusion_pytorch is not importable ({type(err).__name__}: {err}); "
                f"test extra: {INSTALL}", allow_module_level=True)

import mindspore as ms  # noqa: E402

from ddpm_ms import checkpoint as ckpt  # noqa: E402
from ddpm_ms.convert import ConvertError, convert, infer_unet, load_lucid_weights  # noqa: E402
from ddpm_ms.losses import DiffusionLoss  # noqa: E402
from ddpm_ms.samplers import make_sampler  # noqa: E402
from ddpm_ms.sampling import image_shape, initial_noise, noise_streams, sample, sampling_options  # noqa: E402
from ddpm_ms.schedule import NoiseSchedule  # noqa: E402
from ddpm_ms.unet_lucid import LucidUNet  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
torch.set_num_threads(1)  # tiny tensors: 2 threads on a shared 2-core machine were 10-30x slower
OBJECTIVES = {"eps": "pred_noise", "x0": "pred_x0", "v": "pred_v"}


def torch_unet(dim, mults, channels, heads=4, head_dim=32, seed=0):
    """The library's Unet with every weight random, RMSNorm gains included (they start at ones)."""
    torch.manual_seed(seed)
    net = lucid.Unet(dim, dim_mults=mults, channels=channels, attn_heads=heads, attn_dim_head=head_dim)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith(".g"):
                p.mul_(1 + 0.3 * torch.randn_like(p))
    return net


def twin(tnet, conv_impl="native"):
    """The ddpm_ms LucidUNet with tnet's weights, built and loaded by the converter's functions."""
    sd = {k: v.detach().numpy() for k, v in tnet.state_dict().items()}
    arch = infer_unet(sd)
    net = LucidUNet(arch["dim"], init_dim=arch["init_dim"], dim_mults=arch["dim_mults"], channels=arch["channels"],
                    attn_heads=arch["attn_heads"], attn_head_dim=arch["attn_head_dim"], conv_impl=conv_impl)
    load_lucid_weights(net, sd)
    return net


@pytest.mark.parametrize("channels, size, mults, conv_impl", [
    (1, 28, (1, 2, 4), "native"), (1, 28, (1, 2, 4), "matmul"), (3, 32, (1, 2, 2, 2), "native")])
def test_unet_output_matches_the_library(channels, size, mults, conv_impl):
    tnet = torch_unet(8, mults, channels).eval()
    net = twin(tnet, conv_impl)
    assert sum(p.size for p in net.trainable_params()) == sum(p.numel() for p in tnet.parameters())
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, channels, size, size)).astype(np.float32)
    t = np.array([0, 421, 999])
    with torch.no_grad():
        ref = tnet(torch.from_numpy(x), torch.from_numpy(t)).numpy()
    got = net(ms.Tensor(x), ms.Tensor(t.astype(np.int32))).asnumpy()
    scale = np.abs(ref).max()
    print(f"parity unet {channels}x{size}x{size} {mults} {conv_impl}: max|diff| / scale = "
          f"{np.abs(got - ref).max() / scale:.2e}")
    assert scale > 0.1
    assert np.abs(got - ref).max() <= 1e-5 * scale


def eps_p2_weight(diffusion):
    """p2 (gamma 1, k 1) on the eps error, put into the library's loss_weight by the library's own rule
    (GaussianDiffusion.__init__: eps weight times 1 / snr / snr / (snr + 1) for eps / x0 / v)."""
    abar = diffusion.alphas_cumprod.double()
    snr = abar / (1 - abar)
    w_eps = 1.0 / (1.0 + snr)
    factor = {"pred_noise": torch.ones_like(snr), "pred_x0": snr, "pred_v": snr / (snr + 1)}[diffusion.objective]
    return (w_eps * factor).float()


@pytest.fixture(scope="module")
def loss_case():
    rng = np.random.default_rng(2)
    shape = (4, 1, 16, 16)
    return dict(x0=rng.uniform(-1, 1, shape).astype(np.float32), noise=rng.standard_normal(shape).astype(np.float32),
                t=np.array([3, 250, 640, 999]))


# one weighting per objective in the fast layer, the other six pairs with the slow tests (each
# pair needs a PYNATIVE forward and backward of the U-Net, several seconds on a loaded CPU)
LOSS_CASES = [pytest.param(o, w, marks=() if (o, w) in (("eps", "min_snr"), ("x0", "p2"), ("v", "none"))
                           else pytest.mark.slow)
              for o in ("eps", "x0", "v") for w in ("none", "min_snr", "p2")]


@pytest.mark.parametrize("objective, weighting", LOSS_CASES)
def test_training_loss_and_gradients_match(loss_case, objective, weighting):
    tnet = torch_unet(8, (1, 2), 1, heads=2, head_dim=8)
    diffusion = lucid.GaussianDiffusion(tnet, image_size=16, timesteps=1000, objective=OBJECTIVES[objective],
                                        beta_schedule="sigmoid", min_snr_loss_weight=weighting == "min_snr")
    if weighting == "p2":  # the library has no p2 (it was removed in 1.x): its loss with the p2 table
        diffusion.loss_weight.copy_(eps_p2_weight(diffusion))
    x0, noise, t = (torch.from_numpy(loss_case[k]) for k in ("x0", "noise", "t"))
    ref = diffusion.p_losses(x0, t, noise=noise)
    ref.backward()
    ref_grads = {n: p.grad.numpy() for n, p in tnet.named_parameters()}

    net = twin(tnet)
    loss = DiffusionLoss(net, NoiseSchedule("sigmoid_abar", 1000), objective=objective, loss_type="l2",
                         loss_weight=weighting, p2_gamma=1.0, p2_k=1.0, min_snr_gamma=5.0)
    params = [p for _, p in ckpt.named(net)]
    value, grads = ms.value_and_grad(loss, None, params)(ms.Tensor(loss_case["x0"]), ms.Tensor(t.numpy().astype(np.int32)),
                                                         ms.Tensor(loss_case["noise"]))
    worst = max(np.linalg.norm(g.asnumpy() - ref_grads[n]) / np.linalg.norm(ref_grads[n])
                for (n, _), g in zip(ckpt.named(net), grads))
    print(f"parity loss {objective} {weighting}: rel loss diff {abs(float(value) / float(ref) - 1):.2e}, "
          f"worst rel grad diff {worst:.2e}")
    np.testing.assert_allclose(float(value), float(ref), rtol=1e-5)
    for (name, _), g in zip(ckpt.named(net), grads):
        g_ref = ref_grads[name]
        assert np.linalg.norm(g.asnumpy() - g_ref) <= 1e-4 * np.linalg.norm(g_ref) + 1e-12, name


def library_noise(monkeypatch, x_T, steps_noise):
    """Make the library draw x_T first, then the given per-step noise (zeros once it runs out:
    DDIM with eta 0 draws noise it multiplies by 0)."""
    draws = iter([x_T] + list(steps_noise))

    def randn(*shape, **kwargs):
        return torch.from_numpy(next(draws))

    def randn_like(x, **kwargs):
        value = next(draws, None)
        return torch.zeros_like(x) if value is None else torch.from_numpy(value)
    monkeypatch.setattr(torch, "randn", randn)
    monkeypatch.setattr(torch, "randn_like", randn_like)


def ddpm_ms_noise(seed, batch, shape, sampler_steps_with_noise):
    """The per-step noise ddpm_ms.sampling draws for images 0..batch-1 of a run with ``seed``."""
    rngs = noise_streams(seed, batch)
    return [np.stack([g.standard_normal(shape, np.float32) for g in rngs]) for _ in range(sampler_steps_with_noise)]


@pytest.mark.slow
@pytest.mark.parametrize("sampler, eta, timesteps, objective, schedule", [
    ("ddim", 0.0, 1000, "v", "sigmoid"), ("ddim", 1.0, 1000, "v", "sigmoid"), ("ddpm", None, 50, "eps", "linear")])
def test_whole_sampling_run_matches(monkeypatch, sampler, eta, timesteps, objective, schedule):
    tnet = torch_unet(8, (1, 2), 1, heads=2, head_dim=8)
    diffusion = lucid.GaussianDiffusion(tnet, image_size=16, timesteps=timesteps, objective=OBJECTIVES[objective],
                                        beta_schedule=schedule, sampling_timesteps=50 if sampler == "ddim" else None,
                                        ddim_sampling_eta=eta or 0.0).eval()
    seed, batch, shape = 5, 2, (1, 16, 16)
    x_T = initial_noise(seed, batch, shape)
    noisy_steps = 49 if (sampler == "ddpm" or eta) else 0          # every step but the last adds noise
    library_noise(monkeypatch, x_T, ddpm_ms_noise(seed, batch, shape, noisy_steps))
    ref = diffusion.sample(batch_size=batch).numpy() * 2 - 1          # the library returns [0, 1]
    monkeypatch.undo()

    plan = make_sampler(sampler, NoiseSchedule({"sigmoid": "sigmoid_abar"}.get(schedule, schedule), timesteps),
                        num_steps=50, eta=eta or 0.0, spacing="lucid", objective=objective)
    ours = sample(twin(tnet), plan, batch, shape, seed=seed, x_T=x_T, progress=False)
    print(f"parity run {sampler} eta={eta} T={timesteps}: max|diff| = {np.abs(ours - ref).max():.2e}")
    assert np.abs(ref).max() > 0.1 and not np.allclose(ref, np.clip(x_T, -1, 1), atol=0.1)
    assert np.abs(ours - ref).max() <= 1e-3


def trainer_checkpoint(path, diffusion, step=7):
    """What the library's Trainer.save writes (model, opt, ema, step, scaler, version)."""
    ema = EMA(diffusion, beta=0.995, update_every=10)
    with torch.no_grad():
        for p in ema.ema_model.parameters():
            p.add_(0.05 * torch.randn_like(p))     # EMA weights that differ from the raw ones
    opt = torch.optim.Adam(diffusion.parameters(), lr=1e-4)
    torch.save({"step": step, "model": diffusion.state_dict(), "opt": opt.state_dict(), "ema": ema.state_dict(),
                "scaler": None, "version": "2.3.4"}, path)
    return ema.ema_model


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lucid_ckpt")
    tnet = torch_unet(8, (1, 2, 4), 1, heads=2, head_dim=8, seed=3)
    diffusion = lucid.GaussianDiffusion(tnet, image_size=16, timesteps=100, objective="pred_x0",
                                        beta_schedule="cosine", sampling_timesteps=20, min_snr_loss_weight=True,
                                        min_snr_gamma=4)
    ema_model = trainer_checkpoint(tmp / "model-3.pt", diffusion)
    cfg, step, has_ema, _ = convert(str(tmp / "model-3.pt"), str(tmp / "lucid.ckpt"),
                                 {"image_size": 16, "sampling_timesteps": 20})
    return dict(tmp=tmp, cfg=cfg, step=step, has_ema=has_ema, ema_model=ema_model.eval(), diffusion=diffusion)


@pytest.mark.parametrize("schedule,ours", [("linear", "linear"), ("cosine", "cosine"), ("sigmoid", "sigmoid_abar")])
@pytest.mark.parametrize("timesteps", [100, 1000])
def test_converter_recognises_the_library_schedules(schedule, ours, timesteps):
    """The library's own float32 betas buffer, at its default T = 1000 too (a 40-minute peer model
    with the default sigmoid schedule was refused when the match was to rtol 1e-5)."""
    from ddpm_ms.convert import infer_diffusion
    diffusion = lucid.GaussianDiffusion(lucid.Unet(dim=8, dim_mults=(1, 2), channels=1), image_size=8,
                                        timesteps=timesteps, beta_schedule=schedule)
    betas = diffusion.betas.numpy()
    assert betas.dtype == np.float32
    assert infer_diffusion({"betas": betas})["beta_schedule"] == ours


def test_converter_reads_the_settings_from_the_file(converted):
    cfg = converted["cfg"]
    assert (converted["step"], converted["has_ema"]) == (7, True)
    expected = dict(unet_family="lucid", dim=8, init_dim=8, dim_mults=[1, 2, 4], channels=1, attn_heads=2,
                    attn_head_dim=8, image_size=16, timesteps=100, beta_schedule="cosine", objective="x0",
                    loss_weight="min_snr", min_snr_gamma=4.0, sampler="ddim", sample_steps=20, spacing="lucid")
    assert {k: cfg[k] for k in expected} == expected
    assert (converted["tmp"] / "lucid.yaml").is_file()


@pytest.mark.slow
def test_converted_checkpoint_samples_like_the_library(converted, monkeypatch):
    net, cfg, meta = ckpt.load_network(str(converted["tmp"] / "lucid.ckpt"), "ema", conv_impl="native")
    plan = make_sampler(schedule=NoiseSchedule(cfg["beta_schedule"], cfg["timesteps"]), **sampling_options(cfg))
    seed, batch = 11, 2
    x_T = initial_noise(seed, batch, image_shape(cfg))
    library_noise(monkeypatch, x_T, [])
    ref = converted["ema_model"].sample(batch_size=batch).numpy() * 2 - 1
    monkeypatch.undo()
    ours = sample(net, plan, batch, image_shape(cfg), seed=seed, progress=False)
    print(f"parity converted checkpoint ({type(plan).__name__} {plan.num_steps}): max|diff| = "
          f"{np.abs(ours - ref).max():.2e}")
    assert np.abs(ours - ref).max() <= 1e-3
    raw, _, _ = ckpt.load_network(str(converted["tmp"] / "lucid.ckpt"), "raw", conv_impl="native")
    raw_out = sample(raw, plan, batch, image_shape(cfg), seed=seed, progress=False)
    assert np.abs(raw_out - ref).max() > 1e-2     # the EMA weights, not the raw ones, were compared


@pytest.mark.slow
def test_sample_py_on_a_converted_checkpoint(converted, monkeypatch):
    out = converted["tmp"] / "samples"
    run = subprocess.run([sys.executable, str(ROOT / "sample.py"), "--ckpt", str(converted["tmp"] / "lucid.ckpt"),
                          "--num_samples", "2", "--seed", "11", "--out", str(out), "--device_target", "CPU"],
                         capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    x_T = initial_noise(11, 2, (1, 16, 16))
    library_noise(monkeypatch, x_T, [])
    ref = converted["ema_model"].sample(batch_size=2).numpy()
    monkeypatch.undo()
    images = np.load(out / "samples.npz")[np.load(out / "samples.npz").files[0]]
    ref_u8 = np.clip(np.round(ref * 255), 0, 255).transpose(0, 2, 3, 1)
    assert images.shape == ref_u8.shape
    assert np.abs(images.astype(np.float64) - ref_u8).max() <= 1


# ----------------------------------------------------------------------------- converter errors
def test_not_a_torch_file(tmp_path):
    bad = tmp_path / "model-1.pt"
    bad.write_bytes(b"this is not a checkpoint")
    with pytest.raises(ConvertError, match=r"is not a PyTorch checkpoint that torch.load\(weights_only=True\) reads"):
        convert(str(bad), str(tmp_path / "x.ckpt"), {"image_size": 16})


class Pickled:
    """Any class: torch.load(weights_only=True) refuses to rebuild it."""


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "model-1.pt"
    torch.save({"model": {}, "step": 1, "obj": Pickled()}, path)
    with pytest.raises(ConvertError, match=r"weights_only"):
        convert(str(path), str(tmp_path / "x.ckpt"), {"image_size": 16})


def test_another_architecture_names_the_first_parameter(tmp_path, converted):
    sd = converted["diffusion"].state_dict()
    sd = {k.replace("model.downs.0.2.to_out.1.g", "model.downs.0.2.to_out.1.weight"): v for k, v in sd.items()}
    torch.save({"model": sd, "step": 1}, tmp_path / "a.pt")
    with pytest.raises(ConvertError, match=r"parameter 'downs.0.2.to_out.1.g' is not in the checkpoint"):
        convert(str(tmp_path / "a.pt"), str(tmp_path / "a.ckpt"), {"image_size": 16})
    torch.save({"model": {"model.conv_in.weight": torch.zeros(3)}, "step": 1}, tmp_path / "b.pt")
    with pytest.raises(ConvertError, match=r"not the library's Unet: it has no parameter 'model.init_conv.weight'"):
        convert(str(tmp_path / "b.pt"), str(tmp_path / "b.ckpt"), {"image_size": 16})


def test_shape_mismatch_is_named(tmp_path, converted):
    sd = dict(converted["diffusion"].state_dict())
    sd["model.ups.0.2.to_qkv.weight"] = torch.zeros(24, 32, 1, 1)     # the network has (48, 32, 1, 1)
    torch.save({"model": sd, "step": 1}, tmp_path / "c.pt")
    with pytest.raises(ConvertError, match=r"'model.ups.0.2.to_qkv.weight' has shape \(24, 32, 1, 1\), the lucid U-Net built from the file expects \(48, 32, 1, 1\)"):
        convert(str(tmp_path / "c.pt"), str(tmp_path / "c.ckpt"), {"image_size": 16})


def test_self_conditioning_is_named_as_unsupported(tmp_path):
    net = lucid.Unet(8, dim_mults=(1, 2), channels=1, self_condition=True)
    diffusion = lucid.GaussianDiffusion(net, image_size=16, timesteps=10)
    torch.save({"model": diffusion.state_dict(), "step": 1}, tmp_path / "d.pt")
    with pytest.raises(ConvertError, match=r"self-conditioning"):
        convert(str(tmp_path / "d.pt"), str(tmp_path / "d.ckpt"), {"image_size": 16})


def test_a_flag_that_contradicts_the_file(tmp_path, converted):
    sd = converted["diffusion"].state_dict()
    torch.save({"model": sd, "step": 1}, tmp_path / "e.pt")
    with pytest.raises(ConvertError, match=r"--objective v does not fit the checkpoint, whose buffers say objective x0"):
        convert(str(tmp_path / "e.pt"), str(tmp_path / "e.ckpt"), {"image_size": 16, "objective": "v"})


def test_command_line_errors_are_one_line(tmp_path):
    bad = tmp_path / "model-1.pt"
    bad.write_bytes(b"junk")
    run = subprocess.run([sys.executable, "-m", "ddpm_ms.convert", "--pt", str(bad), "--out", str(tmp_path / "o.ckpt"),
                          "--image_size", "16"], capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    lines = [ln for ln in run.stderr.splitlines() if ln.startswith("error:")]
    assert run.returncode == 2 and len(lines) == 1 and "Traceback" not in run.stderr, run.stderr


@pytest.mark.slow
def test_training_continues_from_a_converted_checkpoint(tmp_path, tiny_folder):
    """README's 'continue training': train.py --config lucid.yaml --resume lucid.ckpt goes on from the
    library's step with the imported weights (the optimizer starts afresh)."""
    tnet = torch_unet(8, (1, 2), 3, heads=2, head_dim=8)
    diffusion = lucid.GaussianDiffusion(tnet, image_size=8, timesteps=100)
    trainer_checkpoint(tmp_path / "model-1.pt", diffusion, step=7)
    convert(str(tmp_path / "model-1.pt"), str(tmp_path / "lucid.ckpt"), {"image_size": 8})
    run = subprocess.run([sys.executable, str(ROOT / "train.py"), "--config", str(tmp_path / "lucid.yaml"),
                          "--resume", str(tmp_path / "lucid.ckpt"), "--dataset", "image_folder",
                          "--data_dir", str(tiny_folder), "--cache_dir", str(tmp_path / "cache"),
                          "--output_dir", str(tmp_path / "runs"), "--max_steps", "9", "--batch_size", "4",
                          "--sampler", "ddim", "--sample_steps", "2", "--num_preview", "2", "--device_target", "CPU"],
                         capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert run.returncode == 0, run.stderr[-2000:]
    out = run.stdout + run.stderr
    assert "resumed from" in out and "at step 7" in out and "imported weights only" in out
    tensors, meta = ckpt.load(str(tmp_path / "runs" / "lucid" / "latest.ckpt"))
    assert meta["step"] == 9 and meta["config"]["unet_family"] == "lucid"


def test_plain_state_dicts_convert_too(tmp_path, converted):
    """torch.save(diffusion.state_dict()) keeps its buffers; torch.save(unet.state_dict()) needs the
    diffusion settings as flags (and says which)."""
    diffusion = converted["diffusion"]
    torch.save(diffusion.state_dict(), tmp_path / "diffusion.pt")
    cfg, step, has_ema, adam = convert(str(tmp_path / "diffusion.pt"), str(tmp_path / "d.ckpt"), {"image_size": 16})
    assert (cfg["objective"], cfg["timesteps"], step, has_ema) == ("x0", 100, 0, False)
    assert adam == "the file has no Adam state ('opt')"
    torch.save(diffusion.model.state_dict(), tmp_path / "unet.pt")
    with pytest.raises(ConvertError, match=r"does not say its objective: pass --objective"):
        convert(str(tmp_path / "unet.pt"), str(tmp_path / "u.ckpt"), {"image_size": 16})
    cfg, _, _, _ = convert(str(tmp_path / "unet.pt"), str(tmp_path / "u.ckpt"),
                        {"image_size": 16, "objective": "v", "timesteps": 100, "beta_schedule": "cosine"})
    assert (cfg["dim"], cfg["dim_mults"], cfg["objective"], cfg["loss_weight"]) == (8, [1, 2, 4], "v", "none")


@pytest.mark.parametrize("optimizer", ["adam", "adamw"])
def test_the_library_adam_state_is_imported_and_resumed(tmp_path, optimizer):
    """Three real Adam steps in the library; convert; resume in ddpm_ms: each parameter's m and v
    are torch's exp_avg / exp_avg_sq under the same name, and the step count is carried (nn.Adam's
    beta powers b^3, or AdamW's step 3), with the betas the library used."""
    from ddpm_ms.config import read_yaml, resolve
    from ddpm_ms.trainer import Trainer
    torch.manual_seed(0)
    tnet = torch_unet(8, (1, 2), 1, heads=2, head_dim=8, seed=5)
    diffusion = lucid.GaussianDiffusion(tnet, image_size=8, timesteps=50)
    opt = torch.optim.Adam(diffusion.parameters(), lr=1e-3, betas=(0.9, 0.99))
    for _ in range(3):
        opt.zero_grad()
        diffusion(torch.rand(4, 1, 8, 8)).backward()
        opt.step()
    torch.save({"step": 3, "model": diffusion.state_dict(), "opt": opt.state_dict(), "ema": None,
                "scaler": None, "version": "2.3.4"}, tmp_path / "model-3.pt")
    cfg, step, has_ema, adam = convert(str(tmp_path / "model-3.pt"), str(tmp_path / "lucid.ckpt"), {"image_size": 8})
    assert (step, has_ema, adam, cfg["adam_beta1"], cfg["adam_beta2"]) == (3, False, 3, 0.9, 0.99)

    run_cfg = resolve(read_yaml(str(tmp_path / "lucid.yaml")),
                      {"optimizer": optimizer, "dataset": "image_folder", "data_dir": str(tmp_path),
                       "output_dir": str(tmp_path / "runs"), "device_target": "CPU", "mode": "pynative",
                       "ema_decay": 0.0, "batch_size": 4})
    lines = []
    trainer = Trainer(run_cfg, log=lines.append)
    trainer.setup(lambda epoch, skip: iter([]), 8)
    trainer.restore(str(tmp_path / "lucid.ckpt"))
    assert any("the library's Adam moments (Adam step 3)" in line for line in lines)
    torch_names = [n for n, _ in diffusion.model.named_parameters()]
    moments = {id(p): (m, v) for p, m, v in zip(trainer.optimizer.parameters, trainer.optimizer.moment1,
                                                 trainer.optimizer.moment2)}
    checked = 0
    for name, p in ckpt.named(trainer.net):
        state = opt.state[dict(diffusion.model.named_parameters())[name]]
        m, v = moments[id(p)]
        np.testing.assert_array_equal(m.asnumpy(), state["exp_avg"].numpy())
        np.testing.assert_array_equal(v.asnumpy(), state["exp_avg_sq"].numpy())
        assert np.abs(state["exp_avg"].numpy()).max() > 0
        checked += 1
    assert checked == len(torch_names)
    if optimizer == "adamw":
        assert float(trainer.optimizer.step_count.asnumpy()) == 3.0
    else:
        assert float(trainer.optimizer.beta1_power.asnumpy()) == pytest.approx(0.9 ** 3, rel=1e-6)
        assert float(trainer.optimizer.beta2_power.asnumpy()) == pytest.approx(0.99 ** 3, rel=1e-6)

"""Sampling from checkpoints: the compiled step against the python loop, seeds, eta 0
determinism, DDIM inversion with a perfect denoiser, CLI outputs and one-line errors, pictures."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import mindspore as ms
from mindspore import Tensor, nn, ops

from ddpm_ms import checkpoint as ckpt
from ddpm_ms.runtime import run_main
from ddpm_ms.config import ConfigError, resolve
from ddpm_ms.data import to_uint8
from ddpm_ms.pictures import forward_process, forward_theory
from ddpm_ms.pictures import main as pictures_main
from ddpm_ms.checkpoint import load_network
from ddpm_ms.sampling import sampling_options
from ddpm_ms.samplers import DDIMInverter, DDIMSampler, make_sampler
from ddpm_ms.sampling import (initial_noise, invert, make_step, noise_streams,
                              run_steps, sample, slerp)
from ddpm_ms.schedule import NoiseSchedule
from ddpm_ms.unet import build_unet

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
TINY = dict(dataset="image_folder", data_dir="unused", image_size=8, channels=1, dim=8, dim_mults=[1, 2],
            attn_heads=1, attn_head_dim=8, timesteps=50, sampler="ddim", sample_steps=4, ema_decay=0.9,
            seed=0)
SHAPE = (1, 8, 8)


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    """A checkpoint of a random tiny U-Net (raw and EMA weights differ), as train.py writes it."""
    cfg = resolve(base=TINY)
    net, ema = build_unet(cfg), build_unet(cfg)
    items = ckpt.named(net) + [(ckpt.EMA_PREFIX + n, p) for n, p in ckpt.named(ema)]
    path = tmp_path_factory.mktemp("ckpt") / "tiny.ckpt"
    ckpt.save(str(path), items, step=7, config=cfg)
    return path


@pytest.fixture(scope="module")
def tiny_net(tiny_ckpt):
    net, cfg, _ = load_network(str(tiny_ckpt))
    return net, cfg


class Conv1x1(nn.Cell):
    """Deterministic stand-in network: out = W x + b + t_scale * t (1x1 conv, t-dependent)."""

    def __init__(self, channels=2):
        super().__init__()
        rng = np.random.default_rng(0)
        w = (np.eye(channels) * 0.5 + 0.1 * rng.standard_normal((channels, channels)))[:, :, None, None]
        self.conv = nn.Conv2d(channels, channels, 1, has_bias=True, weight_init=Tensor(w.astype(np.float32)),
                              bias_init=Tensor(rng.standard_normal(channels).astype(np.float32) * 0.1))
        self.t_scale = 0.01  # a Python float: a compiled graph keeps the value it was built with

    def construct(self, x, t):
        return self.conv(x) + self.t_scale * t.astype(ms.float32).reshape((-1, 1, 1, 1))


class PerfectEps(nn.Cell):
    """Knows x0: eps(x, t) = (x - sqrt(abar_t) x0) / sqrt(1 - abar_t), abar gathered by t."""

    def __init__(self, x0, schedule):
        super().__init__()
        self.x0 = Tensor(np.asarray(x0, np.float32))
        self.abar = Tensor(schedule.alphas_cumprod.astype(np.float32))

    def construct(self, x, t):
        abar = ops.gather(self.abar, t, 0).reshape((-1, 1, 1, 1))
        return (x - ops.sqrt(abar) * self.x0) / ops.sqrt(1.0 - abar)


def python_loop(net, plan, x_T, seed):
    """The reference: sampler.step per timestep on MindSpore tensors, op by op (PYNATIVE)."""
    x = Tensor(x_T)
    rngs = noise_streams(seed, len(x_T))
    for i, t in enumerate(plan.timesteps):
        noise = None
        if plan.column("sigma")[i] > 0:
            noise = Tensor(np.stack([g.standard_normal(x_T.shape[1:], np.float32) for g in rngs]))
        out = net(x, Tensor(np.full(len(x_T), t, np.int32)))
        x, _ = plan.step(out, t, x, noise=noise)
    return x.asnumpy()


# ----------------------------------------------------------------------------- compiled step


@pytest.mark.parametrize("name, kwargs", [("ddpm", {}), ("ddim", dict(num_steps=7, eta=0.5)),
                                          ("naive", dict(num_steps=5)), ("invert", dict(num_steps=6))])
def test_compiled_step_matches_python_loop(name, kwargs):
    sched = NoiseSchedule("linear", 50)
    net = Conv1x1()
    if name == "invert":
        plan = DDIMInverter(sched, **kwargs)
    else:
        plan = make_sampler(name, sched, clip_x0=True, spacing="trailing", **kwargs)
    x_T = initial_noise(3, 2, (2, 4, 4))
    want = python_loop(net, plan, x_T, seed=3)

    def run(jit):
        net.t_scale = 0.01
        step = make_step(net, plan, jit=jit)

        def step_then_poke(x, i, noise):
            out = step(x, i, noise)
            net.t_scale = 100.0  # seen by op-by-op execution, not by a graph compiled on step 0
            return out
        x, _ = run_steps(step_then_poke, plan, Tensor(x_T), noise_streams(3, 2))
        return x.asnumpy()
    # same numbers, and one graph reused for every step (t enters as a tensor, no recompiles)
    np.testing.assert_allclose(run(jit=True), want, rtol=1e-5, atol=1e-5)
    if name == "ddim":  # the poke does change an uncompiled run, so the check above has teeth
        assert np.abs(run(jit=False) - want).max() > 1.0


class FixedEps(nn.Cell):
    """Predicts the same eps everywhere: the exact denoiser of the path x_t = q_sample(x0, t, eps)."""

    def __init__(self, eps):
        super().__init__()
        self.eps = Tensor(np.asarray(eps, np.float32))

    def construct(self, x, t):
        return self.eps + 0.0 * x


def test_perfect_denoiser_inversion_round_trip():
    sched = NoiseSchedule("linear", 100)
    rng = np.random.default_rng(1)
    x0 = rng.uniform(-0.9, 0.9, (2, 1, 8, 8)).astype(np.float32)
    ddim = DDIMSampler(sched, 10, eta=0.0, clip_x0=False)
    kw = dict(progress=False)
    # a denoiser that knows x0 (pred_x0 = x0 at every step)
    net = PerfectEps(x0, sched)
    x_T = invert(net, sched, x0, num_steps=10, progress=False)
    assert np.abs(x_T - x0).max() > 0.1  # the inversion moved
    np.testing.assert_allclose(sample(net, ddim, 2, (1, 8, 8), x_T=x_T, **kw), x0, atol=1e-4)
    # a denoiser that knows the noise: inversion must land exactly on q_sample(x0, t_top, eps),
    # and only that x_T decodes back to x0 (the result moves with x_T / sqrt(abar_top))
    eps = rng.standard_normal(x0.shape).astype(np.float32)
    net = FixedEps(eps)
    x_T = invert(net, sched, x0, num_steps=10, progress=False)
    t_top = DDIMInverter(sched, 10).timesteps[-1]
    np.testing.assert_allclose(x_T, sched.q_sample(x0, np.full(2, t_top), eps), atol=1e-5)
    np.testing.assert_allclose(sample(net, ddim, 2, (1, 8, 8), x_T=x_T, **kw), x0, atol=1e-4)
    off = sample(net, ddim, 2, (1, 8, 8), x_T=x_T + 1e-3, **kw)
    assert np.abs(off - x0).max() > 1e-2


# ----------------------------------------------------------------------------- seeds, shapes


def test_tiny_unet_outputs_shape_range_dtype_and_seeds(tiny_net):
    net, cfg = tiny_net
    sched = NoiseSchedule("linear", cfg["timesteps"])
    for name in ("ddpm", "ddim", "naive"):
        plan = make_sampler(name, sched, num_steps=4, eta=1.0)
        a = sample(net, plan, 3, SHAPE, seed=5, progress=False)
        assert a.shape == (3, 1, 8, 8) and a.dtype == np.float32, name
        assert np.isfinite(a).all() and a.min() >= -1.0 and a.max() <= 1.0, name
        assert a.std() > 0.01, name  # not a constant image
        u8 = to_uint8(a)
        assert u8.shape == (3, 8, 8, 1) and u8.dtype == np.uint8
        if name == "ddim":  # eta 1: noise on every step but the last
            kw = dict(progress=False)
            np.testing.assert_array_equal(a, sample(net, plan, 3, SHAPE, seed=5, **kw))  # same seed
            split = sample(net, plan, 3, SHAPE, seed=5, batch_size=2, **kw)             # any batch split
            np.testing.assert_allclose(split, a, atol=1e-5)
            other = sample(net, plan, 3, SHAPE, seed=6, **kw)                           # seeds differ
            assert np.abs(other - a).mean() > 0.05


def test_eta0_is_deterministic_given_x_T(tiny_net):
    net, cfg = tiny_net
    sched = NoiseSchedule("linear", cfg["timesteps"])
    x_T = initial_noise(9, 2, SHAPE)
    kw = dict(x_T=x_T, progress=False)
    eta0, eta1 = DDIMSampler(sched, 5, eta=0.0), DDIMSampler(sched, 5, eta=1.0)
    a = sample(net, eta0, 2, SHAPE, seed=1, **kw)
    np.testing.assert_array_equal(a, sample(net, eta0, 2, SHAPE, seed=2, **kw))
    # x_T defaults to initial_noise(seed): the interpolation ends are sample.py's first images
    np.testing.assert_array_equal(a, sample(net, eta0, 2, SHAPE, seed=9, progress=False))
    # with eta > 0 the seed's per-step noise matters (so the check above could fail)
    b1 = sample(net, eta1, 2, SHAPE, seed=1, **kw)
    b2 = sample(net, eta1, 2, SHAPE, seed=2, **kw)
    assert np.abs(b1 - b2).mean() > 0.01


def test_slerp_ends_and_norm():
    a, b = initial_noise(0, 1, (3, 16, 16))[0], initial_noise(1, 1, (3, 16, 16))[0]
    path = slerp(a, b, np.linspace(0, 1, 5))
    np.testing.assert_allclose(path[0], a, atol=1e-6)
    np.testing.assert_allclose(path[-1], b, atol=1e-6)
    norms = np.linalg.norm(path.reshape(5, -1), axis=1)
    assert np.all(np.abs(norms / np.sqrt(a.size) - 1) < 0.1)            # stays on the Gaussian shell
    assert np.linalg.norm((a + b) / 2) / np.sqrt(a.size) < 0.8          # unlike the linear midpoint


# ----------------------------------------------------------------------------- CLI


def run_cli(*args, script="sample.py"):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [PY, str(ROOT / script), *args] if script.endswith(".py") else [PY, "-m", script, *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def grid_cells(path, n, size, nrow, padding=2):
    """The n size x size cells of a grid PNG read back, cut where a grid of ``nrow`` per row with
    ``padding`` pixels around and between cells puts them; also the mask of the padding pixels."""
    grid = np.asarray(Image.open(path))
    pad = np.ones(grid.shape[:2], bool)
    cells = []
    for i in range(n):
        r, k = divmod(i, nrow)
        y, x = padding + r * (size + padding), padding + k * (size + padding)
        cells.append(grid[y:y + size, x:x + size])
        pad[y:y + size, x:x + size] = False
    return np.stack(cells), grid[pad]


def files_of(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in Path(folder).rglob("*") if p.is_file()}


@pytest.mark.slow
def test_cli_same_seed_same_files(tiny_ckpt, tmp_path):
    common = ["--ckpt", str(tiny_ckpt), "--sampler", "ddpm", "--num_samples", "5", "--batch_size", "3"]
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        r = run_cli(*common, "--seed", str(seed), "--out", str(tmp_path / name))
        assert r.returncode == 0, r.stderr
    a, b, c = (files_of(tmp_path / n) for n in "abc")
    assert sorted(a) == ["grid.png"] + [f"images/{i:05d}.png" for i in range(5)] + ["samples.npz"]
    assert a == b                                         # byte for byte, two fresh processes
    images = np.load(tmp_path / "a" / "samples.npz")["images"]
    assert images.shape == (5, 8, 8, 1) and images.dtype == np.uint8
    assert not np.array_equal(images, np.load(tmp_path / "c" / "samples.npz")["images"])


def test_cli_bad_checkpoint_is_one_line(tmp_path):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint at all")
    r = run_cli("--ckpt", str(bad), "--out", str(tmp_path / "o"))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), r.stderr
    assert "not a readable MindSpore checkpoint" in lines[0]


def _error_line(capsys, argv, main=None):
    from sample import main as sample_main
    code = run_main(main or sample_main, argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error:"), err
    return err[0]


def test_cli_errors_are_one_line(tiny_ckpt, tmp_path, capsys):
    run = ["--device_target", "CPU", "--mode", "pynative", "--out", str(tmp_path / "o")]
    assert "checkpoint not found" in _error_line(capsys, ["--ckpt", str(tmp_path / "nope.ckpt"), *run])
    # a checkpoint whose tensors do not fit the architecture its config describes
    cfg = resolve(base=dict(TINY, dim=12))
    other = tmp_path / "other.ckpt"
    net = build_unet(resolve(base=TINY))
    ckpt.save(str(other), ckpt.named(net), step=1, config=cfg)
    line = _error_line(capsys, ["--ckpt", str(other), "--weights", "raw", *run])
    assert "different architecture" in line or "another network" in line, line
    assert "use --weights raw" in _error_line(capsys, ["--ckpt", str(other), *run])  # no EMA in it
    for steps in ("0", "51"):
        line = _error_line(capsys, ["--ckpt", str(tiny_ckpt), "--steps", steps, *run])
        assert "between 1 and T=50" in line, line
    assert "ddpm always runs all T=50" in _error_line(
        capsys, ["--ckpt", str(tiny_ckpt), "--sampler", "ddpm", "--steps", "10", *run])
    assert f"--invert {other} is not a readable image" in _error_line(
        capsys, ["--ckpt", str(tiny_ckpt), "--invert", str(other), *run])


def test_sampling_options_ranges():
    cfg = resolve(base=TINY)
    assert sampling_options(cfg)["num_steps"] == 4
    assert sampling_options(cfg, "ddpm")["num_steps"] == 50
    assert sampling_options(cfg, "naive", 50, clip_x0="false")["clip_x0"] is False
    with pytest.raises(ConfigError, match=r"between 1 and T=50 .*got 51"):
        sampling_options(cfg, steps=51)
    for eta in (-0.1, 1.5):
        with pytest.raises(ConfigError, match=rf"--eta must be in \[0, 1\] .*got {eta}"):
            sampling_options(cfg, eta=eta)
    assert sampling_options(cfg, eta=1.0)["eta"] == 1.0


def test_sample_mode_defaults_to_auto_resolved_like_train():
    """sample.py without --mode takes train.py's default (the config's 'mode') and resolves it
    for the device as train.py does; the jit flag and MindSpore's context follow the result."""
    from ddpm_ms.runtime import resolve_mode
    from ddpm_ms.sample_cli import build_arg_parser, setup_runtime
    args = build_arg_parser().parse_args(["--ckpt", "x.ckpt", "--device_target", "CPU"])
    assert args.mode == resolve({})["mode"]
    jit = setup_runtime(args, verbose=False)
    assert jit == (resolve_mode(args.mode, "CPU")[0] == "graph")
    assert ms.get_context("mode") == (ms.GRAPH_MODE if jit else ms.PYNATIVE_MODE)
    pyn = build_arg_parser().parse_args(["--ckpt", "x.ckpt", "--device_target", "CPU", "--mode", "pynative"])
    assert setup_runtime(pyn, verbose=False) is False and ms.get_context("mode") == ms.PYNATIVE_MODE


def test_sampling_options_name_every_option_the_sampler_does_not_use():
    cfg = resolve(base=TINY)
    opts = sampling_options(cfg, "dpmpp2m", 10, spacing="trailing")
    assert (opts["name"], opts["num_steps"], opts["eta"], opts["spacing"]) == ("dpmpp2m", 10, None, "trailing")
    plan = make_sampler(schedule=NoiseSchedule("linear", 50), **opts)     # the strings become one object
    assert type(plan).__name__ == "DPMSolverPP2MSampler" and plan.num_steps == 10 and plan.spacing == "trailing"
    assert sampling_options(cfg, "ddpm", 50)["num_steps"] == 50          # --steps T says nothing new
    assert sampling_options(cfg, "ddim", eta=0.5)["eta"] == 0.5
    with pytest.raises(ConfigError) as err:
        sampling_options(cfg, "ddpm", steps=10, eta=0.5, spacing="trailing")
    line = str(err.value)
    assert line.startswith("--sampler ddpm does not use --steps 10, --eta 0.5, --spacing trailing: "
                           "ddpm always runs all T=50 steps") and line.endswith("drop them"), line
    with pytest.raises(ConfigError, match=r"^--sampler dpmpp2m does not use --eta 0.0: .*has no eta.*drop it$"):
        sampling_options(cfg, "dpmpp2m", 10, eta=0.0)
    with pytest.raises(ConfigError, match=r"^--sampler naive does not use --eta 1.0: "):
        sampling_options(cfg, "naive", eta=1.0)
    ddpm_cfg = resolve(base=dict(TINY, sampler="ddpm"))
    with pytest.raises(ConfigError, match=r"^the checkpoint's sampler ddpm does not use --steps 4: "):
        sampling_options(ddpm_cfg, steps=4)


def test_cli_dpmpp2m_samples_and_rejects_eta(tiny_ckpt, tmp_path, capsys):
    from sample import main as sample_main
    run = ["--ckpt", str(tiny_ckpt), "--device_target", "CPU", "--mode", "pynative"]
    line = _error_line(capsys, [*run, "--sampler", "dpmpp2m", "--eta", "0.5", "--out", str(tmp_path / "e")])
    assert "--sampler dpmpp2m does not use --eta 0.5" in line and "no eta" in line, line
    line = _error_line(capsys, [*run, "--sampler", "ddpm", "--eta", "0.5", "--steps", "10",
                                "--out", str(tmp_path / "e")])
    assert "--steps 10, --eta 0.5" in line, line
    assert not (tmp_path / "e").exists()
    out = tmp_path / "dpm"
    assert run_main(sample_main, [*run, "--sampler", "dpmpp2m", "--steps", "5", "--num_samples", "3",
                                  "--seed", "2", "--out", str(out)]) == 0
    images = np.load(out / "samples.npz")["images"]
    assert images.shape == (3, 8, 8, 1) and images.dtype == np.uint8
    net, cfg, _ = load_network(str(tiny_ckpt))
    plan = make_sampler("dpmpp2m", NoiseSchedule("linear", 50), num_steps=5, spacing=cfg["spacing"],
                        clip_x0=cfg["clip_x0"])
    want = sample(net, plan, 3, SHAPE, seed=2, progress=False)
    np.testing.assert_array_equal(images, to_uint8(want))
    # the PNGs hold the same pixels as the npz: one file per image, and the grid (2 per row)
    for i in range(3):
        np.testing.assert_array_equal(np.asarray(Image.open(out / "images" / f"{i:05d}.png")), images[i, ..., 0])
    cells, padding = grid_cells(out / "grid.png", 3, 8, nrow=2)
    np.testing.assert_array_equal(cells, images[..., 0])
    assert not padding.any() and images.std() > 1                         # black padding, varied images


@pytest.mark.slow
def test_cli_invert_reports_error_and_writes_pair(tiny_ckpt, tmp_path):
    img = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (12, 10), dtype=np.uint8)).save(img)
    r = run_cli("--ckpt", str(tiny_ckpt), "--invert", str(img), "--steps", "10", "--out", str(tmp_path / "o"))
    assert r.returncode == 0, r.stderr
    line = [s for s in r.stdout.splitlines() if s.startswith("inversion:")]
    assert line and "mse=" in line[0] and "psnr=" in line[0], r.stdout
    z = np.load(tmp_path / "o" / "inversion.npz")
    assert z["inputs"].shape == z["reconstructions"].shape == (1, 8, 8, 1) and z["x_T"].shape == (1, 1, 8, 8)
    # the printed numbers are those of the saved pair, in uint8 [0, 255] space
    printed = dict(kv.split("=") for kv in line[0].split() if kv.startswith(("mse=", "psnr=")))
    mse = np.mean((z["reconstructions"].astype(np.float64) - z["inputs"]) ** 2)
    # compare as printed: a tolerance of half the last digit fails on exact ties (1366.71875 -> 1366.7188)
    assert printed["mse"] == f"{mse:.4f}" and mse > 0
    assert printed["psnr"] == f"{10 * np.log10(255 ** 2 / mse):.2f}"
    cells, padding = grid_cells(tmp_path / "o" / "inversion.png", 2, 8, nrow=2)   # input | reconstruction
    np.testing.assert_array_equal(cells, [z["inputs"][0, ..., 0], z["reconstructions"][0, ..., 0]])
    assert not padding.any()


def test_invert_and_reconstruct_error_with_a_perfect_denoiser():
    """The error invert_and_reconstruct reports, on reconstructions known in advance: DDIM's last
    step returns pred_x0, which a denoiser that knows an image makes that image whatever x_T.
    Knowing x0: mse 0, psnr inf; knowing x0 + 0.2: the mse of that shift on the uint8 images."""
    from ddpm_ms.sample_cli import invert_and_reconstruct
    cfg = resolve(base=dict(TINY, timesteps=100))
    x0 = np.random.default_rng(3).uniform(-0.9, 0.9, (2, 1, 8, 8)).astype(np.float32)
    opts = dict(num_steps=10, spacing="leading", objective="eps", clip_x0=False)
    sched = NoiseSchedule("linear", 100)
    _, recon, mse, db = invert_and_reconstruct(PerfectEps(x0, sched), cfg, x0, opts, jit=False, progress=False)
    np.testing.assert_allclose(recon, x0, atol=1e-4)
    assert mse == 0.0 and db == float("inf")
    shifted = x0 + 0.2                     # 0.2 * 127.5 = 25.5 grey levels, rounded per pixel
    _, recon, mse, db = invert_and_reconstruct(PerfectEps(shifted, sched), cfg, x0, opts, jit=False, progress=False)
    np.testing.assert_allclose(recon, np.clip(shifted, -1, 1), atol=1e-4)
    want = np.mean((to_uint8(shifted).astype(np.float64) - to_uint8(x0)) ** 2)
    assert 25 ** 2 <= want <= 26 ** 2 and mse == pytest.approx(want) and db == pytest.approx(10 * np.log10(255 ** 2 / want))


# ----------------------------------------------------------------------------- pictures


def test_forward_step_by_step_matches_closed_form_statistics():
    sched = NoiseSchedule("linear", 1000)
    x0 = np.random.default_rng(2).uniform(-1, 1, (1, 8, 8))
    ts = list(range(0, 1000, 100))
    n = 400
    stepwise, closed = forward_process(x0, sched, ts, np.random.default_rng(3), num_draws=n)
    assert stepwise.shape == closed.shape == (10, n, 1, 8, 8)
    mean_th, std_th = forward_theory(x0, sched, ts)
    for k, t in enumerate(ts):
        abar = sched.alphas_cumprod[t]
        for name, xs in (("stepwise", stepwise[k]), ("closed", closed[k])):
            # per pixel over the draws: mean sqrt(abar) x0, std sqrt(1 - abar)
            tol = 5 * np.sqrt((1 - abar) / n)
            np.testing.assert_allclose(xs.mean(0), np.sqrt(abar) * x0, atol=tol, err_msg=f"{name} t={t}")
            assert abs(xs.std(0).mean() / np.sqrt(1 - abar) - 1) < 0.03, (name, t)
            assert abs(xs.std() / std_th[k] - 1) < 0.03, (name, t)
            assert abs(xs.mean() - mean_th[k]) < 0.02, (name, t)
    # at t = 900 theory says std = sqrt(abar var(x0) + 1 - abar) and both agree with it
    ab = sched.alphas_cumprod[900]
    assert std_th[-1] == pytest.approx(np.sqrt(ab * x0.var() + 1 - ab))
    assert abs(stepwise[-1].std() - closed[-1].std()) < 0.03


def test_forward_picture_from_image(tmp_path, capsys):
    img = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (8, 8), dtype=np.uint8)).save(img)
    out = tmp_path / "forward.png"
    pictures_main(["forward", "--image", str(img), "--image_size", "8", "--channels", "1",
                   "--timesteps", "100", "--draws", "8", "--out", str(out)])
    assert Image.open(out).size[0] > 400
    assert "| 90 |" in capsys.readouterr().out  # columns t = 0, 10, ..., 90 for T = 100


def test_reverse_and_interpolate_pictures(tiny_ckpt, tiny_net, tmp_path):
    run = ["--ckpt", str(tiny_ckpt), "--device_target", "CPU"]
    png, gif = pictures_main(["reverse", *run, "--sampler", "ddim", "--steps", "6", "--columns", "3",
                              "--frames", "4", "--out", str(tmp_path / "rev.png")])
    assert Image.open(png).size[0] > 200
    with Image.open(gif) as g:
        assert g.n_frames == 5  # 4 steps + the held result
    images = pictures_main(["interpolate", *run, "--seed_a", "3", "--seed_b", "4", "--num", "3",
                            "--steps", "4", "--out", str(tmp_path / "interp.png")])
    assert images.shape == (3, 1, 8, 8) and (tmp_path / "interp.png").stat().st_size > 0
    net, cfg = tiny_net
    end = sample(net, DDIMSampler(NoiseSchedule("linear", 50), 4, eta=0.0, spacing=cfg["spacing"],
                                  clip_x0=cfg["clip_x0"]), 1, SHAPE,
                 seed=4, progress=False)
    np.testing.assert_allclose(images[-1:], end, atol=1e-5)

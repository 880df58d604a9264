"""Issue 21: what a user hits on bad input. Each case runs the real command line where it can
and checks (a) one line on stderr that says what to do, exit code 2, no traceback, and
(b) that nothing already on disk was lost or overwritten."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


def run_cli(script, *args, env=None, timeout=600):
    """Run ``python script args`` (or ``python -m module``) from the repository root."""
    full_env = dict(os.environ, PYTHONPATH=str(ROOT), **(env or {}))
    cmd = [PY, str(ROOT / script), *args] if script.endswith(".py") else [PY, "-m", script, *args]
    return subprocess.run(cmd, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=timeout)


def one_error_line(r):
    """The single 'error: ...' line of a failed run (asserts exit code 2 and no traceback)."""
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert r.returncode == 2, (r.returncode, r.stderr[-3000:])
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr[-3000:]
    return lines[0]


def snapshot(folder):
    """{relative path: bytes} of every file under folder."""
    folder = Path(folder)
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


# ----------------------------------------------------------------------------- devices

@pytest.mark.parametrize("target, hint", [("GPU", "CUDA"), ("Ascend", "CANN")])
def test_missing_device_is_one_line(target, hint, tmp_path):
    import mindspore as ms
    if ms.hal.is_available(target):
        pytest.skip(f"{target} is available on this machine")
    r = run_cli("train.py", "--config", "configs/fashion_mnist_smoke.yaml", "--device_target", target,
                "--output_dir", str(tmp_path / "runs"))
    line = one_error_line(r)
    assert f"device_target {target} is not available" in line and "offer CPU" in line, line
    assert hint in line and "--device_target CPU" in line, line
    assert not (tmp_path / "runs").exists()  # nothing written before the device was accepted


@pytest.mark.parametrize("module, args", [
    ("sample.py", ["--ckpt", "missing.ckpt"]),
    ("ddpm_ms.export", ["--ckpt", "missing.ckpt", "--out", "x.mindir"]),
    ("ddpm_ms.eval.feature_net", ["--out", "x.ckpt"]),
    ("ddpm_ms.pictures", ["reverse", "--ckpt", "missing.ckpt", "--out", "x.png"]),
])
def test_missing_device_is_one_line_in_every_entry_point(module, args, tmp_path):
    import mindspore as ms
    if ms.hal.is_available("GPU"):
        pytest.skip("GPU is available on this machine")
    args = [str(tmp_path / a) if a.startswith(("missing", "x.")) else a for a in args]
    line = one_error_line(run_cli(module, *args, "--device_target", "GPU", env={"GLOG_v": "2"}))
    assert "device_target GPU is not available" in line, line
    assert not list(tmp_path.iterdir())


# ----------------------------------------------------------------------------- network settings

@pytest.mark.parametrize("args, expect", [
    (["--image_size", "30"], ["image_size 30 cannot be halved 2 times", "--image_size 28 or 32",
                              "--dim_mults 1,2"]),
    (["--use_convnext", "false"], ["every width [28, 56, 112] divisible by resnet_block_groups=8",
                                   "--resnet_block_groups 7 or 4", "--dim 32"]),
    (["--dim", "7"], ["'dim' must be even", "--dim 8"]),
])
def test_network_settings_fail_when_the_config_loads(args, expect, tmp_path):
    r = run_cli("train.py", "--config", "configs/fashion_mnist.yaml", "--device_target", "CPU",
                "--output_dir", str(tmp_path / "runs"), *args)
    line = one_error_line(r)
    for phrase in expect:
        assert phrase in line, line
    assert "[ddpm_ms] device" not in r.stdout  # rejected before MindSpore was set up
    assert not (tmp_path / "runs").exists()


def test_suggested_network_values_work():
    from ddpm_ms.config import ConfigError, resolve
    from ddpm_ms.unet import build_unet
    with pytest.raises(ConfigError):
        resolve(base=dict(image_size=30))
    for fix in (dict(image_size=28), dict(image_size=32), dict(image_size=30, dim_mults=[1, 2]),
                dict(use_convnext=False, resnet_block_groups=7), dict(use_convnext=False, resnet_block_groups=4),
                dict(use_convnext=False, dim=32)):
        cfg = resolve(base=dict(fix, attn_heads=1, attn_head_dim=4))
        build_unet(cfg)  # builds without ValueError


def test_train_help_keeps_the_example_lines():
    r = run_cli("train.py", "--help")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    examples = [ln.strip() for ln in lines if ln.strip().startswith(("python train.py", "bash scripts/"))]
    assert len(examples) == 4, r.stdout[:3000]  # each example on a line of its own
    assert "python train.py --config configs/fashion_mnist.yaml --resume auto" in examples


# ----------------------------------------------------------------------------- training runs

TINY_TRAIN = ["--dataset", "image_folder", "--image_size", "8", "--channels", "3", "--dim", "8",
              "--dim_mults", "1,2", "--attn_heads", "1", "--attn_head_dim", "8", "--timesteps", "50",
              "--batch_size", "4", "--save_every", "1", "--sample_every", "0", "--num_preview", "2",
              "--sample_steps", "2", "--log_every", "1", "--num_parallel_workers", "1",
              "--device_target", "CPU", "--mode", "pynative", "--seed", "3"]


def train(tmp_root, run_name, *args):
    return run_cli("train.py", *TINY_TRAIN, "--data_dir", str(tmp_root / "imgs"),
                   "--cache_dir", str(tmp_root / "cache"), "--output_dir", str(tmp_root / "runs"),
                   "--run_name", run_name, *args)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 3-step run made with train.py --resume auto in an empty folder: (root, run folder, stdout)."""
    import numpy as np
    from PIL import Image
    root = tmp_path_factory.mktemp("i21_train")
    (root / "imgs").mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / "imgs" / f"{i}.png")
    r = train(root, "base", "--max_steps", "3", "--resume", "auto")
    assert r.returncode == 0, r.stderr[-3000:]
    return root, root / "runs" / "base", r.stdout


def copy_run(trained, name):
    import shutil
    root, base, _ = trained
    shutil.copytree(base, root / "runs" / name)
    return root / "runs" / name


def test_resume_auto_without_a_checkpoint_says_so(trained):
    root, run, stdout = trained
    assert f"no checkpoint in {root / 'runs' / 'base'}: starting from step 0" in stdout, stdout[-2000:]
    assert sorted(p.name for p in run.glob("step_*.ckpt")) == [f"step_0000000{i}.ckpt" for i in (1, 2, 3)]


def test_rejected_resume_leaves_the_run_untouched(trained):
    root, _, _ = trained
    run = copy_run(trained, "reject")
    before = snapshot(run)
    r = train(root, "reject", "--max_steps", "5", "--resume", "auto", "--dim", "12")
    line = one_error_line(r)
    assert "different architecture (dim: checkpoint 8 vs config 12)" in line, line
    assert snapshot(run) == before  # config.yaml too: written only after a checkpoint is accepted


def test_truncated_latest_falls_back_to_newest_readable_step(trained):
    from ddpm_ms import checkpoint as ckpt
    root, _, _ = trained
    run = copy_run(trained, "truncated")
    for name in ("latest.ckpt", "step_00000003.ckpt"):  # latest is usually a hard link of the newest
        data = (run / name).read_bytes()
        (run / name).write_bytes(data[:len(data) // 2])
    good = (run / "step_00000002.ckpt").read_bytes()
    r = train(root, "truncated", "--max_steps", "4", "--resume", "auto", "--keep_checkpoints", "5")
    assert r.returncode == 0, r.stderr[-3000:]
    assert ("latest.ckpt, step_00000003.ckpt in " in r.stdout and "cannot be read (corrupt or truncated); "
            "resuming from step_00000002.ckpt (step 2)" in r.stdout), r.stdout[-3000:]
    assert "resumed from" in r.stdout and "at step 2" in r.stdout
    assert (run / "step_00000002.ckpt").read_bytes() == good
    assert ckpt.load(str(run / "latest.ckpt"))[1]["step"] == 4


def test_no_readable_checkpoint_is_one_line(tmp_path):
    from ddpm_ms import checkpoint as ckpt
    (tmp_path / "latest.ckpt").write_bytes(b"x" * 100)
    (tmp_path / "step_00000005.ckpt").write_bytes(b"y" * 100)
    with pytest.raises(ckpt.CheckpointError, match=r"no readable checkpoint in .*latest.ckpt, "
                                                   r"step_00000005.ckpt cannot be read") as err:
        ckpt.load_first_readable(ckpt.auto_resume_candidates(str(tmp_path)))
    assert "\n" not in str(err.value)


def test_nan_stop_names_the_loss_the_last_good_step_and_the_causes(trained):
    root, _, _ = trained
    run = copy_run(trained, "nan")
    before = snapshot(run)
    # an absurd learning rate blows the weights up within two steps
    r = train(root, "nan", "--max_steps", "7", "--resume", "auto", "--lr", "1e38", "--lr_schedule",
              "constant", "--save_every", "100")
    line = one_error_line(r)
    assert "loss became nan at step" in line or "is not finite at step" in line, line
    assert "the last good checkpoint is step 3" in line and "lr 1e+38 too high" in line, line
    assert "grad_clip" not in line  # clipping is on (1.0): not suggested
    after = snapshot(run)
    for name in ("latest.ckpt", "step_00000003.ckpt"):
        assert after[name] == before[name]
    assert not [n for n in after if n.startswith("step_") and n not in before]


def test_resume_given_a_folder_is_one_line(tmp_path):
    from ddpm_ms import checkpoint as ckpt
    (tmp_path / "latest.ckpt").write_bytes(b"")
    with pytest.raises(ckpt.CheckpointError, match=r"is a folder, not a checkpoint file: pass .*latest.ckpt"):
        ckpt.find_resume(str(tmp_path), str(tmp_path / "run"))


# ----------------------------------------------------------------------------- sample.py

@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    """A tiny random U-Net checkpoint with EMA weights, written as train.py writes one."""
    from ddpm_ms import checkpoint as ckpt
    from ddpm_ms.config import resolve
    from ddpm_ms.unet import build_unet
    cfg = resolve(base=dict(dataset="image_folder", data_dir="unused", image_size=8, channels=1, dim=8,
                            dim_mults=[1, 2], attn_heads=1, attn_head_dim=8, timesteps=50, sampler="ddim",
                            sample_steps=2, ema_decay=0.9, seed=0))
    net, ema = build_unet(cfg), build_unet(cfg)
    folder = tmp_path_factory.mktemp("i21_ckpt")
    path = folder / "step_00000007.ckpt"
    ckpt.save(str(path), ckpt.named(net) + [(ckpt.EMA_PREFIX + n, p) for n, p in ckpt.named(ema)],
              step=7, config=cfg)
    return path


SAMPLE = ["--device_target", "CPU", "--mode", "pynative"]


def test_sample_refuses_to_replace_earlier_samples(tiny_ckpt, tmp_path):
    out = tmp_path / "s"
    r = run_cli("sample.py", "--ckpt", str(tiny_ckpt), "--num_samples", "3", "--out", str(out), *SAMPLE)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"into {out}" in r.stdout
    first = snapshot(out)
    assert sorted(first) == ["grid.png", "images/00000.png", "images/00001.png", "images/00002.png",
                             "samples.npz"]
    r = run_cli("sample.py", "--ckpt", str(tiny_ckpt), "--num_samples", "2", "--seed", "5", "--out", str(out),
                *SAMPLE)
    line = one_error_line(r)
    assert f"{out} already holds grid.png, samples.npz, images from an earlier run: pass --overwrite" in line
    assert snapshot(out) == first
    r = run_cli("sample.py", "--ckpt", str(tiny_ckpt), "--num_samples", "2", "--seed", "5", "--out", str(out),
                "--overwrite", *SAMPLE)
    assert r.returncode == 0, r.stderr[-3000:]
    second = snapshot(out)
    assert sorted(second) == ["grid.png", "images/00000.png", "images/00001.png", "samples.npz"]
    assert second["samples.npz"] != first["samples.npz"]


def test_sample_checks_the_output_folder_before_sampling(tiny_ckpt, tmp_path):
    out = tmp_path / "readonly"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    out.chmod(0o555)
    try:
        r = run_cli("sample.py", "--ckpt", str(tiny_ckpt), "--num_samples", "2", "--out", str(out), *SAMPLE)
    finally:
        out.chmod(0o755)
    line = one_error_line(r)
    assert f"cannot write to the output folder {out}" in line and "--out DIR" in line, line
    assert "[ddpm_ms] sampling" not in r.stdout  # refused before any work
    assert snapshot(out) == {"keep.txt": b"mine"}
    blocker = tmp_path / "file"
    blocker.write_text("x")
    line = one_error_line(run_cli("sample.py", "--ckpt", str(tiny_ckpt), "--out", str(blocker / "sub"), *SAMPLE))
    assert f"cannot write to the output folder {blocker / 'sub'}" in line, line


def test_sample_ctrl_c_keeps_the_batches_done(tiny_ckpt, tmp_path):
    import signal
    import time

    import numpy as np
    out = tmp_path / "s"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([PY, str(ROOT / "sample.py"), "--ckpt", str(tiny_ckpt), "--num_samples", "400",
                             "--batch_size", "2", "--sampler", "ddpm", "--out", str(out), *SAMPLE],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300
        while not (out / "samples.npz").exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert (out / "samples.npz").exists(), "no batch was written"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, (proc.returncode, err[-3000:])
    assert "Traceback" not in err
    msg = [ln for ln in err.replace("\r", "\n").splitlines() if ln.startswith("interrupted:")]
    assert len(msg) == 1 and "of 400 samples already written in " + str(out) in msg[0], err[-2000:]
    kept = int(msg[0].split("kept the ")[1].split(" of")[0])
    images = np.load(out / "samples.npz")["images"]
    assert 2 <= kept < 400 and len(images) == kept and kept % 2 == 0
    assert len(list((out / "images").glob("*.png"))) == kept


def test_sample_write_failure_says_what_was_kept(tmp_path, monkeypatch):
    import errno

    import numpy as np

    from ddpm_ms import sample_cli
    writer = sample_cli.SampleWriter(str(tmp_path), total=4, per_image=True)
    writer(0, np.zeros((2, 1, 4, 4), np.float32))
    kept = snapshot(tmp_path)

    def disk_full(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(sample_cli, "save_npz", disk_full)
    with pytest.raises(sample_cli.OutputError, match=r"cannot write samples to .*No space left on device.*"
                                                     r"first 2 of 4 samples were written"):
        writer(2, np.zeros((2, 1, 4, 4), np.float32))
    assert {k: v for k, v in snapshot(tmp_path).items() if k in kept} == kept


def test_ckpt_given_a_folder_is_one_line(tiny_ckpt, tmp_path):
    line = one_error_line(run_cli("sample.py", "--ckpt", str(tiny_ckpt.parent), "--out", str(tmp_path / "o"),
                                  *SAMPLE))
    assert f"{tiny_ckpt.parent} is a folder, not a checkpoint file: pass one of the .ckpt files in it: " \
           "step_00000007.ckpt" in line, line
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "latest.ckpt").write_bytes(b"")
    line = one_error_line(run_cli("sample.py", "--ckpt", str(tmp_path / "run"), "--out", str(tmp_path / "o"),
                                  *SAMPLE))
    assert f"is a folder, not a checkpoint file: pass {tmp_path / 'run' / 'latest.ckpt'}" in line, line
    assert not (tmp_path / "o").exists()


def test_invert_unreadable_file_names_it(tiny_ckpt, tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    import numpy as np
    from PIL import Image
    png = tmp_path / "ok.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)).save(png)
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(png.read_bytes()[:len(png.read_bytes()) // 2])
    cases = [(text, "is not a readable image (UnidentifiedImageError"),
             (truncated, "is not a readable image ("),
             (tmp_path / "missing.png", ": no such image file"),
             (tmp_path, "is a folder, not an image file")]
    for path, phrase in cases:
        line = one_error_line(run_cli("sample.py", "--ckpt", str(tiny_ckpt), "--invert", str(path),
                                      "--out", str(tmp_path / "o"), *SAMPLE))
        assert line.startswith(f"error: --invert {path}") and phrase in line, line
    assert not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------- data folders

def test_reading_a_data_set_writes_nothing_into_its_folder(fashion_mnist_dir, tmp_path):
    import shutil
    data = tmp_path / "fm"
    data.mkdir()
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        shutil.copy(fashion_mnist_dir / name, data / name)
    before = snapshot(data)
    env = {"XDG_CACHE_HOME": str(tmp_path / "xdg"), "DDPM_MS_CACHE": ""}
    r = run_cli("ddpm_ms.data", "--dataset", "fashion_mnist", "--data_dir", str(data), "--split", "test",
                "--batch_size", "4", "--download", "false", "--out", str(tmp_path / "b.png"), env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert snapshot(data) == before and sorted(p.name for p in data.iterdir()) == sorted(before)
    cached = [p for p in (tmp_path / "xdg" / "ddpm_ms" / "data").glob("fashion_mnist-idx-*")
              if not p.name.endswith(".meta")]
    assert len(cached) == 1 and (cached[0] / "t10k-images-idx3-ubyte").is_file()
    # an image folder gets no scan cache file either
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    from PIL import Image
    for i in range(4):
        Image.new("RGB", (8, 8), (i * 60, 0, 0)).save(imgs / f"{i}.png")
    before = snapshot(imgs)
    r = run_cli("ddpm_ms.data", "--dataset", "image_folder", "--data_dir", str(imgs), "--image_size", "8",
                "--channels", "3", "--batch_size", "4", "--out", str(tmp_path / "c.png"), env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert snapshot(imgs) == before and len(list(imgs.iterdir())) == 4
    assert list((tmp_path / "xdg" / "ddpm_ms" / "data").glob("scan-*.json"))


def test_sample_writer_writes_pngs_at_once_and_the_npz_now_and_then(tmp_path):
    import numpy as np

    from ddpm_ms import sample_cli
    writer = sample_cli.SampleWriter(str(tmp_path), total=6, per_image=True, flush_seconds=1e9)

    def in_npz():
        return len(np.load(tmp_path / "samples.npz")["images"])
    for start, expect in ((0, 2), (2, 2)):  # the first batch at once, then not before the timer
        writer(start, np.full((2, 1, 4, 4), start / 10, np.float32))
        assert in_npz() == expect and len(list((tmp_path / "images").glob("*.png"))) == start + 2
    writer.flush()  # what an error or Ctrl-C does
    assert in_npz() == 4
    writer(4, np.zeros((2, 1, 4, 4), np.float32))  # the last batch always
    assert in_npz() == 6 and sorted(p.name for p in (tmp_path / "images").iterdir())[-1] == "00005.png"

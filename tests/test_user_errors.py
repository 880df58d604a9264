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

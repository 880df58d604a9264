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

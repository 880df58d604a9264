"""Slow: the README's main job, end to end through the command line, on the smoke config."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_smoke_config_trains_and_samples(fashion_mnist_dir, tmp_path):
    out = tmp_path / "runs"
    r = subprocess.run([sys.executable, "train.py", "--config", "configs/fashion_mnist_smoke.yaml",
                        "--device_target", "CPU", "--data_dir", str(fashion_mnist_dir),
                        "--cache_dir", str(tmp_path / "cache"), "--output_dir", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stderr[-3000:]
    run = out / "fashion_mnist_smoke"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = np.array([row["loss"] for row in rows])
    assert rows[-1]["step"] == 200 and np.isfinite(losses).all()
    # a falling loss: the last quarter of the log is clearly below the first log lines
    assert losses[-len(losses) // 4:].mean() < 0.7 * losses[:2].mean(), losses
    for name in ("latest.ckpt", "config.yaml", "loss.png", "samples.png"):
        assert (run / name).stat().st_size > 0, name

    s = subprocess.run([sys.executable, "sample.py", "--ckpt", str(run / "latest.ckpt"), "--num_samples", "8",
                        "--steps", "10", "--seed", "1", "--device_target", "CPU", "--out", str(tmp_path / "s")],
                       cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert s.returncode == 0, s.stderr[-3000:]
    images = np.load(tmp_path / "s" / "samples.npz")["images"]
    assert images.shape == (8, 28, 28, 1) and images.dtype == np.uint8
    assert images.std() > 10  # not a blank or constant grid
    grid = Image.open(tmp_path / "s" / "grid.png")
    assert grid.size[0] > 28 and grid.size[1] > 28

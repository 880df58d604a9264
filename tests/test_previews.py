"""What the user sees while training: previews by the clock (preview_minutes, with max_minutes)
and the FID of the final grid, or one line saying why there is none."""
import json
import os

import mindspore as ms
import numpy as np
import pytest

import test_train  # noqa: E402 (sibling test module: the tiny image-folder config)
from ddpm_ms.config import resolve
from ddpm_ms.eval import feature_net as fn
from ddpm_ms.eval import metrics
from ddpm_ms.eval.grid_fid import fid_plan, grid_fid
from ddpm_ms.trainer import Trainer


def _run(cfg):
    ms.set_context(mode=ms.GRAPH_MODE)
    lines = []
    trainer = Trainer(cfg, log=lines.append)
    trainer.setup()
    trainer.run()
    return sorted(f for f in os.listdir(cfg["output_dir"] + "/run") if f.startswith("samples")), lines


@pytest.mark.parametrize("max_minutes, preview_minutes, timed", [
    (60.0, 1e-9, True),    # a clock preview is due after every step
    (0.0, 1e-9, False),    # no max_minutes: previews by steps only
    (60.0, 0.0, False),    # preview_minutes 0: off
])
def test_previews_by_the_clock_only_with_max_minutes(tiny_folder, tmp_path, max_minutes, preview_minutes, timed):
    cfg = test_train.tiny_cfg(tiny_folder, tmp_path, max_steps=3, max_minutes=max_minutes,
                              preview_minutes=preview_minutes)
    files, lines = _run(cfg)
    # the last step has the final grid (samples.png) instead of a clock preview
    assert files == (["samples.png", "samples_step00000001.png", "samples_step00000002.png"] if timed
                     else ["samples.png"])
    assert sum(line.startswith("preview at ") for line in lines) == (2 if timed else 0)
    # an RGB run without InceptionV3 weights: no FID, and one line that says why
    skipped = [line for line in lines if line.startswith("grid FID")]
    assert skipped == ["grid FID skipped: no evaluation network for dataset image_folder at 8x8x3: set "
                       "inception_ckpt (python -m ddpm_ms.eval.inception convert)"]
    assert not os.path.exists(tmp_path / "run" / "grid_fid.json")


def _fmnist_cfg(data_dir, **over):
    return resolve(base=dict(dict(dataset="fashion_mnist", data_dir=str(data_dir), num_preview=16), **over))


def test_fid_plan_says_why_not():
    assert fid_plan(_fmnist_cfg("d")) == ("the shipped Fashion-MNIST classifier", None)
    assert fid_plan(_fmnist_cfg("d", num_preview=1))[1] == "num_preview 1: FID needs at least 2 samples"
    assert fid_plan(_fmnist_cfg("d", dataset="mnist"))[1].startswith("no evaluation network for dataset mnist")
    assert fid_plan(_fmnist_cfg("d", inception_ckpt="/no/such.ckpt"))[1] == "inception_ckpt /no/such.ckpt not found"


def test_grid_fid_is_the_evaluation_fid(fashion_mnist_dir):
    """16 real training images against the test split: the same number as computing it by hand
    with the shipped classifier, and far below 16 noise images."""
    cfg = _fmnist_cfg(fashion_mnist_dir)
    train, _ = fn.load_fashion_mnist(fashion_mnist_dir, "train")
    test, _ = fn.load_fashion_mnist(fashion_mnist_dir, "test")
    real16 = train[:16, :, :, None]
    fid, sha, ref = grid_fid(real16, cfg)
    net, _ = fn.load_feature_net()
    want = metrics.fid_from_features(fn.extract_features(net, real16), fn.extract_features(net, test))
    assert fid == pytest.approx(want, rel=1e-9) and sha == fn.SHIPPED_SHA256 and ref == "fashion_mnist:test"
    noise = np.random.default_rng(0).integers(0, 256, real16.shape, dtype=np.uint8)
    assert grid_fid(noise, cfg)[0] > 2 * fid   # measured: 252 real, 711 noise


def test_score_grid_prints_and_writes_the_fid(fashion_mnist_dir, tmp_path):
    cfg = _fmnist_cfg(fashion_mnist_dir, dim=8, dim_mults=[1, 2], attn_heads=1, attn_head_dim=8,
                      output_dir=str(tmp_path), run_name="run", cache_dir=str(tmp_path / "cache"))
    lines = []
    trainer = Trainer(cfg, log=lines.append)
    images = fn.load_fashion_mnist(fashion_mnist_dir, "train")[0][:16, :, :, None]
    fid = trainer.score_grid(images)
    assert fid == pytest.approx(grid_fid(images, cfg)[0], rel=1e-9)
    assert len(lines) == 1 and lines[0].startswith(f"grid FID {fid:.2f} (16 samples of samples.png against "
                                                   "fashion_mnist:test, the shipped Fashion-MNIST classifier")
    saved = json.loads((tmp_path / "run" / "grid_fid.json").read_text())
    assert saved["fid"] == pytest.approx(fid) and saved["sha256"] == fn.SHIPPED_SHA256 and saved["num_samples"] == 16

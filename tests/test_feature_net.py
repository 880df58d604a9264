"""The shipped Fashion-MNIST classifier: the file is the one the code names, a damaged or
replaced copy is refused in one line, and the network gives the pinned features."""
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from ddpm_ms.eval import evaluate
from ddpm_ms.eval import feature_net as fn

ROOT = Path(__file__).resolve().parents[1]


def _probe_images():
    """8 fixed uint8 28x28 images (gradients and stripes), no data set needed."""
    i, j = np.meshgrid(np.arange(28), np.arange(28), indexing="ij")
    out = [(i * 9 + j * k * 3) % 256 for k in range(4)] + [((i // (k + 2) + j) % 2) * 255 for k in range(4)]
    return np.stack(out).astype(np.uint8)


def test_shipped_file_is_the_one_the_code_names():
    assert os.path.getsize(fn.SHIPPED_PATH) < 1_000_000
    assert fn.sha256_file(fn.SHIPPED_PATH) == fn.SHIPPED_SHA256
    net, info = fn.load_classifier()
    assert info["shipped"] and info["sha256"] == fn.SHIPPED_SHA256 and info["name"] == fn.NET_NAME
    assert info["test_accuracy"] == fn.SHIPPED_META["test_accuracy"]


def test_shipped_accuracy_is_the_stated_one(fashion_mnist_dir):
    """SHIPPED_META's (and README's) test accuracy is what the shipped weights score."""
    net, _ = fn.load_feature_net()
    x_test, y_test = fn.load_fashion_mnist(fashion_mnist_dir, "test")
    assert fn.accuracy(net, x_test, y_test) == pytest.approx(fn.SHIPPED_META["test_accuracy"], abs=1e-4)


def test_shipped_features_are_pinned():
    """Features and classes of fixed images, computed once with the shipped weights: a change to
    the weights, the architecture or the input scaling changes them (FIDs would not compare)."""
    net, _ = fn.load_feature_net()
    feats = fn.extract_features(net, _probe_images())
    np.testing.assert_allclose(feats.sum(1), PINNED_FEATURE_SUMS, rtol=1e-4)
    assert fn.predict(net, _probe_images()).tolist() == PINNED_CLASSES


PINNED_FEATURE_SUMS = [160.526, 171.533, 198.063, 204.659, 186.154, 190.787, 195.042, 192.36]
PINNED_CLASSES = [8, 8, 8, 5, 8, 8, 8, 8]


@pytest.mark.parametrize("damage, needle", [
    ("flip", "is damaged or was replaced: sha256"),
    ("missing", "is missing: reinstall ddpm_ms"),
])
def test_damaged_shipped_file_is_refused_in_one_line(tmp_path, monkeypatch, capsys, damage, needle):
    copy = tmp_path / "fmnist_cnn_v2.ckpt"
    if damage == "flip":
        data = bytearray(Path(fn.SHIPPED_PATH).read_bytes())
        data[len(data) // 2] ^= 1   # one bit of one weight
        copy.write_bytes(bytes(data))
    monkeypatch.setattr(fn, "SHIPPED_PATH", str(copy))
    with pytest.raises(fn.FeatureNetError, match=re.escape(needle)):
        fn.load_classifier()
    samples = tmp_path / "s.npz"
    np.savez(samples, images=_probe_images()[..., None])
    rc = evaluate.main(["--samples", str(samples), "--ref", str(samples), "--kid_subsets", "2",
                        "--kid_subset_size", "4"])
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert rc == 2 and out == "" and len(lines) == 1, err
    assert lines[0].startswith(f"error: the shipped classifier {copy} ") and needle in lines[0], err


def test_training_into_the_shipped_file_is_refused(capsys):
    assert fn.main(["--out", fn.SHIPPED_PATH]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: --out {fn.SHIPPED_PATH} is the shipped classifier; write elsewhere"]
    assert fn.sha256_file(fn.SHIPPED_PATH) == fn.SHIPPED_SHA256


def test_readme_states_the_shipped_hash_and_accuracy():
    readme = (ROOT / "README.md").read_text()
    assert f"sha256 {fn.SHIPPED_SHA256[:12]}" in readme
    assert f"test accuracy {fn.SHIPPED_META['test_accuracy']:.2%}" in readme


def test_matmul_convs_where_onednn_convs_are_slow(monkeypatch):
    """In a process that left oneDNN uncapped (a matmul-conv training run scoring its final grid),
    the classifier computes its convs as matmuls; the features stay the pinned ones."""
    from ddpm_ms import cpu_env
    from ddpm_ms.convs import MatmulConv2d
    monkeypatch.setattr(cpu_env, "onednn_convs_slow", lambda *a, **k: True)
    net, _ = fn.load_feature_net()
    convs = [c for c in net.body if "Conv" in type(c).__name__]
    assert len(convs) == 3 and all(isinstance(c, MatmulConv2d) for c in convs)
    np.testing.assert_allclose(fn.extract_features(net, _probe_images()).sum(1), PINNED_FEATURE_SUMS, rtol=1e-4)

"""Feature net (IDX loading, checkpoint round trip) and the evaluate CLI.

Fast tests use a randomly initialised classifier; the slow test loads the shipped one and
checks that FID separates real images from noise.
"""
import gzip
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import mindspore as ms
import numpy as np
import pytest

from ddpm_ms.eval import evaluate, metrics
from ddpm_ms.data import DataError, read_idx
from ddpm_ms.eval import feature_net as fn

ROOT = Path(__file__).resolve().parents[1]
KEYS = {"fid", "kid_mean", "kid_std", "precision", "recall", "density", "coverage", "num_samples", "num_ref",
        "feature_net"}


def _write_idx(path, arr, magic):
    header = magic.to_bytes(4, "big") + b"".join(int(s).to_bytes(4, "big") for s in arr.shape)
    data = header + arr.astype(np.uint8).tobytes()
    if str(path).endswith(".gz"):
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        Path(path).write_bytes(data)


def _npz(path, images):
    np.savez(path, images=images)
    return str(path)


@pytest.fixture(scope="module")
def random_classifier(tmp_path_factory):
    ms.set_seed(0)
    path = tmp_path_factory.mktemp("clf") / "random.ckpt"
    fn.save_feature_net(fn.FashionCNN(), path, {"test_accuracy": None, "note": "random init"})
    return str(path)


@pytest.fixture(scope="module")
def tiny_sets(tmp_path_factory):
    d = tmp_path_factory.mktemp("npz")
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (24, 28, 28, 1), dtype=np.uint8)
    b = (rng.random((24, 28, 28, 1)) * 128).astype(np.uint8)
    return _npz(d / "a.npz", a), _npz(d / "b.npz", b)


def _run(capsys, *argv):
    rc = evaluate.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


# --------------------------------------------------------------------------- IDX + checkpoint

def test_read_idx_gz_and_raw(tmp_path):
    imgs = np.arange(2 * 3 * 4).reshape(2, 3, 4) % 256
    labels = np.array([7, 1, 9])
    _write_idx(tmp_path / "x-images-idx3-ubyte.gz", imgs, 2051)
    _write_idx(tmp_path / "y-labels-idx1-ubyte", labels, 2049)
    np.testing.assert_array_equal(read_idx(tmp_path / "x-images-idx3-ubyte.gz"), imgs)
    np.testing.assert_array_equal(read_idx(tmp_path / "x-images-idx3-ubyte"), imgs)  # finds .gz
    np.testing.assert_array_equal(read_idx(tmp_path / "y-labels-idx1-ubyte.gz"), labels)  # finds raw
    _write_idx(tmp_path / "bad.gz", labels, 1234)
    with pytest.raises(DataError, match="magic 1234"):
        read_idx(tmp_path / "bad.gz")
    (tmp_path / "short").write_bytes(2051 .to_bytes(4, "big") + b"\0\0\0\x05\0\0\0\x02\0\0\0\x02" + b"\0" * 3)
    with pytest.raises(DataError, match="truncated"):
        read_idx(tmp_path / "short")


def test_feature_net_shapes_and_checkpoint_round_trip(tmp_path, random_classifier):
    net, sha = fn.load_feature_net(random_classifier)
    assert sha == fn.sha256_file(random_classifier) == fn.read_meta(random_classifier)["sha256"]
    images = np.random.default_rng(1).integers(0, 256, (5, 28, 28, 1), dtype=np.uint8)
    feats = fn.extract_features(net, images, batch_size=2)
    assert feats.shape == (5, fn.FEATURE_DIM) and np.all(np.isfinite(feats)) and np.all(feats >= 0)
    again, _ = fn.load_feature_net(random_classifier)
    np.testing.assert_allclose(fn.extract_features(again, images), feats, rtol=1e-5, atol=1e-6)
    assert fn.predict(net, images).shape == (5,)

    tampered = tmp_path / "t.ckpt"
    tampered.write_bytes(Path(random_classifier).read_bytes()[:-1] + b"\x01")
    (tmp_path / "t.ckpt.json").write_text(Path(random_classifier + ".json").read_text())
    with pytest.raises(fn.FeatureNetError, match="does not match"):
        fn.load_feature_net(tampered)
    with pytest.raises(fn.FeatureNetError, match="not found"):
        fn.load_feature_net(tmp_path / "missing.ckpt")


def test_images_to_input_range():
    x = fn.images_to_input(np.array([[[0, 255]]], dtype=np.uint8))
    assert x.shape == (1, 1, 1, 2) and x.dtype == np.float32
    np.testing.assert_allclose(x.ravel(), [-1.0, 1.0])


def test_load_fashion_mnist_test_split(fashion_mnist_dir):
    images, labels = fn.load_fashion_mnist(fashion_mnist_dir, "test")
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [1000] * 10


# --------------------------------------------------------------------------- evaluate CLI

def test_cli_two_npz(capsys, random_classifier, tiny_sets):
    a, b = tiny_sets
    rc, out, err = _run(capsys, "--samples", a, "--ref", b, "--classifier", random_classifier,
                        "--kid_subsets", 5)
    assert rc == 0, err
    res = json.loads(out)
    assert KEYS <= set(res)
    for k in ("fid", "kid_mean", "kid_std", "precision", "recall", "density", "coverage"):
        assert math.isfinite(res[k])
    assert res["num_samples"] == 24 and res["num_ref"] == 24 and res["fid"] > 0
    assert res["feature_net"]["sha256"] == fn.sha256_file(random_classifier)
    assert {"name", "sha256", "test_accuracy"} <= set(res["feature_net"])

    rc, out, _ = _run(capsys, "--samples", a, "--ref", a, "--classifier", random_classifier, "--kid_subsets", 5)
    same = json.loads(out)
    assert rc == 0 and same["fid"] == pytest.approx(0, abs=1e-6)
    assert same["precision"] == 1.0 and same["recall"] == 1.0 and same["coverage"] == 1.0


def _fid_by_eigvals(f1, f2):
    """FID written independently of metrics.py: tr sqrt(S1 S2) as the sum of the square roots of
    the eigenvalues of the (non-symmetric) product S1 S2, which are real and >= 0 because S1 S2 is
    similar to the PSD sqrt(S1) S2 sqrt(S1); float64 throughout."""
    m1, m2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    ev = np.linalg.eigvals(s1 @ s2)
    assert np.abs(ev.imag).max() <= 1e-9 * np.abs(ev).max()
    return ((m1 - m2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(np.clip(ev.real, 0, None)).sum()


def test_cli_fid_equals_independent_formula(capsys, tmp_path, random_classifier):
    """The CLI's FID (and its mean/covariance path) equals FID computed here from the same
    classifier's features; more images than feature dimensions, so covariances are not tiny-rank."""
    rng = np.random.default_rng(5)
    a = rng.integers(0, 256, (200, 28, 28, 1), dtype=np.uint8)
    b = (rng.random((150, 28, 28, 1)) * 128).astype(np.uint8)
    rc, out, err = _run(capsys, "--samples", _npz(tmp_path / "a.npz", a), "--ref", _npz(tmp_path / "b.npz", b),
                        "--classifier", random_classifier, "--kid_subsets", 2)
    assert rc == 0, err
    net, _ = fn.load_feature_net(random_classifier)
    fa, fb = fn.extract_features(net, a), fn.extract_features(net, b)
    want = _fid_by_eigvals(fa, fb)
    assert want > 1e-3 and json.loads(out)["fid"] == pytest.approx(want, rel=1e-6)
    # the same images in another order, and the two sets swapped, give the same FID
    assert _fid_by_eigvals(fb, fa[::-1]) == pytest.approx(want, rel=1e-6)


def test_evaluate_images_fid_hand_computed():
    """Four points (+-a, 0), (0, +-b) around mu have mean mu and covariance diag(2a^2, 2b^2) / 3
    (1/(N-1)), so two such sets, rotated alike into 3-D, have
    FID = |mu1 - mu2|^2 + 2/3 ((a1 - a2)^2 + (b1 - b2)^2)."""
    def cross(a, b, mu):
        return np.array([[a, 0], [-a, 0], [0, b], [0, -b]], np.float64) + mu

    rot, _ = np.linalg.qr(np.random.default_rng(6).standard_normal((3, 3)))
    embed = lambda f: np.pad(f, ((0, 0), (0, 1))) @ rot.T        # noqa: E731
    fake, real = embed(cross(3.0, 1.0, [1.0, 2.0])), embed(cross(1.0, 2.0, [0.0, 0.0]))
    res = evaluate.evaluate_images(fake, real, kid_subsets=2, kid_subset_size=4, k=1)
    want = (1 + 4) + 2 / 3 * ((3 - 1) ** 2 + (1 - 2) ** 2)     # = 25/3
    # rel 1e-7, not 1e-15: the third, empty direction leaves rounding-size eigenvalues (~1e-16)
    # whose square roots (~1e-8) enter tr sqrt(S1 S2)
    assert res["fid"] == pytest.approx(want, rel=1e-7)
    assert evaluate.evaluate_images(real, real, kid_subsets=2, kid_subset_size=4, k=1)["fid"] == \
        pytest.approx(0.0, abs=1e-9)


def test_cli_fashion_mnist_reference(capsys, random_classifier, tiny_sets, fashion_mnist_dir):
    rc, out, err = _run(capsys, "--samples", tiny_sets[0], "--ref", "fashion_mnist", "--data_dir",
                        fashion_mnist_dir, "--num_ref", 100, "--classifier", random_classifier,
                        "--kid_subsets", 5)
    assert rc == 0, err
    res = json.loads(out)
    assert res["num_ref"] == 100 and res["ref"] == "fashion_mnist:test" and math.isfinite(res["fid"])
    # the class histogram is the classifier's predictions on the samples, counted
    net, _meta = fn.load_feature_net(random_classifier)
    predicted = fn.predict(net, np.load(tiny_sets[0])["images"])
    want = np.bincount(predicted, minlength=10) / len(predicted)
    np.testing.assert_allclose(list(res["class_fractions"].values()), want)
    assert res["min_class_fraction"] == pytest.approx(want.min())


@pytest.mark.parametrize("case, needle", [
    ("missing_samples", "samples file not found"),
    ("float_images", "must be uint8"),
    ("three_dims", "must be uint8 (N, H, W, C)"),
    ("no_images_key", "no 'images' array"),
    ("wrong_size", "needs 28x28x1"),
    ("missing_data_dir", "Fashion-MNIST folder not found"),
    ("unknown_ref", "--ref must be one of"),
    ("rgb_no_inception", "RGB FID needs --inception_ckpt"),
    ("rgb_bad_inception", "as a MindSpore checkpoint"),
    ("rgb_missing_inception", "InceptionV3 checkpoint not found"),
    ("cifar_missing", "CIFAR-10 batch not found"),
    ("folder_missing", "image folder not found"),
])
def test_cli_one_line_errors(capsys, tmp_path, random_classifier, tiny_sets, case, needle):
    good = tiny_sets[0]
    u8 = np.zeros((4, 28, 28, 1), np.uint8)
    fake_ckpt = tmp_path / "inception.ckpt"
    fake_ckpt.write_bytes(b"x")
    argv = {
        "missing_samples": ["--samples", tmp_path / "nope.npz"],
        "float_images": ["--samples", _npz(tmp_path / "f.npz", u8.astype(np.float32))],
        "three_dims": ["--samples", _npz(tmp_path / "t.npz", u8[..., 0])],
        "no_images_key": ["--samples", str(np.savez(tmp_path / "k.npz", x=u8) or tmp_path / "k.npz")],
        "wrong_size": ["--samples", _npz(tmp_path / "w.npz", np.zeros((4, 32, 32, 1), np.uint8)), "--ref", good],
        "missing_data_dir": ["--samples", good, "--data_dir", tmp_path / "no_such_dir"],
        "unknown_ref": ["--samples", good, "--ref", "imagenet"],
        "rgb_no_inception": ["--samples", _npz(tmp_path / "rgb.npz", np.zeros((4, 32, 32, 3), np.uint8))],
        "rgb_bad_inception": ["--samples", good, "--ref", good, "--inception_ckpt", fake_ckpt],
        "rgb_missing_inception": ["--samples", good, "--ref", good, "--inception_ckpt", tmp_path / "no.ckpt"],
        "cifar_missing": ["--samples", good, "--ref", "cifar10", "--data_dir", tmp_path, "--inception_ckpt",
                          fake_ckpt],
        "folder_missing": ["--samples", good, "--ref", "image_folder", "--data_dir", tmp_path / "nope",
                           "--inception_ckpt", fake_ckpt],
    }[case]
    rc, out, err = _run(capsys, *argv, "--classifier", random_classifier)
    assert rc == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], err


def test_cli_subprocess_error_and_help(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-m", "ddpm_ms.eval.evaluate", "--samples", str(tmp_path / "x.npz")],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [f"error: samples file not found: {tmp_path / 'x.npz'}"]
    r = subprocess.run([sys.executable, "-m", "ddpm_ms.eval.evaluate", "--help"],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert r.returncode == 0 and "checked by SHA-256" in " ".join(r.stdout.split()) and "--inception_ckpt" in r.stdout


# --------------------------------------------------------------------------- real classifier

@pytest.mark.slow
def test_shipped_classifier_fid_separation(fashion_mnist_dir):
    net, _ = fn.load_classifier()   # its accuracy: tests/test_feature_net.py
    x_test, _ = fn.load_fashion_mnist(fashion_mnist_dir, "test")
    x_train, _ = fn.load_fashion_mnist(fashion_mnist_dir, "train")
    rng = np.random.default_rng(0)
    train_f = fn.extract_features(net, x_train[rng.choice(len(x_train), 2000, replace=False)])
    test_f = fn.extract_features(net, x_test[rng.choice(len(x_test), 2000, replace=False)])
    noise_f = fn.extract_features(net, rng.integers(0, 256, (2000, 28, 28), dtype=np.uint8))
    fid_real = metrics.fid_from_features(train_f, test_f)
    fid_noise = metrics.fid_from_features(noise_f, test_f)
    pr_real, pr_noise = metrics.precision_recall(test_f, train_f), metrics.precision_recall(test_f, noise_f)
    dc_real, dc_noise = metrics.density_coverage(test_f, train_f), metrics.density_coverage(test_f, noise_f)
    print(f"FID(train, test) {fid_real:.3f}, FID(noise, test) {fid_noise:.3f}, "
          f"P/R/D/C real {pr_real + dc_real}, noise {pr_noise + dc_noise}")
    assert fid_noise > 10 * fid_real
    assert min(pr_real) > 0.6 and dc_real[1] > 0.6
    # Noise precision is NOT checked: one outlying real image can cover the whole noise
    # cluster (see ddpm_ms.eval.evaluate's docstring). Recall and coverage are robust.
    assert pr_noise[1] < 0.1 and dc_noise[1] < 0.05


def test_class_fractions_count_each_class():
    """Hand-counted: 6 samples over 4 classes, class 3 never predicted."""
    fractions = evaluate.class_fractions([0, 2, 2, 1, 0, 2], 4)
    assert fractions == [2 / 6, 1 / 6, 3 / 6, 0.0]
    assert len(evaluate.FASHION_CLASSES) == 10

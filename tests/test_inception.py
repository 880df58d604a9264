"""FID InceptionV3 (ddpm_ms.eval.inception): layers against numpy references, the pytorch-fid name
conversion, checkpoint errors, and the evaluate CLI on RGB data with random weights.

The whole network against pytorch-fid itself (random weights, same images) is checked by
bench/check_inception.py, which needs torch + torchvision; see BENCHMARKS.md.
"""
import json
import math

import mindspore as ms
import numpy as np
import pytest

from conftest import DATA_ROOT
from ddpm_ms.data import read_cifar10
from ddpm_ms.eval import evaluate
from ddpm_ms.eval import inception as inc
from ddpm_ms.eval.feature_net import sha256_file

RNG = np.random.default_rng(0)


def _np_pool3x3(x, reduce):
    """3x3 stride-1 pool over the valid neighbours of each pixel (padding never counted)."""
    n, c, h, w = x.shape
    out = np.empty_like(x)
    for i in range(h):
        for j in range(w):
            win = x[:, :, max(i - 1, 0):i + 2, max(j - 1, 0):j + 2]
            out[:, :, i, j] = reduce(win, axis=(2, 3))
    return out


def test_avg_pool_does_not_count_padding():
    x = RNG.normal(size=(2, 3, 5, 6)).astype(np.float32)
    got = inc.AvgPool3x3NoPad()(ms.Tensor(x)).asnumpy()
    np.testing.assert_allclose(got, _np_pool3x3(x, np.mean), atol=1e-6)
    # corner: 4 real pixels, not 9
    assert got[0, 0, 0, 0] == pytest.approx(x[0, 0, :2, :2].mean(), abs=1e-6)


def test_max_pool_same_on_relu_output():
    x = np.maximum(RNG.normal(size=(2, 3, 5, 4)), 0).astype(np.float32)
    got = inc.MaxPool3x3Same()(ms.Tensor(x)).asnumpy()
    np.testing.assert_array_equal(got, _np_pool3x3(x, np.max))


def test_resize_matches_half_pixel_bilinear():
    x = RNG.random((1, 3, 32, 20)).astype(np.float32)
    got = ms.ops.interpolate(ms.Tensor(x), size=(299, 299), mode="bilinear", align_corners=False).asnumpy()
    ref = inc.resize_bilinear_np(x.astype(np.float64), 299)
    np.testing.assert_allclose(got, ref, atol=1e-5)
    # the reference itself: a constant image stays constant, corners copy the corner pixels
    np.testing.assert_allclose(inc.resize_bilinear_np(np.full((1, 1, 7, 9), 3.0), 299), 3.0)
    assert ref[0, 0, 0, 0] == pytest.approx(x[0, 0, 0, 0])


def _ms_to_torch_name(name):
    back = {v: k for k, v in inc._BN_RENAME.items()}
    parts = name.split(".")
    if parts[-2] == "bn":
        parts[-1] = back[parts[-1]]
    return ".".join(parts)


@pytest.fixture(scope="module")
def he_arrays():
    """Random weights that keep activations O(1) through the depth: He-normal convs,
    batch norms with random affine and moving statistics."""
    rng = np.random.default_rng(1)
    arrays = {}
    for p in inc.FIDInceptionV3().get_parameters():
        shape, leaf = tuple(p.shape), p.name.split(".")[-1]
        if leaf == "weight":
            fan_in = int(np.prod(shape[1:]))
            arrays[p.name] = rng.normal(0, math.sqrt(2.0 / fan_in), shape)
        elif leaf == "gamma":
            arrays[p.name] = rng.uniform(0.5, 1.5, shape)
        elif leaf in ("beta", "moving_mean"):
            arrays[p.name] = rng.normal(0, 0.1, shape)
        else:  # moving_variance
            arrays[p.name] = rng.uniform(0.5, 1.5, shape)
    return {k: v.astype(np.float32) for k, v in arrays.items()}


@pytest.fixture(scope="module")
def he_ckpt(he_arrays, tmp_path_factory):
    path = tmp_path_factory.mktemp("inception") / "inception_fid.ckpt"
    return str(inc.write_checkpoint(he_arrays, str(path)))


def test_torch_names_convert_and_round_trip(he_arrays, he_ckpt, tmp_path):
    torch_state = {_ms_to_torch_name(k): v for k, v in he_arrays.items()}
    assert "Mixed_6b.branch7x7_2.bn.running_var" in torch_state and len(torch_state) == len(he_arrays)
    # what a torchvision / pytorch-fid state dict holds besides: classifier, aux head, BN counters
    torch_state.update({"fc.weight": np.zeros((1008, 2048)), "fc.bias": np.zeros(1008),
                        "AuxLogits.conv0.conv.weight": np.zeros((128, 768, 1, 1)),
                        "Conv2d_1a_3x3.bn.num_batches_tracked": np.array(0)})
    converted = inc.convert_state_dict(torch_state)
    assert set(converted) == set(he_arrays)
    out = inc.write_checkpoint(converted, str(tmp_path / "c.ckpt"))
    net, sha = inc.load_inception(out)
    for p in net.get_parameters():
        np.testing.assert_array_equal(p.asnumpy(), he_arrays[p.name])
    assert sha == sha256_file(he_ckpt)  # same content, same bytes
    assert not list(tmp_path.glob("*.tmp*"))


def test_write_checkpoint_refuses_wrong_shapes_and_missing(he_arrays, tmp_path):
    bad = dict(he_arrays)
    bad["Mixed_7c.branch1x1.conv.weight"] = np.zeros((320, 2048, 3, 3), np.float32)
    with pytest.raises(inc.InceptionError, match=r"Mixed_7c.branch1x1.conv.weight has shape \(320, 2048, 3, 3\)"):
        inc.write_checkpoint(bad, str(tmp_path / "x.ckpt"))
    partial = {k: v for k, v in he_arrays.items() if not k.startswith("Mixed_5b")}
    with pytest.raises(inc.InceptionError, match="parameters missing"):
        inc.write_checkpoint(partial, str(tmp_path / "y.ckpt"))
    assert not list(tmp_path.iterdir())


def test_load_inception_errors(tmp_path, he_arrays):
    with pytest.raises(inc.InceptionError, match="InceptionV3 checkpoint not found"):
        inc.load_inception(str(tmp_path / "none.ckpt"))
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(inc.InceptionError, match="cannot read .* as a MindSpore checkpoint"):
        inc.load_inception(str(junk))
    other = tmp_path / "other.ckpt"
    ms.save_checkpoint([{"name": "conv.weight", "data": ms.Tensor(np.zeros((2, 2), np.float32))}], str(other))
    with pytest.raises(inc.InceptionError, match="is not an FID InceptionV3 checkpoint"):
        inc.load_inception(str(other))


def test_features_gray_equals_repeated_rgb(he_ckpt):
    net, _ = inc.load_inception(he_ckpt)
    gray = RNG.integers(0, 256, (2, 28, 28, 1), dtype=np.uint8)
    f1 = inc.inception_features(net, gray)
    f3 = inc.inception_features(net, np.repeat(gray, 3, axis=-1), batch_size=1)
    assert f1.shape == (2, 2048) and np.isfinite(f1).all() and f1.std() > 1e-3
    np.testing.assert_allclose(f1, f3, rtol=1e-4, atol=1e-5)
    assert np.abs(f1[0] - f1[1]).max() > 1e-3  # different images, different features
    with pytest.raises(inc.InceptionError, match="need uint8 images"):
        inc.inception_features(net, gray.astype(np.float32))


def _npz(path, images):
    np.savez(path, images=images)
    return str(path)


def _fid_low_rank(f1, f2):
    """FID for fewer images than dimensions, written without any D x D matrix function.

    With centred features X1 (N1, D), X2 (N2, D): S_i = X_i^T X_i / (N_i - 1), so tr S_i =
    |X_i|_F^2 / (N_i - 1), and the non-zero eigenvalues of S1 S2 are the squared singular values of
    X1 X2^T / sqrt((N1 - 1)(N2 - 1)); hence tr sqrt(S1 S2) is that matrix's nuclear norm."""
    x1, x2 = f1 - f1.mean(0), f2 - f2.mean(0)
    n1, n2 = len(f1) - 1, len(f2) - 1
    nuclear = np.linalg.svd(x1 @ x2.T, compute_uv=False).sum() / math.sqrt(n1 * n2)
    mean_term = ((f1.mean(0) - f2.mean(0)) ** 2).sum()
    return mean_term + (x1 ** 2).sum() / n1 + (x2 ** 2).sum() / n2 - 2 * nuclear


def test_evaluate_cli_rgb_fid_equals_independent_formula(capsys, tmp_path, he_ckpt, monkeypatch):
    """The CLI's RGB FID equals the low-rank closed form on the InceptionV3 pool3 features it
    extracted (caught on their way; features themselves: test_features_gray_equals_repeated_rgb)."""
    rng = np.random.default_rng(8)
    a = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    b = np.clip(rng.normal(100, 40, (3, 32, 32, 3)), 0, 255).astype(np.uint8)
    seen, real_features = [], inc.inception_features

    def spy(net, images, batch_size=50):
        seen.append((images, real_features(net, images, batch_size)))
        return seen[-1][1]
    monkeypatch.setattr(inc, "inception_features", spy)
    argv = ["--samples", _npz(tmp_path / "a.npz", a), "--ref", _npz(tmp_path / "b.npz", b),
            "--inception_ckpt", he_ckpt, "--kid_subsets", "2", "--k", "2", "--batch_size", "4"]
    assert evaluate.main(argv) == 0
    res = json.loads(capsys.readouterr().out)
    (ia, fa), (ib, fb) = seen
    np.testing.assert_array_equal(ia, a)
    np.testing.assert_array_equal(ib, b)
    assert fa.shape == (4, 2048) and fb.shape == (3, 2048)
    want = _fid_low_rank(fa.astype(np.float64), fb.astype(np.float64))
    assert want > 1e-3 and res["fid"] == pytest.approx(want, rel=1e-6)
    assert _fid_low_rank(fa.astype(np.float64), fa.astype(np.float64)) == pytest.approx(0, abs=1e-9 * want)


def test_evaluate_cli_rgb_against_cifar10(capsys, tmp_path, he_ckpt):
    cifar = DATA_ROOT / "cifar10-bin" / "cifar-10-batches-bin"
    if not (cifar / "test_batch.bin").is_file():
        pytest.skip(f"CIFAR-10 binary batch not found under {cifar}")
    real = read_cifar10(str(cifar))
    assert real.shape == (10000, 32, 32, 3)
    # record 0 of test_batch.bin by hand: label byte, then 1024 R, 1024 G, 1024 B bytes
    raw = np.fromfile(cifar / "test_batch.bin", dtype=np.uint8, count=3073)
    np.testing.assert_array_equal(real[0, :, :, 1], raw[1025:2049].reshape(32, 32))
    fake = _npz(tmp_path / "fake.npz", RNG.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8))
    same = _npz(tmp_path / "same.npz", real[:4])
    args = ["--ref", "cifar10", "--data_dir", str(cifar.parent), "--num_ref", "4", "--inception_ckpt", he_ckpt,
            "--kid_subsets", "3", "--k", "2", "--batch_size", "4"]
    assert evaluate.main(["--samples", fake] + args) == 0
    noise = json.loads(capsys.readouterr().out)
    assert noise["ref"] == "cifar10:test" and noise["num_ref"] == 4
    assert noise["feature_net"]["sha256"] == sha256_file(he_ckpt) and noise["fid"] > 0
    # 4 real images score below 4 noise images against 4 other real ones
    assert evaluate.main(["--samples", same] + args) == 0
    real_res = json.loads(capsys.readouterr().out)
    assert math.isfinite(real_res["fid"]) and real_res["fid"] < noise["fid"]


def test_matmul_convs_where_onednn_convs_are_slow(he_ckpt, monkeypatch):
    """In a process that left oneDNN uncapped (a matmul-conv RGB training run scoring its final
    grid), every one of InceptionV3's convs is a MatmulConv2d with the same parameter names, and
    the features are those of the native convs; the next build is native again."""
    from ddpm_ms import cpu_env
    from ddpm_ms.convs import MatmulConv2d
    images = RNG.integers(0, 256, (2, 20, 20, 3), dtype=np.uint8)
    native, _ = inc.load_inception(he_ckpt)
    monkeypatch.setattr(cpu_env, "onednn_convs_slow", lambda *a, **k: True)
    matmul, _ = inc.load_inception(he_ckpt)
    convs = [c for _, c in matmul.cells_and_names() if isinstance(c, inc.BasicConv2d)]
    assert len(convs) == 94 and all(isinstance(c.conv, MatmulConv2d) for c in convs)
    assert [p.name for p in matmul.get_parameters()] == [p.name for p in native.get_parameters()]
    f_native, f_matmul = inc.inception_features(native, images), inc.inception_features(matmul, images)
    assert f_native.std() > 1e-3
    np.testing.assert_allclose(f_matmul, f_native, rtol=1e-4, atol=1e-5)
    monkeypatch.setattr(cpu_env, "onednn_convs_slow", lambda *a, **k: False)
    assert not any(isinstance(c, MatmulConv2d) for _, c in inc.FIDInceptionV3().cells_and_names())

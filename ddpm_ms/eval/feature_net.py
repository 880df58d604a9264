"""A small Fashion-MNIST classifier whose penultimate layer is the feature space for FID.

InceptionV3 (the usual FID network) was trained on ImageNet photos and is a poor judge of
28x28 grayscale clothes, so for Fashion-MNIST we train our own CNN once and cache it:

    conv3x3(32)-BN-ReLU-maxpool2 -> conv3x3(64)-BN-ReLU-maxpool2 -> conv3x3(128)-BN-ReLU
    -> flatten (128*7*7) -> dense 128-ReLU  [features, 128-d] -> dense 10 [logits]

Input: float32 (B, 1, 28, 28) in [-1, 1] (the diffusion model's range). The pools sit before
the wide convs so one epoch costs a few minutes on two CPU cores.

Train and cache (default ``$DDPM_MS_CACHE/fmnist_classifier.ckpt``, else
``~/.cache/ddpm_ms/fmnist_classifier.ckpt``)::

    python -m ddpm_ms.eval.feature_net --data_dir data/fashion-mnist [--out PATH] [--epochs 2]

Beside the checkpoint, ``<ckpt>.json`` records the test accuracy, epochs, seed and the
checkpoint's SHA-256; ``load_feature_net`` refuses a checkpoint that does not match it.
FID values are only comparable between runs that report the same ``sha256``.
"""
import argparse
import hashlib
import json
import math
import os
import sys
import time

import numpy as np

from ..cpu_env import apply_cpu_env
from ..runtime import DEVICE_TARGETS
from ..data.sources import IDX_PREFIX, read_idx

apply_cpu_env(verbose=False)  # before MindSpore is imported (idempotent)

import mindspore as ms  # noqa: E402
from mindspore import nn  # noqa: E402

__all__ = ["FeatureNetError", "FashionCNN", "NET_NAME", "FEATURE_DIM", 
           "load_fashion_mnist", "images_to_input", "extract_features", "predict", "accuracy",
           "train_classifier", "save_feature_net", "load_feature_net", "read_meta",
           "default_classifier_path", "sha256_file"]

NET_NAME = "fmnist_cnn_v1"   # bump when the architecture or input convention changes
FEATURE_DIM = 128


class FeatureNetError(Exception):
    """Missing/invalid data or checkpoint; the message is one line saying what to do."""


def _conv(cin, cout):
    # MindSpore's Conv2d defaults to pad_mode='same' without bias; be explicit.
    return nn.Conv2d(cin, cout, 3, pad_mode="pad", padding=1, has_bias=True)


class FashionCNN(nn.Cell):
    """Classifier for (B, 1, 28, 28) float32 in [-1, 1]; ``features`` gives (B, 128)."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.body = nn.SequentialCell([
            _conv(1, 32), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2, 2),     # 14x14
            _conv(32, 64), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2, 2),    # 7x7
            _conv(64, 128), nn.BatchNorm2d(128), nn.ReLU(),
            nn.Flatten(), nn.Dense(128 * 7 * 7, FEATURE_DIM), nn.ReLU(),
        ])
        self.head = nn.Dense(FEATURE_DIM, num_classes)

    def features(self, x):
        """Penultimate activations (B, 128), post-ReLU: the FID feature space."""
        return self.body(x)

    def construct(self, x):
        """Logits (B, num_classes)."""
        return self.head(self.body(x))


# --------------------------------------------------------------------------- data

def load_fashion_mnist(data_dir, split="test"):
    """Images (N, 28, 28) uint8 and labels (N,) uint8 of one split ('train' or 'test')
    from the official IDX files (``.gz`` or decompressed) in ``data_dir``."""
    if split not in IDX_PREFIX:
        raise FeatureNetError(f"split must be 'train' or 'test', got {split!r}")
    if not os.path.isdir(data_dir):
        raise FeatureNetError(f"Fashion-MNIST folder not found: {data_dir} (pass --data_dir DIR "
                              f"holding the official *-idx?-ubyte.gz files)")
    prefix = os.path.join(data_dir, IDX_PREFIX[split])
    images = read_idx(prefix + "-images-idx3-ubyte.gz")
    labels = read_idx(prefix + "-labels-idx1-ubyte.gz")
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise FeatureNetError(f"Fashion-MNIST {split} files in {data_dir} disagree: images "
                              f"{images.shape}, labels {labels.shape}")
    return images, labels


def images_to_input(images):
    """uint8 (N, H, W) or (N, H, W, 1) -> float32 (N, 1, H, W) in [-1, 1] (x / 127.5 - 1)."""
    images = np.asarray(images)
    if images.ndim == 4:
        images = images[..., 0]
    return (images.astype(np.float32) / 127.5 - 1.0)[:, None]


# --------------------------------------------------------------------------- inference

def extract_features(net, images, batch_size=500):
    """Penultimate features (N, 128) float64 of uint8 images (N, 28, 28[, 1]), eval mode."""
    net.set_train(False)
    x = images_to_input(images)
    out = [net.features(ms.Tensor(x[i:i + batch_size])).asnumpy() for i in range(0, len(x), batch_size)]
    return np.concatenate(out, 0).astype(np.float64)


def predict(net, images, batch_size=500):
    """Predicted class (N,) int of uint8 images (N, 28, 28[, 1]), eval mode."""
    net.set_train(False)
    x = images_to_input(images)
    out = [net(ms.Tensor(x[i:i + batch_size])).asnumpy().argmax(1) for i in range(0, len(x), batch_size)]
    return np.concatenate(out, 0)


def accuracy(net, images, labels, batch_size=500):
    """Top-1 accuracy in [0, 1]."""
    return float((predict(net, images, batch_size) == np.asarray(labels)).mean())


# --------------------------------------------------------------------------- checkpoint

def default_classifier_path():
    """``$DDPM_MS_CACHE/fmnist_classifier.ckpt``, else ``~/.cache/ddpm_ms/fmnist_classifier.ckpt``."""
    root = os.environ.get("DDPM_MS_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "ddpm_ms")
    return os.path.join(root, "fmnist_classifier.ckpt")


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _meta_path(ckpt_path):
    return str(ckpt_path) + ".json"


def save_feature_net(net, path, meta=None):
    """Write the checkpoint and ``<path>.json`` (meta + name + sha256), each atomically
    (temp file, then ``os.replace``). Returns the metadata dict."""
    path = os.path.abspath(os.path.expanduser(str(path)))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}.ckpt"   # MindSpore wants a .ckpt suffix
    tmp_json = f"{_meta_path(path)}.tmp{os.getpid()}"
    try:
        ms.save_checkpoint(net, tmp)
        meta = dict(meta or {}, name=NET_NAME, feature_dim=FEATURE_DIM, sha256=sha256_file(tmp))
        with open(tmp_json, "w") as f:
            json.dump(meta, f, indent=2, sort_keys=True)
        # json first: a reader that sees the new checkpoint also sees its hash.
        os.replace(tmp_json, _meta_path(path))
        os.replace(tmp, path)
    finally:
        for p in (tmp, tmp_json):
            if os.path.exists(p):
                os.remove(p)
    return meta


def read_meta(path):
    """The JSON metadata saved beside checkpoint ``path``."""
    meta_path = _meta_path(path)
    try:
        with open(meta_path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise FeatureNetError(f"{meta_path} is missing; retrain with python -m ddpm_ms.eval.feature_net") from None
    except (OSError, ValueError) as e:
        raise FeatureNetError(f"cannot read {meta_path}: {e}") from None


def load_feature_net(path):
    """Rebuild the classifier from ``path`` after checking its SHA-256 and name against
    ``<path>.json``. Returns (net in eval mode, sha256 hex string)."""
    path = os.path.expanduser(str(path))
    if not os.path.isfile(path):
        raise FeatureNetError(f"classifier checkpoint not found: {path} "
                              f"(train it: python -m ddpm_ms.eval.feature_net --out {path})")
    meta = read_meta(path)
    digest = sha256_file(path)
    if meta.get("sha256") != digest:
        raise FeatureNetError(f"{path} does not match {_meta_path(path)} (sha256 {digest[:12]}... vs "
                              f"{str(meta.get('sha256'))[:12]}...); retrain with python -m ddpm_ms.eval.feature_net")
    if meta.get("name") != NET_NAME:
        raise FeatureNetError(f"{path} holds {meta.get('name')!r}, this code needs {NET_NAME!r}; retrain it")
    net = FashionCNN()
    try:
        params = ms.load_checkpoint(path)
    except Exception as e:  # MindSpore raises ValueError/RuntimeError for corrupt files
        raise FeatureNetError(f"cannot load {path}: {str(e).splitlines()[0] if str(e) else e}") from None
    not_loaded, _ = ms.load_param_into_net(net, params)
    if not_loaded:
        raise FeatureNetError(f"{path} lacks parameters {not_loaded[:3]}...; retrain it")
    net.set_train(False)
    return net, digest


# --------------------------------------------------------------------------- training

def _cosine_lr(base_lr, total_steps, final_frac=0.01):
    """Per-step learning rates: cosine from base_lr down to base_lr * final_frac."""
    return [base_lr * (final_frac + (1 - final_frac) * 0.5 * (1 + math.cos(math.pi * s / total_steps)))
            for s in range(total_steps)]


def train_classifier(data_dir, out_path, epochs=2, seed=0, batch_size=128, lr=2e-3,
                     max_train=None, log=None):
    """Train ``FashionCNN`` on the Fashion-MNIST train split, report test accuracy, save.

    Adam, cross-entropy, cosine learning-rate decay, PYNATIVE steps (faster than a compiled
    step for this model on CPU). ``max_train`` keeps only the first N training images (for
    quick checks). Returns the metadata dict written beside the checkpoint.
    """
    log = log or (lambda msg: print(msg, flush=True))
    x_train, y_train = load_fashion_mnist(data_dir, "train")
    x_test, y_test = load_fashion_mnist(data_dir, "test")
    if max_train:
        x_train, y_train = x_train[:max_train], y_train[:max_train]
    ms.set_seed(seed)
    rng = np.random.default_rng(seed)
    net = FashionCNN()
    steps_per_epoch = len(x_train) // batch_size
    optimizer = nn.Adam(net.trainable_params(), learning_rate=_cosine_lr(lr, epochs * steps_per_epoch))
    loss_fn = nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean")

    def forward(x, y):
        return loss_fn(net(x), y)

    grad_fn = ms.value_and_grad(forward, None, optimizer.parameters)
    inputs = images_to_input(x_train)
    labels = y_train.astype(np.int32)
    start = time.time()
    for epoch in range(epochs):
        net.set_train(True)
        order = rng.permutation(len(inputs))
        total = 0.0
        for i in range(steps_per_epoch):
            idx = order[i * batch_size:(i + 1) * batch_size]
            loss, grads = grad_fn(ms.Tensor(inputs[idx]), ms.Tensor(labels[idx]))
            optimizer(grads)
            total += float(loss.asnumpy())
        log(f"[feature_net] epoch {epoch + 1}/{epochs}: train loss {total / steps_per_epoch:.4f}, "
            f"{time.time() - start:.0f} s")
    train_seconds = time.time() - start
    test_acc = accuracy(net, x_test, y_test)
    log(f"[feature_net] test accuracy {test_acc:.4f} ({len(x_test)} images)")
    meta = {"test_accuracy": round(test_acc, 5), "epochs": epochs, "seed": seed,
            "batch_size": batch_size, "lr": lr, "train_images": int(len(x_train)),
            "train_seconds": round(train_seconds, 1), "mindspore": ms.__version__}
    meta = save_feature_net(net, out_path, meta)
    log(f"[feature_net] saved {out_path} (sha256 {meta['sha256'][:12]}...)")
    return meta


def main(argv=None):
    p = argparse.ArgumentParser(description="Train the Fashion-MNIST feature classifier used for FID/KID "
                                            "and cache it with a JSON of its test accuracy and SHA-256.",
                                allow_abbrev=False)
    p.add_argument("--data_dir", default="data/fashion-mnist",
                   help="folder with the official Fashion-MNIST IDX files (.gz or decompressed)")
    p.add_argument("--out", default=None, help=f"checkpoint path (default: {default_classifier_path()})")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device_target", default="CPU", choices=DEVICE_TARGETS)
    args = p.parse_args(argv)
    from ..runtime import DeviceError, setup_device
    try:
        setup_device(args.device_target, mode="pynative", verbose=False)
    except DeviceError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = args.out or default_classifier_path()
    try:
        meta = train_classifier(args.data_dir, out, epochs=args.epochs, seed=args.seed)
    except FeatureNetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if meta["test_accuracy"] < 0.90:
        print(f"warning: test accuracy {meta['test_accuracy']:.4f} is below 0.90", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A small Fashion-MNIST classifier whose penultimate layer is the feature space for FID.

InceptionV3 (the usual FID network) was trained on ImageNet photos and is a poor judge of
28x28 grayscale clothes, so for Fashion-MNIST we use our own CNN:

    conv3x3(32)-BN-ReLU-maxpool2 -> conv3x3(64)-BN-ReLU-maxpool2 -> conv3x3(128)-BN-ReLU-maxpool2
    -> flatten (128*3*3) -> dense 128-ReLU  [features, 128-d] -> dense 10 [logits]

Input: float32 (B, 1, 28, 28) in [-1, 1] (the diffusion model's range).

Its weights ship with the code (``SHIPPED_PATH``, under 1 MB) and are checked against
``SHIPPED_SHA256`` before use, so every machine scores with the same network. They are not
retrained locally because training is not reproducible across machines: with the same seed,
another oneDNN instruction set (AVX2 / AVX-512 / SSE4.1) or another number of usable cores
gives other weights (README, "Pictures and evaluation").

``python -m ddpm_ms.eval.feature_net --data_dir data/fashion-mnist --out PATH`` trains a
classifier the same way (the shipped one: 2 epochs, seed 0). Beside it, ``<PATH>.json``
records the test accuracy, epochs, seed and the checkpoint's SHA-256, and ``load_feature_net``
refuses a checkpoint that does not match it. FID values are only comparable between runs that
report the same ``sha256``.
"""
import argparse
import hashlib
import json
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

from ..files import atomic_write, write_text  # noqa: E402
from ..train_step import lr_schedule  # noqa: E402

__all__ = ["FeatureNetError", "FashionCNN", "NET_NAME", "FEATURE_DIM", 
           "load_fashion_mnist", "images_to_input", "extract_features", "predict", "accuracy",
           "train_classifier", "save_feature_net", "load_feature_net", "read_meta",
           "load_classifier", "SHIPPED_PATH", "SHIPPED_SHA256", "SHIPPED_META", "sha256_file"]

NET_NAME = "fmnist_cnn_v2"   # bump when the architecture or input convention changes
FEATURE_DIM = 128
# The weights every FID of this project is computed with (shipped in the package, 970,597 bytes).
SHIPPED_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fmnist_cnn_v2.ckpt")
SHIPPED_SHA256 = "f3c0ade525687834a8db795af0512227bf71d537e48dac4876aac50dbd33df85"
SHIPPED_META = {"test_accuracy": 0.9158, "epochs": 2, "seed": 0, "batch_size": 128, "lr": 2e-3,
                "train_images": 60000, "mindspore": "2.10.0",
                "trained_on": "2-core AMD EPYC, CPU, oneDNN ISA AVX2, 2 kernel threads"}


class FeatureNetError(Exception):
    """Missing/invalid data or checkpoint; the message is one line saying what to do."""


def _conv_class():
    """nn.Conv2d, or in a CPU process that left oneDNN uncapped for a matmul-conv U-Net (the final
    grid's FID inside train.py) MatmulConv2d with the same parameters: oneDNN's conv kernel is its
    reference one there, and scoring 10,000 test images took 5 minutes on one core."""
    from ..convs import MatmulConv2d
    from ..cpu_env import onednn_convs_slow
    from ..runtime import current_device_target
    return MatmulConv2d if current_device_target() == "CPU" and onednn_convs_slow() else nn.Conv2d


def _conv(cls, cin, cout):
    # MindSpore's Conv2d defaults to pad_mode='same' without bias; be explicit.
    return cls(cin, cout, 3, pad_mode="pad", padding=1, has_bias=True)


class FashionCNN(nn.Cell):
    """Classifier for (B, 1, 28, 28) float32 in [-1, 1]; ``features`` gives (B, 128)."""

    def __init__(self, num_classes=10):
        super().__init__()
        conv = _conv_class()
        self.body = nn.SequentialCell([
            _conv(conv, 1, 32), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2, 2),     # 14x14
            _conv(conv, 32, 64), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2, 2),    # 7x7
            _conv(conv, 64, 128), nn.BatchNorm2d(128), nn.ReLU(), nn.MaxPool2d(2, 2),  # 3x3: keeps the file < 1 MB
            nn.Flatten(), nn.Dense(128 * 3 * 3, FEATURE_DIM), nn.ReLU(),
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
    (``files.atomic_write``). Returns the metadata dict."""
    path = os.path.abspath(os.path.expanduser(str(path)))
    with atomic_write(path, suffix=".ckpt") as tmp:   # MindSpore wants a .ckpt suffix
        ms.save_checkpoint(net, tmp)
        meta = dict(meta or {}, name=NET_NAME, feature_dim=FEATURE_DIM, sha256=sha256_file(tmp))
        # json first: a reader that sees the new checkpoint also sees its hash.
        write_text(_meta_path(path), json.dumps(meta, indent=2, sort_keys=True))
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


def _checked_meta(path):
    """Metadata of checkpoint ``path`` after checking the file's SHA-256: against
    ``SHIPPED_SHA256`` for the shipped weights, else against ``<path>.json``."""
    if os.path.abspath(path) == os.path.abspath(SHIPPED_PATH):
        if not os.path.isfile(path):
            raise FeatureNetError(f"the shipped classifier {path} is missing: reinstall ddpm_ms "
                                  f"(or restore the file from the repository)")
        digest = sha256_file(path)
        if digest != SHIPPED_SHA256:
            raise FeatureNetError(f"the shipped classifier {path} is damaged or was replaced: sha256 "
                                  f"{digest[:12]}..., this code expects {SHIPPED_SHA256[:12]}...; restore "
                                  f"the file from the repository")
        return dict(SHIPPED_META, name=NET_NAME, feature_dim=FEATURE_DIM, sha256=digest)
    if not os.path.isfile(path):
        raise FeatureNetError(f"classifier checkpoint not found: {path} (leave --classifier out to use the "
                              f"shipped one, or train one: python -m ddpm_ms.eval.feature_net --out {path})")
    meta = read_meta(path)
    digest = sha256_file(path)
    if meta.get("sha256") != digest:
        raise FeatureNetError(f"{path} does not match {_meta_path(path)} (sha256 {digest[:12]}... vs "
                              f"{str(meta.get('sha256'))[:12]}...); retrain with python -m ddpm_ms.eval.feature_net")
    return meta


def load_classifier(path=None):
    """The classifier at ``path`` (None: the shipped weights) after checking its SHA-256 (see
    ``_checked_meta``) and name. Returns (net in eval mode, info): info names it for results
    and logs (name, path, sha256, test_accuracy, shipped)."""
    path = SHIPPED_PATH if path is None else os.path.expanduser(str(path))
    meta = _checked_meta(path)
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
    return net, {"name": NET_NAME, "path": os.path.abspath(path), "sha256": meta["sha256"],
                 "test_accuracy": meta.get("test_accuracy"), "shipped": meta["sha256"] == SHIPPED_SHA256}


def load_feature_net(path=None):
    """``load_classifier`` returning (net, sha256 hex string)."""
    net, info = load_classifier(path)
    return net, info["sha256"]


# --------------------------------------------------------------------------- training

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
    # cosine from lr down to lr / 100, no warmup (the diffusion trainer's schedule)
    lrs = lr_schedule({"lr": lr, "min_lr": lr * 0.01, "warmup_steps": 0, "lr_schedule": "cosine"},
                      epochs * steps_per_epoch)
    optimizer = nn.Adam(net.trainable_params(), learning_rate=ms.Tensor(lrs))
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
    p = argparse.ArgumentParser(description="Train a Fashion-MNIST feature classifier the way the shipped "
                                            "one was trained, and save it with a JSON of its test accuracy "
                                            "and SHA-256. Scoring uses the shipped weights unless "
                                            "evaluate is given --classifier PATH.",
                                allow_abbrev=False)
    p.add_argument("--data_dir", default="data/fashion-mnist",
                   help="folder with the official Fashion-MNIST IDX files (.gz or decompressed)")
    p.add_argument("--out", required=True, help="checkpoint path to write (not the shipped file)")
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
    if os.path.abspath(args.out) == os.path.abspath(SHIPPED_PATH):
        print(f"error: --out {args.out} is the shipped classifier; write elsewhere", file=sys.stderr)
        return 2
    try:
        meta = train_classifier(args.data_dir, args.out, epochs=args.epochs, seed=args.seed)
    except FeatureNetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if meta["test_accuracy"] < 0.90:
        print(f"warning: test accuracy {meta['test_accuracy']:.4f} is below 0.90", file=sys.stderr)
    if meta["sha256"] != SHIPPED_SHA256:
        print(f"note: these weights differ from the shipped ones (sha256 {SHIPPED_SHA256[:12]}...), as expected "
              f"unless this machine, its usable cores and its oneDNN ISA match SHIPPED_META['trained_on']; "
              f"their FIDs compare only with each other", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

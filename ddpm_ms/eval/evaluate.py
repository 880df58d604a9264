"""Score a set of samples against a reference: FID, KID, precision and recall.

    python -m ddpm_ms.eval.evaluate --samples out/samples.npz --ref fashion_mnist \
        [--data_dir data/fashion-mnist] [--ref_split test|train] [--num_ref N] [--classifier PATH]

``samples.npz`` holds ``images``: uint8 (N, H, W, C), as written by ``sample.py``. ``--ref``
is ``fashion_mnist`` (the official IDX files under ``--data_dir``) or the path of another
samples ``.npz`` (compare two sample sets). Prints one JSON object on stdout; progress goes
to stderr.

Precision can be fooled: in our feature space uniform-noise images form one tight cluster
that sits inside the k-NN ball of a single outlying real image, giving precision ~1 for pure
noise. Read it together with ``coverage`` (Naeem et al. 2020), which stays ~0 there.

Fashion-MNIST features come from our own classifier (``ddpm_ms.eval.feature_net``), so its FID is
NOT comparable with Inception-based FIDs in papers, only between runs reporting the same
``feature_net.sha256``. Its weights ship with the code and are checked against the SHA-256 in
``feature_net.SHIPPED_SHA256``, so every machine computes the same FID.

RGB data (``--ref cifar10``: the official binary batches; ``--ref image_folder``: the images
under ``--data_dir``; or RGB ``.npz`` sets) is scored on InceptionV3 pool3 features, the
network of published FIDs (``ddpm_ms.eval.inception``). Its weights are a checkpoint you convert
once from pytorch-fid's file and pass as ``--inception_ckpt``; nothing is downloaded.
``--inception_ckpt`` also scores 28x28x1 sets with Inception (channels repeated).
"""
import argparse
import json
import os
import sys

import numpy as np

from ..config import ConfigError
from ..data.sources import read_cifar10
from ..runtime import DEVICE_TARGETS
from . import metrics

__all__ = ["EvalError", "GRAY_REFS", "RGB_REFS", "load_samples", "load_reference", "evaluate_images",
           "build_arg_parser", "main"]

GRAY_REFS = ("fashion_mnist",)
RGB_REFS = ("cifar10", "image_folder")


class EvalError(ConfigError):
    """Bad input; the message is one line saying what to fix (a ConfigError, so ``run_main``
    prints it as one line also when this module runs as ``__main__``)."""


def _log(msg):
    print(f"[evaluate] {msg}", file=sys.stderr, flush=True)


def load_samples(path, what="samples"):
    """uint8 images (N, H, W, C) from the ``images`` array of an npz file, checked."""
    if not os.path.isfile(path):
        raise EvalError(f"{what} file not found: {path}")
    try:
        with np.load(path) as f:
            if "images" not in f.files:
                raise EvalError(f"{path} has no 'images' array (found: {', '.join(f.files) or 'nothing'})")
            images = f["images"]
    except EvalError:
        raise
    except Exception as e:  # not a zip / corrupt npz
        raise EvalError(f"cannot read {path} as .npz: {e}") from None
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise EvalError(f"{path}: 'images' must be uint8 (N, H, W, C) with C in (1, 3), "
                        f"got {images.dtype} {images.shape}")
    if images.shape[0] < 2:
        raise EvalError(f"{path}: need at least 2 images, got {images.shape[0]}")
    return images


def _need_inception(args):
    if not args.inception_ckpt:
        raise EvalError("RGB FID needs --inception_ckpt PATH (InceptionV3 weights converted once with "
                        "python -m ddpm_ms.eval.inception convert; nothing is downloaded)")


def load_folder_images(data_dir, size):
    """uint8 (N, size, size, 3): every image under ``data_dir``, short side resized to ``size``
    and centre-cropped (as the training pipeline does)."""
    from ..data import IMAGE_EXTENSIONS, list_images, load_image
    if not os.path.isdir(data_dir):
        raise EvalError(f"image folder not found: {data_dir}")
    paths = list_images(data_dir)
    if not paths:
        raise EvalError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {data_dir}")
    out = []
    for path in paths:
        try:
            out.append(load_image(path, channels=3, image_size=size))
        except Exception as e:  # noqa: BLE001 -- any decoder failure
            raise EvalError(f"cannot decode {path}: {type(e).__name__}: {e}; remove or fix it") from None
    return np.stack(out)


def load_reference(args, rng, size=32):
    """Reference uint8 images (M, H, W, C) and a label for the JSON output (``size``: the side
    that image-folder references are resized to)."""
    ref = args.ref
    if ref.endswith(".npz") or os.path.isfile(ref):
        images, label = load_samples(ref, "reference"), os.path.abspath(ref)
    elif ref == "cifar10":
        images, label = read_cifar10(args.data_dir or "data/cifar-10-batches-bin", args.ref_split), \
            f"cifar10:{args.ref_split}"
    elif ref == "image_folder":
        if not args.data_dir:
            raise EvalError("--ref image_folder needs --data_dir FOLDER")
        images, label = load_folder_images(args.data_dir, size), os.path.abspath(args.data_dir)
    elif ref in GRAY_REFS:
        from .feature_net import FeatureNetError, load_fashion_mnist
        try:
            images, _ = load_fashion_mnist(args.data_dir or "data/fashion-mnist", args.ref_split)
        except FeatureNetError as e:
            raise EvalError(str(e)) from None
        images, label = images[..., None], f"{ref}:{args.ref_split}"
    else:
        raise EvalError(f"--ref must be one of {', '.join(GRAY_REFS + RGB_REFS)} or a samples .npz path, "
                        f"got {ref!r}")
    if args.num_ref and args.num_ref < len(images):
        images = images[np.sort(rng.choice(len(images), args.num_ref, replace=False))]
    return images, label


def _classifier(args):
    """(net, info) of the Fashion-MNIST classifier: ``args.classifier``, else the shipped one."""
    from .feature_net import FeatureNetError, load_classifier
    try:
        return load_classifier(args.classifier)
    except FeatureNetError as e:
        raise EvalError(str(e)) from None


def evaluate_images(fake_feats, real_feats, kid_subsets=100, kid_subset_size=1000, k=3, seed=0):
    """Metrics dict from feature arrays fake (N, D) and real (M, D)."""
    fid = metrics.fid_from_features(fake_feats, real_feats)
    kid_mean, kid_std = metrics.kid(fake_feats, real_feats, kid_subsets, kid_subset_size, seed)
    precision, recall = metrics.precision_recall(real_feats, fake_feats, k=k)
    density, coverage = metrics.density_coverage(real_feats, fake_feats, k=k)
    return {"fid": fid, "kid_mean": kid_mean, "kid_std": kid_std, "precision": precision, "recall": recall,
            "density": density, "coverage": coverage}


def build_arg_parser():
    p = argparse.ArgumentParser(
        description="FID / KID / precision / recall of samples against a reference; prints JSON. "
                    "Fashion-MNIST uses our own classifier's 128-d features (ddpm_ms.eval.feature_net; the "
                    "weights ship with the code, checked by SHA-256). RGB data "
                    "(cifar10, image_folder, RGB npz) uses InceptionV3 pool3 features from --inception_ckpt "
                    "(converted once with python -m ddpm_ms.eval.inception convert).",
        allow_abbrev=False)
    p.add_argument("--samples", required=True, help="npz with 'images' uint8 (N, H, W, C)")
    p.add_argument("--ref", default="fashion_mnist",
                   help="fashion_mnist, cifar10, image_folder, or another samples .npz path")
    p.add_argument("--data_dir", default=None,
                   help="Fashion-MNIST IDX folder (default data/fashion-mnist), cifar-10-batches-bin "
                        "(default data/cifar-10-batches-bin) or the image folder")
    p.add_argument("--ref_split", default="test", choices=("test", "train"))
    p.add_argument("--num_ref", type=int, default=0,
                   help="random subset of the reference of this size (0 = all)")
    p.add_argument("--classifier", default=None,
                   help="feature classifier checkpoint with its .json (default: the shipped weights, "
                        "ddpm_ms/eval/fmnist_cnn_v2.ckpt; other weights give FIDs that compare only with each other)")
    p.add_argument("--inception_ckpt", default=None,
                   help="FID InceptionV3 weights (python -m ddpm_ms.eval.inception convert); required for RGB data")
    p.add_argument("--batch_size", type=int, default=50, help="images per InceptionV3 forward pass")
    p.add_argument("--kid_subsets", type=int, default=100)
    p.add_argument("--kid_subset_size", type=int, default=1000)
    p.add_argument("--k", type=int, default=3, help="k of the k-NN radii for precision/recall")
    p.add_argument("--seed", type=int, default=0, help="seed for reference subsets and KID subsets")
    p.add_argument("--device_target", default="CPU", choices=DEVICE_TARGETS)
    return p


def _inception(args):
    from .inception import InceptionError, load_inception
    try:
        net, sha = load_inception(args.inception_ckpt)
    except InceptionError as e:
        raise EvalError(str(e)) from None
    info = {"name": "pytorch-fid InceptionV3 (TF 2015-12-05) pool3", "path": os.path.abspath(args.inception_ckpt),
            "sha256": sha}
    return net, info


def run(args):
    """Evaluate per parsed ``args``; returns the result dict (raises EvalError)."""
    rng = np.random.default_rng(args.seed)
    fake = load_samples(args.samples)
    use_inception = bool(args.inception_ckpt) or fake.shape[-1] == 3 or args.ref in RGB_REFS
    if use_inception:
        _need_inception(args)
    real, ref_label = load_reference(args, rng, size=fake.shape[1])
    if use_inception:
        if real.shape[1:] != fake.shape[1:]:
            raise EvalError(f"samples {fake.shape[1:]} and reference {real.shape[1:]} differ in shape")
    elif real.shape[1:] != (28, 28, 1) or fake.shape[1:] != (28, 28, 1):
        raise EvalError(f"the Fashion-MNIST feature net needs 28x28x1 images, got samples {fake.shape[1:]} "
                        f"and reference {real.shape[1:]}")
    if args.k >= min(len(real), len(fake)):
        raise EvalError(f"--k {args.k} needs more than {args.k} images in each set "
                        f"(samples {len(fake)}, reference {len(real)})")

    from ..runtime import setup_device
    setup_device(args.device_target, mode="pynative", verbose=False)
    if use_inception:
        from .inception import inception_features
        net, net_info = _inception(args)
        _log(f"InceptionV3 features of {len(fake)} samples and {len(real)} reference images ({ref_label})")
        fake_f = inception_features(net, fake, args.batch_size)
        real_f = inception_features(net, real, args.batch_size)
        classes = None
    else:
        from .feature_net import extract_features, predict
        net, net_info = _classifier(args)
        _log(f"features of {len(fake)} samples and {len(real)} reference images ({ref_label})")
        fake_f, real_f = extract_features(net, fake), extract_features(net, real)
        classes = class_fractions(predict(net, fake), len(FASHION_CLASSES))
    result = evaluate_images(fake_f, real_f, args.kid_subsets, args.kid_subset_size, args.k, args.seed)
    result.update(num_samples=int(len(fake)), num_ref=int(len(real)), ref=ref_label,
                  samples=os.path.abspath(args.samples), feature_net=net_info)
    if classes is not None:  # does the model make every kind of clothing? (a collapsed model does not)
        result["class_fractions"] = dict(zip(FASHION_CLASSES, classes))
        result["min_class_fraction"] = min(classes)
        _log("classes of the samples: " + ", ".join(f"{name} {f:.1%}" for name, f in zip(FASHION_CLASSES, classes)))
    return result


FASHION_CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                   "ankle boot")


def class_fractions(predicted, num_classes):
    """Fraction of the samples the classifier puts in each class: a list of ``num_classes`` floats
    summing to 1 (``predicted``: int class per sample)."""
    counts = np.bincount(np.asarray(predicted, np.int64), minlength=num_classes)[:num_classes]
    return [float(c) / max(len(predicted), 1) for c in counts]


def main(argv=None):
    from ..cpu_env import apply_cpu_env
    apply_cpu_env(verbose=False)  # before the readers load MindSpore
    from ..runtime import run_main

    def evaluate(argv):
        print(json.dumps(run(build_arg_parser().parse_args(argv)), indent=2))
    return run_main(evaluate, argv)


if __name__ == "__main__":
    sys.exit(main())

"""FID of a training run's final preview grid, when an evaluation network is at hand.

Fashion-MNIST runs (28x28x1) use the shipped classifier (``feature_net``), so they always
have one; RGB runs use InceptionV3 when the config's ``inception_ckpt`` names converted
weights. The reference is the data set's test split (``INCEPTION_NUM_REF`` random images of it
for InceptionV3, which takes about 0.3 s per image on a CPU). With ``num_preview`` samples
(16 by default) the FID is strongly biased upwards: it compares runs with the same
``num_preview`` and data set, not with ``python -m ddpm_ms.eval.evaluate`` on thousands.
"""
import argparse
import os

import numpy as np

__all__ = ["INCEPTION_NUM_REF", "fid_plan", "grid_fid"]

INCEPTION_NUM_REF = 1000


def fid_plan(cfg):
    """(network, None) when the final grid can be scored, else (None, why not): one line."""
    shape = (cfg["image_size"], cfg["image_size"], cfg["channels"])
    if cfg["num_preview"] < 2:
        return None, f"num_preview {cfg['num_preview']}: FID needs at least 2 samples"
    if cfg["inception_ckpt"]:
        if not os.path.isfile(os.path.expanduser(cfg["inception_ckpt"])):
            return None, f"inception_ckpt {cfg['inception_ckpt']} not found"
        if cfg["dataset"] not in ("fashion_mnist", "cifar10", "image_folder"):
            return None, f"no reference images for dataset {cfg['dataset']}"
        return "InceptionV3", None
    if cfg["dataset"] == "fashion_mnist" and shape == (28, 28, 1):
        return "the shipped Fashion-MNIST classifier", None
    return None, (f"no evaluation network for dataset {cfg['dataset']} at {shape[0]}x{shape[1]}x{shape[2]}: "
                  "set inception_ckpt (python -m ddpm_ms.eval.inception convert)")


def grid_fid(images, cfg):
    """FID of uint8 images (N, H, W, C) against the data set's test split, as
    (fid, sha256 of the feature network, reference label). Raises the readers' one-line
    errors (EvalError, FeatureNetError, InceptionError, DataError)."""
    from . import metrics
    from .evaluate import load_reference
    network, why_not = fid_plan(cfg)
    if network is None:
        raise ValueError(why_not)
    rng = np.random.default_rng(cfg["seed"])
    ref_args = argparse.Namespace(ref=cfg["dataset"], data_dir=cfg["data_dir"], ref_split="test",
                                  num_ref=INCEPTION_NUM_REF if cfg["inception_ckpt"] else 0)
    real, label = load_reference(ref_args, rng, size=images.shape[1])
    if cfg["inception_ckpt"]:
        from .inception import inception_features, load_inception
        net, sha = load_inception(os.path.expanduser(cfg["inception_ckpt"]))
        fake_f, real_f = inception_features(net, images), inception_features(net, real)
    else:
        from .feature_net import extract_features, load_feature_net
        net, sha = load_feature_net()
        fake_f, real_f = extract_features(net, images), extract_features(net, real)
    return metrics.fid_from_features(fake_f, real_f), sha, label

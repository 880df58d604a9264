"""Check ddpm_ms.eval.inception against pytorch-fid itself: same random weights, same images.

Needs torch, torchvision and pytorch-fid beside MindSpore (a separate venv; see
BENCHMARKS.md for the one used). Nothing is downloaded: the weights are random, so the check
covers the architecture, the conversion and the preprocessing, not the published numbers.

    python bench/check_inception.py --data_dir ../shared/data/cifar10-bin --num_images 8

1. torchvision's Inception3 (1008 classes, no aux head) gets He-normal convs and random
   batch-norm statistics and is saved as a ``.pth``, the layout of pytorch-fid's file.
2. pytorch-fid's ``InceptionV3([3])`` is built from that file (its downloader is pointed
   at it), with its own FID blocks, resize and normalisation.
3. ``python -m ddpm_ms.eval.inception convert`` converts the ``.pth``; ddpm_ms computes pool3
   features of the same CIFAR-10 test images; the two feature sets are compared.
"""
import argparse
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ddpm_ms.cpu_env import apply_cpu_env  # noqa: E402

apply_cpu_env(verbose=False)
os.environ.setdefault("GLOG_v", "3")

import numpy as np  # noqa: E402


def random_torch_inception(path, seed=0):
    import torch
    from torchvision.models import inception_v3
    torch.manual_seed(seed)
    net = inception_v3(weights=None, aux_logits=False, num_classes=1008, init_weights=False)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.Conv2d):
                fan_in = m.weight[0].numel()
                m.weight.normal_(0, math.sqrt(2.0 / fan_in))
            elif isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    torch.save(net.state_dict(), path)


def pytorch_fid_features(pth, images):
    import torch
    import pytorch_fid.inception as pfi
    pfi.load_state_dict_from_url = lambda *a, **k: torch.load(pth, map_location="cpu", weights_only=True)
    model = pfi.InceptionV3([pfi.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()
    x = torch.from_numpy(images.astype(np.float32).transpose(0, 3, 1, 2) / 255.0)
    with torch.no_grad():
        return model(x)[0].squeeze(-1).squeeze(-1).numpy().astype(np.float64)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data_dir", default=str(ROOT.parent / "shared" / "data" / "cifar10-bin"))
    p.add_argument("--num_images", type=int, default=8)
    args = p.parse_args(argv)
    from ddpm_ms.data import read_cifar10
    images = read_cifar10(args.data_dir)[:args.num_images]
    with tempfile.TemporaryDirectory() as tmp:
        pth, ckpt = os.path.join(tmp, "pt_inception_random.pth"), os.path.join(tmp, "inception_fid.ckpt")
        random_torch_inception(pth)
        ref = pytorch_fid_features(pth, images)
        r = subprocess.run([sys.executable, "-m", "ddpm_ms.eval.inception", "convert", "--pth", pth, "--out", ckpt],
                           cwd=ROOT, capture_output=True, text=True)
        print(r.stdout.strip() or r.stderr.strip())
        if r.returncode:
            return r.returncode
        from ddpm_ms.runtime import setup_device
        from ddpm_ms.eval.inception import inception_features, load_inception
        setup_device("CPU", "pynative", -1, verbose=False)
        net, _ = load_inception(ckpt)
        ours = inception_features(net, images, batch_size=args.num_images)
    diff = np.abs(ours - ref)
    scale = np.abs(ref).mean()
    cos = (ours * ref).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(ref, axis=1)
    print(f"{len(images)} CIFAR-10 test images, pool3 (2048-d): mean |feature| {scale:.4g}, "
          f"max |diff| {diff.max():.3g}, mean |diff| {diff.mean():.3g}, "
          f"max relative {diff.max() / scale:.3g}, min cosine {cos.min():.8f}")
    ok = diff.max() <= 1e-4 * scale and cos.min() > 0.99999  # float32 through ~95 layers
    print("MATCH" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""Test setup: CPU settings before MindSpore is imported, data location, markers."""
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ddpm_ms.cpu_env import apply_cpu_env  # noqa: E402

apply_cpu_env(verbose=False)

import mindspore as ms  # noqa: E402

from ddpm_ms.runtime import setup_device  # noqa: E402

setup_device("CPU", mode="pynative", verbose=False)

# Where the shared data sets live; CI points DDPM_MS_DATA at ../shared/data.
DATA_ROOT = Path(os.environ.get("DDPM_MS_DATA", ROOT.parent / "shared" / "data")).resolve()


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: real training / sampling runs (minutes)")


@pytest.fixture(autouse=True)
def _pynative_by_default():
    """Each test starts in PYNATIVE mode; graph tests switch and are switched back."""
    ms.set_context(mode=ms.PYNATIVE_MODE)
    yield
    ms.set_context(mode=ms.PYNATIVE_MODE)


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory):
    """24 distinct random 8x8 RGB PNGs: a data set small enough for real training steps in tests."""
    import numpy as np
    from PIL import Image
    root = tmp_path_factory.mktemp("tiny_images")
    rng = np.random.default_rng(0)
    for i in range(24):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / f"{i:03d}.png")
    return root


@pytest.fixture(scope="session")
def data_root():
    return DATA_ROOT


@pytest.fixture(scope="session")
def fashion_mnist_dir():
    d = DATA_ROOT / "fashion-mnist"
    if not (d / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip(f"Fashion-MNIST not found under {d} (set DDPM_MS_DATA)")
    return d


@pytest.fixture(scope="session")
def cifar10_png_dir():
    d = DATA_ROOT / "cifar10-png" / "test"
    if not d.is_dir():
        pytest.skip(f"CIFAR-10 PNGs not found under {d} (set DDPM_MS_DATA)")
    return d

"""Stand-in for torchvision, for the benchmark peer only.

denoising-diffusion-pytorch imports ``from torchvision import transforms as T, utils`` at the
top of its module but uses them only in its data set and Trainer, which the benchmark does not
use. The real torchvision does not import beside torch 2.13 here, so bench/peer_torch.py puts
this folder first on sys.path. Anything actually called raises.
"""
from . import transforms, utils  # noqa: F401

__version__ = "0.0.0+ddpm_ms_bench_stub"

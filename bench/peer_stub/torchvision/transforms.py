"""The transform names denoising-diffusion-pytorch refers to; none is usable."""


def _unavailable(name):
    def fail(*args, **kwargs):
        raise NotImplementedError(f"torchvision.transforms.{name} is a benchmark stub")
    fail.__name__ = name
    return fail


Compose = _unavailable("Compose")
Lambda = _unavailable("Lambda")
Resize = _unavailable("Resize")
RandomHorizontalFlip = _unavailable("RandomHorizontalFlip")
CenterCrop = _unavailable("CenterCrop")
ToTensor = _unavailable("ToTensor")

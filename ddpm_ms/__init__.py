"""ddpm_ms: denoising diffusion (DDPM / DDIM) in MindSpore.

Importing the package does not import MindSpore: entry points first apply the CPU
settings in :mod:`ddpm_ms.cpu_env`, which only work before MindSpore is loaded.
"""
__version__ = "0.1.0"

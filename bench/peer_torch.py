"""The PyTorch peer for bench/bench_train.py: lucidrains' denoising-diffusion-pytorch on CPU.

Runs in its own venv (bench/requirements-bench.txt) or in one with the test extra
(requirements-parity*.txt); never imports MindSpore (peer_fit reads Fashion-MNIST with
``ddpm_ms.data.sources.read_idx``, which is numpy only):

    /work/venv-bench/bin/python bench/peer_torch.py --json '{"kind": "peer_train", "batch": 128}'

Kinds (one per process, result printed as ``RESULT {json}``, as the MindSpore worker does):

    peer_train    Unet(dim=28, dim_mults=(1,2,4), channels=1) inside GaussianDiffusion (T=1000,
                  eps objective, linear betas as ours; its MSE loss), Adam lr 1e-3,
                  global-norm clipping at 1.0 and an EMA of the weights each step, like our train
                  step; torch eager, ``threads`` intra-op threads (default 2)
    peer_sample   GaussianDiffusion(sampling_timesteps=50).sample: DDIM eta 0, 50 steps
    peer_flops    forward FLOPs per image by torch.utils.flop_counter (2 x multiply-adds of
                  conv / mm / bmm / attention), and the parameter count
    peer_matmul   fp32 2048x2048 matmul GFLOP/s
    peer_fit      train on the Fashion-MNIST train split for ``minutes`` the way the library's
                  Trainer does (GaussianDiffusion's defaults: pred_v, sigmoid schedule; Adam
                  lr 2e-4 betas (0.9, 0.99), batch 32, grad-norm clip 1, random horizontal flip,
                  EMA 0.995 every 10 steps), then write ``samples`` DDIM-50 (eta 0) samples of the
                  EMA model as uint8 [N, 28, 28, 1] to ``out`` (.npz, key ``images``); with
                  ``ckpt``, also the trained model in the library Trainer's ``model-N.pt`` layout
                  (``step``, ``model``, ``ema``, ``opt``), which ``python -m ddpm_ms.convert`` reads

The package imports torchvision at the top of its module; torchvision does not import beside
torch 2.13 here, so the stand-in in bench/peer_stub/ goes first on sys.path (the peer uses
torchvision only in its data set and Trainer, which are not run).
"""
import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "peer_stub"))

import torch  # noqa: E402

UNET = dict(dim=28, dim_mults=(1, 2, 4), channels=1)


def _rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def build(sampling_timesteps=None):
    from denoising_diffusion_pytorch import GaussianDiffusion, Unet
    torch.manual_seed(0)
    model = Unet(**UNET)
    kwargs = {"sampling_timesteps": sampling_timesteps} if sampling_timesteps else {}
    diffusion = GaussianDiffusion(model, image_size=28, timesteps=1000, objective="pred_noise",
                                  beta_schedule="linear", **kwargs)
    return model, diffusion


def peer_train(spec):
    model, diffusion = build()
    opt = torch.optim.Adam(diffusion.parameters(), lr=1e-3)
    params = [p for p in model.parameters() if p.requires_grad]
    ema = [p.detach().clone() for p in params]
    b = spec["batch"]
    x = torch.rand(b, 1, 28, 28)      # GaussianDiffusion normalises [0, 1] -> [-1, 1] itself
    times, cpu = [], []
    for i in range(spec["warmup"] + spec["steps"]):
        t0, c0 = time.perf_counter(), time.process_time()
        loss = diffusion(x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(ema, params, 1.0 - 0.999)
        loss = float(loss.detach())    # waits for the step, like .asnumpy() on our side
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    timed = times[spec["warmup"]:]
    step_s = sum(timed) / len(timed)
    cpu_step_s = sum(cpu[spec["warmup"]:]) / len(timed)
    return {"img_s": b / step_s, "step_s": step_s, "cpu_step_s": cpu_step_s, "img_cpu_s": b / cpu_step_s, "first_s": times[0], "loss": loss,
            "rss_mb": _rss_mb(), "note": f"torch {torch.__version__}, {torch.get_num_threads()} threads"}


def peer_sample(spec):
    model, diffusion = build(sampling_timesteps=spec.get("sample_steps", 50))
    model.eval()
    n = spec["batch"]
    diffusion.sample(batch_size=2)    # warm-up (50 steps at batch 2)
    t0, c0 = time.perf_counter(), time.process_time()
    diffusion.sample(batch_size=n)
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"img_s": n / dt, "step_s": dt / spec.get("sample_steps", 50), "img_cpu_s": n / cpu, "rss_mb": _rss_mb(),
            "note": f"torch {torch.__version__}, {torch.get_num_threads()} threads, DDIM eta 0"}


def peer_flops(spec):
    from torch.utils.flop_counter import FlopCounterMode
    model, _ = build()
    b = 2
    x, t = torch.randn(b, 1, 28, 28), torch.randint(0, 1000, (b,))
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x, t)
    by_op = {str(k): v / b / 1e9 for k, v in counter.get_flop_counts().get("Global", {}).items()}
    return {"params": sum(p.numel() for p in model.parameters()),
            "fwd_gflop_per_image": counter.get_total_flops() / b / 1e9, "parts_gflop_per_image": by_op}


def peer_matmul(spec):
    n, reps = spec.get("n", 2048), spec.get("reps", 5)
    a = torch.randn(n, n)
    a @ a
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ a
    return {"torch_gflops": 2 * n ** 3 * reps / (time.perf_counter() - t0) / 1e9}


def peer_fit(spec):
    import numpy as np
    from denoising_diffusion_pytorch import GaussianDiffusion, Unet
    from ema_pytorch import EMA
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from ddpm_ms.data.sources import read_idx
    from ddpm_ms.files import save_npz

    torch.manual_seed(spec.get("seed", 0))
    images = read_idx(Path(spec["data_dir"]) / "train-images-idx3-ubyte.gz")
    data = torch.from_numpy(images.astype(np.float32) / 255.0)[:, None]   # [0, 1]; the library normalises
    model = Unet(**UNET)
    diffusion = GaussianDiffusion(model, image_size=28, timesteps=1000, sampling_timesteps=50)
    opt = torch.optim.Adam(diffusion.parameters(), lr=spec.get("lr", 2e-4), betas=(0.9, 0.99))
    ema = EMA(diffusion, beta=0.995, update_every=10)
    b, gen = spec.get("batch", 32), torch.Generator().manual_seed(spec.get("seed", 0))
    start, step, order, pos, losses = time.time(), 0, torch.randperm(len(data), generator=gen), 0, []
    while time.time() - start < spec["minutes"] * 60:
        if pos + b > len(data):
            order, pos = torch.randperm(len(data), generator=gen), 0
        x = data[order[pos:pos + b]]
        pos += b
        flip = torch.rand(b, generator=gen) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        loss = diffusion(x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(diffusion.parameters(), 1.0)
        opt.step()
        ema.update()
        step += 1
        losses.append(float(loss.detach()))
    train_s = time.time() - start
    if spec.get("ckpt"):
        Path(spec["ckpt"]).parent.mkdir(parents=True, exist_ok=True)
        torch.save({"step": step, "model": diffusion.state_dict(), "opt": opt.state_dict(),
                    "ema": ema.state_dict(), "version": "2.3.4"}, spec["ckpt"])
    ema.ema_model.eval()
    out, t0 = [], time.time()
    with torch.no_grad():
        for i in range(0, spec["samples"], 250):
            x = ema.ema_model.sample(batch_size=min(250, spec["samples"] - i))     # [0, 1]
            out.append((x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy())
    save_npz(spec["out"], images=np.concatenate(out))
    return {"steps": step, "train_s": train_s, "sample_s": time.time() - t0, "images_seen": step * b,
            "final_loss_mean100": sum(losses[-100:]) / max(len(losses[-100:]), 1),
            "note": f"torch {torch.__version__}, {torch.get_num_threads()} threads"}


KINDS = {"peer_train": peer_train, "peer_sample": peer_sample, "peer_flops": peer_flops,
         "peer_matmul": peer_matmul, "peer_fit": peer_fit}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", required=True, help="case spec, e.g. '{\"kind\": \"peer_train\", \"batch\": 16}'")
    spec = json.loads(p.parse_args().json)
    torch.set_num_threads(int(spec.get("threads") or os.environ.get("DDPM_MS_CPU_THREADS", 2)))
    spec.setdefault("warmup", 2)
    spec.setdefault("steps", 5)
    print("RESULT " + json.dumps(KINDS[spec["kind"]](spec)), flush=True)


if __name__ == "__main__":
    main()

"""Train-step and sampling speed of the tutorial-size U-Net on CPU, against a PyTorch peer.

    python bench/bench_train.py                                   # batch 32, 128; 1 core, 2 threads
    python bench/bench_train.py --batches 32 --threads 1 --variants native,matmul --no_sample
    python bench/bench_train.py --no_pin --threads 1              # 1 kernel thread, both cores free
    python bench/bench_train.py --list                            # the case names

Every case runs in a fresh subprocess, because the oneDNN ISA cap must be in the environment
before ``import mindspore`` and MindSpore's CPU thread count can be set only once per process.
A case runs the real train step of ``ddpm_ms.trainer`` (Huber loss with p2 weights, Adam,
global-norm clipping, EMA; U-Net dim 28, channels 1, mults 1,2,4 on 28x28), ``warmup``
untimed steps (the first one compiles in graph mode), then ``steps`` timed steps, each
synchronised. Reported: images/s, images per CPU-second, first-step seconds (compile + one
step), peak RSS, achieved GFLOP/s (training = 3 x the forward FLOPs, counted per conv / dense /
attention matmul) and its share of a 2048^2 fp32 matmul measured in the same run.

Cases, per batch B and thread count T (CPU settings as ``ddpm_ms.cpu_env`` chooses them for
the case's conv_impl; T = 1 cases run under ``taskset -c 0`` unless --no_pin):

    native_bB_tT          MindSpore's conv kernels (conv_impl native, oneDNN capped at AVX2)
    matmul_bB_tT          ddpm_ms.convs (conv_impl matmul, oneDNN uncapped)
    matmul_o1_bB_tT       matmul with jit_level O1 (graph-kernel fusion)
    resnet_mixed_o1_bB_tT ResNet blocks, mixed matmul form, jit_level O1
    resnet_bB_tT          the same U-Net with ResNet blocks (4 groups), matmul convs
    {matmul,resnet}_{batched,gemm,mixed}_bB_tT
                          matmul convs in one form of ddpm_ms.convs.matmul_form (the variants
                          above take this CPU's default form)
    resnet_native_bB_tT   the ResNet-block U-Net with native convs
    {resnet,matmul}_pipeline_bB_tT
                          with MindSpore's graph pipeline on (MS_DEV_RUNTIME_CONF graph_pipeline:True),
                          the default before ddpm_ms.cpu_env turned it off
    lucid_bB_tT           the peer's own network (unet_family lucid) and loss (eps, linear, MSE),
                          matmul convs; lucid_native_bB_tT with native convs: no FLOP normalisation
    peer_bB_tT            lucidrains' Unet(dim 28, mults 1,2,4, channels 1) in its GaussianDiffusion,
                          Adam + clipping + EMA, torch eager, T threads (bench/peer_torch.py, run
                          by --peer_python, default /work/venv-bench/bin/python)
    sample_V_tT           DDIM 50 steps, batch 64, variant V, and peer_sample_tT
    flops, matmul         forward FLOPs per image (ours, ResNet, the peer's) and matmul peaks

Results go to stdout (one JSON line per case, then a markdown table and the ratios against
issue 15's targets) and to ``--out`` as JSON. Compare ratios from one run: absolute numbers
move with the machine's load, which is printed before and after.
"""
import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PEER_PYTHON = os.environ.get("DDPM_MS_PEER_PYTHON", "/work/venv-bench/bin/python")
# The MindSpore tutorial's U-Net size (what configs/fashion_mnist.yaml trains).
TUTORIAL_UNET = {"dim": 28, "channels": 1, "dim_mults": [1, 2, 4], "image_size": 28}
CPU_VARS = ("ONEDNN_MAX_CPU_ISA", "DDPM_MS_CPU_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
            "MKL_NUM_THREADS")


# ============================================================================ worker side
def _rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _setup_mindspore(spec):
    """Import MindSpore with the CPU settings cpu_env chooses for the case's conv_impl."""
    os.environ.setdefault("GLOG_v", "3")
    if spec.get("matmul_form"):
        os.environ["DDPM_MS_MATMUL_FORM"] = spec["matmul_form"]    # read by ddpm_ms.convs.matmul_form
    from ddpm_ms.cpu_env import apply_cpu_env
    apply_cpu_env(verbose=False, matmul_convs=spec.get("conv_impl", "auto") in ("auto", "matmul"))
    import mindspore as ms
    from ddpm_ms.runtime import setup_device
    setup_device("CPU", spec.get("mode", "pynative"), verbose=False)
    return ms


def _threads_in_process():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    return -1


def build_trainer(spec):
    """A Trainer with the real train step for the tutorial U-Net; returns (trainer, cfg)."""
    from ddpm_ms.config import resolve
    from ddpm_ms.trainer import Trainer
    values = dict(TUTORIAL_UNET, batch_size=spec["batch"], mode=spec.get("mode", "graph"),
                  device_target="CPU", max_steps=10_000, seed=0, conv_impl=spec.get("conv_impl", "auto"))
    values.update(spec.get("arch", {}))
    values.update(spec.get("cfg", {}))
    cfg = resolve(values)
    trainer = Trainer(cfg, log=lambda *a: None)
    trainer.setup(epoch_batches=lambda epoch, skip: iter(()), steps_per_epoch=10_000)
    jit_level = spec.get("jit_level")
    if jit_level and cfg["mode"] == "graph":
        import mindspore as ms
        from ddpm_ms.train_step import make_train_step
        step = make_train_step(trainer.loss_cell, trainer.optimizer, trainer.ema, cfg["grad_clip"], None,
                               jit=False)
        trainer.train_step = ms.jit(step, jit_level=jit_level)
    return trainer, cfg


def worker_train(spec):
    ms = _setup_mindspore(spec)
    import numpy as np
    from ddpm_ms.train_step import draw_t_noise
    trainer, cfg = build_trainer(spec)
    b = spec["batch"]
    rng = np.random.default_rng(0)
    x0 = ms.Tensor(rng.uniform(-1, 1, (b, 1, 28, 28)).astype(np.float32))
    times, cpu = [], []
    for i in range(spec["warmup"] + spec["steps"]):
        t0, c0 = time.perf_counter(), time.process_time()
        t, noise = draw_t_noise(0, i, 0, x0.shape, cfg["timesteps"])
        loss = trainer.train_step(x0, t, noise)
        loss.asnumpy()        # sync every step: the trainer syncs at log points only
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    timed = times[spec["warmup"]:]
    step_s = sum(timed) / len(timed)
    cpu_step_s = sum(cpu[spec["warmup"]:]) / len(timed)
    return {"img_s": b / step_s, "step_s": step_s, "cpu_step_s": cpu_step_s, "img_cpu_s": b / cpu_step_s, "first_s": times[0], "compile_s": max(times[0] - step_s, 0.0),
            "loss": float(loss.asnumpy()), "rss_mb": _rss_mb(), "threads_in_process": _threads_in_process(),
            "isa": os.environ.get("ONEDNN_MAX_CPU_ISA", "default"), "conv_impl": trainer.net.conv_impl,
            "matmul_form": _matmul_form(trainer.net)}


def _matmul_form(net):
    """The matmul form the net's matmul convs use (ddpm_ms.convs.matmul_form), or None."""
    forms = {c.form for _, c in net.cells_and_names() if hasattr(c, "form")}
    return ",".join(sorted(forms)) or None


def worker_matmul(spec):
    """Large fp32 matmul GFLOP/s: MindSpore (ops.matmul) and numpy, same process."""
    ms = _setup_mindspore(spec)
    import numpy as np
    n, reps = spec.get("n", 2048), spec.get("reps", 5)
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    out = {}
    ta, tb = ms.Tensor(a), ms.Tensor(a.T.copy())
    ms.ops.matmul(ta, tb).asnumpy()
    t0 = time.perf_counter()
    for _ in range(reps):
        c = ms.ops.matmul(ta, tb)
    c.asnumpy()
    out["ms_gflops"] = 2 * n ** 3 * reps / (time.perf_counter() - t0) / 1e9
    a @ a
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ a
    out["numpy_gflops"] = 2 * n ** 3 * reps / (time.perf_counter() - t0) / 1e9
    return out


def count_forward_flops(net, x, t):
    """Forward FLOPs (2 x multiply-adds) of conv, transposed conv, dense and attention matmuls.

    Counted from the shapes seen by forward hooks in one PYNATIVE call; elementwise ops, norms
    and softmax are left out (as in PyTorch's FlopCounterMode, used for the peer).
    """
    from mindspore import nn
    from ddpm_ms.unet import Attention, LinearAttention
    total = {"conv": 0, "dense": 0, "attn_bmm": 0}

    def hook(cell, inputs, output):
        xin = inputs[0]
        if isinstance(cell, nn.Conv2dTranspose):
            b, c_in, h, w = xin.shape
            k = cell.kernel_size[0] * cell.kernel_size[1]
            total["conv"] += 2 * b * c_in * h * w * cell.out_channels * k
        elif isinstance(cell, nn.Conv2d):
            k = cell.kernel_size[0] * cell.kernel_size[1]
            total["conv"] += 2 * output.size * (cell.in_channels // cell.group) * k
        elif isinstance(cell, nn.Dense):
            total["dense"] += 2 * xin.shape[0] * cell.in_channels * cell.out_channels
        elif isinstance(cell, (LinearAttention, Attention)):
            b, _, h, w = xin.shape
            n, heads, d = h * w, cell.heads, cell.head_dim
            # linear: k v^T and context^T q, 2 matmuls of d*d*n; softmax: q^T k and attn v, n*n*d
            per_head = 2 * d * d * n if isinstance(cell, LinearAttention) else 2 * n * n * d
            total["attn_bmm"] += 2 * b * heads * per_head
    handles = [c.register_forward_hook(hook) for _, c in net.cells_and_names()
               if isinstance(c, (nn.Conv2d, nn.Conv2dTranspose, nn.Dense, LinearAttention, Attention))]
    net(x, t)
    for h in handles:
        h.remove()
    return total


def worker_flops(spec):
    ms = _setup_mindspore(dict(spec, mode="pynative"))
    import numpy as np
    from ddpm_ms.unet import build_unet, count_params
    net = build_unet(dict(TUTORIAL_UNET, **spec.get("arch", {})), conv_impl="native")
    b = 2
    x = ms.Tensor(np.zeros((b, 1, 28, 28), np.float32))
    t = ms.Tensor(np.zeros((b,), np.int32))
    parts = count_forward_flops(net, x, t)
    return {"params": count_params(net), "fwd_gflop_per_image": sum(parts.values()) / b / 1e9,
            "parts_gflop_per_image": {k: v / b / 1e9 for k, v in parts.items()}}


def worker_sample(spec):
    """DDIM-50 images/s with ddpm_ms.sampling.sample (one compiled graph per step)."""
    ms = _setup_mindspore(dict(spec, mode="graph"))
    from ddpm_ms.samplers import DDIMSampler
    from ddpm_ms.sampling import sample
    from ddpm_ms.schedule import NoiseSchedule
    from ddpm_ms.unet import build_unet
    net = build_unet(dict(TUTORIAL_UNET, **spec.get("arch", {})), conv_impl=spec.get("conv_impl", "auto"))
    sched = NoiseSchedule("linear", 1000)
    n, steps = spec["batch"], spec.get("sample_steps", 50)
    t0 = time.perf_counter()
    sample(net, DDIMSampler(sched, 2), n, (1, 28, 28), seed=0, progress=False)  # compile
    warm = time.perf_counter() - t0
    t0, c0 = time.perf_counter(), time.process_time()
    sample(net, DDIMSampler(sched, steps), n, (1, 28, 28), seed=0, progress=False)
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"img_s": n / dt, "step_s": dt / steps, "img_cpu_s": n / cpu, "first_s": warm, "rss_mb": _rss_mb()}


def worker_profile(spec):
    """Where a PYNATIVE / GRAPH train step spends its time: forward, forward+backward, full step;
    and a few single ops at the U-Net's full-resolution shapes (forward + backward)."""
    ms = _setup_mindspore(spec)
    import numpy as np
    from mindspore import nn, ops
    from ddpm_ms.train_step import draw_t_noise
    from ddpm_ms.unet import GroupNorm32, conv2d, gelu
    trainer, cfg = build_trainer(spec)
    b, reps = spec["batch"], spec.get("reps", 3)
    rng = np.random.default_rng(0)
    x0 = ms.Tensor(rng.uniform(-1, 1, (b, 1, 28, 28)).astype(np.float32))
    t, noise = draw_t_noise(0, 0, 0, x0.shape, cfg["timesteps"])
    weights = trainer.optimizer.parameters
    grad_fn = ms.value_and_grad(trainer.loss_cell, None, weights)
    jit = cfg["mode"] == "graph"
    fwd = ms.jit(lambda a, b_, c: trainer.loss_cell(a, b_, c)) if jit else trainer.loss_cell
    fb = ms.jit(lambda a, b_, c: grad_fn(a, b_, c)) if jit else grad_fn

    def timed(fn, *args):
        out = fn(*args)
        _sync(out)
        t0 = time.perf_counter()
        for _ in range(reps):
            out = fn(*args)
        _sync(out)
        return (time.perf_counter() - t0) / reps

    res = {"forward_s": timed(fwd, x0, t, noise), "fwd_bwd_s": timed(fb, x0, t, noise),
           "step_s": timed(trainer.train_step, x0, t, noise)}
    res["backward_s"] = res["fwd_bwd_s"] - res["forward_s"]
    res["optimizer_ema_s"] = res["step_s"] - res["fwd_bwd_s"]
    # single ops at the shapes of the first stage (28x28, 28 channels) and the mid attention
    c, hw = 28, 28
    xs = ms.Tensor(rng.standard_normal((b, c, hw, hw)).astype(np.float32))
    ops_cells = {
        "dwconv7x7_28ch": conv2d(c, c, 7, padding=3, group=c),
        "conv3x3_28to56": conv2d(c, 2 * c, 3, padding=1),
        "groupnorm1_28ch": GroupNorm32(1, c),
        "gelu_28ch": gelu(),
    }
    for name, cell in ops_cells.items():
        g = ms.grad(cell, grad_position=0)
        if jit:
            cell_j, g_j = ms.jit(lambda a, cell=cell: cell(a)), ms.jit(lambda a, g=g: g(a))
        else:
            cell_j, g_j = cell, g
        res[f"op_{name}_fwd_ms"] = 1000 * timed(cell_j, xs)
        res[f"op_{name}_fwd_bwd_ms"] = 1000 * timed(g_j, xs)
    q = ms.Tensor(rng.standard_normal((b * 4, 32, 49)).astype(np.float32))   # mid attention, 7x7
    bmm = (lambda a: ops.bmm(a.transpose(0, 2, 1), a))
    res["op_attn_bmm_qk_7x7_fwd_ms"] = 1000 * timed(ms.jit(bmm) if jit else bmm, q)
    res["rss_mb"] = _rss_mb()
    return res


def _sync(out):
    import mindspore as ms
    while isinstance(out, (tuple, list)):
        out = out[0]
    if isinstance(out, ms.Tensor):
        out.asnumpy()


WORKERS = {"train": worker_train, "matmul": worker_matmul, "flops": worker_flops, "sample": worker_sample,
           "profile": worker_profile}


def worker_main(spec_json):
    spec = json.loads(spec_json)
    result = WORKERS[spec["kind"]](spec)
    print("RESULT " + json.dumps(result), flush=True)


# ============================================================================ parent side
def case_env(spec):
    """Environment for one case: cpu_env chooses (no user overrides) but the case's thread count."""
    env = {k: v for k, v in os.environ.items() if k not in CPU_VARS and k != "MS_DEV_RUNTIME_CONF"}
    env["GLOG_v"] = "3"
    if spec.get("runtime_conf"):            # cpu_env keeps a key the environment already names
        env["MS_DEV_RUNTIME_CONF"] = spec["runtime_conf"]
    if spec.get("threads"):
        env["DDPM_MS_CPU_THREADS"] = str(spec["threads"])
    return env


def run_case(spec, timeout, peer_python=PEER_PYTHON, pin=True):
    """Run one case in a subprocess; returns its result dict (or {'error': ...})."""
    if spec["kind"].startswith("peer"):
        if not os.path.exists(peer_python):
            return {"error": f"peer python {peer_python} not found (see bench/requirements-bench.txt)"}
        cmd = [peer_python, str(ROOT / "bench" / "peer_torch.py"), "--json", json.dumps(spec)]
    else:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    if pin and spec.get("threads") == 1 and shutil.which("taskset"):
        # one thread means one core: MindSpore's runtime threads would otherwise run kernels on
        # the second core too (measured: 1.9 CPU-seconds per wall second with 1 kernel thread)
        cmd = ["taskset", "-c", "0"] + cmd
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=case_env(spec), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    for line in proc.stdout.splitlines()[::-1]:
        if line.startswith("RESULT "):
            res = json.loads(line[len("RESULT "):])
            res["wall_s"] = time.perf_counter() - t0
            return res
    return {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1][:300]}


# The CPU-fast candidate of issue 15: ResNet blocks (no depthwise conv), 4 GroupNorm groups.
RESNET_ARCH = {"use_convnext": False, "resnet_block_groups": 4}
# denoising-diffusion-pytorch's Unet(dim 28, mults 1,2,4, channels 1) in ddpm_ms (unet_lucid.py) and
# what the peer's GaussianDiffusion trains: eps, linear betas, unweighted MSE, Adam 1e-3, clip 1
LUCID_ARCH = {"unet_family": "lucid"}
LUCID_PEER_CFG = {"objective": "eps", "beta_schedule": "linear", "loss_type": "l2", "loss_weight": "none",
                  "lr": 1e-3, "grad_clip": 1.0}
VARIANTS = {   # name -> (conv_impl, arch overrides, extra spec)
    "native": ("native", {}, {}),            # MindSpore's conv kernels, oneDNN capped at AVX2
    "matmul": ("matmul", {}, {}),            # ddpm_ms.convs, oneDNN uncapped
    "matmul_o1": ("matmul", {}, {"jit_level": "O1"}),
    "resnet_mixed_o1": ("matmul", RESNET_ARCH, {"matmul_form": "mixed", "jit_level": "O1"}),
    "resnet": ("matmul", RESNET_ARCH, {}),   # ResNet-block U-Net, matmul convs
    "resnet_native": ("native", RESNET_ARCH, {}),
    # MindSpore's graph pipeline left on, as before cpu_env turned it off: the Python thread busy-waits
    # through every step (BENCHMARKS.md, "The Python thread spun a core")
    "resnet_pipeline": ("matmul", RESNET_ARCH, {"runtime_conf": "graph_pipeline:True"}),
    "matmul_pipeline": ("matmul", {}, {"runtime_conf": "graph_pipeline:True"}),
    # each form of ddpm_ms.convs.matmul_form, whatever this CPU's default (named here, not imported:
    # ddpm_ms.convs loads MindSpore, which must wait for the case's CPU settings)
    **{f"{net}_{form}": ("matmul", arch, {"matmul_form": form})
       for net, arch in (("matmul", {}), ("resnet", RESNET_ARCH)) for form in ("batched", "gemm", "mixed")},
    # the peer's own network and loss (issue 16): same speed comparison without FLOP normalisation
    "lucid": ("matmul", LUCID_ARCH, {"cfg": LUCID_PEER_CFG}),
    "lucid_native": ("native", LUCID_ARCH, {"cfg": LUCID_PEER_CFG}),
}


def cases(args):
    """name -> spec, in run order: per batch and thread count, each variant and the peer."""
    out = {}
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    for v in variants:
        if v not in VARIANTS:
            raise SystemExit(f"unknown variant {v!r}; choose from {sorted(VARIANTS)}")
    for b in args.batches:
        for th in args.threads:
            sfx = f"b{b}_t{th}"
            for v in variants:
                impl, arch, extra = VARIANTS[v]
                out[f"{v}_{sfx}"] = dict(kind="train", mode="graph", batch=b, threads=th, conv_impl=impl,
                                         arch=arch, warmup=args.warmup, steps=args.steps, **extra)
            out[f"peer_{sfx}"] = dict(kind="peer_train", batch=b, warmup=args.warmup, steps=args.steps,
                                      threads=th)
    out["matmul"] = dict(kind="matmul", n=2048, conv_impl="matmul")
    out["peer_matmul"] = dict(kind="peer_matmul", n=2048, threads=args.threads[-1])
    out["flops"] = dict(kind="flops")
    out["flops_resnet"] = dict(kind="flops", arch=RESNET_ARCH)
    out["peer_flops"] = dict(kind="peer_flops")
    if not args.no_sample:
        for th in args.threads:
            for v in ("native", "matmul", "resnet", "resnet_native"):
                if v in variants:
                    impl, arch, _ = VARIANTS[v]
                    out[f"sample_{v}_t{th}"] = dict(kind="sample", batch=64, sample_steps=50, threads=th,
                                                    conv_impl=impl, arch=arch)
            out[f"peer_sample_t{th}"] = dict(kind="peer_sample", batch=64, sample_steps=50, threads=th)
    return out


def machine():
    model = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    from ddpm_ms.cpu_env import cpu_has_avx512, usable_cpus
    return f"{model}, {usable_cpus()} usable cores, AVX-512 {'yes' if cpu_has_avx512() else 'no'}"


def versions():
    out = {"python": platform.python_version()}
    try:
        from importlib.metadata import version
        out["mindspore"] = version("mindspore")
    except Exception:  # noqa: BLE001
        out["mindspore"] = "?"
    return out


def _fwd_flops(results, name):
    """Forward GFLOP per image of the network a case ran."""
    if name.startswith("peer") or "lucid" in name:   # the lucid variants run the peer's network
        return results.get("peer_flops", {}).get("fwd_gflop_per_image")
    key = "flops_resnet" if "resnet" in name else "flops"
    return results.get(key, {}).get("fwd_gflop_per_image")


def report(results, args):
    """Markdown table + ratios against issue 15's targets."""
    peak = results.get("matmul", {}).get("ms_gflops")
    lines = ["| case | images/s | images per CPU-s | step s | first step s | peak RSS MB | GFLOP/s | "
             "% of MS matmul peak | note |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for name, r in results.items():
        if r.get("img_s") is None and "error" not in r:
            continue
        if "error" in r:
            lines.append(f"| {name} | - | - | - | - | - | - | - | {r['error']} |")
            continue
        per_img = _fwd_flops(results, name)
        # training ~= forward + 2x forward for the backward; sampling = one forward per step
        factor = 50 if "sample" in name else 3
        gfs = r["img_s"] * factor * per_img if per_img else None
        note = r.get("note", "")
        if "threads_in_process" in r:
            form = f" ({r['matmul_form']})" if r.get("matmul_form") else ""
            note = f"{r.get('conv_impl')} convs{form}, ISA {r.get('isa')}, {r['threads_in_process']} OS threads"
        lines.append(f"| {name} | {r['img_s']:.1f} | {r.get('img_cpu_s', 0):.1f} | {r.get('step_s', 0):.3f} | {r.get('first_s', 0):.1f} | "
                     f"{r.get('rss_mb', 0):.0f} | {gfs or 0:.1f} | {100 * gfs / peak if gfs and peak else 0:.1f} | "
                     f"{note} |")
    text = "\n".join(lines)
    extra = []
    for key in ("flops", "flops_resnet", "peer_flops"):
        f = results.get(key, {})
        if f.get("fwd_gflop_per_image"):
            extra.append(f"{key}: forward {f['fwd_gflop_per_image']:.3f} GFLOP/image, {f.get('params', 0):,} params")
    if peak:
        torch_peak = results.get("peer_matmul", {}).get("torch_gflops")
        extra.append(f"fp32 matmul 2048^2 in this run: MindSpore {peak:.0f} GFLOP/s (uncapped), numpy "
                     f"{results['matmul'].get('numpy_gflops', 0):.0f}" + (f", torch {torch_peak:.0f}" if torch_peak else ""))

    def img_s(name):
        return results.get(name, {}).get("img_s")

    def img_cpu_s(name):
        return results.get(name, {}).get("img_cpu_s")

    for b in args.batches:
        for th in args.threads:
            sfx = f"b{b}_t{th}"
            peer, native = img_s(f"peer_{sfx}"), img_s(f"native_{sfx}")
            for v in VARIANTS:
                mine = img_s(f"{v}_{sfx}")
                if not mine:
                    continue
                parts = []
                if native and v != "native":
                    parts.append(f"{mine / native:.2f}x native")
                fo, fp = _fwd_flops(results, v), _fwd_flops(results, "peer")
                if peer and v.startswith("lucid"):
                    parts.append(f"{mine / peer:.2f}x the peer's images/s on the identical network")
                elif peer and fo and fp:
                    parts.append(f"{mine / peer:.2f}x the peer's images/s, {mine * fo / (peer * fp):.2f}x at equal FLOPs")
                mine_c, peer_c = img_cpu_s(f"{v}_{sfx}"), img_cpu_s(f"peer_{sfx}")
                if mine_c and peer_c and fo and fp:
                    parts.append(f"per CPU-second {mine_c / peer_c:.2f}x, {mine_c * fo / (peer_c * fp):.2f}x at equal FLOPs")
                extra.append(f"{sfx} {v}: " + "; ".join(parts))
    for th in args.threads:
        peer = img_s(f"peer_sample_t{th}")
        for v in ("native", "matmul", "resnet", "resnet_native"):
            mine = img_s(f"sample_{v}_t{th}")
            if mine and peer:
                mine_c, peer_c = img_cpu_s(f"sample_{v}_t{th}"), img_cpu_s(f"peer_sample_t{th}")
                cpu_ratio = f", {mine_c / peer_c:.2f}x per CPU-second" if mine_c and peer_c else ""
                extra.append(f"DDIM-50 t{th} {v}: {mine / peer:.2f}x the peer's images/s{cpu_ratio}")
    return text + "\n\n" + "\n".join(f"- {e}" for e in extra)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--batches", type=lambda v: [int(x) for x in v.split(",")], default=[32, 128],
                   help="comma-separated batch sizes [default: 32,128]")
    p.add_argument("--threads", type=lambda v: [int(x) for x in v.split(",")], default=[1, 2],
                   help="comma-separated thread counts, ours and the peer's alike [default: 1,2]")
    p.add_argument("--variants", default="native,matmul,resnet",
                   help=f"comma-separated, from {sorted(VARIANTS)} [default: native,matmul,resnet]")
    p.add_argument("--only", default="", help="comma-separated case names")
    p.add_argument("--list", action="store_true", help="print the case names and exit")
    p.add_argument("--steps", type=int, default=3, help="timed steps per case")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (the first compiles)")
    p.add_argument("--peer_python", default=PEER_PYTHON, help="python of the venv with the PyTorch peer")
    p.add_argument("--no_sample", action="store_true", help="skip the DDIM-50 sampling cases")
    p.add_argument("--no_pin", action="store_true",
                   help="do not pin 1-thread cases to one core (MindSpore's runtime may then use another)")
    p.add_argument("--timeout", type=float, default=1200.0, help="seconds per case")
    p.add_argument("--out", default="", help="write the results as JSON here")
    args = p.parse_args(argv)
    if args.worker:
        worker_main(args.worker)
        return
    todo = cases(args)
    if args.list:
        print("\n".join(todo))
        return
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in names if n not in todo]
        if unknown:
            p.error(f"unknown case(s) {unknown}; --list shows them")
        keep = set(names) | {"flops", "flops_resnet", "peer_flops", "matmul", "peer_matmul"}
        todo = {k: v for k, v in todo.items() if k in keep}
    header = (f"date {datetime.datetime.now().isoformat(timespec='seconds')}; machine {machine()}; "
              f"load before {os.getloadavg()[0]:.2f}; {versions()}")
    print(header, flush=True)
    results = {}
    for name, spec in todo.items():
        res = run_case(spec, args.timeout, args.peer_python, pin=not args.no_pin)
        res["load_1min"] = round(os.getloadavg()[0], 2)
        results[name] = res
        shown = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in res.items()}
        print(f"{name}: {json.dumps(shown)}", flush=True)
    print()
    print(report(results, args))
    print(f"\nload after {os.getloadavg()[0]:.2f}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"header": header, "argv": sys.argv[1:], "results": results}, f, indent=1)


if __name__ == "__main__":
    main()

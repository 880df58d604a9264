"""CPU settings that must be in place before ``import mindspore``.

MindSpore 2.10's CPU backend has two traps on machines like ours (bench/bench_train.py,
BENCHMARKS.md):

* with any AVX-512 ISA allowed, its oneDNN runs plain-NCHW fp32 convolutions with a
  reference kernel, about 20x slower than the im2col+GEMM kernel it picks when capped
  at AVX2 (``ONEDNN_MAX_CPU_ISA=AVX2``; oneDNN reads it once, when it loads);
* it sizes its kernel thread pool to 25 whatever the machine has;
* a jitted step called from PyNative runs on a queue thread ("graph pipeline") while the
  Python thread waits for it in a busy loop with no yield (``AsyncRQueue::Wait``): a whole
  core burnt per step, taken from the kernels. Pinned to one core, a ResNet U-Net step at
  batch 32 took 2.7 s instead of 1.2 s (BENCHMARKS.md). ``graph_pipeline:False`` in
  ``MS_DEV_RUNTIME_CONF`` runs the graph on the calling thread, which then blocks instead.

``apply_cpu_env()`` fixes both through the environment, leaving alone anything the user
has already set: ``ONEDNN_MAX_CPU_ISA`` as is, ``DDPM_MS_CPU_THREADS`` (our variable) for
the thread count, a ``graph_pipeline`` key of ``MS_DEV_RUNTIME_CONF`` (other keys there are
kept). ``runtime.setup_device`` then passes the count to
``mindspore.device_context.cpu.op_tuning.threads_num``, the pool oneDNN runs on
(MindSpore builds oneDNN with its own thread pool, not OpenMP); ``OMP_NUM_THREADS`` and
the BLAS variables get the same count for the few libraries that read them. It imports
nothing heavy, so entry points (and tests/conftest.py) call it first.
"""
import os

ISA_VAR = "ONEDNN_MAX_CPU_ISA"
THREADS_VAR = "DDPM_MS_CPU_THREADS"   # our own override for the MindSpore thread count
POOL_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
RUNTIME_CONF_VAR = "MS_DEV_RUNTIME_CONF"   # MindSpore's "key:value,key:value" runtime switches
GRAPH_PIPELINE_OFF = "graph_pipeline:False"
# device nodes of an Ascend or NVIDIA driver: device_target auto may pick them, and there the
# graph pipeline overlaps host work with the device, so it is left on
ACCELERATOR_NODES = ("/dev/davinci_manager", "/dev/nvidiactl")
_applied = {}


def cpu_has_avx512(cpuinfo_path="/proc/cpuinfo"):
    """True when the CPU advertises any AVX-512 flag (Linux /proc/cpuinfo)."""
    try:
        with open(cpuinfo_path) as f:
            for line in f:
                if line.startswith("flags"):
                    return "avx512" in line
    except OSError:
        pass
    return False


def parse_cgroup_v2(text):
    """CPUs allowed by a cgroup v2 ``cpu.max`` line ("QUOTA PERIOD"), or None when unlimited.

    "max 100000" -> None; "150000 100000" -> 1 (1.5 CPUs of quota: floor, at least 1, so
    the threads never outrun the quota and get throttled).
    """
    parts = text.split()
    if len(parts) < 2 or parts[0] == "max":
        return None
    quota, period = int(parts[0]), int(parts[1])
    if quota <= 0 or period <= 0:
        return None
    return max(1, quota // period)


def parse_cgroup_v1(quota_text, period_text):
    """CPUs allowed by cgroup v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``; -1 = unlimited."""
    quota, period = int(quota_text.strip()), int(period_text.strip())
    if quota <= 0 or period <= 0:
        return None
    return max(1, quota // period)


def _own_cgroup_v2_dir(proc_cgroup="/proc/self/cgroup", root="/sys/fs/cgroup"):
    try:
        with open(proc_cgroup) as f:
            for line in f:
                if line.startswith("0::"):
                    return os.path.join(root, line.strip()[3:].lstrip("/"))
    except OSError:
        pass
    return root


def cgroup_cpu_limit(root="/sys/fs/cgroup", proc_cgroup="/proc/self/cgroup"):
    """CPUs allowed by a cgroup quota (v2 ``cpu.max``, else v1 CFS quota), None if unlimited/unknown."""
    for d in dict.fromkeys((_own_cgroup_v2_dir(proc_cgroup, root), root)):
        try:
            with open(os.path.join(d, "cpu.max")) as f:
                return parse_cgroup_v2(f.read())
        except (OSError, ValueError):
            continue
    for d in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
        try:
            with open(os.path.join(root, d, "cpu.cfs_quota_us")) as fq, \
                    open(os.path.join(root, d, "cpu.cfs_period_us")) as fp:
                return parse_cgroup_v1(fq.read(), fp.read())
        except (OSError, ValueError):
            continue
    return None


def affinity_cpus():
    """Cores in this process's affinity mask (``taskset``, cpusets); os.cpu_count() elsewhere."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def usable_cpus(cgroup_root="/sys/fs/cgroup", proc_cgroup="/proc/self/cgroup"):
    """Cores this process may use: affinity mask, capped by a cgroup quota."""
    n = affinity_cpus()
    limit = cgroup_cpu_limit(cgroup_root, proc_cgroup)
    return min(n, limit) if limit else n


def with_runtime_conf(conf, setting):
    """``conf`` (an MS_DEV_RUNTIME_CONF value) with ``setting`` ("key:value") added, unless the
    key is there already; returns (new value, True when added)."""
    key = setting.split(":", 1)[0].strip()
    items = [item.strip() for item in (conf or "").split(",") if item.strip()]
    if any(item.split(":", 1)[0].strip() == key for item in items):
        return ",".join(items), False
    return ",".join(items + [setting]), True


def accelerator_present(nodes=ACCELERATOR_NODES):
    """True when an Ascend or NVIDIA driver's device node exists (no MindSpore import)."""
    return any(os.path.exists(node) for node in nodes)


def _threads_from_env(value):
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        from .config import ConfigError
        raise ConfigError(f"{THREADS_VAR} must be a positive integer, got {value!r}")
    return n


def apply_cpu_env(verbose=True, cpuinfo_path="/proc/cpuinfo", matmul_convs=False):
    """Set the oneDNN ISA cap and thread counts in os.environ unless the user set them.

    matmul_convs: True when every convolution this process runs is computed as matmuls
    (``conv_impl`` matmul, ``ddpm_ms.convs``). Then no conv reaches oneDNN's conv kernels,
    and the cap is left off so that the matmuls use AVX-512 (1.3-1.5x faster, BENCHMARKS.md).
    With any native conv in the process, AVX-512 CPUs get the AVX2 cap. Either way a kernel
    thread per usable core.

    The graph pipeline is turned off (``graph_pipeline:False``, see the module docstring) unless
    the user's MS_DEV_RUNTIME_CONF names it or an accelerator's driver is present.

    Must run before MindSpore is imported (oneDNN reads its ISA cap once, at load).
    Returns a dict of what was chosen and why; calling it again returns the first result
    without printing again.
    """
    if _applied:
        return dict(_applied)
    chosen = {}
    if ISA_VAR in os.environ:
        chosen["onednn_isa"] = f"{os.environ[ISA_VAR]} (set by user)"
    elif matmul_convs:
        isa = "AVX-512" if cpu_has_avx512(cpuinfo_path) else "AVX2"
        chosen["onednn_isa"] = ("default, no cap (every conv runs as matmuls, conv_impl matmul: "
                                f"{isa} matmuls, no oneDNN conv kernel)")
    elif cpu_has_avx512(cpuinfo_path):
        os.environ[ISA_VAR] = "AVX2"
        chosen["onednn_isa"] = "AVX2 (CPU has AVX-512; oneDNN's AVX-512 path uses a slow reference conv)"
    else:
        chosen["onednn_isa"] = "default (no AVX-512)"
    if THREADS_VAR in os.environ:
        threads = _threads_from_env(os.environ[THREADS_VAR])
        chosen["threads"] = f"{threads} (set by user in {THREADS_VAR})"
    else:
        threads = usable_cpus()
        os.environ[THREADS_VAR] = str(threads)
        chosen["threads"] = f"{threads} (cores usable by this process; MindSpore's default is 25)"
    for var in POOL_VARS:
        os.environ.setdefault(var, str(threads))
    conf, added = with_runtime_conf(os.environ.get(RUNTIME_CONF_VAR, ""), GRAPH_PIPELINE_OFF)
    if not added:
        chosen["graph_pipeline"] = f"as set by user ({RUNTIME_CONF_VAR}={conf})"
    elif accelerator_present():
        chosen["graph_pipeline"] = "MindSpore's default (an Ascend or GPU driver is present)"
    else:
        os.environ[RUNTIME_CONF_VAR] = conf
        chosen["graph_pipeline"] = "off (the Python thread would spin a core while each step runs)"
    _applied.update(chosen)
    if verbose:
        print("[ddpm_ms] CPU settings: " + "; ".join(f"{k}={v}" for k, v in chosen.items()), flush=True)
    return dict(chosen)


def onednn_convs_slow(cpuinfo_path="/proc/cpuinfo"):
    """True when oneDNN's own convolutions would run its slow reference kernel in this process:
    an AVX-512 CPU and no AVX2 (or lower) cap, which is what a matmul-conv training process
    chooses. Other networks of that process (the evaluation classifier of the final grid's FID)
    must then compute their convolutions as matmuls too: 5-20x faster (BENCHMARKS.md)."""
    capped = os.environ.get(ISA_VAR, "").upper() in ("AVX2", "AVX", "SSE41", "AVX2_VNNI")
    return not capped and cpu_has_avx512(cpuinfo_path)


def cpu_threads():
    """Thread count chosen by apply_cpu_env (or the usable cores)."""
    value = os.environ.get(THREADS_VAR)
    return _threads_from_env(value) if value is not None else usable_cpus()

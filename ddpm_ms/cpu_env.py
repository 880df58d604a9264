"""CPU settings that must be in place before ``import mindspore``.

MindSpore 2.10's CPU backend has two traps on machines like ours (see BENCHMARKS.md):

* with any AVX-512 ISA allowed, its oneDNN picks a reference convolution kernel that is
  about 100x slower than the im2col+GEMM kernel it picks when capped at AVX2;
* it starts ~25 worker threads whatever the machine has.

``apply_cpu_env()`` fixes both through the environment, leaving alone anything the user
has already set. It imports nothing heavy, so entry points call it first.
"""
import os

_ISA_VAR = "ONEDNN_MAX_CPU_ISA"
_THREADS_VAR = "DDPM_MS_CPU_THREADS"   # our own override for the MindSpore thread count
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


def _cgroup_cpu_limit(path="/sys/fs/cgroup/cpu.max"):
    """CPUs allowed by a cgroup v2 quota, or None when unlimited/unknown."""
    try:
        with open(path) as f:
            quota, period = f.read().split()[:2]
        if quota == "max":
            return None
        return max(1, int(int(quota) / int(period)))
    except (OSError, ValueError):
        return None


def usable_cpus():
    """Cores this process may use: affinity mask, capped by a cgroup quota."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        n = os.cpu_count() or 1
    limit = _cgroup_cpu_limit()
    return min(n, limit) if limit else n


def apply_cpu_env(verbose=True):
    """Set the oneDNN ISA cap and thread counts in os.environ unless the user set them.

    Must run before MindSpore is imported. Returns a dict of what was chosen and why;
    calling it again returns the first result.
    """
    if _applied:
        return dict(_applied)
    chosen = {}
    if _ISA_VAR in os.environ:
        chosen["onednn_isa"] = f"{os.environ[_ISA_VAR]} (set by user)"
    elif cpu_has_avx512():
        os.environ[_ISA_VAR] = "AVX2"
        chosen["onednn_isa"] = "AVX2 (CPU has AVX-512; oneDNN's AVX-512 path uses a slow reference conv)"
    else:
        chosen["onednn_isa"] = "default (no AVX-512)"
    if _THREADS_VAR in os.environ:
        threads = int(os.environ[_THREADS_VAR])
        chosen["threads"] = f"{threads} (set by user in {_THREADS_VAR})"
    else:
        threads = usable_cpus()
        os.environ[_THREADS_VAR] = str(threads)
        chosen["threads"] = f"{threads} (cores usable by this process)"
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, str(threads))
    _applied.update(chosen)
    if verbose:
        print("[ddpm_ms] CPU settings: " + "; ".join(f"{k}={v}" for k, v in chosen.items()), flush=True)
    return dict(chosen)


def cpu_threads():
    """Thread count chosen by apply_cpu_env (or the usable cores)."""
    return int(os.environ.get(_THREADS_VAR, usable_cpus()))

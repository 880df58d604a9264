"""CPU settings: applied when they should be, left alone when the user set them; mode 'auto'.

Not timings (see bench/bench_train.py). The environment checks run ``apply_cpu_env`` in small
subprocesses with a controlled environment, because it acts once per process and must run
before MindSpore is imported; those subprocesses do not import MindSpore.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ddpm_ms import cpu_env
from ddpm_ms.config import ConfigError, resolve
from ddpm_ms.runtime import CPU_AUTO_MODE, MODES, resolve_mode

ROOT = Path(__file__).resolve().parents[1]
CPU_VARS = ("ONEDNN_MAX_CPU_ISA", "DDPM_MS_CPU_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
            "MKL_NUM_THREADS", "MS_DEV_RUNTIME_CONF")
FLAGS_AVX512 = "flags\t\t: fpu sse sse2 avx avx2 fma avx512f avx512dq avx512bw avx512vl amx_tile\n"
FLAGS_AVX2 = "flags\t\t: fpu sse sse2 avx avx2 fma bmi2\n"


def _cpuinfo(tmp_path, flags):
    path = tmp_path / "cpuinfo"
    path.write_text("processor\t: 0\nmodel name\t: Test CPU\n" + flags)
    return str(path)


def _run(tmp_path, flags=FLAGS_AVX512, env=None, prefix=(), matmul_convs=False):
    """apply_cpu_env in a fresh process; returns (chosen dict, resulting env vars, stdout)."""
    code = (
        "import json, os, sys\n"
        "from ddpm_ms.cpu_env import apply_cpu_env\n"
        f"chosen = apply_cpu_env(verbose=True, cpuinfo_path={_cpuinfo(tmp_path, flags)!r}, "
        f"matmul_convs={matmul_convs!r})\n"
        "again = apply_cpu_env(verbose=True)\n"
        "assert again == chosen\n"
        f"print('JSON' + json.dumps([chosen, {{k: os.environ.get(k) for k in {CPU_VARS!r}}}, "
        "'mindspore' in sys.modules]))\n")
    clean = {k: v for k, v in os.environ.items() if k not in CPU_VARS}
    clean.update(env or {})
    clean["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run([*prefix, sys.executable, "-c", code], env=clean, capture_output=True, text=True,
                          timeout=60, cwd=str(ROOT))
    assert proc.returncode == 0, proc.stderr
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("JSON"))
    chosen, values, ms_loaded = json.loads(line[4:])
    assert not ms_loaded, "apply_cpu_env must not import MindSpore"
    return chosen, values, proc.stdout


# ----------------------------------------------------------------------------- pure parsing
def test_avx512_detection_from_cpuinfo(tmp_path):
    assert cpu_env.cpu_has_avx512(_cpuinfo(tmp_path, FLAGS_AVX512))
    assert not cpu_env.cpu_has_avx512(_cpuinfo(tmp_path, FLAGS_AVX2))
    assert not cpu_env.cpu_has_avx512(str(tmp_path / "missing"))


def test_onednn_convs_slow_only_uncapped_on_avx512(tmp_path, monkeypatch):
    avx512, avx2 = _cpuinfo(tmp_path, FLAGS_AVX512), str(tmp_path / "avx2")
    Path(avx2).write_text("processor\t: 0\n" + FLAGS_AVX2)
    monkeypatch.delenv(cpu_env.ISA_VAR, raising=False)
    assert cpu_env.onednn_convs_slow(avx512) and not cpu_env.onednn_convs_slow(avx2)
    monkeypatch.setenv(cpu_env.ISA_VAR, "AVX2")
    assert not cpu_env.onednn_convs_slow(avx512)
    monkeypatch.setenv(cpu_env.ISA_VAR, "AVX512_CORE")
    assert cpu_env.onednn_convs_slow(avx512)


@pytest.mark.parametrize("text,want", [("max 100000", None), ("max", None), ("150000 100000", 1),
                                       ("200000 100000", 2), ("50000 100000", 1), ("400000 100000\n", 4)])
def test_cgroup_v2_cpu_max(text, want):
    assert cpu_env.parse_cgroup_v2(text) == want


def test_cgroup_v1_quota():
    assert cpu_env.parse_cgroup_v1("-1\n", "100000\n") is None
    assert cpu_env.parse_cgroup_v1("150000", "100000") == 1
    assert cpu_env.parse_cgroup_v1("300000", "100000") == 3


def test_cgroup_files_and_usable_cpus(tmp_path, monkeypatch):
    monkeypatch.setattr(cpu_env, "affinity_cpus", lambda: 8)
    proc = tmp_path / "cgroup"
    proc.write_text("0::/job\n")
    root = tmp_path / "fs"
    (root / "job").mkdir(parents=True)
    (root / "job" / "cpu.max").write_text("150000 100000\n")
    assert cpu_env.cgroup_cpu_limit(str(root), str(proc)) == 1
    assert cpu_env.usable_cpus(str(root), str(proc)) == 1
    (root / "job" / "cpu.max").write_text("max 100000\n")
    assert cpu_env.usable_cpus(str(root), str(proc)) == 8           # unlimited: the affinity mask
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("300000\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cpu_env.usable_cpus(str(v1), str(tmp_path / "none")) == 3
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert cpu_env.usable_cpus(str(v1), str(tmp_path / "none")) == 8
    assert cpu_env.usable_cpus(str(tmp_path / "nothing"), str(tmp_path / "none")) == 8


# ----------------------------------------------------------------------------- subprocesses
def test_applied_on_avx512_cpu(tmp_path):
    chosen, env, out = _run(tmp_path)
    assert env["ONEDNN_MAX_CPU_ISA"] == "AVX2"
    n = cpu_env.usable_cpus()
    assert env["DDPM_MS_CPU_THREADS"] == env["OMP_NUM_THREADS"] == str(n)
    assert chosen["threads"].startswith(f"{n} ")
    assert out.count("[ddpm_ms] CPU settings:") == 1                 # printed once


def test_no_cap_without_avx512(tmp_path):
    chosen, env, _ = _run(tmp_path, flags=FLAGS_AVX2)
    assert env["ONEDNN_MAX_CPU_ISA"] is None
    assert chosen["onednn_isa"].startswith("default")


def test_no_cap_when_every_conv_is_a_matmul(tmp_path):
    chosen, env, out = _run(tmp_path, flags=FLAGS_AVX512, matmul_convs=True)
    assert env["ONEDNN_MAX_CPU_ISA"] is None                          # AVX-512 matmuls allowed
    assert "AVX-512 matmuls" in chosen["onednn_isa"]
    chosen_avx2, _, _ = _run(tmp_path, flags=FLAGS_AVX2, matmul_convs=True)
    assert "AVX2 matmuls" in chosen_avx2["onednn_isa"]               # names what the CPU has
    n = cpu_env.usable_cpus()
    assert env["DDPM_MS_CPU_THREADS"] == str(n)                       # a kernel thread per core
    if shutil.which("taskset"):
        chosen, env, _ = _run(tmp_path, matmul_convs=True, prefix=("taskset", "-c", "0"))
        assert env["DDPM_MS_CPU_THREADS"] == "1"                      # one core: one thread
    assert "every conv runs as matmuls" in chosen["onednn_isa"]
    assert "every conv runs as matmuls" in out                        # the printout says why
    chosen, env, _ = _run(tmp_path, flags=FLAGS_AVX512, matmul_convs=True,
                          env={"ONEDNN_MAX_CPU_ISA": "AVX2"})
    assert env["ONEDNN_MAX_CPU_ISA"] == "AVX2" and "set by user" in chosen["onednn_isa"]


@pytest.mark.parametrize("conf, setting, want, added", [
    ("", "graph_pipeline:False", "graph_pipeline:False", True),
    ("all_finite:False", "graph_pipeline:False", "all_finite:False,graph_pipeline:False", True),
    (" all_finite:False , ", "graph_pipeline:False", "all_finite:False,graph_pipeline:False", True),
    ("graph_pipeline:True", "graph_pipeline:False", "graph_pipeline:True", False),
    ("a:1, graph_pipeline :true", "graph_pipeline:False", "a:1,graph_pipeline :true", False),
    ("graph_pipelines:1", "graph_pipeline:False", "graph_pipelines:1,graph_pipeline:False", True),
])
def test_with_runtime_conf(conf, setting, want, added):
    assert cpu_env.with_runtime_conf(conf, setting) == (want, added)


def test_accelerator_present(tmp_path):
    node = tmp_path / "davinci_manager"
    assert not cpu_env.accelerator_present((str(node),))
    node.write_text("")
    assert cpu_env.accelerator_present((str(tmp_path / "nvidiactl"), str(node)))


@pytest.mark.skipif(cpu_env.accelerator_present(), reason="an accelerator driver is present: the pipeline stays on")
def test_graph_pipeline_turned_off_keeping_user_keys(tmp_path):
    chosen, env, out = _run(tmp_path)
    assert env["MS_DEV_RUNTIME_CONF"] == "graph_pipeline:False"
    assert chosen["graph_pipeline"].startswith("off") and "graph_pipeline=off" in out
    _, env, _ = _run(tmp_path, env={"MS_DEV_RUNTIME_CONF": "all_finite:False"})
    assert env["MS_DEV_RUNTIME_CONF"] == "all_finite:False,graph_pipeline:False"
    chosen, env, _ = _run(tmp_path, env={"MS_DEV_RUNTIME_CONF": "graph_pipeline:True"})
    assert env["MS_DEV_RUNTIME_CONF"] == "graph_pipeline:True" and "set by user" in chosen["graph_pipeline"]


def _main_thread_cpu_share(tmp_path, pipeline_conf):
    """CPU seconds the calling thread spends per wall second while MindSpore runs a jitted SGD
    step of 40 matmul + tanh layers (big enough for the runtime to run it on its actor thread)."""
    code = (
        "import time\n"
        "from ddpm_ms.cpu_env import apply_cpu_env\n"
        "apply_cpu_env(verbose=False)\n"
        "import numpy as np, mindspore as ms\n"
        "from mindspore import nn, ops\n"
        "from ddpm_ms.runtime import setup_device\n"
        "setup_device('CPU', 'pynative', verbose=False)\n"
        "class Net(nn.Cell):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.w = ms.Parameter(ms.Tensor(np.full((256, 256), 1e-3, np.float32)), name='w')\n"
        "    def construct(self, x):\n"
        "        for _ in range(40):\n"
        "            x = ops.tanh(ops.matmul(x, self.w))\n"
        "        return x.sum()\n"
        "net = Net()\n"
        "opt = nn.SGD(net.trainable_params(), 1e-3)\n"
        "grad_fn = ms.value_and_grad(net, None, opt.parameters)\n"
        "@ms.jit\n"
        "def step(x):\n"
        "    loss, g = grad_fn(x)\n"
        "    opt(g)\n"
        "    return loss\n"
        "x = ms.Tensor(np.ones((256, 256), np.float32))\n"
        "step(x).asnumpy()\n"
        "c0, t0 = time.thread_time(), time.perf_counter()\n"
        "while time.perf_counter() - t0 < 1.5:\n"
        "    step(x).asnumpy()\n"
        "print('SHARE', (time.thread_time() - c0) / (time.perf_counter() - t0))\n")
    env = {k: v for k, v in os.environ.items() if k not in CPU_VARS}
    env.update(PYTHONPATH=str(ROOT), DDPM_MS_CPU_THREADS="1", GLOG_v="3")
    if pipeline_conf:
        env["MS_DEV_RUNTIME_CONF"] = pipeline_conf
    script = tmp_path / "share.py"          # ms.jit parses source: it needs a file
    script.write_text(code)
    proc = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=180,
                          cwd=str(ROOT))
    assert proc.returncode == 0, proc.stderr[-2000:]
    return float(next(ln for ln in proc.stdout.splitlines() if ln.startswith("SHARE")).split()[1])


@pytest.mark.skipif(cpu_env.accelerator_present(), reason="an accelerator driver is present: the pipeline stays on")
def test_calling_thread_blocks_instead_of_spinning(tmp_path):
    """With apply_cpu_env's runtime settings the Python thread sleeps while a jitted graph runs;
    with MindSpore's graph pipeline on it busy-waits (the control: it must show the spin, else
    this test could not fail)."""
    assert _main_thread_cpu_share(tmp_path, "") < 0.25
    assert _main_thread_cpu_share(tmp_path, "graph_pipeline:True") > 0.5


def _prepare(tmp_path, args, then):
    """runtime.prepare(args) in a fresh process with no CPU variables set, then the code ``then``; stdout."""
    code = f"import os\nfrom ddpm_ms.runtime import prepare\ncfg, info = prepare({args!r})\n{then}"
    env = {k: v for k, v in os.environ.items() if k not in CPU_VARS}
    env.update(PYTHONPATH=str(ROOT), GLOG_v="3")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                          cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


@pytest.mark.parametrize("conv_impl", ["auto", "native"])
def test_prepare_caps_isa_only_for_native_convs(tmp_path, conv_impl):
    out = _prepare(tmp_path, ["--device_target", "CPU", "--conv_impl", conv_impl],
                   "print('ISA', os.environ.get('ONEDNN_MAX_CPU_ISA'))\n")
    capped = conv_impl == "native" and cpu_env.cpu_has_avx512()
    assert f"ISA {'AVX2' if capped else 'None'}" in out


def test_user_isa_left_alone(tmp_path):
    chosen, env, _ = _run(tmp_path, env={"ONEDNN_MAX_CPU_ISA": "AVX512_CORE"})
    assert env["ONEDNN_MAX_CPU_ISA"] == "AVX512_CORE"
    assert "set by user" in chosen["onednn_isa"]


def test_user_threads_used(tmp_path):
    chosen, env, _ = _run(tmp_path, env={"DDPM_MS_CPU_THREADS": "3", "MKL_NUM_THREADS": "7"})
    assert env["DDPM_MS_CPU_THREADS"] == env["OMP_NUM_THREADS"] == env["OPENBLAS_NUM_THREADS"] == "3"
    assert env["MKL_NUM_THREADS"] == "7"                              # a user's pool setting stays
    assert "set by user" in chosen["threads"]


def test_bad_thread_count_is_a_config_error(monkeypatch):
    monkeypatch.setenv("DDPM_MS_CPU_THREADS", "two")
    with pytest.raises(ConfigError, match="DDPM_MS_CPU_THREADS"):
        cpu_env.cpu_threads()


@pytest.mark.skipif(shutil.which("taskset") is None or not hasattr(os, "sched_getaffinity"),
                    reason="needs taskset (util-linux) and Linux affinity")
def test_affinity_limited_process_gets_one_thread(tmp_path):
    _, env, _ = _run(tmp_path, prefix=("taskset", "-c", "0"))
    assert env["DDPM_MS_CPU_THREADS"] == "1"


def test_thread_count_reaches_mindspore(tmp_path):
    """The chosen count is really passed to MindSpore's op thread pool (set once per process)."""
    code = (
        "from ddpm_ms.cpu_env import apply_cpu_env\n"
        "apply_cpu_env(verbose=False)\n"
        "import mindspore as ms\n"
        "from mindspore._c_expression import RuntimeConf\n"
        "from ddpm_ms.runtime import setup_device\n"
        "assert not RuntimeConf.get_instance().is_op_threads_num_configured()\n"
        "info = setup_device('CPU', 'auto', verbose=False)\n"
        "assert RuntimeConf.get_instance().is_op_threads_num_configured()\n"
        "info2 = setup_device('CPU', 'pynative', verbose=False)   # a second call does not fail\n"
        "print('THREADS', info['threads'], info['mode'], info2['mode'])\n")
    env = {k: v for k, v in os.environ.items() if k not in CPU_VARS}
    env.update(PYTHONPATH=str(ROOT), DDPM_MS_CPU_THREADS="1", GLOG_v="3")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                          cwd=str(ROOT))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"THREADS 1 {CPU_AUTO_MODE} pynative" in proc.stdout


# ----------------------------------------------------------------------------- mode auto
def test_mode_auto_resolution():
    """Every listed mode resolves to one MindSpore can run, and setting it up really puts
    MindSpore in that mode (not a copy of the tuple or of CPU_AUTO_MODE: what they do)."""
    import mindspore as ms
    from ddpm_ms.runtime import setup_device
    context = {"graph": ms.GRAPH_MODE, "pynative": ms.PYNATIVE_MODE}
    for requested in MODES:
        for target in ("CPU", "GPU", "Ascend"):
            mode, why = resolve_mode(requested, target)
            assert mode in context, (requested, target, mode)
            if requested == "auto":
                assert why.startswith("auto:") and (target == "CPU" or mode == "graph")
            else:
                assert (mode, why) == (requested, "requested")
        info = setup_device("CPU", requested, verbose=False)
        assert info["mode"] == resolve_mode(requested, "CPU")[0]
        assert ms.get_context("mode") == context[info["mode"]], requested
    assert resolve_mode("auto", "Ascend") == ("graph", "auto: graph on Ascend")
    assert resolve_mode("pynative", "CPU") == ("pynative", "requested")
    assert resolve_mode("graph", "GPU") == ("graph", "requested")
    with pytest.raises(ValueError, match="mode must be one of"):
        resolve_mode("eager", "CPU")


def test_config_mode_defaults_to_auto():
    assert resolve({})["mode"] == "auto"
    assert resolve({}, {"mode": "pynative"})["mode"] == "pynative"
    with pytest.raises(ConfigError, match="mode"):
        resolve({}, {"mode": "eager"})


def test_prepare_resolves_auto_and_prints_once(tmp_path):
    out = _prepare(tmp_path, ["--device_target", "CPU", "--mode", "auto"],
                   "print('MODE', cfg['mode'], cfg['_requested_mode'], info['mode'])\n")
    assert f"MODE {CPU_AUTO_MODE} auto {CPU_AUTO_MODE}" in out
    assert out.count("[ddpm_ms] CPU settings:") == 1
    device_lines = [ln for ln in out.splitlines() if ln.startswith("[ddpm_ms] device:")]
    assert len(device_lines) == 1 and f"mode={CPU_AUTO_MODE} (auto:" in device_lines[0]

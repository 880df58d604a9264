"""Is training the Fashion-MNIST feature classifier reproducible from machine to machine?

Each case trains ``ddpm_ms.eval.feature_net.train_classifier`` (the code that made the shipped
weights: seed 0, same data order) on the first ``--max_train`` training images for one epoch,
in a fresh process with the case's environment and CPU affinity, and prints the SHA-256 of the
checkpoint it writes. Equal hashes mean bit-identical weights. This is why the classifier's
weights ship with the code instead of being trained on each machine (README, BENCHMARKS.md).

    python bench/feature_net_repro.py --data_dir ../shared/data/fashion-mnist
    python bench/feature_net_repro.py --data_dir ... --cases 1t 2t isa_avx512   # AVX-512 convs are slow
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# name: (what it is, environment, cores for taskset or None)
CASES = {
    "1t": ("all cores, 1 kernel thread", {"DDPM_MS_CPU_THREADS": "1"}, None),
    "2t": ("all cores, 2 kernel threads", {"DDPM_MS_CPU_THREADS": "2"}, None),
    "2t_again": ("all cores, 2 kernel threads, again", {"DDPM_MS_CPU_THREADS": "2"}, None),
    "core0_1t": ("taskset -c 0, 1 kernel thread", {"DDPM_MS_CPU_THREADS": "1"}, "0"),
    "core0_2t": ("taskset -c 0, 2 kernel threads", {"DDPM_MS_CPU_THREADS": "2"}, "0"),
    "isa_sse41": ("all cores, 2 threads, ONEDNN_MAX_CPU_ISA=SSE41",
                  {"DDPM_MS_CPU_THREADS": "2", "ONEDNN_MAX_CPU_ISA": "SSE41"}, None),
    "isa_avx512": ("all cores, 2 threads, ONEDNN_MAX_CPU_ISA=AVX512_CORE",
                   {"DDPM_MS_CPU_THREADS": "2", "ONEDNN_MAX_CPU_ISA": "AVX512_CORE"}, None),
}
DEFAULT_CASES = ["1t", "2t", "2t_again", "core0_1t", "core0_2t", "isa_sse41"]

CHILD = """
import sys
from ddpm_ms.runtime import setup_device
from ddpm_ms.eval.feature_net import train_classifier
setup_device("CPU", mode="pynative", verbose=False)
meta = train_classifier(sys.argv[1], sys.argv[2], epochs=1, seed=0, max_train=int(sys.argv[3]), log=lambda m: None)
print("RESULT", meta["sha256"], meta["test_accuracy"])
"""


def run_case(name, data_dir, max_train, folder):
    what, env, cores = CASES[name]
    # ONEDNN_MAX_CPU_ISA left unset means the project's choice (AVX2 on AVX-512 CPUs, cpu_env.py)
    env = dict({k: v for k, v in os.environ.items() if k not in ("DDPM_MS_CPU_THREADS", "ONEDNN_MAX_CPU_ISA")},
               PYTHONPATH=ROOT, GLOG_v="3", **env)
    cmd = ([] if cores is None else ["taskset", "-c", cores]) + [
        sys.executable, "-c", CHILD, data_dir, os.path.join(folder, f"{name}.ckpt"), str(max_train)]
    start = time.time()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT")]
    if r.returncode or not lines:
        sys.exit(f"error: case {name} failed:\n{r.stderr[-2000:]}")
    _, sha, acc = lines[0].split()
    return what, sha, float(acc), time.time() - start


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("--data_dir", required=True, help="folder with the official Fashion-MNIST files")
    p.add_argument("--max_train", type=int, default=4096, help="training images (one epoch of them)")
    p.add_argument("--cases", nargs="+", default=DEFAULT_CASES, choices=sorted(CASES))
    args = p.parse_args(argv)
    print(f"| case | sha256 | test accuracy | wall s |\n| --- | --- | --: | --: |")
    with tempfile.TemporaryDirectory() as folder:
        for name in args.cases:
            what, sha, acc, secs = run_case(name, args.data_dir, args.max_train, folder)
            print(f"| {what} | {sha[:12]} | {acc:.4f} | {secs:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

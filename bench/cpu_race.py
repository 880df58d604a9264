"""Same CPU minutes, which model is better? ddpm_ms against the PyTorch peer, one after the other.

    python bench/cpu_race.py --minutes 40                       # the headline comparison (issue 19)
    python bench/cpu_race.py --minutes 2 --samples 200          # a quick check that it all runs

1. ddpm_ms: ``train.py --config CONFIG --max_minutes M`` on the Fashion-MNIST train split, then
   ``sample.py``: ``--samples`` images with DDIM-50, eta 0, EMA weights.
2. the peer: ``bench/peer_torch.py`` kind ``peer_fit`` trains denoising-diffusion-pytorch 2.3.4
   for the same M minutes the way its Trainer does and samples the same way (DDIM-50, eta 0, EMA);
   its model is kept as OUT/peer/model-race.pt (``python -m ddpm_ms.convert`` imports it).
3. both sample sets are scored by ``python -m ddpm_ms.eval.evaluate`` against the Fashion-MNIST
   test split with the project's classifier (FID, KID, precision / recall, and the fraction of
   samples in each class).

Writes OUT/race.json, OUT/race.md (a table with the commands) and OUT/race.png (64 samples of
each side by side). By default the runs are sequential, so each gets the whole machine: run it on
an idle machine and say which one. ``--pinned``: both sides at the same time, each pinned to its
own core with ``taskset`` (the peer with one torch thread), so both see the same machine state and
the pair takes M minutes instead of 2M. ``--peer_python``: an interpreter with torch and the library (the test
extra, requirements-parity*.txt, or the bench venv of requirements-bench.txt).
"""
import argparse
import concurrent.futures
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def run(cmd, what, env=None):
    """Run ``cmd`` (output shown), fail with one line naming ``what``; returns (seconds, stdout)."""
    print(f"[race] {what}: {' '.join(map(str, cmd))}", flush=True)
    t0 = time.time()
    proc = subprocess.run([str(c) for c in cmd], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    sys.stdout.write(proc.stdout[-4000:])
    if proc.returncode:
        sys.exit(f"error: {what} failed (exit {proc.returncode}); see its output above")
    return time.time() - t0, proc.stdout


DEFAULT_DATA_DIR = os.environ.get("DDPM_MS_DATA", str(ROOT.parent / "shared" / "data")) + "/fashion-mnist"


def sample_command(ckpt, num_samples, out, *extra):
    """sample.py: ``num_samples`` DDIM-50 (eta 0, seed 0) samples of the EMA weights into ``out``."""
    return [sys.executable, "sample.py", "--ckpt", ckpt, "--num_samples", num_samples, "--sampler", "ddim",
            "--steps", 50, "--eta", 0, "--seed", 0, "--out", out, "--overwrite", *extra]


def score_command(samples, data_dir):
    """The evaluate CLI on ``samples`` (.npz) against the Fashion-MNIST test split."""
    return [sys.executable, "-m", "ddpm_ms.eval.evaluate", "--samples", samples, "--ref", "fashion_mnist",
            "--data_dir", data_dir]


def parse_scores(stdout):
    """The JSON the evaluate CLI prints after its progress lines."""
    return json.loads(stdout[stdout.index("{"):])


def evaluate(samples, data_dir, out):
    """The evaluate CLI's JSON for ``samples`` against the Fashion-MNIST test split."""
    _, stdout = run(score_command(samples, data_dir), f"scoring {samples}")
    result = parse_scores(stdout)
    Path(out).write_text(json.dumps(result, indent=2))
    return result


def side_by_side(ours, peer, path, n=64):
    import numpy as np
    from PIL import Image

    from ddpm_ms.data.images import tile
    grids = [tile(np.load(p)["images"][:n]) for p in (ours, peer)]
    gap = np.full((grids[0].shape[0], 8, grids[0].shape[2]), 255, np.uint8)
    both = np.concatenate([grids[0], gap, grids[1]], 1)
    Image.fromarray(both[..., 0] if both.shape[-1] == 1 else both).save(path)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=40.0, help="training minutes for each side")
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--config", default="configs/fashion_mnist.yaml", help="ddpm_ms's recipe")
    p.add_argument("--data_dir", default=DEFAULT_DATA_DIR)
    p.add_argument("--out", default="runs/race")
    p.add_argument("--threads", type=int, default=2, help="the peer's torch threads")
    p.add_argument("--peer_python", default=sys.executable)
    p.add_argument("--skip", choices=("ours", "peer"), default=None, help="reuse that side's earlier samples")
    p.add_argument("--pinned", action="store_true",
                   help="run both sides at once, ours on core 0 and the peer (1 thread) on core 1")
    args = p.parse_args(argv)
    out = (ROOT / args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    ours_npz, peer_npz = out / "ours_samples" / "samples.npz", out / "peer_samples.npz"
    train_cmd = [sys.executable, "train.py", "--config", args.config, "--device_target", "CPU",
                 "--max_minutes", args.minutes, "--data_dir", args.data_dir, "--output_dir", out, "--run_name", "ours"]
    sample_cmd = sample_command(out / "ours" / "latest.ckpt", args.samples, out / "ours_samples")
    if args.pinned:
        if shutil.which("taskset") is None or (os.cpu_count() or 1) < 2:
            sys.exit("error: --pinned needs taskset and two cores")
        args.threads = 1
        train_cmd, sample_cmd = (["taskset", "-c", "0", *c] for c in (train_cmd, sample_cmd))
    peer_spec = {"kind": "peer_fit", "minutes": args.minutes, "samples": args.samples, "data_dir": args.data_dir,
                 "out": str(peer_npz), "threads": args.threads, "ckpt": str(out / "peer" / "model-race.pt")}
    peer_cmd = [args.peer_python, "bench/peer_torch.py", "--json", json.dumps(peer_spec)]
    if args.pinned:
        peer_cmd = ["taskset", "-c", "1", *peer_cmd]
    times = {}

    def ours():
        times["ours_train_s"], _ = run(train_cmd, "ddpm_ms training")
        times["ours_sample_s"], _ = run(sample_cmd, "ddpm_ms sampling")

    def peer():
        times["peer_s"], stdout = run(peer_cmd, "peer training and sampling")
        line = [s for s in stdout.splitlines() if s.startswith("RESULT ")][-1]
        times["peer"] = json.loads(line[len("RESULT "):])

    sides = [f for f, name in ((ours, "ours"), (peer, "peer")) if args.skip != name]
    if args.pinned:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            for f in [pool.submit(side) for side in sides]:
                f.result()
    else:
        for side in sides:
            side()
    scores = {"ours": evaluate(ours_npz, args.data_dir, out / "ours_eval.json"),
              "peer": evaluate(peer_npz, args.data_dir, out / "peer_eval.json")}
    side_by_side(ours_npz, peer_npz, out / "race.png")
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    try:
        machine = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                       if line.startswith("model name")) + f", {os.cpu_count()} cores"
    except (OSError, StopIteration):
        pass
    report = {"date": datetime.date.today().isoformat(), "machine": machine, "minutes": args.minutes,
              "samples": args.samples, "config": args.config, "pinned": args.pinned, "times": times, "scores": scores,
              "commands": {"train": " ".join(map(str, train_cmd)), "sample": " ".join(map(str, sample_cmd)),
                           "peer": " ".join(map(str, peer_cmd))}}
    (out / "race.json").write_text(json.dumps(report, indent=2))
    rows = ["| run | FID | KID | precision | recall | smallest class |", "| --- | --: | --: | --: | --: | --: |"]
    for name, s in scores.items():
        rows.append(f"| {name} | {s['fid']:.2f} | {s['kid_mean']:.4f} | {s['precision']:.3f} | {s['recall']:.3f} | "
                    f"{s['min_class_fraction']:.1%} |")
    how = "at the same time, one core each (taskset)" if args.pinned else "one after the other, whole machine"
    md = "\n".join([f"{args.minutes:g} minutes each, {how}, {args.samples} DDIM-50 samples, {machine}, "
                    f"{report['date']}", "", *rows, "", "```", *report["commands"].values(), "```", ""])
    (out / "race.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()

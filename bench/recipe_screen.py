"""Which recipe makes the best model in a fixed CPU budget? Train each candidate for the same
minutes, sample, score, and tabulate (issue 19, section 2).

    python bench/recipe_screen.py --minutes 8 --samples 300                 # every row
    python bench/recipe_screen.py --minutes 8 --rows base,v,lr2e-3          # some rows
    python bench/recipe_screen.py --images 10208 --base screen --rows p2_off  # a new row of the 2026-12-02
                                          # table: its base recipe, 319 steps of 32 on any machine

Each row is ``configs/fashion_mnist_cpu.yaml`` (``--config``) plus the overrides in ROWS, trained
with ``train.py --max_minutes M``, then sampled by ``sample.py`` (DDIM-50, eta 0, EMA weights,
seed 0) and scored by ``python -m ddpm_ms.eval.evaluate`` against the Fashion-MNIST test split
with the project's classifier. With ``--parallel 2`` (default on two or more cores) two rows run
at a time, each pinned to its own core with ``taskset``, so every row gets one core; the rows
are compared with each other, not with the 2-core figures of other benchmarks.

Writes OUT/ROW/... (run folders), OUT/ROW_eval.json, OUT/screen.json and OUT/screen.md.
"""
import argparse
import datetime
import json
import os
import queue
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))            # ddpm_ms, for _row_batch
sys.path.insert(0, str(ROOT / "bench"))
from cpu_race import DEFAULT_DATA_DIR, parse_scores, sample_command, score_command  # noqa: E402

# row name -> train.py overrides on top of the base config
ROWS = {
    "base": [],
    "convnext": ["--use_convnext", "true"],
    "tutorial": ["--config", "configs/fashion_mnist.yaml"],
    "v": ["--objective", "v"],
    "min_snr": ["--loss_weight", "min_snr"],
    "p2_off": ["--loss_weight", "none"],
    "linear": ["--beta_schedule", "linear"],
    "cosine": ["--beta_schedule", "cosine"],
    "batch32": ["--batch_size", "32"],
    "sigmoid_abar": ["--beta_schedule", "sigmoid_abar"],
    "lr2e-4": ["--lr", "2e-4"],
    "lr2e-3": ["--lr", "2e-3"],
    "batch16": ["--batch_size", "16"],
    "batch64": ["--batch_size", "64"],
    "ema0.995": ["--ema_decay", "0.995"],
    "ema0.9999": ["--ema_decay", "0.9999"],
}

# The recipe the rows of BENCHMARKS.md's screen (2026-12-02) were measured against: the config as it
# was then. Its sampler settings matter only for the stored config; sample.py is told DDIM-50 eta 0.
BASES = {
    "config": [],
    "screen": ["--objective", "eps", "--loss_weight", "p2", "--batch_size", "32", "--beta_schedule", "linear",
               "--sampler", "ddim", "--sample_steps", "50", "--spacing", "leading"],
}


def row_commands(name, args, out):
    extra = list(ROWS[name])
    config = args.config
    base = list(BASES[args.base])
    if "--config" in extra:
        i = extra.index("--config")
        config = extra[i + 1]
        del extra[i:i + 2]
        base = base[base.index("--sampler"):] if "--sampler" in base else []  # another recipe: its grid only
    budget = ["--max_minutes", str(args.minutes)]
    if args.images:
        # an equal number of training images instead of equal minutes: the row's steps at its batch size
        batch = _row_batch(config, base + extra)
        budget = ["--max_minutes", "0", "--max_steps", str(-(-args.images // batch))]
    train = [sys.executable, "train.py", "--config", config, "--device_target", "CPU", *budget,
             "--data_dir", args.data_dir, "--output_dir", str(out), "--run_name", name,
             "--preview_minutes", "0", *base, *extra]
    sample = sample_command(out / name / "latest.ckpt", args.samples, out / f"{name}_samples", "--no_per_image")
    score = score_command(out / f"{name}_samples" / "samples.npz", args.data_dir)
    return train, [str(c) for c in sample], [str(c) for c in score]


def _row_batch(config, overrides):
    """The batch size a row trains with: its config with the overrides (the last of a key wins), as
    train.py resolves it."""
    from ddpm_ms.config import read_yaml, resolve
    cli = {key.lstrip("-"): value for key, value in zip(overrides[::2], overrides[1::2])}
    return resolve(read_yaml(ROOT / config), cli)["batch_size"]


def run_row(name, args, out, core):
    pin = ["taskset", "-c", str(core)] if core is not None else []
    train, sample, score = row_commands(name, args, out)
    log = open(out / f"{name}.log", "w")
    result = {"row": name, "overrides": " ".join(ROWS[name]), "core": core}
    for what, cmd in (("train", train), ("sample", sample), ("score", score)):
        t0 = time.time()
        proc = subprocess.run(pin + cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        log.write(f"$ {' '.join(pin + cmd)}\n{proc.stdout}\n")
        log.flush()
        result[f"{what}_s"] = round(time.time() - t0, 1)
        if proc.returncode:
            result["error"] = f"{what} failed (exit {proc.returncode}), see {out / (name + '.log')}"
            return result
        if what == "train":
            result["steps"] = _last_step(proc.stdout)
        if what == "score":
            scores = parse_scores(proc.stdout)
            (out / f"{name}_eval.json").write_text(json.dumps(scores, indent=2))
            result.update({k: scores[k] for k in ("fid", "kid_mean", "precision", "recall", "min_class_fraction")})
    result["command"] = " ".join(train)
    return result


def _last_step(stdout):
    """The step of the trainer's last line, "stopped at step N: ..."."""
    steps = re.findall(r"stopped at step (\d+)", stdout)
    return int(steps[-1]) if steps else None


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=8.0, help="training minutes per row")
    p.add_argument("--images", type=int, default=0,
                   help="train each row on this many images (max_steps = images / its batch) instead of "
                        "--minutes: a budget that does not depend on the machine's speed")
    p.add_argument("--samples", type=int, default=300)
    p.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, from: {', '.join(ROWS)}")
    p.add_argument("--config", default="configs/fashion_mnist_cpu.yaml", help="the base recipe")
    p.add_argument("--data_dir", default=DEFAULT_DATA_DIR)
    p.add_argument("--out", default="runs/screen")
    p.add_argument("--base", choices=sorted(BASES), default="config",
                   help="config: the rows' overrides on --config as it is; screen: on the recipe the "
                        "2026-12-02 screen started from (eps, p2, batch 32, linear betas), so new rows join its table")
    p.add_argument("--parallel", type=int, default=min(2, os.cpu_count() or 1),
                   help="rows at a time, each pinned to its own core (1: one row on the whole machine)")
    p.add_argument("--cores", default=None,
                   help="comma-separated cores to pin rows to, one row per core at a time (overrides --parallel)")
    args = p.parse_args(argv)
    names = [r for r in args.rows.split(",") if r]
    unknown = [r for r in names if r not in ROWS]
    if unknown:
        sys.exit(f"error: unknown row(s) {', '.join(unknown)}; choose from {', '.join(ROWS)}")
    if (args.parallel > 1 or args.cores) and shutil.which("taskset") is None:
        sys.exit("error: --parallel > 1 and --cores pin rows with taskset, which is not installed; use --parallel 1")
    out = (ROOT / args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    todo = queue.Queue()
    for n in names:
        todo.put(n)
    results, lock = {}, threading.Lock()

    def worker(core):
        while True:
            try:
                name = todo.get_nowait()
            except queue.Empty:
                return
            print(f"[screen] {name} on core {core}: started {time.strftime('%H:%M:%S')}", flush=True)
            r = run_row(name, args, out, core)
            print(f"[screen] {name}: {json.dumps(r)}", flush=True)
            with lock:
                results[name] = r
                (out / "screen.json").write_text(json.dumps({"date": datetime.date.today().isoformat(),
                                                             "minutes": args.minutes, "samples": args.samples,
                                                             "rows": results}, indent=2))

    if args.cores:
        cores = [int(c) for c in args.cores.split(",")]
    else:
        cores = list(range(args.parallel)) if args.parallel > 1 else [None]
    threads = [threading.Thread(target=worker, args=(c,)) for c in cores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    budget = f"{args.images:,} training images per row" if args.images else f"{args.minutes:g} minutes per row"
    lines = [f"{budget} on one core each, {args.samples} DDIM-50 samples, "
             f"{datetime.date.today().isoformat()}", "",
             "| row | overrides | steps | FID | KID | smallest class | precision | recall |",
             "| --- | --- | --: | --: | --: | --: | --: | --: |"]
    for n in names:
        r = results[n]
        if "error" in r:
            lines.append(f"| {n} | {r['overrides']} | - | {r['error']} | | | | |")
            continue
        lines.append(f"| {n} | {r['overrides']} | {r['steps']} | {r['fid']:.1f} | {r['kid_mean']:.4f} | "
                     f"{r['min_class_fraction']:.1%} | {r['precision']:.3f} | {r['recall']:.3f} |")
    (out / "screen.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

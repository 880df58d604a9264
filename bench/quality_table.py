"""Sample quality against sampler and step count: the DDIM paper's Table 1 for one checkpoint.

    python bench/quality_table.py --ckpt runs/fashion_mnist/latest.ckpt \
        --data_dir data/fashion-mnist --num_samples 2000 \
        --rows ddim10:0 ddim10:1 ddim20:0 ddim20:1 ddim50:0 ddim50:1 ddim100:0 ddim100:1 ddpm

Each row ``ddimS:ETA`` (or ``ddpm``, all T steps) draws ``--num_samples`` images from the
checkpoint's EMA weights with the same seed (so every row starts from the same x_T), writes
them to ``<out>/<row>/samples.npz``, and scores them against the Fashion-MNIST test split
with ``ddpm_ms.evaluate``'s metrics on the project's classifier features (FID, KID,
precision/recall, k = 3). A row whose samples.npz already holds enough images is scored
without sampling again, so an interrupted table resumes where it stopped. A ``real`` row
scores ``--num_samples`` training images against the same reference: the FID floor for
that sample count.

Writes ``<out>/results.jsonl`` (one line per row, newest wins) and ``<out>/table.md`` (FID
with eta as rows and steps as columns, then every metric and the sampling time per row).
"""
import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ddpm_ms.cpu_env import apply_cpu_env  # noqa: E402

apply_cpu_env(verbose=False)
os.environ.setdefault("GLOG_v", "3")

import numpy as np  # noqa: E402


def parse_row(text):
    """'ddim50:0' -> ('ddim', 50, 0.0); 'ddpm' -> ('ddpm', None, 1.0); 'real' -> ('real', None, None)."""
    if text in ("ddpm", "real"):
        return text, None, (1.0 if text == "ddpm" else None)
    try:
        head, eta = text.split(":")
        assert head.startswith("ddim")
        return "ddim", int(head[4:]), float(eta)
    except (ValueError, AssertionError):
        raise SystemExit(f"error: bad row {text!r}; use ddimSTEPS:ETA (e.g. ddim50:0), ddpm or real") from None


def load_results(path):
    rows = {}
    if os.path.isfile(path):
        with open(path) as f:
            for line in f:
                if line.strip():
                    r = json.loads(line)
                    rows[r["row"]] = r
    return rows


def render(results, timesteps, meta):
    """Markdown: a FID grid (eta x steps) and a full per-row table."""
    gen = [r for r in results.values() if r["sampler"] != "real"]
    steps = sorted({r["steps"] for r in gen})
    etas = sorted({r["eta"] for r in gen})
    lines = [f"Checkpoint `{meta['ckpt']}` (step {meta['step']}, EMA weights), "
             f"{meta['num_samples']} samples per row against {meta['num_ref']} Fashion-MNIST test images, "
             f"classifier features (sha256 {meta['sha256'][:12]}).", "",
             "FID (lower is better); `-` = not run. DDPM is the eta = 1 row at S = T "
             f"({timesteps}) with the posterior variance.", "",
             "| eta \\ S | " + " | ".join(str(s) for s in steps) + " |",
             "|---|" + "--:|" * len(steps)]
    for eta in etas:
        cells = []
        for s in steps:
            hit = [r for r in gen if r["steps"] == s and r["eta"] == eta]
            cells.append(f"{hit[0]['fid']:.2f}" if hit else "-")
        lines.append(f"| {eta:g} | " + " | ".join(cells) + " |")
    if "real" in results:
        lines += ["", f"Floor: {results['real']['num_samples']} real training images score "
                      f"FID {results['real']['fid']:.2f} against the same reference."]
    lines += ["", "| row | sampler | S | eta | FID | KID | precision | recall | sampling s | images/s |",
              "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for r in sorted(results.values(), key=lambda r: (r["sampler"] == "real", r["steps"] or 0, r["eta"] or 0)):
        secs = r.get("sample_seconds")
        eta = "-" if r["eta"] is None else format(r["eta"], "g")
        timing = f"{secs:.0f} | {r['num_samples'] / secs:.2f}" if secs else "- | -"
        lines.append(f"| {r['row']} | {r['sampler']} | {r['steps'] or '-'} | {eta} | {r['fid']:.2f} | "
                     f"{r['kid_mean']:.3g} ± {r['kid_std']:.2g} | {r['precision']:.3f} | "
                     f"{r['recall']:.3f} | {timing} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ckpt", required=True)
    p.add_argument("--data_dir", default="data/fashion-mnist")
    p.add_argument("--rows", nargs="+", default=["ddim10:0", "ddim10:1", "ddim20:0", "ddim20:1"])
    p.add_argument("--num_samples", type=int, default=2000)
    p.add_argument("--batch_size", type=int, default=250)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="default: <ckpt folder>/quality")
    p.add_argument("--classifier", default=None)
    args = p.parse_args(argv)
    rows = [(r,) + parse_row(r) for r in args.rows]
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(args.ckpt)), "quality")
    os.makedirs(out, exist_ok=True)

    from ddpm_ms.data import to_uint8
    from ddpm_ms.device import setup_device
    from ddpm_ms.evaluate import _classifier, evaluate_images
    from ddpm_ms.feature_net import extract_features, load_fashion_mnist
    from ddpm_ms.sample_job import image_shape, load_network, sampling_options, save_npz
    from ddpm_ms.sampling import sample
    from ddpm_ms.trainer import build_schedule

    setup_device("CPU", "graph", -1, seed=args.seed, verbose=False)
    net, cfg, meta = load_network(args.ckpt, "ema")
    schedule = build_schedule(cfg)
    clf, clf_info = _classifier(argparse.Namespace(classifier=args.classifier, data_dir=args.data_dir))
    test, _ = load_fashion_mnist(args.data_dir, "test")
    real_f = extract_features(clf, test[..., None])
    results_path = os.path.join(out, "results.jsonl")
    results = load_results(results_path)
    info = dict(ckpt=os.path.abspath(args.ckpt), step=int(meta["step"]), num_samples=args.num_samples,
                num_ref=len(test), sha256=clf_info["sha256"])

    for name, sampler, steps, eta in rows:
        row_dir = os.path.join(out, name.replace(":", "_eta"))
        npz = os.path.join(row_dir, "samples.npz")
        secs = None
        if sampler == "real":
            train, _ = load_fashion_mnist(args.data_dir, "train")
            pick = np.random.default_rng(args.seed).choice(len(train), args.num_samples, replace=False)
            u8 = train[np.sort(pick)][..., None]
        elif os.path.isfile(npz) and len(np.load(npz)["images"]) >= args.num_samples:
            u8 = np.load(npz)["images"][:args.num_samples]
            secs = results.get(name, {}).get("sample_seconds")
        else:
            opts = sampling_options(cfg, sampler, steps, eta)
            print(f"[quality] {name}: {args.num_samples} samples, {opts['sampler']} "
                  f"{opts['num_steps']} steps, eta {opts['eta']:g}", flush=True)
            t0 = time.time()
            images = sample(net, schedule, args.num_samples, image_shape(cfg), batch_size=args.batch_size,
                            seed=args.seed, **opts)
            secs = time.time() - t0
            u8 = to_uint8(images)
            os.makedirs(row_dir, exist_ok=True)
            save_npz(npz, images=u8)
        m = evaluate_images(extract_features(clf, u8), real_f, seed=args.seed)
        steps = cfg["timesteps"] if sampler == "ddpm" else steps
        results[name] = dict(row=name, sampler=sampler, steps=steps, eta=eta, num_samples=int(len(u8)),
                             sample_seconds=secs, date=datetime.date.today().isoformat(), **m)
        with open(results_path + ".tmp", "w") as f:
            for r in results.values():
                f.write(json.dumps(r) + "\n")
        os.replace(results_path + ".tmp", results_path)
        with open(os.path.join(out, "table.md"), "w") as f:
            f.write(render(results, cfg["timesteps"], info))
        print(f"[quality] {name}: FID {m['fid']:.2f}, KID {m['kid_mean']:.4f}, precision "
              f"{m['precision']:.3f}, recall {m['recall']:.3f}"
              + (f", {secs:.0f} s sampling" if secs else ""), flush=True)
    print(open(os.path.join(out, "table.md")).read())
    return 0


if __name__ == "__main__":
    sys.exit(main())

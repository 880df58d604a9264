"""Sample quality against sampler and step count: the DDIM paper's Table 1 for one checkpoint.

    python bench/quality_table.py --ckpt runs/fashion_mnist/latest.ckpt \
        --data_dir data/fashion-mnist --num_samples 2000 \
        --rows ddim10:0 ddim10:1 ddim20:0 ddim20:1 ddim50:0 ddim50:1 ddim100:0 ddim100:1 ddpm

Quality against network calls (one figure, one table): DDIM eta 0, DDIM eta 1 and
DPM-Solver++(2M) at each call count, 1,000 samples per cell, plus DDPM-1000 at 500 samples:

    python bench/quality_table.py --ckpt runs/fashion_mnist/latest.ckpt \
        --data_dir data/fashion-mnist --calls 5 10 20 50 100 --ddpm_samples 500

writes ``<out>/calls.md`` and ``<out>/calls.png`` (FID and KID against calls) besides the
files below. Every sampler makes one network call per step. ``--spacing`` picks the timestep
grid of every row that does not name one (default: the checkpoint's).

The timestep grid at a few step counts (DDIM eta 0 and DPM-Solver++(2M) on the leading,
trailing and linspace grids), written to ``<out>/grid.md``:

    python bench/quality_table.py --ckpt runs/fashion_mnist/latest.ckpt \
        --data_dir data/fashion-mnist --grid 10 20

Each row ``ddimS:ETA``, ``dpmpp2mS`` (DPM-Solver++(2M), S steps) or ``ddpm`` (all T steps)
(any of them may end in ``@leading``, ``@trailing`` or ``@linspace``: the timestep grid)
draws ``--num_samples`` images from the
checkpoint's EMA weights with the same seed (so every row starts from the same x_T), writes
them to ``<out>/<row>/samples.npz``, and scores them against the Fashion-MNIST test split
with ``ddpm_ms.eval.evaluate``'s metrics on the project's classifier features (FID, KID,
precision/recall, k = 3). A row whose samples.npz already holds enough images is scored
without sampling again, and a row already in results.jsonl with as many samples (and the same
classifier) is not even scored again, so an interrupted table resumes where it stopped. A ``real`` row
scores ``--num_samples`` training images against the same reference: the FID floor for
that sample count. Two processes may share ``--out`` with different ``--rows`` (one per
core); each re-reads results.jsonl before adding its row.

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
    """'ddim50:0' -> ('ddim', 50, 0.0); 'dpmpp2m10' -> ('dpmpp2m', 10, None);
    'ddpm' -> ('ddpm', None, 1.0); 'real' -> ('real', None, None)."""
    if text in ("ddpm", "real"):
        return text, None, (1.0 if text == "ddpm" else None)
    try:
        if text.startswith("dpmpp2m"):
            steps = int(text[len("dpmpp2m"):])
            assert steps >= 1
            return "dpmpp2m", steps, None
        head, eta = text.split(":")
        assert head.startswith("ddim")
        return "ddim", int(head[4:]), float(eta)
    except (ValueError, AssertionError):
        raise SystemExit(f"error: bad row {text!r}; use ddimSTEPS:ETA (e.g. ddim50:0), dpmpp2mSTEPS "
                         "(e.g. dpmpp2m10), ddpm or real") from None


GRID_SPACINGS = ("leading", "trailing", "linspace")


def _kid(value):
    """KID for a table cell: 4 decimals below 1, 2 above (this project's classifier features give KIDs of ~60)."""
    return f"{value:.4f}" if abs(value) < 1 else f"{value:.2f}"


def split_spacing(text):
    """'ddim10:0@trailing' -> ('ddim10:0', 'trailing'); 'ddim10:0' -> ('ddim10:0', None)."""
    base, at, spacing = text.partition("@")
    if at and spacing not in GRID_SPACINGS + ("lucid",):
        raise SystemExit(f"error: bad timestep grid in row {text!r}; use one of "
                         f"{', '.join(GRID_SPACINGS + ('lucid',))}")
    return base, (spacing if at else None)


def with_spacing(row, spacing):
    return f"{row}@{spacing}" if spacing else row


def calls_rows(calls, spacing=None):
    """The rows of the quality-against-calls mode: DDIM eta 0, DDIM eta 1, DPM-Solver++(2M)."""
    return [with_spacing(row, spacing) for n in calls for row in (f"ddim{n}:0", f"ddim{n}:1", f"dpmpp2m{n}")]


def grid_rows(steps):
    """The rows of the timestep-grid mode: DDIM eta 0 and DPM-Solver++(2M) on each grid."""
    return [with_spacing(row, sp) for n in steps for row in (f"ddim{n}:0", f"dpmpp2m{n}") for sp in GRID_SPACINGS]


def render_grid(results, steps, meta):
    """Markdown: one row per (sampler, steps), one column per timestep grid, cells 'FID / KID';
    the best FID of each row in bold."""
    lines = [f"Checkpoint `{meta['ckpt']}` (step {meta['step']}, EMA weights), n = {meta['num_samples']} "
             f"per cell against {meta['num_ref']} Fashion-MNIST test images, classifier features. Same "
             "x_T in every cell. Cells: FID / KID (lower is better); `-` = not run.", "",
             "| sampler | calls | " + " | ".join(GRID_SPACINGS) + " |", "|---|--:|" + "---|" * len(GRID_SPACINGS)]
    for n in steps:
        for sampler, label in (("ddim", "DDIM eta 0"), ("dpmpp2m", "DPM-Solver++(2M)")):
            hits = {sp: r for r in results.values() for sp in GRID_SPACINGS
                    if r["sampler"] == sampler and r["steps"] == n and r.get("spacing") == sp
                    and (sampler != "ddim" or r["eta"] == 0)}
            best = min(hits, key=lambda sp: hits[sp]["fid"]) if hits else None
            cells = []
            for sp in GRID_SPACINGS:
                if sp not in hits:
                    cells.append("-")
                    continue
                text = f"{hits[sp]['fid']:.2f} / {_kid(hits[sp]['kid_mean'])}"
                cells.append(f"**{text}**" if sp == best else text)
            lines.append(f"| {label} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def series(r):
    """The line a result belongs to in the calls figure and table."""
    if r["sampler"] == "dpmpp2m":
        return "DPM-Solver++(2M)"
    if r["sampler"] == "ddpm":
        return "DDPM"
    return f"DDIM eta {r['eta']:g}"


def calls_results(results, calls, spacing=None):
    """The results the calls table and figure show: DDIM and DPM-Solver++ rows at those call
    counts (on the timestep grid ``spacing`` when given), and DDPM."""
    return [r for r in results.values() if r["sampler"] == "ddpm" or (
        r["sampler"] in ("ddim", "dpmpp2m") and r["steps"] in calls
        and (spacing is None or r.get("spacing") == spacing))]


def render_calls(results, calls, meta, spacing=None):
    """Markdown: one row per sampler, one column per network-call count, cells 'FID / KID'."""
    gen = calls_results(results, calls, spacing)
    names = sorted({series(r) for r in gen} - {"DDPM"})
    lines = [f"Checkpoint `{meta['ckpt']}` (step {meta['step']}, EMA weights) against "
             f"{meta['num_ref']} Fashion-MNIST test images, classifier features (sha256 "
             f"{meta['sha256'][:12]}). Every cell starts from the same x_T (seed {meta['seed']}: "
             "image k of every row has the same x_T). Cells: FID / KID (lower is better); "
             "`-` = not run; n = samples per cell. Compare FID only at equal n."
             + (f" Timestep grid: {spacing}." if spacing else ""), "",
             "| sampler \\ network calls | n | " + " | ".join(str(c) for c in calls) + " |",
             "|---|--:|" + "--:|" * len(calls)]
    for name in names:
        mine = [r for r in gen if series(r) == name]
        ns = sorted({r["num_samples"] for r in mine})
        cells = []
        for c in calls:
            hit = [r for r in mine if r["steps"] == c]
            cells.append(f"{hit[0]['fid']:.2f} / {_kid(hit[0]['kid_mean'])}" if hit else "-")
        lines.append(f"| {name} | {'/'.join(map(str, ns))} | " + " | ".join(cells) + " |")
    for r in (r for r in gen if r["sampler"] == "ddpm"):
        lines += ["", f"DDPM ({r['steps']} calls, n = {r['num_samples']}): FID {r['fid']:.2f} / "
                      f"KID {_kid(r['kid_mean'])}."]
    return "\n".join(lines) + "\n"


def plot_calls(results, calls, path, spacing=None):
    """FID and KID against network calls (log x), one line per sampler; DDPM as a marker."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    gen = calls_results(results, calls, spacing)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, label in ((axes[0], "fid", "FID (classifier features)"), (axes[1], "kid_mean", "KID")):
        for name in sorted({series(r) for r in gen}):
            mine = sorted((r for r in gen if series(r) == name), key=lambda r: r["steps"])
            style = "*" if name == "DDPM" else "o-"
            ns = sorted({r["num_samples"] for r in mine})
            legend = name if name != "DDPM" else f"DDPM (n = {'/'.join(map(str, ns))}; FID is higher at small n)"
            ax.plot([r["steps"] for r in mine], [r[key] for r in mine], style, label=legend)
        ax.set_xscale("log")
        ax.set_xlabel("network calls")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


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
    gen = [r for r in results.values() if r["sampler"] in ("ddim", "ddpm")]
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


def write_reports(results, args, info, timesteps, out):
    """table.md always; calls.md + calls.png with --calls; grid.md with --grid."""
    with open(os.path.join(out, "table.md"), "w") as f:
        f.write(render(results, timesteps, info))
    if args.calls:
        with open(os.path.join(out, "calls.md"), "w") as f:
            f.write(render_calls(results, args.calls, info, args.spacing))
        plot_calls(results, args.calls, os.path.join(out, "calls.png"), args.spacing)
    if args.grid:
        with open(os.path.join(out, "grid.md"), "w") as f:
            f.write(render_grid(results, args.grid, info))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ckpt", required=True)
    p.add_argument("--data_dir", default="data/fashion-mnist")
    p.add_argument("--rows", nargs="+", default=None,
                   help="default: ddim10:0 ddim10:1 ddim20:0 ddim20:1 (none with --calls)")
    p.add_argument("--calls", nargs="+", type=int, default=None,
                   help="quality against network calls: rows ddimN:0 ddimN:1 dpmpp2mN for each N; "
                        "writes calls.md and calls.png")
    p.add_argument("--grid", nargs="+", type=int, default=None,
                   help="the timestep grid at these step counts: rows ddimN:0 and dpmpp2mN on the leading, "
                        "trailing and linspace grids; writes grid.md")
    p.add_argument("--spacing", choices=GRID_SPACINGS + ("lucid",), default=None,
                   help="timestep grid of the rows that name none (default: the checkpoint's)")
    p.add_argument("--ddpm_samples", type=int, default=0,
                   help="with --calls: also a DDPM-1000 row with this many samples (e.g. 500)")
    p.add_argument("--num_samples", type=int, default=None, help="default 2000; 1000 with --calls")
    p.add_argument("--batch_size", type=int, default=250)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="default: <ckpt folder>/quality")
    p.add_argument("--classifier", default=None)
    args = p.parse_args(argv)
    if args.num_samples is None:
        args.num_samples = 1000 if (args.calls or args.grid) else 2000
    names = args.rows or ([] if (args.calls or args.grid) else ["ddim10:0", "ddim10:1", "ddim20:0", "ddim20:1"])
    names = [with_spacing(r, None if "@" in r else args.spacing) for r in names]
    names = names + (grid_rows(args.grid) if args.grid else [])
    names = names + (calls_rows(args.calls, args.spacing) if args.calls else [])
    names = list(dict.fromkeys(names))          # a row named twice is drawn once
    rows = []
    for r in names:
        base, spacing = split_spacing(r)
        rows.append((r,) + parse_row(base) + (spacing, args.num_samples))
    if args.calls and args.ddpm_samples:
        rows.append(("ddpm",) + parse_row("ddpm") + (None, args.ddpm_samples))
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(args.ckpt)), "quality")
    os.makedirs(out, exist_ok=True)

    from ddpm_ms.data import to_uint8
    from ddpm_ms.runtime import setup_device
    from ddpm_ms.eval.evaluate import _classifier, evaluate_images
    from ddpm_ms.eval.feature_net import extract_features, load_fashion_mnist
    from ddpm_ms.checkpoint import load_network
    from ddpm_ms.files import save_npz
    from ddpm_ms.samplers import make_sampler
    from ddpm_ms.sampling import image_shape, sampling_options
    from ddpm_ms.sampling import sample
    from ddpm_ms.schedule import build_schedule

    setup_device("CPU", "graph", -1, seed=args.seed, verbose=False)
    net, cfg, meta = load_network(args.ckpt, "ema")
    schedule = build_schedule(cfg)
    clf, clf_info = _classifier(argparse.Namespace(classifier=args.classifier, data_dir=args.data_dir))
    test, _ = load_fashion_mnist(args.data_dir, "test")
    real_f = extract_features(clf, test[..., None])
    results_path = os.path.join(out, "results.jsonl")
    results = load_results(results_path)
    info = dict(ckpt=os.path.abspath(args.ckpt), step=int(meta["step"]), num_samples=args.num_samples,
                num_ref=len(test), sha256=clf_info["sha256"], seed=args.seed)

    for name, sampler, steps, eta, spacing, num_samples in rows:
        row_dir = os.path.join(out, name.replace(":", "_eta").replace("@", "_"))
        npz = os.path.join(row_dir, "samples.npz")
        secs = None
        done = results.get(name)
        if (done and done.get("num_samples") == num_samples and done.get("sha256", info["sha256"]) == info["sha256"]
                and (sampler == "real" or os.path.isfile(npz))):
            print(f"[quality] {name}: scored before (results.jsonl), FID {done['fid']:.2f}", flush=True)
            continue
        if sampler == "real":
            train, _ = load_fashion_mnist(args.data_dir, "train")
            pick = np.random.default_rng(args.seed).choice(len(train), num_samples, replace=False)
            u8 = train[np.sort(pick)][..., None]
        elif os.path.isfile(npz) and len(np.load(npz)["images"]) >= num_samples:
            u8 = np.load(npz)["images"][:num_samples]
            secs = results.get(name, {}).get("sample_seconds")
        else:
            opts = sampling_options(cfg, sampler, steps, eta if sampler == "ddim" else None,
                                    spacing if sampler != "ddpm" else None)
            print(f"[quality] {name}: {num_samples} samples, {opts['name']} {opts['num_steps']} steps"
                  + ("" if sampler == "ddpm" else f", {opts['spacing']} grid")
                  + ("" if opts["eta"] is None else f", eta {opts['eta']:g}"), flush=True)
            t0 = time.time()
            images = sample(net, make_sampler(schedule=schedule, **opts), num_samples, image_shape(cfg),
                            batch_size=args.batch_size, seed=args.seed)
            secs = time.time() - t0
            u8 = to_uint8(images)
            os.makedirs(row_dir, exist_ok=True)
            save_npz(npz, images=u8)
        m = evaluate_images(extract_features(clf, u8), real_f, seed=args.seed)
        steps = cfg["timesteps"] if sampler == "ddpm" else steps
        spacing = None if sampler in ("ddpm", "real") else (spacing or cfg["spacing"])
        results = load_results(results_path)     # re-read: another process may share this folder
        results[name] = dict(row=name, sampler=sampler, steps=steps, eta=eta, spacing=spacing,
                             num_samples=int(len(u8)), sha256=info["sha256"],
                             sample_seconds=secs, date=datetime.date.today().isoformat(), **m)
        with open(results_path + ".tmp", "w") as f:
            for r in results.values():
                f.write(json.dumps(r) + "\n")
        os.replace(results_path + ".tmp", results_path)
        write_reports(results, args, info, cfg["timesteps"], out)
        print(f"[quality] {name}: FID {m['fid']:.2f}, KID {m['kid_mean']:.4f}, precision "
              f"{m['precision']:.3f}, recall {m['recall']:.3f}"
              + (f", {secs:.0f} s sampling" if secs else ""), flush=True)
    write_reports(load_results(results_path), args, info, cfg["timesteps"], out)
    for shown in (["grid.md"] if args.grid else []) + (["calls.md"] if args.calls else []) or ["table.md"]:
        print(open(os.path.join(out, shown)).read())
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Run logs people can read: metrics.jsonl, one line per log step, and a loss-curve PNG."""
import json
import os

from .files import atomic_write


class MetricsLog:
    """Append metric lines to ``run_dir/metrics.jsonl``; on resume, drop lines past the step."""

    def __init__(self, run_dir, enabled=True, resume_step=0):
        self.enabled = enabled
        self.path = os.path.join(run_dir, "metrics.jsonl")
        if not enabled:
            return
        os.makedirs(run_dir, exist_ok=True)
        kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= resume_step] if resume_step else []
        with open(self.path, "w") as f:
            for row in kept:
                f.write(json.dumps(row) + "\n")

    def write(self, **row):
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({k: (round(v, 6) if isinstance(v, float) else v) for k, v in row.items()}) + "\n")

    def plot(self, out_path, ylabel="loss"):
        """Loss against step (log scale), written with matplotlib's Agg backend; ylabel: what the
        loss is (``loss_label(cfg)``)."""
        rows = read_metrics(self.path) if self.enabled else []
        if not rows:
            return None
        return plot_loss(rows, out_path, ylabel)


def read_metrics(path):
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


LOSS_NAMES = {"huber": "Huber", "l1": "L1", "l2": "MSE"}


def loss_label(cfg):
    """What the training loss of ``cfg`` is, for the plot's axis, from the settings that were used:
    e.g. 'Huber loss on eps, p2-weighted (gamma 1, k 1)' or 'MSE loss on eps, unweighted'
    (loss_weight 'none', or 'p2' with p2_gamma 0, whose weight is 1). For the x0 and v objectives
    the weighting is the one on the eps error (``NoiseSchedule.loss_weight``)."""
    weighting = cfg.get("loss_weight", "p2")
    if weighting == "none" or (weighting == "p2" and cfg["p2_gamma"] == 0):
        how = "unweighted"
    elif weighting == "p2":
        how = f"p2-weighted (gamma {cfg['p2_gamma']:g}, k {cfg['p2_k']:g})"
    else:
        how = f"min-SNR-weighted (gamma {cfg['min_snr_gamma']:g})"
    if cfg["objective"] != "eps":
        how += " as eps"
    return f"{LOSS_NAMES.get(cfg['loss_type'], cfg['loss_type'])} loss on {cfg['objective']}, {how}"


def plot_loss(rows, out_path, ylabel="loss"):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    steps = [r["step"] for r in rows]
    losses = [r["loss"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot(steps, losses, lw=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel, fontsize=9)
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_write(out_path, suffix=".png") as tmp:
        fig.savefig(tmp)
    plt.close(fig)
    return out_path

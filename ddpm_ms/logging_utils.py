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

    def plot(self, out_path):
        """Loss against step (log scale), written with matplotlib's Agg backend."""
        rows = read_metrics(self.path) if self.enabled else []
        if not rows:
            return None
        return plot_loss(rows, out_path)


def read_metrics(path):
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_loss(rows, out_path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    steps = [r["step"] for r in rows]
    losses = [r["loss"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot(steps, losses, lw=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel("p2-weighted loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_write(out_path, suffix=".png") as tmp:
        fig.savefig(tmp)
    plt.close(fig)
    return out_path

"""Run logs: metrics.jsonl (resume keeps only the steps before it) and the loss plot's label."""
import json

import pytest

from ddpm_ms.config import resolve
from ddpm_ms.logging_utils import MetricsLog, loss_label, read_metrics


@pytest.mark.parametrize("settings, want, absent", [
    (dict(p2_gamma=0.0), "Huber loss on eps, unweighted", "p2"),                       # the tutorial's weight
    (dict(p2_gamma=1.0, p2_k=1.0), "Huber loss on eps, p2-weighted (gamma 1, k 1)", "unweighted"),
    (dict(p2_gamma=0.5, p2_k=2.0, loss_type="l2"), "MSE loss on eps, p2-weighted (gamma 0.5, k 2)", None),
    (dict(loss_weight="none", p2_gamma=1.0, loss_type="l1"), "L1 loss on eps, unweighted", "p2"),
    (dict(loss_weight="min_snr", min_snr_gamma=5.0, objective="v"),
     "Huber loss on v, min-SNR-weighted (gamma 5) as eps", "p2"),
])
def test_loss_label_names_the_weighting_used(settings, want, absent):
    cfg = resolve(base=settings)
    assert loss_label(cfg) == want
    if absent:
        assert absent not in loss_label(cfg)


def test_plot_uses_the_label_and_resume_drops_later_steps(tmp_path, monkeypatch):
    import matplotlib.axes
    log = MetricsLog(str(tmp_path))
    for step, loss in ((1, 0.5), (2, 0.25), (3, 0.125)):
        log.write(step=step, loss=loss)
    labels = []
    original = matplotlib.axes.Axes.set_ylabel
    monkeypatch.setattr(matplotlib.axes.Axes, "set_ylabel",
                        lambda ax, text, **kw: labels.append(text) or original(ax, text, **kw))
    label = loss_label(resolve(base=dict(p2_gamma=0.0)))
    assert log.plot(str(tmp_path / "loss.png"), label) == str(tmp_path / "loss.png")
    assert labels == [label] and (tmp_path / "loss.png").read_bytes()[:4] == b"\x89PNG"
    resumed = MetricsLog(str(tmp_path), resume_step=2)
    assert [r["step"] for r in read_metrics(resumed.path)] == [1, 2]
    assert json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1]) == {"step": 2, "loss": 0.25}

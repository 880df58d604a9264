"""bench/recipe_screen.py: its rows are valid configs, the commands it builds, the step it reads."""
import argparse
import importlib.util

import pytest

from conftest import ROOT
from ddpm_ms.config import resolve, read_yaml

_spec = importlib.util.spec_from_file_location("recipe_screen", ROOT / "bench" / "recipe_screen.py")
rs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(rs)


def _args(**kw):
    base = dict(config="configs/fashion_mnist_cpu.yaml", minutes=2.0, samples=10, data_dir="/d/fmnist",
                base="config", images=0)
    base.update(kw)
    return argparse.Namespace(**base)


@pytest.mark.parametrize("base", sorted(rs.BASES))
@pytest.mark.parametrize("name", list(rs.ROWS))
def test_every_row_is_a_valid_config(name, base, tmp_path):
    """Each row's overrides on its base config pass the config checks, and change what they say
    (a row's own override comes after the base's, so it wins)."""
    train, _, _ = rs.row_commands(name, _args(base=base), tmp_path)
    config = train[train.index("--config") + 1]
    extra = train[train.index("--preview_minutes") + 2:]
    overrides = dict(zip(extra[::2], extra[1::2]))
    cfg = resolve(read_yaml(ROOT / config), {k.lstrip("-"): v for k, v in overrides.items()})
    for key, value in overrides.items():
        got = cfg[key.lstrip("-")]
        assert str(got).lower() == value.lower() or float(got) == float(value), (key, value, got)


def test_commands(tmp_path):
    train, sample, score = rs.row_commands("tutorial", _args(), tmp_path)
    assert train[train.index("--config") + 1] == "configs/fashion_mnist.yaml" and train.count("--config") == 1
    assert train[train.index("--max_minutes") + 1] == "2.0" and train[train.index("--run_name") + 1] == "tutorial"
    assert sample[sample.index("--ckpt") + 1] == str(tmp_path / "tutorial" / "latest.ckpt")
    assert [sample[sample.index(k) + 1] for k in ("--sampler", "--steps", "--eta")] == ["ddim", "50", "0"]
    assert score[score.index("--samples") + 1] == str(tmp_path / "tutorial_samples" / "samples.npz")
    train, _, _ = rs.row_commands("lr2e-3", _args(), tmp_path)
    assert train[-2:] == ["--lr", "2e-3"] and train[train.index("--config") + 1] == "configs/fashion_mnist_cpu.yaml"


def test_step_read_from_the_trainers_last_line():
    out = "step 50 loss 0.1\nstopped at step 319: max_minutes=9.0 reached; checkpoint runs/x/latest.ckpt\n"
    assert rs._last_step(out) == 319
    assert rs._last_step("no such line") is None
    assert 'f"stopped at step {self.step}: ' in (ROOT / "ddpm_ms" / "trainer.py").read_text()


def test_unknown_row_is_one_line():
    with pytest.raises(SystemExit, match="unknown row.*nope"):
        rs.main(["--rows", "base,nope"])


def test_screen_base_and_image_budget(tmp_path):
    """--base screen puts the old recipe's overrides before the row's; --images sets max_steps from
    each row's own batch size (rounded up) and turns the clock off."""
    args = _args(base="screen", images=10_208)
    train, _, _ = rs.row_commands("p2_off", args, tmp_path)
    extra = train[train.index("--preview_minutes") + 2:]
    assert extra[:6] == ["--objective", "eps", "--loss_weight", "p2", "--batch_size", "32"]
    assert extra[-2:] == ["--loss_weight", "none"]
    assert train[train.index("--max_steps") + 1] == "319" and train[train.index("--max_minutes") + 1] == "0"
    train, _, _ = rs.row_commands("batch64", args, tmp_path)
    assert train[train.index("--max_steps") + 1] == "160"            # ceil(10208 / 64)
    train, _, _ = rs.row_commands("tutorial", args, tmp_path)        # its own config: batch 128, grid only
    assert train[train.index("--max_steps") + 1] == "80"
    assert "--objective" not in train and train[train.index("--spacing") + 1] == "leading"
    assert read_yaml(ROOT / "configs/fashion_mnist.yaml")["batch_size"] == 128

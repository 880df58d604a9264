"""Config: defaults < YAML < CLI, unknown keys, types, the shipped configs, CLI one-liners."""
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ddpm_ms.config import DEFAULTS, ConfigError, load_config, save_config

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path, text, name="c.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_precedence_defaults_yaml_cli(tmp_path):
    path = write(tmp_path, "lr: 0.5\nbatch_size: 7\n")
    cfg = load_config(["--config", path, "--batch_size", "9"])
    assert cfg["lr"] == 0.5                       # YAML beats default
    assert cfg["batch_size"] == 9                 # CLI beats YAML
    assert cfg["dim"] == DEFAULTS["dim"][0]       # default untouched
    assert cfg["run_name"] == "c"                 # named after the config file


def test_unknown_key_names_closest(tmp_path):
    with pytest.raises(ConfigError, match="unknown config key 'learning_rat'.*did you mean"):
        load_config(["--config", write(tmp_path, "learning_rat: 0.1\n")])
    with pytest.raises(ConfigError, match="unknown option '--bach_size'.*'batch_size'"):
        load_config(["--bach_size", "3"])
    with pytest.raises(ConfigError, match="unknown config key 'dimm_mults'.*'dim_mults'"):
        load_config(["--config", write(tmp_path, "dimm_mults: [1]\n")])


@pytest.mark.parametrize("text, key", [("batch_size: abc\n", "batch_size"), ("lr: fast\n", "lr"),
                                        ("dim_mults: [1, x]\n", "dim_mults"), ("random_flip: maybe\n", "random_flip"),
                                        ("batch_size: 2.5\n", "batch_size"), ("dim: true\n", "dim")])
def test_wrong_type_is_one_clear_error(tmp_path, text, key):
    with pytest.raises(ConfigError, match=f"'{key}' must be"):
        load_config(["--config", write(tmp_path, text)])


def test_choices_and_ranges():
    with pytest.raises(ConfigError, match="beta_schedule.*linear, cosine"):
        load_config(["--beta_schedule", "cosin"])
    with pytest.raises(ConfigError, match="'batch_size' must be at least 1"):
        load_config(["--batch_size", "0"])
    with pytest.raises(ConfigError, match="sample_steps.*between 1 and timesteps=100"):
        load_config(["--timesteps", "100", "--sample_steps", "200"])


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(["--config", str(tmp_path / "nope.yaml")])


def test_cli_types_are_converted():
    cfg = load_config(["--dim_mults", "1,2,2", "--random_flip", "false", "--beta_start", "null",
                       "--lr", "3e-4"])
    assert cfg["dim_mults"] == [1, 2, 2] and cfg["random_flip"] is False
    assert cfg["beta_start"] is None and cfg["lr"] == pytest.approx(3e-4)


@pytest.mark.parametrize("name", ["fashion_mnist", "fashion_mnist_smoke", "cifar10", "image_folder"])
def test_shipped_configs_load_and_round_trip(tmp_path, name):
    cfg = load_config(["--config", str(ROOT / "configs" / f"{name}.yaml")])
    out = tmp_path / "resolved.yaml"
    save_config(cfg, out)
    again = load_config(["--config", str(out)])
    assert {k: v for k, v in again.items() if not k.startswith("_") and k != "run_name"} == \
        {k: v for k, v in cfg.items() if not k.startswith("_") and k != "run_name"}
    assert yaml.safe_load(out.read_text())["dim"] == cfg["dim"]


def test_tutorial_config_values():
    cfg = load_config(["--config", str(ROOT / "configs" / "fashion_mnist.yaml")])
    assert (cfg["image_size"], cfg["channels"], cfg["dim"], cfg["dim_mults"]) == (28, 1, 28, [1, 2, 4])


@pytest.mark.parametrize("args, expect", [
    (["--bogus_key", "1"], "error: unknown option '--bogus_key'"),
    (["--config", "configs/nope.yaml"], "error: config file not found: configs/nope.yaml"),
    (["--batch_size", "many"], "error: config key 'batch_size' must be an integer, got 'many'"),
])
def test_train_py_config_errors_are_one_line(args, expect):
    r = subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert lines == [lines[-1]] and lines[-1].startswith(expect), r.stderr

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


SHIPPED_CONFIGS = sorted(p.stem for p in (ROOT / "configs").glob("*.yaml"))


def test_readme_lists_every_shipped_config():
    readme = (ROOT / "README.md").read_text()
    assert len(SHIPPED_CONFIGS) >= 5
    assert [n for n in SHIPPED_CONFIGS if f"| `configs/{n}.yaml` |" not in readme] == []


@pytest.mark.parametrize("name", SHIPPED_CONFIGS)
def test_shipped_configs_load_and_round_trip(tmp_path, name):
    cfg = load_config(["--config", str(ROOT / "configs" / f"{name}.yaml")])
    out = tmp_path / "resolved.yaml"
    save_config(cfg, out)
    again = load_config(["--config", str(out)])
    assert {k: v for k, v in again.items() if not k.startswith("_") and k != "run_name"} == \
        {k: v for k, v in cfg.items() if not k.startswith("_") and k != "run_name"}
    assert yaml.safe_load(out.read_text())["dim"] == cfg["dim"]


@pytest.mark.parametrize("name", SHIPPED_CONFIGS)
def test_shipped_configs_fit_their_data_and_build(name):
    """A shipped config for a built-in data set asks for the set's native size and channels (as
    the data pipeline knows them: no resize, as in the tutorial), and the U-Net it describes maps
    a batch of that shape to the same shape (its stages halve image_size exactly)."""
    import numpy as np
    import mindspore as ms
    from ddpm_ms.data import NATIVE
    from ddpm_ms.unet import build_unet
    cfg = load_config(["--config", str(ROOT / "configs" / f"{name}.yaml")])
    size, channels = cfg["image_size"], cfg["channels"]
    if cfg["dataset"] != "image_folder":
        assert (size, channels) == NATIVE[cfg["dataset"]]
    net = build_unet(cfg, conv_impl="native")
    net.set_train(False)
    x = np.random.default_rng(0).standard_normal((1, channels, size, size)).astype(np.float32)
    out = net(ms.Tensor(x), ms.Tensor(np.array([500], np.int32)))
    assert out.shape == x.shape and np.isfinite(out.asnumpy()).all()


def test_eta_outside_0_1_is_a_config_error():
    assert load_config(["--eta", "1"])["eta"] == 1.0
    for bad in ("1.5", "-0.5"):
        with pytest.raises(ConfigError, match=f"'eta' must .*got {bad}"):
            load_config(["--eta", bad])


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


# ------------------------------------------------------------------ launcher flags, config lookup
def test_platform_flags_are_ignored_with_a_note(capsys):
    cfg = load_config(["--num_gpus=1", "--init_method", "tcp://10.0.0.1:6000", "--ckpt_url", "obs://b/c.ckpt",
                       "--multi_data_url", '[{"dataset_url": "obs://b/d"}]', "--launcher", "--batch_size", "3",
                       "--data_url", "obs://b/data"])
    assert cfg["batch_size"] == 3 and cfg["data_url"] == "obs://b/data"  # real keys still parse
    assert set(cfg["_ignored_flags"]) == {"num_gpus", "init_method", "ckpt_url", "multi_data_url", "launcher"}
    assert "num_gpus" not in cfg and "ckpt_url" not in cfg
    notes = [ln for ln in capsys.readouterr().out.splitlines() if "ignoring platform flag" in ln]
    assert len(notes) == 5
    assert "--num_gpus=1 (devices come from the launcher" in notes[0]
    assert any("--ckpt_url=obs://b/c.ckpt (to resume from OBS use --checkpoint_url)" in n for n in notes)


@pytest.mark.parametrize("args, match", [
    (["--num_gpu", "1"], r"unknown option '--num_gpu'"),  # only the exact platform names are let through
    (["--bach_size", "3", "--num_gpus", "1"], r"unknown option '--bach_size'.*'batch_size'"),
    (["--data_urll", "x"], r"unknown option '--data_urll'.*'data_url'"),
])
def test_other_unknown_flags_still_fail_with_a_hint(args, match):
    with pytest.raises(ConfigError, match=match):
        load_config(args)


def test_relative_config_found_beside_the_code(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # ModelArts starts the boot file from another directory
    cfg = load_config(["--config", "configs/fashion_mnist_smoke.yaml"])
    expected = str(ROOT / "configs" / "fashion_mnist_smoke.yaml")
    assert cfg["_config_path"] == expected and cfg["run_name"] == "fashion_mnist_smoke"
    assert f"[ddpm_ms] config file: {expected}" in capsys.readouterr().out
    # a file of that name in the working directory wins
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "fashion_mnist_smoke.yaml").write_text("batch_size: 5\n")
    cfg = load_config(["--config", "configs/fashion_mnist_smoke.yaml"])
    assert cfg["batch_size"] == 5 and cfg["_config_path"] == str(tmp_path / "configs" / "fashion_mnist_smoke.yaml")
    assert f"config file: {tmp_path / 'configs' / 'fashion_mnist_smoke.yaml'}" in capsys.readouterr().out
    with pytest.raises(ConfigError, match=r"config file not found: configs/nope.yaml \(looked in .* and in the code"):
        load_config(["--config", "configs/nope.yaml"])


def test_train_py_with_modelarts_flags_from_another_directory(tmp_path):
    """A ModelArts-style command line, started outside the repository: the platform flags are
    ignored, the config is found beside the code, and the run gets as far as a config error."""
    r = subprocess.run([sys.executable, str(ROOT / "train.py"), "--config", "configs/fashion_mnist_smoke.yaml",
                        "--num_gpus=1", "--init_method=tcp://127.0.0.1:6000", "--batch_size", "many"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert "ignoring platform flag --num_gpus=1" in r.stdout
    assert f"config file: {ROOT / 'configs' / 'fashion_mnist_smoke.yaml'}" in r.stdout
    assert r.stderr.strip().splitlines()[-1] == "error: config key 'batch_size' must be an integer, got 'many'"


def test_amp_levels_are_the_ones_implemented():
    """O0 and O1 exist; O2 / O3 / auto (which ran as O1 before) are refused in one line that says
    to use O1, while a checkpoint's saved config with them still loads, as O1."""
    from ddpm_ms.config import ConfigError, config_from_dict, resolve
    assert resolve(base={"amp_level": "O1"})["amp_level"] == "O1"
    for old in ("O2", "O3", "auto"):
        with pytest.raises(ConfigError, match=f"amp_level {old} is not offered.*use --amp_level O1"):
            load_config(["--amp_level", old])
        saved = dict(resolve(base={}), amp_level=old)
        assert config_from_dict(saved)["amp_level"] == "O1"
    with pytest.raises(ConfigError, match="amp_level"):
        load_config(["--amp_level", "O4"])

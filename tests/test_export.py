"""MindIR export: the exported U-Net (EMA weights) gives the network's output back."""
import numpy as np
import pytest

import mindspore as ms

from ddpm_ms import checkpoint as ckpt
from ddpm_ms.config import resolve
from ddpm_ms.export import example_inputs, load_exported, main
from ddpm_ms.checkpoint import load_network
from ddpm_ms.trainer import Trainer


def tiny_checkpoint(tmp_path):
    """A real train.py-style checkpoint of an untrained tiny U-Net whose EMA differs from the raw weights."""
    cfg = resolve(base=dict(dataset="image_folder", data_dir=str(tmp_path), image_size=8, channels=3, dim=8,
                            dim_mults=[1, 2], attn_heads=1, attn_head_dim=8, timesteps=50, batch_size=4,
                            max_steps=1, output_dir=str(tmp_path), run_name="run", ema_decay=0.9,
                            device_target="CPU"))
    trainer = Trainer(cfg, log=lambda *_: None)
    trainer.setup(lambda epoch, skip: iter([]), 1)
    for p in trainer.ema_net.trainable_params():
        p.set_data(p.value() + 0.01)
    return trainer.save(epoch=0), trainer


def test_export_round_trip_matches_network(tmp_path):
    path, trainer = tiny_checkpoint(tmp_path)
    out = tmp_path / "export" / "unet.mindir"
    main(["--ckpt", path, "--out", str(out), "--batch_size", "2"])
    assert out.is_file() and out.stat().st_size > 0
    ms.set_context(mode=ms.PYNATIVE_MODE)
    net, cfg, _ = load_network(path, weights="ema")
    xt, t = example_inputs(cfg, batch_size=2)
    want = net(xt, t).asnumpy()
    # the exported graph holds the EMA weights, not the raw ones
    raw = dict(ckpt.named(trainer.net))
    ema = dict(ckpt.named(net))
    name = next(iter(ema))
    assert not np.allclose(raw[name].asnumpy(), ema[name].asnumpy())
    got = load_exported(str(out))(xt, t).asnumpy()
    assert got.shape == (2, 3, 8, 8) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    other_t = ms.Tensor(np.array([0, 49], np.int32))
    np.testing.assert_allclose(load_exported(str(out))(xt, other_t).asnumpy(), net(xt, other_t).asnumpy(),
                               atol=1e-5, rtol=0)


def test_export_bad_checkpoint_is_one_line(tmp_path):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"nope")
    with pytest.raises(ckpt.CheckpointError, match="not a readable MindSpore checkpoint"):
        main(["--ckpt", str(bad), "--out", str(tmp_path / "x.mindir")])

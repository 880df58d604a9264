"""Data parallel (msrun), data sharding, the data-sink switch.

The slow test launches 2 msrun workers on the CPU and checks they train exactly like one
process with the global batch (same losses, same parameters), that only rank 0 writes, and
that a 2-worker run resumes.
"""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import mindspore as ms

from ddpm_ms import checkpoint as ckpt
from ddpm_ms import distributed
from ddpm_ms.config import ConfigError, resolve
from ddpm_ms.data import epoch_batches
from ddpm_ms.train_step import draw_t_noise
from ddpm_ms.trainer import sink_dataset, use_data_sink

ROOT = Path(__file__).resolve().parents[1]
LAUNCH_VARS = ("MS_ROLE", "MS_WORKER_NUM", "RANK_SIZE", "RANK_TABLE_FILE", "RANK_ID", "MS_SCHED_HOST",
               "MS_SCHED_PORT", "MS_NODE_ID")


def tiny_cfg(folder, **over):
    base = dict(dataset="image_folder", data_dir=str(folder), image_size=8, channels=3, batch_size=4,
                timesteps=50, shuffle=False, random_flip=False, num_parallel_workers=1, seed=3)
    base.update(over)
    return resolve(base=base)


# ------------------------------------------------------------------ switches
def test_wanted_follows_launchers():
    cfg = resolve(base={})
    assert not distributed.wanted(cfg, environ={})
    assert distributed.wanted(cfg, environ={"MS_ROLE": "MS_WORKER", "MS_WORKER_NUM": "1"})  # msrun, even 1 worker
    assert distributed.wanted(cfg, environ={"RANK_TABLE_FILE": "/x.json", "RANK_SIZE": "8"})
    assert distributed.wanted(cfg, environ={"RANK_SIZE": "2"})
    assert not distributed.wanted(cfg, environ={"RANK_SIZE": "1"})
    assert distributed.wanted(resolve(base={"distribute": True}), environ={"MS_ROLE": "MS_WORKER"})
    with pytest.raises(ConfigError, match="no launcher"):
        distributed.wanted(resolve(base={"distribute": True}), environ={})
    assert distributed.launched_world_size({"MS_WORKER_NUM": "4", "RANK_SIZE": "8"}) == 4


def test_data_sink_switch():
    cfg = resolve(base={})
    assert not use_data_sink(cfg, "CPU")
    assert use_data_sink(cfg, "Ascend") and use_data_sink(cfg, "GPU")
    assert not use_data_sink(resolve(base={"grad_accum": 2}), "Ascend")
    assert not use_data_sink(resolve(base={"data_sink": "off"}), "Ascend")
    with pytest.raises(ConfigError, match="data_sink on needs Ascend or GPU"):
        use_data_sink(resolve(base={"data_sink": "on"}), "CPU")
    with pytest.raises(ConfigError, match="grad_accum"):
        use_data_sink(resolve(base={"data_sink": "on", "grad_accum": 2}), "GPU")


def test_train_py_data_sink_on_cpu_is_one_line(tmp_path, tiny_folder):
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "--dataset", "image_folder", "--data_dir",
                           str(tiny_folder), "--device_target", "CPU", "--data_sink", "on",
                           "--output_dir", str(tmp_path)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: data_sink on needs Ascend or GPU; MindSpore cannot sink data on CPU: "
                      "use --data_sink auto (or off)"], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not any(tmp_path.iterdir())


# ------------------------------------------------------------------ sharding and draws
def test_rank_batches_are_strided_rows_of_the_global_batch(tiny_folder):
    """MindSpore deals row i to shard i % N (unshuffled): rank r's batch k is rows r::N of the
    global batch k, which is what draw_t_noise assumes."""
    single = list(epoch_batches(tiny_cfg(tiny_folder, batch_size=8), 0))
    ranks = [list(epoch_batches(tiny_cfg(tiny_folder), 0, 0, 2, r)) for r in range(2)]
    assert len(single) == len(ranks[0]) == len(ranks[1]) == 3
    for k, glob in enumerate(single):
        for r in range(2):
            np.testing.assert_array_equal(ranks[r][k].asnumpy(), glob.asnumpy()[r::2])


def test_shuffled_shards_are_disjoint(tiny_folder):
    cfg = tiny_cfg(tiny_folder, shuffle=True, shuffle_buffer=0, batch_size=2)
    seen = [np.concatenate([b.asnumpy() for b in epoch_batches(cfg, 0, 0, 2, r)]) for r in range(2)]
    rows = {r.tobytes() for part in seen for r in part}
    assert len(rows) == 24


def test_sink_dataset_carries_the_host_draws(tiny_folder):
    cfg = tiny_cfg(tiny_folder)
    host = list(epoch_batches(cfg, 0, 0, 2, 1))
    sink = sink_dataset(cfg, start_step=1, num_shards=2, shard_id=1)
    rows = sink.create_tuple_iterator(num_epochs=1, output_numpy=True)
    for step in (1, 2, 3):  # step 3 is the next epoch's first batch
        x0, t, noise = next(rows)
        np.testing.assert_array_equal(x0, host[step % 3].asnumpy())
        want_t, want_noise = draw_t_noise(cfg["seed"], step, 0, x0.shape, cfg["timesteps"], rank=1, world=2)
        np.testing.assert_array_equal(t, want_t.asnumpy())
        np.testing.assert_array_equal(noise, want_noise.asnumpy())


def test_each_epoch_has_its_own_shuffle_and_repeats_on_resume(tiny_folder):
    """create_dataset sets the dataset seed from the config it gets: epoch_batches must pass
    seed + epoch in it, or every epoch would see the same order and flips."""
    cfg = tiny_cfg(tiny_folder, shuffle=True, shuffle_buffer=0, random_flip=True)
    epochs = [np.concatenate([b.asnumpy() for b in epoch_batches(cfg, e)]) for e in (0, 1, 1)]
    assert not np.array_equal(epochs[0], epochs[1])
    np.testing.assert_array_equal(epochs[1], epochs[2])  # a resumed epoch 1 sees the same order
    resumed = [b.asnumpy() for b in epoch_batches(cfg, 1, 2)]
    np.testing.assert_array_equal(np.concatenate(resumed), epochs[1][2 * 4:])


def test_sink_resume_skips_only_into_the_current_epoch(tiny_folder, monkeypatch):
    """Resuming at step 7 with 3 batches per epoch: the pipeline is seeded for epoch 2 and skips
    1 batch (not 7), and the first batch is the host loop's epoch-2 batch 1 with step 7's draws."""
    import mindspore.dataset as ds

    from ddpm_ms import data
    cfg = tiny_cfg(tiny_folder)
    skips, seeds = [], []
    real_create = data.create_dataset

    def spying_create(*args, **kwargs):
        dataset = real_create(*args, **kwargs)
        seeds.append(ds.config.get_seed())
        real_skip = dataset.skip
        dataset.skip = lambda n: (skips.append(n), real_skip(n))[1]
        return dataset
    monkeypatch.setattr(data, "create_dataset", spying_create)
    sink = sink_dataset(cfg, 7, steps_per_epoch=3, num_shards=2, shard_id=1)
    assert skips == [1] and seeds == [cfg["seed"] + 2]
    x0, t, noise = next(sink.create_tuple_iterator(num_epochs=1, output_numpy=True))
    host = list(epoch_batches(cfg, 2, 1, 2, 1))
    np.testing.assert_array_equal(x0, host[0].asnumpy())
    want_t, want_noise = draw_t_noise(cfg["seed"], 7, 0, x0.shape, cfg["timesteps"], rank=1, world=2)
    np.testing.assert_array_equal(t, want_t.asnumpy())
    np.testing.assert_array_equal(noise, want_noise.asnumpy())


# ------------------------------------------------------------------ stop votes
class _Identity(ms.nn.Cell):
    def construct(self, x):
        return x


class VotingComm:
    """Rank 0 of 2 with the collectives faked: records the steps at which the stop vote ran;
    ``others_stop_at``: the vote at that step reports that another rank stopped."""
    rank, world, local_rank = 0, 2, 0

    def __init__(self, trainer_box, others_stop_at=None):
        self.box, self.others_stop_at, self.votes = trainer_box, others_stop_at, []

    def grad_reducer(self, params):
        return _Identity()

    def loss_reducer(self):
        return _Identity()

    def same_on_all(self, value):
        return True

    def any_true(self, flag):
        step = self.box[0].step
        self.votes.append((step, bool(flag)))
        return bool(flag) or step == self.others_stop_at


def voting_trainer(tmp_path, max_steps, others_stop_at=None, local_stop_at=None):
    from ddpm_ms.trainer import Trainer
    cfg = resolve(base=dict(dataset="image_folder", data_dir=str(tmp_path), image_size=8, channels=3, dim=8,
                            dim_mults=[1, 2], attn_heads=1, attn_head_dim=8, timesteps=50, batch_size=4,
                            max_steps=max_steps, ema_decay=0, log_every=5, save_every=1000, sample_every=0,
                            num_preview=2, sample_steps=2, output_dir=str(tmp_path), run_name="run",
                            device_target="CPU", mode="pynative", seed=3))
    box = []
    comm = VotingComm(box, others_stop_at)
    trainer = Trainer(cfg, log=lambda *_: None, comm=comm)
    box.append(trainer)
    x0 = ms.Tensor(np.random.default_rng(0).uniform(-1, 1, (4, 3, 8, 8)).astype(np.float32))

    def batches(epoch, skip):
        for i in range(skip, 4):  # 4 batches per epoch: votes also cross epoch ends
            if local_stop_at is not None and trainer.step == local_stop_at:
                trainer.stop_reason = "SIGTERM received (test)"
            yield x0
    trainer.setup(batches, 4)
    trainer.stop_vote_every = 3
    trainer.preview = lambda name: None  # not what these tests are about (and slow to compile)
    return trainer, comm


def test_stop_vote_runs_every_n_steps_not_every_step(tmp_path):
    trainer, comm = voting_trainer(tmp_path, max_steps=9)
    assert trainer.run() == 9
    assert comm.votes == [(3, False), (6, False)]  # not at 9: every rank knows the end


def test_local_stop_waits_for_the_vote_then_all_stop_together(tmp_path):
    """A signal on this rank during step 4 (the last of epoch 0) is acted on at the vote at
    step 6, in the next epoch: the step at which every rank stops and saves."""
    trainer, comm = voting_trainer(tmp_path, max_steps=100, local_stop_at=3)
    assert trainer.run() == 6
    assert comm.votes == [(3, False), (6, True)] and trainer.stop_reason == "SIGTERM received (test)"
    _, meta = ckpt.load(str(tmp_path / "run" / "latest.ckpt"))
    assert meta["step"] == 6


def test_another_ranks_stop_stops_this_one_at_the_vote(tmp_path):
    trainer, comm = voting_trainer(tmp_path, max_steps=100, others_stop_at=6)
    assert trainer.run() == 6
    assert comm.votes == [(3, False), (6, False)] and trainer.stop_reason.startswith("another rank stopped")
    _, meta = ckpt.load(str(tmp_path / "run" / "latest.ckpt"))
    assert meta["step"] == 6


# ------------------------------------------------------------------ msrun (slow)
def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_args(folder, out, **over):
    args = dict(dataset="image_folder", data_dir=str(folder), image_size=8, channels=3, dim=8, dim_mults="1,2",
                attn_heads=1, attn_head_dim=8, timesteps=50, lr_schedule="constant", lr=1e-3, ema_decay=0.9,
                log_every=1, save_every=2, keep_checkpoints=3, sample_every=0, num_preview=2, sample_steps=2,
                shuffle="false", random_flip="false", num_parallel_workers=1, device_target="CPU",
                mode="graph", seed=3, output_dir=str(out), run_name="run")
    args.update(over)
    return [a for k, v in args.items() for a in (f"--{k}", str(v))]


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    env.update(extra)
    return env


def run_msrun(tmp_path, args, log_dir):
    env = clean_env(PYTHON=sys.executable, MASTER_PORT=str(free_port()), LOG_DIR=str(log_dir))
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "run_distribute_train.sh"), "2", *args],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1200)
    logs = "".join(p.read_text(errors="replace")[-3000:] for p in sorted(Path(log_dir).glob("*.log")))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:] + logs
    return proc


def metrics(run_dir):
    return [json.loads(line) for line in open(run_dir / "metrics.jsonl")]


def assert_same_state(path_a, path_b, atol=2e-5):
    a, meta_a = ckpt.load(str(path_a))
    b, meta_b = ckpt.load(str(path_b))
    assert meta_a["step"] == meta_b["step"]
    assert a.keys() == b.keys()
    diff = max(float(np.abs(a[k].asnumpy() - b[k].asnumpy()).max()) for k in a)
    assert diff <= atol, f"max parameter difference {diff}"
    return diff


@pytest.mark.slow
def test_msrun_two_workers_match_one_process_and_resume(tmp_path, tiny_folder):
    # one process, global batch 8, 6 steps (constant lr: a 4-step run resumed to 6 is the same run)
    single = subprocess.run([sys.executable, str(ROOT / "train.py"),
                             *train_args(tiny_folder, tmp_path / "single", batch_size=8, max_steps=6)],
                            cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=1200)
    assert single.returncode == 0, single.stderr[-3000:]
    one = tmp_path / "single" / "run"

    # two msrun workers, batch 4 each, 4 steps
    run_msrun(tmp_path, train_args(tiny_folder, tmp_path / "dp", batch_size=4, max_steps=4), tmp_path / "logs1")
    two = tmp_path / "dp" / "run"
    rows_one, rows_two = metrics(one), metrics(two)
    assert [r["step"] for r in rows_two] == [1, 2, 3, 4]  # one writer: no duplicated lines
    np.testing.assert_allclose([r["loss"] for r in rows_two], [r["loss"] for r in rows_one[:4]], rtol=1e-5)
    assert_same_state(two / "latest.ckpt", one / "step_00000004.ckpt")
    assert sorted(p.name for p in two.iterdir()) == sorted(
        ["config.yaml", "metrics.jsonl", "loss.png", "samples.png", "latest.ckpt", "step_00000002.ckpt",
         "step_00000004.ckpt"])
    worker1 = (tmp_path / "logs1" / "worker_1.log").read_text(errors="replace")
    worker0 = (tmp_path / "logs1" / "worker_0.log").read_text(errors="replace")
    assert "config: {" in worker0 and "config: {" not in worker1 and "stopped:" not in worker1

    # resume the 2-worker run to step 6: same as the uninterrupted single process
    run_msrun(tmp_path, train_args(tiny_folder, tmp_path / "dp", batch_size=4, max_steps=6, resume="auto"),
              tmp_path / "logs2")
    rows_two = metrics(two)
    assert [r["step"] for r in rows_two] == [1, 2, 3, 4, 5, 6]
    np.testing.assert_allclose([r["loss"] for r in rows_two], [r["loss"] for r in rows_one], rtol=1e-5)
    diff = assert_same_state(two / "latest.ckpt", one / "latest.ckpt")
    print(f"msrun 2 workers vs 1 process after 6 steps (4 + resumed 2): max parameter difference {diff:.2e}")

"""ModelArts jobs with a fake ``moxing`` (copy_parallel via shutil, calls recorded): data copied in
once per node, training on the local copy, run folder copied out at each save, at exit and after SIGTERM."""
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ddpm_ms import checkpoint as ckpt
from ddpm_ms import modelarts
from ddpm_ms.config import resolve

ROOT = Path(__file__).resolve().parents[1]

FAKE_FILE_PY = '''
"""Fake moxing.file for tests: local paths, shutil, every call appended to $FAKE_MOXING_LOG."""
import json, os, shutil

def _record(name, *args):
    with open(os.environ["FAKE_MOXING_LOG"], "a") as f:
        f.write(json.dumps([name, *args]) + "\\n")

def is_directory(url):
    return os.path.isdir(url)

def exists(url):
    return os.path.exists(url)

def copy_parallel(src_url, dst_url):
    import threading, time
    if os.environ.get("FAKE_MOXING_THREADS"):
        with open(os.environ["FAKE_MOXING_THREADS"], "a") as f:
            f.write(threading.current_thread().name + "\\n")
    time.sleep(float(os.environ.get("FAKE_MOXING_DELAY", "0")))  # a slow OBS
    _record("copy_parallel", src_url, dst_url)
    shutil.copytree(src_url, dst_url, dirs_exist_ok=True)

def copy(src_url, dst_url):
    _record("copy", src_url, dst_url)
    os.makedirs(os.path.dirname(dst_url), exist_ok=True)
    shutil.copy2(src_url, dst_url)
'''


@pytest.fixture
def fake_moxing(tmp_path, monkeypatch):
    """A ``moxing`` package on sys.path / PYTHONPATH; returns a function reading the recorded calls."""
    pkg = tmp_path / "fake_site" / "moxing"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("from . import file  # noqa: F401\n")
    (pkg / "file.py").write_text(FAKE_FILE_PY)
    log = tmp_path / "moxing_calls.jsonl"
    monkeypatch.setenv("FAKE_MOXING_LOG", str(log))
    monkeypatch.syspath_prepend(str(pkg.parent))
    for name in [m for m in sys.modules if m == "moxing" or m.startswith("moxing.")]:
        monkeypatch.delitem(sys.modules, name)

    def calls():
        return [json.loads(line) for line in open(log)] if log.exists() else []
    calls.site = str(pkg.parent)
    yield calls
    for name in [m for m in sys.modules if m == "moxing" or m.startswith("moxing.")]:
        del sys.modules[name]


@pytest.fixture
def obs(tmp_path):
    """'OBS': a data folder of 24 tiny images, an empty output folder, and a local cache."""
    data = tmp_path / "obs" / "data"
    data.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(24):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(data / f"{i:03d}.png")
    return {"data": data, "out": tmp_path / "obs" / "out", "cache": tmp_path / "cache"}


def ma_args(obs, **over):
    args = dict(dataset="image_folder", data_dir="/nonexistent", image_size=8, channels=3, dim=8, dim_mults="1,2",
                attn_heads=1, attn_head_dim=8, timesteps=50, batch_size=4, max_steps=4, lr=1e-3,
                ema_decay=0.9, log_every=1, save_every=2, sample_every=0, num_preview=2, sample_steps=2,
                num_parallel_workers=1, device_target="CPU", mode="pynative", seed=3, run_name="run",
                output_dir="/nonexistent_out", enable_modelarts="true", data_url=str(obs["data"]),
                train_url=str(obs["out"]))
    args.update(over)
    return [a for k, v in args.items() for a in (f"--{k}", str(v))]


# ------------------------------------------------------------------ pieces
def test_off_unless_enabled_or_on_modelarts(monkeypatch):
    monkeypatch.delenv("MA_JOB_DIR", raising=False)
    monkeypatch.delenv("MA_HOME", raising=False)
    assert modelarts.Stage.from_config(resolve(base={"data_url": "obs://b/d"})) is None
    assert modelarts.Stage.from_config(resolve(base={"enable_modelarts": True})) is not None
    monkeypatch.setenv("MA_JOB_DIR", "/home/ma-user/modelarts/user-job-dir")
    assert modelarts.Stage.from_config(resolve(base={})) is None  # on ModelArts but nothing to copy
    assert modelarts.Stage.from_config(resolve(base={"data_url": "obs://b/d"})) is not None


def test_once_per_node_others_wait_for_this_jobs_marker(tmp_path, monkeypatch):
    monkeypatch.setenv("JOB_ID", "job-2")
    marker = tmp_path / "cache" / modelarts.MARKER
    marker.parent.mkdir()
    marker.write_text("job-1")  # left by an earlier job: must not release the waiting rank
    order = []
    waiter = threading.Thread(target=lambda: (modelarts.once_per_node(
        lambda: order.append("never"), str(marker), local_rank=1, poll_s=0.05), order.append("rank1 done")))
    waiter.start()
    time.sleep(0.5)
    assert order == [] and waiter.is_alive()
    modelarts.once_per_node(lambda: (time.sleep(0.2), order.append("copied")), str(marker), local_rank=0)
    waiter.join(timeout=10)
    assert order == ["copied", "rank1 done"] and marker.read_text() == "job-2"
    with pytest.raises(TimeoutError):
        marker.write_text("job-1")
        modelarts.once_per_node(lambda: None, str(marker), local_rank=3, timeout_s=0.2, poll_s=0.05)


def test_train_copies_in_trains_and_copies_out(fake_moxing, obs, monkeypatch):
    import train
    monkeypatch.setenv(modelarts.CACHE_ENV, str(obs["cache"]))
    trainer = train.main(ma_args(obs), log=lambda *_: None)
    cfg = trainer.cfg
    assert trainer.step == 4
    calls = fake_moxing()
    run_dir = str(obs["cache"] / "output" / "run")
    assert calls[0] == ["copy_parallel", str(obs["data"]), str(obs["cache"] / "data")]
    # after the saves at steps 2 and 4 (snapshots, background thread; the second may replace the
    # first if it had not started), then the run folder itself at exit, last
    snapshots = [c for c in calls[1:-1] if c[0] == "copy_parallel" and c[2] == str(obs["out"])
                 and c[1].startswith(str(obs["cache"] / "upload" / "snapshot_"))]
    assert 1 <= len(snapshots) == len(calls) - 2, calls
    assert calls[-1] == ["copy_parallel", run_dir, str(obs["out"])]
    assert not os.listdir(obs["cache"] / "upload")  # snapshots removed once copied
    assert cfg["data_dir"] == str(obs["cache"] / "data")
    for name in ("latest.ckpt", "step_00000002.ckpt", "step_00000004.ckpt", "metrics.jsonl", "config.yaml",
                 "samples.png", "loss.png"):
        assert (obs["out"] / name).is_file(), name
    _, meta = ckpt.load(str(obs["out"] / "latest.ckpt"))
    assert meta["step"] == 4 and meta["config"]["data_dir"] == str(obs["cache"] / "data")

    # a new job resumes from --checkpoint_url (a file on OBS)
    cache2 = obs["cache"].parent / "cache2"
    monkeypatch.setenv(modelarts.CACHE_ENV, str(cache2))
    out2 = obs["out"].parent / "out2"
    trainer = train.main(ma_args(obs, max_steps=6, train_url=out2, checkpoint_url=obs["out"] / "latest.ckpt"),
                         log=lambda *_: None)
    cfg = trainer.cfg
    assert trainer.step == 6 and cfg["resume"] == str(cache2 / "checkpoint" / "latest.ckpt")
    assert ["copy", str(obs["out"] / "latest.ckpt"), str(cache2 / "checkpoint" / "latest.ckpt")] in fake_moxing()
    rows = [json.loads(line) for line in open(out2 / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [5, 6]


def test_without_moxing_urls_are_local_paths(obs, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "moxing", None)  # import moxing -> ImportError
    monkeypatch.setenv(modelarts.CACHE_ENV, str(obs["cache"]))
    cfg = resolve(base={"enable_modelarts": True, "data_url": str(obs["data"]), "train_url": str(obs["out"]),
                        "run_name": "r"})
    stage = modelarts.Stage.from_config(cfg)
    stage.stage_in()
    assert sorted(os.listdir(obs["cache"] / "data"))[:2] == ["000.png", "001.png"]
    os.makedirs(stage.run_dir)
    Path(stage.run_dir, "a.txt").write_text("x")
    stage.upload()
    assert (obs["out"] / "a.txt").read_text() == "x"


def test_staging_happens_before_init(monkeypatch, obs):
    """train.main: data copied in, then mindspore.communication.init() (mocked), then training;
    the real rank from init decides who uploads; msrun's scheduler copies nothing."""
    import train
    from ddpm_ms import distributed, runtime, trainer
    order = []
    monkeypatch.setenv(modelarts.CACHE_ENV, str(obs["cache"]))
    for var in ("MS_ROLE", "MS_WORKER_NUM", "RANK_SIZE", "RANK_TABLE_FILE", "RANK_ID", "DEVICE_ID"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(modelarts.Stage, "stage_in", lambda self: order.append(("stage_in", self.local_rank)))
    comm = type("FakeComm", (), {"rank": 1, "world": 2, "local_rank": 1})()
    monkeypatch.setattr(distributed, "setup", lambda cfg, log=print: (order.append(("init",)), comm)[1])
    monkeypatch.setattr(modelarts.Stage, "upload", lambda self, _p=None: order.append(("upload", self.rank)))

    class FakeTrainer:
        def __init__(self, cfg, comm=None, save_hooks=(), log=print):
            self.hooks = save_hooks

        def setup(self):
            pass

        def run(self):
            order.append(("train", len(self.hooks)))
    monkeypatch.setattr(trainer, "Trainer", FakeTrainer)
    cfg = resolve(base={"enable_modelarts": True, "data_url": str(obs["data"]), "train_url": str(obs["out"])})
    monkeypatch.setattr(runtime, "prepare", lambda argv, description=None: (dict(cfg), {"device_target": "CPU"}))
    monkeypatch.setenv("DEVICE_ID", "3")
    monkeypatch.setenv("RANK_SIZE", "8")
    train.main([], log=lambda *_: None)
    assert order == [("stage_in", 3), ("init",), ("train", 0)]  # rank 1: no upload hook, no exit upload

    order.clear()
    comm.rank = 0
    train.main([], log=lambda *_: None)
    assert order == [("stage_in", 3), ("init",), ("train", 1), ("upload", 0)]

    order.clear()
    monkeypatch.setenv("MS_ROLE", "MS_SCHED")
    train.main([], log=lambda *_: None)
    assert order[0] == ("init",) and not any(o[0] == "stage_in" for o in order)


def test_pre_init_ranks_from_the_launcher_environment():
    from ddpm_ms.distributed import is_scheduler, pre_init_ranks
    assert pre_init_ranks({}) == (0, 0)
    assert pre_init_ranks({"DEVICE_ID": "5", "RANK_ID": "13", "RANK_SIZE": "16"}) == (13, 5)  # node 1, device 5
    assert pre_init_ranks({"DEVICE_ID": "6", "RANK_SIZE": "4"}) == (0, 2)   # devices 4-7 of a 4-device job
    assert pre_init_ranks({"DEVICE_ID": "1", "MS_WORKER_NUM": "2", "MS_ROLE": "MS_WORKER"}) == (0, 1)  # msrun
    assert pre_init_ranks({"ASCEND_DEVICE_ID": "2", "RANK_SIZE": "8"}) == (0, 2)
    assert pre_init_ranks({"DEVICE_ID": "3"}) == (0, 0)  # a single process copies for itself
    assert is_scheduler({"MS_ROLE": "MS_SCHED"}) and not is_scheduler({"MS_ROLE": "MS_WORKER"})


def test_background_upload_does_not_block_and_exit_upload_comes_last(fake_moxing, obs, monkeypatch, tmp_path):
    """A slow OBS (1 s per copy): upload_async returns at once and copies on the 'ddpm_ms-upload'
    thread; a snapshot waiting behind a running copy is replaced by the newer one; the snapshot
    skips .tmp files and keeps a checkpoint that rotation deletes; upload() at exit waits for the
    running copy, then copies the run folder last."""
    monkeypatch.setenv("FAKE_MOXING_DELAY", "1.0")
    threads = tmp_path / "threads.txt"
    monkeypatch.setenv("FAKE_MOXING_THREADS", str(threads))
    monkeypatch.setenv(modelarts.CACHE_ENV, str(obs["cache"]))
    cfg = resolve(base={"enable_modelarts": True, "train_url": str(obs["out"]), "run_name": "r"})
    stage = modelarts.Stage.from_config(cfg, log=lambda *_: None)
    stage.stage_in()
    run_dir = Path(stage.run_dir)
    run_dir.mkdir(parents=True)
    (run_dir / "step_1.ckpt").write_text("one")
    (run_dir / "step_2.ckpt.tmp99.ckpt").write_text("half-written")
    def copies_started(n):
        deadline = time.time() + 20
        while (len(threads.read_text().split()) if threads.exists() else 0) < n:
            assert time.time() < deadline
            time.sleep(0.02)

    def timed_upload_async():
        t = time.time()
        stage.upload_async()
        return time.time() - t

    waits = [timed_upload_async()]
    copies_started(1)
    (run_dir / "step_1.ckpt").unlink()  # rotated away right after the snapshot
    (run_dir / "step_3.ckpt").write_text("three")
    waits.append(timed_upload_async())   # waits behind the running copy ...
    (run_dir / "step_4.ckpt").write_text("four")
    waits.append(timed_upload_async())   # ... and is replaced by this one
    assert max(waits) < 0.5, waits       # training is not held up by the 1 s copies
    copies_started(2)  # snapshot 1 is on "OBS" now
    assert (obs["out"] / "step_1.ckpt").read_text() == "one"  # uploaded although rotated locally
    assert not (obs["out"] / "step_2.ckpt.tmp99.ckpt").exists()  # a file being written is not
    (run_dir / "step_2.ckpt.tmp99.ckpt").rename(run_dir / "step_2.ckpt")
    t0 = time.time()
    stage.upload()
    assert time.time() - t0 >= 1.5  # the exit upload waited for the running copy, then made its own
    calls = fake_moxing()
    assert [c[1].rsplit("_", 1)[-1] for c in calls[:2]] == ["000001", "000003"], calls  # snapshot 2 dropped
    assert calls[-1][1] == str(run_dir) and len(calls) == 3
    assert threads.read_text().split() == ["ddpm_ms-upload", "ddpm_ms-upload", "MainThread"]
    assert (obs["out"] / "step_4.ckpt").read_text() == "four"
    assert stage.uploads == 3 and not os.listdir(obs["cache"] / "upload")


def test_failed_background_upload_is_logged_and_training_goes_on(obs, monkeypatch):
    monkeypatch.setenv(modelarts.CACHE_ENV, str(obs["cache"]))
    cfg = resolve(base={"enable_modelarts": True, "train_url": str(obs["out"]), "run_name": "r"})
    lines = []
    stage = modelarts.Stage.from_config(cfg, log=lines.append)
    stage.stage_in()
    os.makedirs(stage.run_dir)
    Path(stage.run_dir, "a.ckpt").write_text("x")
    monkeypatch.setattr(modelarts, "copy", lambda src, dst: (_ for _ in ()).throw(OSError("OBS down")))
    stage.upload_async()
    deadline = time.time() + 10
    while not lines and time.time() < deadline:  # the upload thread fails in the background
        time.sleep(0.05)
    stage.close()
    assert len(lines) == 1 and "upload to" in lines[0] and "OBS down" in lines[0] and "retried" in lines[0]
    assert stage.uploads == 0 and not os.listdir(obs["cache"] / "upload")


# ------------------------------------------------------------------ SIGTERM (slow: a real train.py process)
@pytest.mark.slow
def test_sigterm_still_uploads_the_last_checkpoint(fake_moxing, obs, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("MS_ROLE", "MS_WORKER_NUM", "RANK_SIZE",
                                                            "RANK_TABLE_FILE")}
    env.update(PYTHONPATH=fake_moxing.site, FAKE_MOXING_LOG=str(tmp_path / "moxing_calls.jsonl"),
               **{modelarts.CACHE_ENV: str(obs["cache"])})
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"),
                             *ma_args(obs, max_steps=100000, save_every=3, log_every=5, mode="graph")],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 600
        while not (obs["out"] / "latest.ckpt").exists():
            assert proc.poll() is None, proc.stdout.read()[-3000:]
            assert time.time() < deadline, "no checkpoint uploaded in time"
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out[-3000:]
    assert "SIGTERM received" in out
    local = obs["cache"] / "output" / "run"
    _, local_meta = ckpt.load(str(local / "latest.ckpt"))
    _, uploaded_meta = ckpt.load(str(obs["out"] / "latest.ckpt"))
    assert 3 <= uploaded_meta["step"] == local_meta["step"] < 100000
    assert (obs["out"] / f"step_{local_meta['step']:08d}.ckpt").is_file()
    assert (obs["out"] / "samples.png").is_file()  # the exit upload ran after the final preview

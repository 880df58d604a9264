"""ModelArts training jobs: OBS data in, outputs back out.

A ModelArts job passes ``--data_url`` / ``--train_url`` (OBS paths) and the container has
the ``moxing`` package. Before training, one process per node (local rank 0) copies
``data_url`` to ``<cache>/data`` and ``checkpoint_url`` to ``<cache>/checkpoint`` with
``moxing.file.copy_parallel`` while the node's other processes wait for a marker file; the
run then reads and writes local disk only. This staging runs before
``mindspore.communication.init()`` (see ``train.py``), as the model zoo's ModelArts adapter
does, so no rank waits in a collective while its node copies data. Rank 0 copies its run folder
(checkpoints, samples, metrics, config) to ``train_url`` after every checkpoint on a background
thread (a hard-linked snapshot of the folder), and once more, synchronously, at exit.

Off ModelArts (no ``moxing``), the URLs are local paths and the copies use shutil, which is
how the tests run this. ``<cache>`` is ``/cache`` (the ModelArts local SSD), or the
``DDPM_MS_MODELARTS_CACHE`` environment variable.

On when ``enable_modelarts: true``, or on a ModelArts container (``MA_JOB_DIR`` is set) when
any of the URLs is given.
"""
import os
import shutil
import threading
import time

CACHE_ENV = "DDPM_MS_MODELARTS_CACHE"
DEFAULT_CACHE = "/cache"
MARKER = ".ddpm_ms_staged"


def on_modelarts(environ=None):
    """True inside a ModelArts training container."""
    env = os.environ if environ is None else environ
    return bool(env.get("MA_JOB_DIR") or env.get("MA_HOME"))


def _moxing():
    try:
        import moxing  # ModelArts only; imported here so the package works anywhere
        import moxing.file  # noqa: F401
    except ImportError:
        return None
    return moxing


def is_dir(url):
    mox = _moxing()
    return mox.file.is_directory(url) if mox is not None else os.path.isdir(url)


def exists(url):
    mox = _moxing()
    return mox.file.exists(url) if mox is not None else os.path.exists(url)


def copy(src, dst):
    """Copy a file or a folder's contents (OBS or local) to ``dst``; moxing when present."""
    mox = _moxing()
    if mox is not None:
        if mox.file.is_directory(src):
            mox.file.copy_parallel(src, dst)
        else:
            mox.file.copy(src, dst)
        return dst
    if os.path.isdir(src):
        shutil.copytree(src, dst, dirs_exist_ok=True)
    else:
        os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
        shutil.copy2(src, dst)
    return dst


def _job_token():
    """Same for every process of this job on this node, new for the next job."""
    return os.environ.get("JOB_ID") or os.environ.get("MA_JOB_ID") or f"ppid{os.getppid()}"


def once_per_node(work, marker, local_rank, timeout_s=7200, poll_s=0.5):
    """Local rank 0 runs ``work()`` then writes ``marker``; the others wait for the marker.

    The marker holds the job token, so a marker left by an earlier job does not count.
    """
    token = _job_token()
    if local_rank == 0:
        if os.path.exists(marker):
            os.remove(marker)
        work()
        from .files import write_text
        write_text(marker, token)
        return
    deadline = time.time() + timeout_s
    while True:
        try:
            with open(marker) as f:
                if f.read() == token:
                    return
        except OSError:
            pass
        if time.time() > deadline:
            raise TimeoutError(f"waited {timeout_s}s for local rank 0 to copy the data ({marker})")
        time.sleep(poll_s)


class Stage:
    """Copies for one process of a ModelArts job; built by :meth:`from_config` (None = off)."""

    def __init__(self, cfg, rank=0, local_rank=0, cache=None, log=print):
        self.cfg, self.rank, self.local_rank, self.log = cfg, rank, local_rank, log
        self.cache = cache or os.environ.get(CACHE_ENV, DEFAULT_CACHE)
        self.data_url, self.train_url = cfg["data_url"], cfg["train_url"]
        self.checkpoint_url = cfg["checkpoint_url"]
        self.uploads = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._pending = None    # newest snapshot waiting for the upload thread
        self._thread = None
        self._closing = False
        self._snapshots = 0

    @classmethod
    def from_config(cls, cfg, rank=0, local_rank=0, log=print):
        urls = cfg["data_url"] or cfg["train_url"] or cfg["checkpoint_url"]
        if not (cfg["enable_modelarts"] or (on_modelarts() and urls)):
            return None
        return cls(cfg, rank=rank, local_rank=local_rank, log=log)

    @property
    def run_dir(self):
        return os.path.join(self.cfg["output_dir"], self.cfg["run_name"])

    def stage_in(self):
        """Copy data and checkpoint in (once per node) and point the config at the copies."""
        cfg = self.cfg
        data_dir = os.path.join(self.cache, "data")
        ckpt_dir = os.path.join(self.cache, "checkpoint")
        ckpt_is_dir = bool(self.checkpoint_url) and is_dir(self.checkpoint_url)

        def work():
            if self.data_url:
                self.log(f"[ddpm_ms] copying {self.data_url} -> {data_dir}")
                os.makedirs(data_dir, exist_ok=True)
                copy(self.data_url, data_dir)
            if self.checkpoint_url:
                os.makedirs(ckpt_dir, exist_ok=True)
                dest = ckpt_dir if ckpt_is_dir else os.path.join(ckpt_dir, os.path.basename(self.checkpoint_url))
                self.log(f"[ddpm_ms] copying {self.checkpoint_url} -> {dest}")
                copy(self.checkpoint_url, dest)

        if self.data_url or self.checkpoint_url:
            once_per_node(work, os.path.join(self.cache, MARKER), self.local_rank)
        if self.data_url:
            cfg["data_dir"] = data_dir
        if self.checkpoint_url:
            cfg["resume"] = (os.path.join(ckpt_dir, "latest.ckpt") if ckpt_is_dir
                             else os.path.join(ckpt_dir, os.path.basename(self.checkpoint_url)))
        if self.train_url:
            cfg["output_dir"] = os.path.join(self.cache, "output")
        return cfg

    def upload(self, _path=None):
        """Copy the run folder to train_url now (rank 0; a no-op without train_url); used at exit.

        Waits for a background upload still running (so an older snapshot cannot land on OBS
        after this one) and drops one not yet started.
        """
        self.close()
        if self.rank != 0 or not self.train_url or not os.path.isdir(self.run_dir):
            return
        copy(self.run_dir, self.train_url)
        self.uploads += 1

    def upload_async(self, _path=None):
        """After a checkpoint (rank 0): snapshot the run folder with hard links and copy the
        snapshot to train_url on a background thread, so training goes on at once and the other
        ranks do not wait in their next collective (HCCL_EXEC_TIMEOUT) while OBS is slow.

        Files written later (the next checkpoint, its ``.tmp`` file) are not in the snapshot, and
        a rotated checkpoint stays readable through its link. A snapshot not yet started is
        replaced by a newer one. A failed copy is logged and retried with the next snapshot.
        """
        if self.rank != 0 or not self.train_url or not os.path.isdir(self.run_dir):
            return
        snap = self._snapshot()
        with self._lock:
            dropped, self._pending = self._pending, snap
            if self._thread is None:
                self._closing = False
                self._thread = threading.Thread(target=self._upload_loop, name="ddpm_ms-upload", daemon=True)
                self._thread.start()
        if dropped:
            shutil.rmtree(dropped, ignore_errors=True)
        self._wake.set()

    def close(self):
        """Stop the upload thread after its current copy (a pending snapshot is dropped)."""
        with self._lock:
            thread, dropped, self._pending = self._thread, self._pending, None
            self._closing = True
        if dropped:
            shutil.rmtree(dropped, ignore_errors=True)
        if thread is not None:
            self._wake.set()
            thread.join()
            self._thread = None

    def _snapshot(self):
        self._snapshots += 1
        snap = os.path.join(self.cache, "upload", f"snapshot_{os.getpid()}_{self._snapshots:06d}")
        for root, _dirs, files in os.walk(self.run_dir):
            for name in files:
                if ".tmp" in name:  # a file being written (atomic writes rename it when done)
                    continue
                src = os.path.join(root, name)
                dst = os.path.join(snap, os.path.relpath(src, self.run_dir))
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                try:
                    os.link(src, dst)
                except FileNotFoundError:  # removed meanwhile (checkpoint rotation)
                    continue
                except OSError:  # no hard links across file systems: copy
                    shutil.copy2(src, dst)
        os.makedirs(snap, exist_ok=True)
        return snap

    def _upload_loop(self):
        while True:
            self._wake.wait()
            with self._lock:
                self._wake.clear()
                snap, self._pending = self._pending, None
                closing = self._closing
            if snap is not None:
                try:
                    copy(snap, self.train_url)
                    self.uploads += 1
                except Exception as err:  # noqa: BLE001 - keep training; the next upload retries
                    self.log(f"[ddpm_ms] upload to {self.train_url} failed ({type(err).__name__}: {err}); "
                             "retried after the next checkpoint and at exit")
                finally:
                    shutil.rmtree(snap, ignore_errors=True)
            if closing:
                return

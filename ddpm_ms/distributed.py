"""Data parallel training over msrun (or rank-table) workers.

Every worker runs ``train.py`` with the same arguments. :func:`setup` turns data parallel on
when asked (``distribute: true``) or when a launcher started us (msrun sets ``MS_ROLE`` and
``MS_WORKER_NUM``; a rank-table launch sets ``RANK_TABLE_FILE`` / ``RANK_SIZE``), in the
order MindSpore wants: device set (``prepare``), data-parallel context, ``init()``.

msrun also runs the script once as its *scheduler* (``MS_ROLE=MS_SCHED``): that process
must reach ``init()`` before doing anything else, since ``init()`` is where it serves the
cluster and exits. So ``setup`` is the first thing train.py does after parsing the config,
except on ModelArts, where every worker first stages its data (the scheduler skips that,
:func:`is_scheduler`) so that no rank waits in a collective while a node is still copying.

What each rank does differently is decided elsewhere from ``rank`` / ``world``:
the data set is sharded (rank r reads rows r::world), t and noise are rank r's rows of one
global draw (``train_step.draw_t_noise``), and only rank 0 writes files.
"""
import os

import numpy as np

import mindspore as ms
from mindspore import Tensor, nn, ops

from .config import ConfigError

LAUNCHER_VARS = ("MS_ROLE", "RANK_TABLE_FILE", "MINDSPORE_HCCL_CONFIG_PATH")


def launched_world_size(environ=None):
    """Workers the launcher announced (msrun: MS_WORKER_NUM; rank table: RANK_SIZE), else 1."""
    env = os.environ if environ is None else environ
    for var in ("MS_WORKER_NUM", "RANK_SIZE"):
        try:
            n = int(env.get(var, "") or 0)
        except ValueError:
            n = 0
        if n > 0:
            return n
    return 1


def launched(environ=None):
    """True when a launcher (msrun, a rank table, ModelArts) started this process as a worker."""
    env = os.environ if environ is None else environ
    return any(env.get(v) for v in LAUNCHER_VARS) or launched_world_size(env) > 1


def is_scheduler(environ=None):
    """True in msrun's scheduler process (it only serves the cluster inside ``init()``)."""
    env = os.environ if environ is None else environ
    return env.get("MS_ROLE") == "MS_SCHED"


def pre_init_ranks(environ=None):
    """(rank, local_rank) from the launcher's environment, for work that must happen before
    ``init()`` (ModelArts data staging). rank: RANK_ID, else 0 (msrun without --node_rank
    assigns ranks only in ``init()``; callers use the real rank afterwards). local_rank:
    DEVICE_ID (msrun sets it to the worker's index on its node; a rank table / ModelArts to
    the device), else ASCEND_DEVICE_ID, else 0, modulo min(world, 8) as in the model zoo's
    ModelArts adapter, so the first process of every 8-device node is local rank 0."""
    env = os.environ if environ is None else environ

    def number(*names):
        for name in names:
            try:
                return int(env.get(name, "") or "x")
            except ValueError:
                continue
        return 0
    per_node = max(1, min(launched_world_size(env), 8))
    return number("RANK_ID"), number("DEVICE_ID", "ASCEND_DEVICE_ID") % per_node


def wanted(cfg, environ=None):
    """Whether to initialise communication: asked for, or started by a launcher.

    Under msrun every process must call ``init()`` (the scheduler waits for the workers),
    even with one worker; ``MS_WORKER_NUM`` / ``RANK_SIZE`` above 1 also turn it on. A plain
    ``python train.py`` stays single; ``distribute: true`` there is an error.
    """
    env = os.environ if environ is None else environ
    if launched(env) and (env.get("MS_ROLE") or launched_world_size(env) > 1):
        return True
    if cfg["distribute"] and not launched(env):
        raise ConfigError("distribute is true but no launcher started this process: run "
                          "scripts/run_distribute_train.sh N ... (msrun), or on Ascend set "
                          "RANK_TABLE_FILE / RANK_ID / RANK_SIZE per process")
    return bool(cfg["distribute"])


class Comm:
    """The communication pieces a data-parallel Trainer needs, after ``init()``.

    rank, world, local_rank: ints. ``grad_reducer(params)`` -> a mean all-reduce cell for the
    gradients; ``loss_reducer()`` -> a cell averaging a scalar over the ranks inside the train
    step (so the logged loss is the global-batch loss); ``any_true(flag)`` -> True on every
    rank when any rank passes True (used to stop all ranks at the same step on a signal).
    Cells are built here, on the host, never inside a compiled step.
    """

    def __init__(self, rank, world, local_rank):
        self.rank, self.world, self.local_rank = int(rank), int(world), int(local_rank)
        self._sum = None

    def grad_reducer(self, params):
        return nn.DistributedGradReducer(params, mean=True, degree=self.world)

    def loss_reducer(self):
        return _AllReduceMean(self.world)

    def finite_reducer(self):
        """A cell: bool 'gradients finite' -> True only when finite on every rank (in the graph),
        as MindSpore's TrainOneStepWithLossScaleCell all-reduces its overflow flag."""
        return _AllRanksTrue()

    def same_on_all(self, value):
        """True on every rank when every rank passes the same number (e.g. the resume step)."""
        total = float(self._all_sum(value))
        return not self.any_true(abs(total - self.world * float(value)) > 0.5)

    def any_true(self, flag):
        return self._all_sum(1.0 if flag else 0.0) > 0

    def _all_sum(self, value):
        if self._sum is None:
            self._sum = ops.AllReduce(ops.ReduceOp.SUM)  # the CPU backend has only SUM
        return float(self._sum(Tensor(np.array([value], np.float32))).asnumpy()[0])


class _AllReduceMean(nn.Cell):
    """Scalar -> its mean over all ranks (inside a graph)."""

    def __init__(self, world):
        super().__init__()
        self.all_reduce = ops.AllReduce(ops.ReduceOp.SUM)
        self.inv = 1.0 / world

    def construct(self, x):
        return self.all_reduce(x.reshape((1,))).reshape(()) * self.inv


class _AllRanksTrue(nn.Cell):
    """bool scalar -> True when it is True on all ranks (sum of the 'not finite' flags is 0)."""

    def __init__(self):
        super().__init__()
        self.all_reduce = ops.AllReduce(ops.ReduceOp.SUM)  # the CPU backend has only SUM

    def construct(self, finite):
        bad = 1.0 - finite.astype(ms.float32).reshape((1,))
        return self.all_reduce(bad).reshape(()) < 0.5


def setup(cfg, log=print):
    """Initialise data parallel when wanted; return a Comm, or None for a single process.

    Must run after the device is set (``runtime.prepare``) and before anything writes files.
    """
    if not wanted(cfg):
        return None
    from mindspore.communication import get_group_size, get_local_rank, get_rank, init
    # No ms.set_auto_parallel_context (2.10: to be deprecated): nothing here reads the parallel
    # context. The gradient reducer is given mean and degree (Comm.grad_reducer), and each rank
    # reads its own shard of the data (data.py), so init() alone is enough.
    init()  # msrun's scheduler process serves the cluster here and exits
    rank, world = get_rank(), get_group_size()
    try:
        local_rank = get_local_rank()
    except (RuntimeError, ValueError):  # not offered by every backend
        local_rank = int(os.environ.get("DEVICE_ID", rank))
    if rank == 0:
        log(f"[ddpm_ms] data parallel: {world} workers (global batch = {world} x batch_size)")
    return Comm(rank, world, local_rank)

"""train.py's body: data parallel set-up, ModelArts staging, data, trainer, and the run."""
from .data import create_dataset
from .trainer import Trainer, draw_t_noise_np, use_data_sink


def _seeded(cfg, epoch):
    """The config for epoch ``epoch``'s pipeline: seed + epoch. ``create_dataset`` sets the
    process-wide dataset seed from the config it is given, so the seed must travel in it."""
    return dict(cfg, seed=cfg["seed"] + epoch)


def make_dataset_factory(cfg, num_shards=1, shard_id=0):
    """factory(epoch, skip) -> iterator of (B, C, H, W) float32 tensors for that epoch.

    Each epoch's shuffle is seeded with seed + epoch, so a resumed run sees the same order;
    ``skip`` batches are dropped from the start (resume mid-epoch). ``shuffle: false`` reads
    the files in order without random flips (rank r then gets rows r::num_shards).
    """
    import mindspore.dataset as ds

    def factory(epoch, skip):
        ds.config.set_seed(cfg["seed"] + epoch)
        dataset = create_dataset(_seeded(cfg, epoch), num_shards=num_shards, shard_id=shard_id,
                                 training=cfg["shuffle"])
        if skip:
            dataset = dataset.skip(skip)
        for (x0,) in dataset.create_tuple_iterator(num_epochs=1):
            yield x0

    return factory


class _AddTNoise:
    """Batch map: x0 -> (x0, t, noise), t/noise from ``draw_t_noise`` keyed on a step counter."""

    def __init__(self, cfg, start_step, shard_id, num_shards):
        self.seed, self.timesteps = cfg["seed"], cfg["timesteps"]
        self.step, self.rank, self.world = start_step, shard_id, num_shards

    def __call__(self, x0):
        t, noise = draw_t_noise_np(self.seed, self.step, 0, x0.shape, self.timesteps, self.rank, self.world)
        self.step += 1
        return x0, t, noise


def make_sink_dataset_factory(cfg, num_shards=1, shard_id=0, steps_per_epoch=None):
    """factory(start_step) -> endless dataset of (x0, t, noise) batches for data sink.

    The same draws as the host loop. The first pass is seeded like the host loop's epoch
    ``start_step // steps_per_epoch`` and skips only ``start_step % steps_per_epoch`` batches
    (a resume does not decode every batch since step 0); later epochs come from ``repeat``
    (the reader reshuffles each pass), so their order differs from the host loop's per-epoch
    seeds, and a resumed sink run does not repeat the uninterrupted run's order exactly.
    Without ``steps_per_epoch`` the whole ``start_step`` is skipped from seed + 0.
    """
    import mindspore.dataset as ds

    def factory(start_step):
        epoch, skip = divmod(start_step, steps_per_epoch) if steps_per_epoch else (0, start_step)
        ds.config.set_seed(cfg["seed"] + epoch)
        dataset = create_dataset(_seeded(cfg, epoch), num_shards=num_shards, shard_id=shard_id,
                                 training=cfg["shuffle"], repeat=True)
        if skip:
            dataset = dataset.skip(skip)
        # one worker, in order: the step counter must follow the batches
        return dataset.map(operations=_AddTNoise(cfg, start_step, shard_id, num_shards),
                           input_columns=["image"], output_columns=["image", "t", "noise"],
                           num_parallel_workers=1, python_multiprocessing=False)

    return factory


def train_from_config(cfg, info, rank=0, world=1, grad_reducer_factory=None, comm=None, save_hooks=()):
    """Build the data pipeline and trainer from ``cfg`` and run to the end; returns the Trainer."""
    import mindspore.dataset as ds
    if comm is not None:
        rank, world = comm.rank, comm.world
    ds.config.set_seed(cfg["seed"])
    probe = create_dataset(cfg, num_shards=world, shard_id=rank, training=cfg["shuffle"])
    steps_per_epoch = probe.get_dataset_size()
    del probe
    trainer = Trainer(cfg, rank=rank, world=world, grad_reducer_factory=grad_reducer_factory, comm=comm)
    trainer.save_hooks.extend(save_hooks)
    trainer.setup(make_dataset_factory(cfg, world, rank), steps_per_epoch,
                  sink_dataset_factory=make_sink_dataset_factory(cfg, world, rank, steps_per_epoch))
    trainer.run()
    return trainer


def run(cfg, info, log=print):
    """What train.py does: ModelArts copy-in, data parallel init, train, ModelArts copy-out.

    Under msrun every worker (and msrun's scheduler, which stops inside ``init``) runs this.
    The data is staged *before* ``init()``: on several nodes, a node still copying would
    otherwise keep the others blocked in their first collective. msrun's scheduler stages
    nothing. Outputs are uploaded after every checkpoint (background thread) and once more
    at exit, also after a SIGTERM (the trainer saves and leaves its loop) or an error.
    """
    from . import distributed, modelarts
    use_data_sink(cfg, info["device_target"])  # a bad data_sink setting fails before any work
    distributed.wanted(cfg)  # so does distribute: true without a launcher
    stage = None
    if not distributed.is_scheduler():
        from .ascend import apply_precision_mode
        apply_precision_mode(cfg["amp_level"], info["device_target"], log=log)  # Ascend only; before any graph
        env_rank, env_local_rank = distributed.pre_init_ranks()
        stage = modelarts.Stage.from_config(cfg, rank=env_rank, local_rank=env_local_rank, log=log)
        if stage is not None:
            stage.stage_in()  # rewrites data_dir / output_dir / resume to the local copies
    comm = distributed.setup(cfg, log=log)
    rank = comm.rank if comm is not None else 0
    hooks = []
    if stage is not None:
        stage.rank = rank  # the real rank: only rank 0 uploads
        if rank == 0:
            hooks.append(stage.upload_async)
    try:
        return train_from_config(cfg, info, comm=comm, save_hooks=hooks)
    finally:
        if stage is not None and rank == 0:
            stage.upload()


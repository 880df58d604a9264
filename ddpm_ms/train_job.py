"""train.py's body: data, trainer, and the run."""
from .data import create_dataset
from .trainer import Trainer


def make_dataset_factory(cfg, num_shards=1, shard_id=0):
    """factory(epoch, skip) -> iterator of (B, C, H, W) float32 tensors for that epoch.

    Each epoch's shuffle is seeded with seed + epoch, so a resumed run sees the same order;
    ``skip`` batches are dropped from the start (resume mid-epoch).
    """
    import mindspore.dataset as ds

    def factory(epoch, skip):
        ds.config.set_seed(cfg["seed"] + epoch)
        dataset = create_dataset(cfg, num_shards=num_shards, shard_id=shard_id, training=True)
        if skip:
            dataset = dataset.skip(skip)
        for (x0,) in dataset.create_tuple_iterator(num_epochs=1):
            yield x0

    return factory


def train_from_config(cfg, info, rank=0, world=1, grad_reducer_factory=None):
    """Build the data pipeline and trainer from ``cfg`` and run to the end; returns the Trainer."""
    import mindspore.dataset as ds
    ds.config.set_seed(cfg["seed"])
    probe = create_dataset(cfg, num_shards=world, shard_id=rank, training=True)
    steps_per_epoch = probe.get_dataset_size()
    del probe
    trainer = Trainer(cfg, rank=rank, world=world, grad_reducer_factory=grad_reducer_factory)
    trainer.setup(make_dataset_factory(cfg, world, rank), steps_per_epoch)
    trainer.run()
    return trainer

"""Train a DDPM noise predictor.

    python train.py --config configs/fashion_mnist_smoke.yaml --device_target CPU
    python train.py --config configs/fashion_mnist.yaml --resume auto
    bash scripts/run_distribute_train.sh 8 --config configs/fashion_mnist.yaml   # msrun, data parallel
    python train.py --config X.yaml --data_url obs://b/data --train_url obs://b/out  # ModelArts

Any config key can be given as --key value (it beats the YAML); see README for the list.
"""
import sys

from ddpm_ms.runtime import run_main


def main(argv=None, log=print):
    # 1. config, CPU settings (before MindSpore loads), device and mode
    from ddpm_ms.runtime import prepare
    cfg, info = prepare(argv, description=__doc__)
    from ddpm_ms import distributed, modelarts
    from ddpm_ms.ascend import apply_precision_mode
    from ddpm_ms.trainer import Trainer, use_data_sink
    use_data_sink(cfg, info["device_target"])  # a bad data_sink setting fails before any work
    distributed.wanted(cfg)  # so does distribute: true without a launcher

    # 2. ModelArts: stage the data in *before* init(), so that a node still copying does not
    #    keep the others blocked in their first collective. msrun's scheduler process (which
    #    stops inside init) stages nothing.
    stage = None
    if not distributed.is_scheduler():
        apply_precision_mode(cfg["amp_level"], info["device_target"], log=log)  # Ascend; before any graph
        env_rank, env_local_rank = distributed.pre_init_ranks()
        stage = modelarts.Stage.from_config(cfg, rank=env_rank, local_rank=env_local_rank, log=log)
        if stage is not None:
            stage.stage_in()  # rewrites data_dir / output_dir / resume to the local copies

    # 3. data parallel (msrun / ModelArts): init, rank and world
    comm = distributed.setup(cfg, log=log)
    rank = comm.rank if comm is not None else 0
    uploads = []
    if stage is not None:
        stage.rank = rank  # the real rank: only rank 0 uploads
        if rank == 0:
            uploads.append(stage.upload_async)  # after every checkpoint, in the background

    # 4. train; outputs go up once more at exit, also after a SIGTERM (the trainer saves and
    #    leaves its loop) or an error
    try:
        trainer = Trainer(cfg, comm=comm, save_hooks=uploads, log=log)
        trainer.setup()
        trainer.run()
        return trainer
    finally:
        if stage is not None and rank == 0:
            stage.upload()


if __name__ == "__main__":
    sys.exit(run_main(main))

"""Cluster entry point: one training rank, started by the deepspeed launcher (or torchrun, srun).

    deepspeed --num_gpus 8 launch/train.py --config configs/fishvista_swin_t.yaml
    deepspeed --hostfile launch/hostfile --num_nodes 2 --num_gpus 8 launch/train.py --config configs/fishvista_swin_b.yaml
    deepspeed --hostfile launch/hostfile --no_ssh --node_rank I --master_addr HOST0 --master_port 29500 \\
        launch/train.py --config configs/fishvista_swin_b.yaml         # on each node I, by hand
    sbatch launch/slurm.sbatch configs/fishvista_swin_b.yaml

Arguments: --config YAML, [--resume], then dotted.key=value overrides. The launcher's
--local_rank argument is accepted (or pass --no_local_rank to the launcher; RANK, LOCAL_RANK and
WORLD_SIZE come from the environment either way). Everything else is fishscale.train.loop; see
docs/training.md. A bad config exits 2 with `error: ...` on every rank.
"""
import sys

from fishscale.train import preempt

preempt.install()                  # before torch is imported: a stop signal during startup is kept
from fishscale.train.loop import launch_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(launch_main())

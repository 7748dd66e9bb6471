"""`fishscale bench shard|loader|train|checkpoint`: throughput ratios measured side by side in one run."""
from __future__ import annotations

import click

from fishscale.cli import LazyGroup

BENCHMARKS: dict[str, tuple[str, str]] = {
    "shard": ("fishscale.benchmarks.shard:bench_shard_command",
              "fishscale shard vs the decode(+resize+encode) ceiling vs tar -cf, same images and cores."),
    "loader": ("fishscale.benchmarks.loader:bench_loader_command",
               "Seed-style PIL baseline vs torch backend vs DALI vs the decode ceiling."),
    "train": ("fishscale.benchmarks.train:bench_train_command",
              "DeepSpeed engine vs a plain PyTorch loop; loader share; ZeRO memory."),
    "checkpoint": ("fishscale.benchmarks.checkpoint:bench_checkpoint_command",
                   "DeepSpeed's bare save vs fishscale's atomic, verified save vs resume-time verification."),
}


class BenchGroup(LazyGroup):
    lazy_commands = BENCHMARKS
    section = "Benchmarks"


@click.group(cls=BenchGroup)
def bench_command() -> None:
    """Benchmarks that print ratios measured side by side in one run (results go in BENCHMARKS.md)."""

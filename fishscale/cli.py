"""The `fishscale` command. Subcommands live in their own modules and load lazily,
so `fishscale --help` answers at once without importing torch, DALI or DeepSpeed."""
from __future__ import annotations

import importlib
import sys

import click

from fishscale import __version__
from fishscale.errors import FishscaleError

# name -> (module:attribute of a click.Command, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("fishscale.data.synth.write:synth_command", "Write a synthetic dataset in fish-vista's exact layout."),
    "shard": ("fishscale.shards.shard:shard_command", "Pack a dataset into WebDataset tar shards + DALI indexes + manifest."),
    "verify": ("fishscale.shards.verify:verify_command", "Re-read shards against their manifest; non-zero exit on any problem."),
    "train": ("fishscale.train.loop:train_command", "Fine-tune a timm model under DeepSpeed ZeRO (one or more ranks)."),
    "eval": ("fishscale.evaluate.eval:eval_command", "Evaluate a run or checkpoint: top-1/5, macro, per frequency bin."),
    "report": ("fishscale.evaluate.report:report_command", "Compare runs side by side: per-bin bars, curves, class histogram."),
    "export": ("fishscale.evaluate.export:export_command", "Export the best model as safetensors + config.json + model card."),
    "bench": ("fishscale.bench:bench_command", "Benchmarks: shard | loader | train (ratios measured in one run)."),
    "quickstart": ("fishscale.quickstart:quickstart_command", "Run the whole pipeline on a tiny synthetic dataset."),
    "study": ("fishscale.study:study_command", "The long-tail study: several recipes x seeds, one table and chart."),
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported only when used."""
    lazy_commands: dict[str, tuple[str, str]] = COMMANDS
    section = "Commands"

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.lazy_commands)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in self.lazy_commands:
            return None
        target, short_help = self.lazy_commands[name]
        if name == "train" and sys.argv[1:2] == ["train"]:
            # the `fishscale train` process itself: catch stop signals before importing torch (~1 s)
            from fishscale.train.preempt import install
            install()
        module_name, attr = target.split(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name != module_name:
                raise
            return _unavailable(name, short_help)
        command = getattr(module, attr)
        command.short_help = command.short_help or short_help
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, help_) for name, (_, help_) in self.lazy_commands.items()]
        with formatter.section(self.section):
            formatter.write_dl(rows)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except FishscaleError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(2)


def _unavailable(name: str, short_help: str) -> click.Command:
    @click.command(name=name, help=f"{short_help}\n\n(Not available in this version yet.)")
    def missing() -> None:
        raise FishscaleError(f"`fishscale {name}` is not available in this version yet")
    return missing


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="fishscale")
def main() -> None:
    """fishscale: train image classifiers on long-tailed species datasets.

    \b
    Pipeline:  synth/fish-vista -> shard -> verify -> train -> eval -> report / export
    Start with `fishscale quickstart`; every command has its own --help.
    """


if __name__ == "__main__":
    main()

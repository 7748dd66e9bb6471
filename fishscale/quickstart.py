"""`fishscale quickstart`: the whole pipeline on the built-in tiny synthetic dataset.

    synth (tiny) -> shard -> verify -> train (DeepSpeed, configs/quickstart.yaml, both phases)
    -> eval with frequency bins -> report with plots

Each stage runs the same `fishscale` command a user would type, prints its own progress bar,
and is skipped when its output is already complete, so a re-run reuses finished stages.
"""
from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import click

from fishscale.config import REPO_ROOT
from fishscale.errors import FishscaleError

QUICKSTART_CONFIG = REPO_ROOT / "configs" / "quickstart.yaml"


def run_stage(name: str, argv: list[str], done: Callable[[], bool], log: list[str]) -> None:
    """Run `fishscale <argv>` unless `done()` says its output is already complete."""
    command = "fishscale " + " ".join(shlex.quote(a) for a in argv)
    if done():
        click.secho(f"== {name}: already done, reusing ({command})", fg="cyan", err=True)
        log.append(f"{name}: reused")
        return
    click.secho(f"== {name}: {command}", fg="cyan", bold=True, err=True)
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "fishscale.cli", *argv])
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise FishscaleError(f"stage '{name}' failed (exit {result.returncode}); re-run the same "
                             f"command to resume from the finished stages, or run `{command}` alone")
    log.append(f"{name}: {seconds:.0f} s")


def quickstart(out: Path, nproc: int = 1, backend: str = "dali") -> Path:
    """Run every stage under `out`; return the run folder."""
    data, shards, run = out / "data", out / "shards", out / "run"
    report_dir, eval_json = out / "report", run / "eval" / "test.json"
    log: list[str] = []
    start = time.perf_counter()
    run_stage("synth", ["synth", str(data), "--profile", "tiny", "--seed", "0"],
              lambda: (data / "classification_test.csv").is_file(), log)
    run_stage("shard", ["shard", str(data), "--out", str(shards)],
              lambda: all((shards / s / "manifest.json").is_file() for s in ("train", "val", "test")), log)
    verified = out / ".verified"
    for split in ("train", "val", "test"):
        run_stage(f"verify {split}", ["verify", str(shards / split)], verified.is_file, log)
    verified.touch()
    run_stage("train", ["train", "--config", str(QUICKSTART_CONFIG), "--nproc", str(nproc),
                        f"data.shards={shards}", f"train.out={run}", f"data.backend={backend}"],
              lambda: (run / "summary.json").is_file(), log)
    # eval saves <run>/eval/test.json and test.predictions.csv by itself
    run_stage("eval", ["eval", str(run), "--shards", str(shards / "test"), "--bins",
                       "--markdown", str(run / "eval" / "test.md")],
              eval_json.is_file, log)
    run_stage("report", ["report", str(run), "--out", str(report_dir)],
              lambda: (report_dir / "README.md").is_file(), log)
    _print_summary(out, run, report_dir, eval_json, log, time.perf_counter() - start)
    return run


def _print_summary(out: Path, run: Path, report_dir: Path, eval_json: Path, log: list[str], seconds: float) -> None:
    from fishscale.evaluate.metrics import format_table
    click.echo("")
    click.echo(format_table(json.loads(eval_json.read_text())))
    click.echo("")
    click.echo(f"quickstart finished in {seconds / 60:.1f} min ({'; '.join(log)})")
    click.echo(f"  data      {out / 'data'}")
    click.echo(f"  shards    {out / 'shards'}")
    click.echo(f"  run       {run}   (metrics.jsonl, tb/, best.safetensors, checkpoints/)")
    click.echo(f"  eval      {eval_json}")
    click.echo(f"  report    {report_dir / 'README.md'}")


@click.command("quickstart")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("fishscale-quickstart"),
              show_default=True, help="Folder for every stage's output; finished stages are reused on re-run.")
@click.option("--nproc", type=int, default=1, show_default=True,
              help="Training ranks on this machine (1 runs in-process; more go through the deepspeed launcher).")
@click.option("--backend", type=click.Choice(["dali", "torch"]), default="dali", show_default=True,
              help="Data loader backend for training and eval.")
def quickstart_command(out: Path, nproc: int, backend: str) -> None:
    """Run the whole pipeline on the built-in tiny synthetic dataset, end to end.

    \b
    synth (tiny profile) -> shard -> verify -> train (DeepSpeed, configs/quickstart.yaml:
    frozen-backbone phase, then full fine-tune) -> eval with frequency bins -> report.
    Ends with the per-bin accuracy table and where every file is. Re-running reuses the
    stages that already finished (delete --out to start over).
    """
    quickstart(out, nproc=nproc, backend=backend)

"""`fishscale study`: which long-tail recipe wins on the rare species?

Trains the same model on the same synthetic long-tailed data with several recipes (loss x
sampler), several seeds each, evaluates every run on the test split with frequency bins, and
writes one table (mean +- std over seeds) and one per-bin bar chart.

    data      synth --profile small  -> shard                      (the long-tailed task)
    upstream  synth --profile upstream -> shard -> train (CE)      (stands in for ImageNet weights:
              80 balanced species of other families; every recipe starts from its best.safetensors)
    runs      for recipe in RECIPES, seed in seeds: train configs/study.yaml + recipe -> eval test

Every stage is the `fishscale` command a user would type; finished runs are reused on re-run.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Sequence

import click
import numpy as np

from fishscale.config import REPO_ROOT
from fishscale.errors import FishscaleError
from fishscale.quickstart import run_stage

STUDY_CONFIG = REPO_ROOT / "configs" / "study.yaml"
UPSTREAM_CONFIG = REPO_ROOT / "configs" / "study_upstream.yaml"

# recipe -> config overrides on top of configs/study.yaml (same model, data, phases, epochs)
RECIPES: dict[str, list[str]] = {
    "ce": ["loss.name=ce"],
    "focal": ["loss.name=focal", "loss.gamma=2"],                       # the fish-vista reference
    "focal-alpha": ["loss.name=focal", "loss.gamma=2", "loss.alpha=fishvista"],
    "logit-adjusted": ["loss.name=logit-adjusted", "loss.tau=1"],
    "ce-sqrt": ["loss.name=ce", "sampler.strategy=sqrt"],
    "ce-balanced": ["loss.name=ce", "sampler.strategy=balanced"],
    "focal-sqrt": ["loss.name=focal", "loss.gamma=2", "sampler.strategy=sqrt"],   # reference + sqrt sampler
    "la-sqrt": ["loss.name=logit-adjusted", "loss.tau=1", "sampler.strategy=sqrt"],
}
REFERENCE = "focal"
COLUMNS = ("top1", "macro_acc")


def fishscale(argv: list[str], done: bool, label: str) -> None:
    """Run `fishscale <argv>` unless done (the same stage runner as the quickstart)."""
    run_stage(label, argv, lambda: done, log=[])


def prepare_data(out: Path, profile: str, scale: float, seed: int) -> Path:
    data, shards = out / "data", out / "shards"
    fishscale(["synth", str(data), "--profile", profile, "--seed", str(seed), "--scale", str(scale)],
              (data / "classification_test.csv").is_file(), f"synth {profile}")
    fishscale(["shard", str(data), "--out", str(shards)],
              all((shards / s / "manifest.json").is_file() for s in ("train", "val", "test")), "shard")
    return shards


def pretrain_upstream(out: Path, overrides: Sequence[str]) -> Path:
    """Train the stand-in for pretrained weights once; return its best.safetensors."""
    up = out / "upstream"
    data, shards, run = up / "data", up / "shards", up / "run"
    fishscale(["synth", str(data), "--profile", "upstream", "--seed", "0"],
              (data / "classification_test.csv").is_file(), "synth upstream")
    fishscale(["shard", str(data), "--out", str(shards)], (shards / "val" / "manifest.json").is_file(),
              "shard upstream")
    fishscale(["train", "--config", str(UPSTREAM_CONFIG), f"data.shards={shards}", f"train.out={run}",
               *overrides], (run / "summary.json").is_file(), "pretrain upstream")
    return run / "best.safetensors"


def train_and_eval(run: Path, shards: Path, weights: Path, recipe: str, seed: int,
                   overrides: Sequence[str]) -> dict[str, Any]:
    result = run / "eval" / "test.json"
    fishscale(["train", "--config", str(STUDY_CONFIG), f"data.shards={shards}", f"train.out={run}",
               f"train.seed={seed}", "model.pretrained=file", f"model.pretrained_file={weights}",
               *RECIPES[recipe], *overrides],
              (run / "summary.json").is_file(), f"train {recipe} seed {seed}")
    fishscale(["eval", str(run), "--shards", str(shards / "test"), "--bins"], result.is_file(),
              f"eval {recipe} seed {seed}")
    return json.loads(result.read_text())


def aggregate(results: dict[str, list[dict[str, Any]]]) -> tuple[list[str], list[dict[str, Any]]]:
    """Mean and std over seeds of overall top-1, macro accuracy and each bin's image-level accuracy."""
    first = next(iter(results.values()))[0]
    bins = list(first["bin_names"])
    rows = []
    for recipe, runs in results.items():
        row: dict[str, Any] = {"recipe": recipe, "seeds": len(runs)}
        for key in (*COLUMNS, *bins):
            values = [r[key] if key in COLUMNS else r["bins"][key]["acc"] for r in runs]
            values = [v for v in values if v is not None]
            row[key] = (float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0)
        rows.append(row)
    return bins, rows


def _cell(mean_std: tuple[float, float]) -> str:
    mean, std = mean_std
    return f"{100 * mean:.1f} ± {100 * std:.1f}"


def markdown_table(bins: list[str], rows: list[dict[str, Any]]) -> str:
    head = ["recipe", "overall top-1", "macro acc", *bins]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        lines.append("| " + " | ".join([row["recipe"], *(_cell(row[k]) for k in (*COLUMNS, *bins))]) + " |")
    return "\n".join(lines)


def bar_chart(bins: list[str], rows: list[dict[str, Any]], path: Path) -> Path:
    from matplotlib.figure import Figure
    groups = [*bins, "overall", "macro"]
    keys = [*bins, "top1", "macro_acc"]
    fig = Figure(figsize=(12, 4.5))
    ax = fig.add_subplot(1, 1, 1)
    width = 0.85 / len(rows)
    x = np.arange(len(groups))
    for i, row in enumerate(rows):
        means = [100 * row[k][0] for k in keys]
        stds = [100 * row[k][1] for k in keys]
        ax.bar(x + (i - (len(rows) - 1) / 2) * width, means, width, yerr=stds, capsize=2, label=row["recipe"])
    ax.set_xticks(x, groups)
    ax.set_ylabel("test accuracy % (mean ± std over seeds)")
    ax.set_ylim(0, 100)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncol=2, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def verdict(bins: list[str], rows: list[dict[str, Any]]) -> list[str]:
    """Which recipes beat the reference on the two rarest bins outside the seed spread,
    with overall top-1 within 1 point."""
    ref = next(r for r in rows if r["recipe"] == REFERENCE)
    lines = []
    for row in rows:
        if row is ref:
            continue
        wins = [b for b in bins[:2] if row[b][0] - row[b][1] > ref[b][0] + ref[b][1]]
        overall_ok = row["top1"][0] >= ref["top1"][0] - 0.01
        if len(wins) == 2 and overall_ok:
            lines.append(f"{row['recipe']} beats the reference on {bins[0]} and {bins[1]} outside the seed "
                         f"spread, overall top-1 within 1 point")
    return lines or ["no recipe beat the reference on both rare bins outside the seed spread"]


def study(out: Path, profile: str, scale: float, seeds: Sequence[int], recipes: Sequence[str],
          overrides: Sequence[str]) -> Path:
    start = time.perf_counter()
    shards = prepare_data(out, profile, scale, seed=0)
    weights = pretrain_upstream(out, overrides)
    results: dict[str, list[dict[str, Any]]] = {}
    for recipe in recipes:
        results[recipe] = [train_and_eval(out / "runs" / f"{recipe}-s{seed}", shards, weights,
                                          recipe, seed, overrides) for seed in seeds]
    bins, rows = aggregate(results)
    table = markdown_table(bins, rows)
    chart = bar_chart(bins, rows, out / "study_per_bin.png")
    minutes = (time.perf_counter() - start) / 60
    notes = verdict(bins, rows)
    (out / "study.json").write_text(json.dumps({"profile": profile, "scale": scale, "seeds": list(seeds),
                                                "bins": bins, "rows": rows, "verdict": notes,
                                                "minutes_this_invocation": minutes}, indent=1))
    (out / "study.md").write_text(f"# Long-tail study\n\n{table}\n\n![per-bin accuracy]({chart.name})\n\n"
                                  + "\n".join(f"- {n}" for n in notes) + "\n")
    click.echo(table)
    for n in notes:
        click.echo(f"- {n}")
    click.echo(f"study: {minutes:.1f} min this invocation; table {out / 'study.md'}, chart {chart}")
    return out / "study.md"


@click.command("study")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("study"), show_default=True,
              help="Folder for data, runs and the table; finished runs are reused on re-run.")
@click.option("--profile", type=click.Choice(["tiny", "small", "fishvista"]), default="small", show_default=True,
              help="Synthetic long-tailed dataset to study on.")
@click.option("--scale", type=float, default=1.0, show_default=True, help="Synth --scale (fishvista profile).")
@click.option("--seeds", default="0,1,2", show_default=True, help="Comma-separated training seeds per recipe.")
@click.option("--recipes", default="all", show_default=True,
              help=f"Comma-separated recipes or 'all': {', '.join(RECIPES)} (the reference, focal, always runs).")
@click.argument("overrides", nargs=-1)
def study_command(out: Path, profile: str, scale: float, seeds: str, recipes: str, overrides: tuple[str, ...]) -> None:
    """Train every recipe (loss x sampler) with several seeds; one table and chart.

    OVERRIDES (key=value) apply to every training run, e.g. `phases.1.epochs=4`.
    """
    try:
        seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        raise FishscaleError(f"--seeds must be comma-separated integers, got {seeds!r}") from None
    chosen = list(RECIPES) if recipes == "all" else [r.strip() for r in recipes.split(",")]
    unknown = [r for r in chosen if r not in RECIPES]
    if unknown or not seed_list:
        raise FishscaleError(f"unknown recipe(s) {unknown}; choose from {list(RECIPES)}" if unknown
                             else "--seeds is empty")
    if REFERENCE not in chosen:
        chosen.insert(0, REFERENCE)
    study(out, profile, scale, seed_list, chosen, overrides)

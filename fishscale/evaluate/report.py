"""`fishscale report`: several runs side by side, as PNG charts and one Markdown page.

    fishscale report runs/focal runs/ce --out reports/focal-vs-ce
    fishscale report runs/focal --out reports/focal --shards shards/test   # evaluates if needed

Writes into ``--out``::

    README.md              the page (embeds the PNGs below, relative links)
    comparison.csv         one row per run: top1, top5, macro_acc, macro_f1, <bin>_acc, <bin>_class_mean_acc
    per_bin_accuracy.png   grouped bars: one group per bin, one bar per run
    training_curves.png    train loss per step, val top-1 / macro accuracy per epoch, phases marked
    class_counts.png       train images per class (log scale), bin edges marked
    confusions_<run>.png   most frequent (true -> predicted) mistakes whose true species is rare

Eval numbers come from ``<run>/eval/<split>.json`` written by `fishscale eval` (default
split: test); the confusions from the predictions file it names. A run without them is
evaluated first when ``--shards`` is given, else listed as "not evaluated".
"""
from __future__ import annotations

import csv
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import click

from fishscale.errors import FishscaleError
from fishscale.evaluate.metrics import to_markdown
from fishscale.evaluate.runs import Run, RunClasses, load_run

DEFAULT_TOP_PAIRS = 15


@dataclass
class RunReport:
    label: str
    run: Run
    classes: RunClasses
    records: list[dict[str, Any]]
    result: dict[str, Any] | None = None       # eval JSON
    pairs: list[tuple[str, str, int]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def unique_labels(runs: Sequence[Run]) -> list[str]:
    """Folder names, made unique with the parent folder (then a number) where they clash."""
    labels = [r.name for r in runs]
    if len(set(labels)) < len(labels):
        labels = [f"{r.path.parent.name}/{r.name}" for r in runs]
    seen: Counter[str] = Counter()
    out = []
    for label in labels:
        seen[label] += 1
        out.append(label if seen[label] == 1 else f"{label}#{seen[label]}")
    return out


def find_result(run: Run, split: str, shards: Path | None, progress: bool) -> dict[str, Any] | None:
    """The run's saved eval result for `split`; evaluated now (and saved) when missing and shards given."""
    saved = run.eval_results().get(split)
    if saved is not None or shards is None:
        return saved
    from fishscale.evaluate.eval import run_eval, save_outputs
    out = run_eval(run, run.weights("best"), shards, progress=progress)
    if out is None:
        return None
    save_outputs(out, run, save_in_run=True, json_path=None, csv_path=None, markdown_path=None,
                 plot_path=None, predictions_path=None)
    return run.eval_results().get(out.result["split"])


def rare_threshold(edges: Sequence[int]) -> int:
    """Rare = the first two bins (ultra-rare and minority: < 100 training images by default)."""
    return int(edges[1] if len(edges) > 1 else edges[0])


def predictions_file(run: Run, result: dict[str, Any], split: str) -> Path | None:
    named = result.get("predictions")
    for path in ([Path(named)] if named else []) + [run.eval_dir / f"{split}.predictions.csv"]:
        if path.is_file():
            return path
    return None


def confused_pairs(path: Path, classes: RunClasses, below: int, top: int) -> list[tuple[str, str, int]]:
    """Most frequent (true, predicted) top-1 mistakes whose true class has < `below` training images."""
    counter: Counter[tuple[int, int]] = Counter()
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or not {"label", "pred1"} <= set(reader.fieldnames):
            raise FishscaleError(f"{path}: not a fishscale predictions file (needs columns label, pred1)")
        for n, row in enumerate(reader, start=2):
            try:
                label, pred = int(row["label"]), int(row["pred1"])
            except (TypeError, ValueError):
                raise FishscaleError(f"{path}:{n}: label/pred1 must be integers") from None
            if label < 0 or label == pred or label >= classes.num_classes or pred >= classes.num_classes:
                continue
            if classes.counts[label] < below:
                counter[(label, pred)] += 1
    return [(classes.names[t], classes.names[p], n)
            for (t, p), n in sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))[:top]]


def collect(paths: Sequence[Path], split: str, shards: Path | None, top: int, progress: bool) -> list[RunReport]:
    runs = [load_run(p) for p in paths]
    reports = []
    for label, run in zip(unique_labels(runs), runs):
        rep = RunReport(label, run, run.classes(), run.metrics())
        rep.result = find_result(run, split, shards, progress)
        if rep.result is None:
            rep.notes.append(f"not evaluated on {split} (run `fishscale eval {run.path} --shards ...`)")
        else:
            preds = predictions_file(run, rep.result, split)
            if preds is None:
                rep.notes.append("no predictions file, so no confusion chart")
            else:
                rep.pairs = confused_pairs(preds, rep.classes, rare_threshold(rep.result["bin_edges"]), top)
        if not rep.records:
            rep.notes.append("no metrics.jsonl records, so no training curves")
        reports.append(rep)
    return reports


# ---------------------------------------------------------------- outputs

def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def comparison_rows(reports: Sequence[RunReport]) -> list[dict[str, Any]]:
    rows = []
    for rep in reports:
        r = rep.result or {}
        row: dict[str, Any] = {"run": rep.label, "path": str(rep.run.path), "model": rep.run.config.model.name,
                               "loss": rep.run.config.loss.name, "sampler": rep.run.config.sampler.strategy}
        row.update({k: r.get(k) for k in ("num_images", "top1", "top5", "macro_acc", "macro_f1")})
        for name, b in r.get("bins", {}).items():
            row[f"{name}_acc"] = b.get("acc")
            row[f"{name}_class_mean_acc"] = b.get("class_mean_acc")
        rows.append(row)
    return rows


def write_comparison_csv(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if row.get(k) is None else row[k] for k in columns})
    return path


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "run"


def make_plots(reports: Sequence[RunReport], out: Path) -> dict[str, Path]:
    from fishscale.evaluate import plots
    made: dict[str, Path] = {}
    evaluated = [(rep.label, rep.result) for rep in reports if rep.result]
    if evaluated:
        made["per_bin"] = plots.per_bin_accuracy(evaluated, out / "per_bin_accuracy.png")
    with_records = [(rep.label, rep.records) for rep in reports if rep.records]
    if with_records:
        made["curves"] = plots.training_curves(with_records, out / "training_curves.png")
    first = reports[0].classes
    edges = reports[0].result["bin_edges"] if reports[0].result else first.bin_edges
    names = reports[0].result["bin_names"] if reports[0].result else first.bin_names
    made["counts"] = plots.class_counts(first.counts, edges, names, out / "class_counts.png")
    for rep in reports:
        if rep.result is not None and (rep.pairs or predictions_file(rep.run, rep.result, rep.result["split"])):
            below = rare_threshold(rep.result["bin_edges"])
            made[f"confusions:{rep.label}"] = plots.confused_pairs(
                rep.pairs, out / f"confusions_{_slug(rep.label)}.png",
                title=f"{rep.label}: most confused species with < {below} training images")
    return made


def markdown_page(reports: Sequence[RunReport], made: dict[str, Path], split: str) -> str:
    lines = [f"# fishscale report: {', '.join(rep.label for rep in reports)}", ""]
    lines += ["| run | model | loss | sampler | images | top-1 % | top-5 % | macro acc % | macro F1 % |",
              "|---|---|---|---|---:|---:|---:|---:|---:|"]
    for row in comparison_rows(reports):
        lines.append(f"| {row['run']} | {row['model']} | {row['loss']} | {row['sampler']} | "
                     f"{row['num_images'] if row['num_images'] is not None else '-'} | {_fmt(row['top1'])} | "
                     f"{_fmt(row['top5'])} | {_fmt(row['macro_acc'])} | {_fmt(row['macro_f1'])} |")
    lines += ["", f"Evaluated on the `{split}` split. Bins by training images per class; macro metrics "
              "exclude species unseen in training.", ""]
    for key, title in (("per_bin", "Accuracy per frequency bin"), ("curves", "Training curves"),
                       ("counts", "Class-count distribution (train split)")):
        if key in made:
            lines += [f"## {title}", "", f"![{title}]({made[key].name})", ""]
    for rep in reports:
        lines += [f"## {rep.label}", "", f"Run folder: `{rep.run.path}`", ""]
        if rep.result is not None:
            lines += [to_markdown(rep.result)]
        if rep.pairs:
            lines += ["Most frequent mistakes on rare species (true -> predicted):", "",
                      "| true | predicted | images |", "|---|---|---:|"]
            lines += [f"| {t} | {p} | {n} |" for t, p, n in rep.pairs] + [""]
        if f"confusions:{rep.label}" in made:
            lines += [f"![confusions {rep.label}]({made[f'confusions:{rep.label}'].name})", ""]
        lines += [f"- {note}" for note in rep.notes] + ([""] if rep.notes else [])
    counts_differ = len({tuple(rep.classes.counts) for rep in reports}) > 1
    if counts_differ:
        lines += ["Note: the runs were trained on different train splits; the class-count chart shows "
                  f"{reports[0].label}'s.", ""]
    return "\n".join(lines)


def write_report(paths: Sequence[Path], out: Path, *, split: str = "test", shards: Path | None = None,
                 top: int = DEFAULT_TOP_PAIRS, progress: bool = True) -> dict[str, Path]:
    """Collect, plot and write the page; returns {name: path} of everything written."""
    if not paths:
        raise FishscaleError("report: give at least one run folder")
    reports = collect(paths, split, shards, top, progress)
    out.mkdir(parents=True, exist_ok=True)
    made = make_plots(reports, out)
    made["comparison"] = write_comparison_csv(comparison_rows(reports), out / "comparison.csv")
    page = out / "README.md"
    page.write_text(markdown_page(reports, made, split), encoding="utf-8")
    made["page"] = page
    return made


@click.command("report")
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), default=Path("report"), show_default=True,
              help="Folder for README.md, comparison.csv and the PNG charts.")
@click.option("--split", default="test", show_default=True,
              help="Which saved eval result to read (<run>/eval/<split>.json).")
@click.option("--shards", type=click.Path(path_type=Path), default=None,
              help="Split folder to evaluate runs that have no saved result yet (results are saved in the run).")
@click.option("--top", type=click.IntRange(1, 200), default=DEFAULT_TOP_PAIRS, show_default=True,
              help="How many confused species pairs to show per run.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Progress bar when evaluating.")
def report_command(runs: tuple[Path, ...], out: Path, split: str, shards: Path | None, top: int,
                   progress: bool) -> None:
    """Compare RUNS side by side: per-bin accuracy bars, training curves, class-count histogram,
    most-confused rare species; PNGs plus a Markdown page (README.md) in --out."""
    made = write_report(list(runs), out, split=split, shards=shards, top=top, progress=progress)
    for path in made.values():
        click.echo(f"wrote {path}", err=True)
    click.echo(str(made["page"]))


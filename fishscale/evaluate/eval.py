"""`fishscale eval`: score a run's weights on a sharded split, overall and per frequency bin.

    fishscale eval runs/quickstart --shards shards/test --bins
    fishscale eval runs/quickstart/last.safetensors --shards shards/val --json val.json
    torchrun --nproc_per_node 4 -m fishscale.cli eval runs/big --shards shards/test --bins

Each rank evaluates its share of the split (the loader gives every sample to exactly one rank);
rank 0 gathers the top-5 predictions, checks that every sample came back exactly once and that
its label matches the manifest, computes the metrics (fishscale.evaluate.metrics) and writes the files.
By default the results also go into the run: ``<run>/eval/<split>.json`` and
``<run>/eval/<split>.predictions.csv`` (``<split>-last.*`` for other weights than best),
which `fishscale report` and `fishscale export` read.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import click
import numpy as np

from fishscale.errors import FishscaleError
from fishscale.evaluate.metrics import TOPK, evaluate_predictions, format_table, to_csv, to_markdown
from fishscale.evaluate.runs import EVAL_DIR, Run, build_run_model, eval_config, resolve_run

EVAL_FORMAT_VERSION = 1


@dataclass
class Predictions:
    """Top-k predictions of a whole split, ordered by global sample id."""
    sample_ids: np.ndarray     # [N]
    labels: np.ndarray         # [N], from the loader, checked against the manifest
    topk: np.ndarray           # [N, k] class indices, best first
    probs: np.ndarray          # [N, k] softmax probabilities of those classes


@dataclass
class EvalOutput:
    result: dict[str, Any]     # evaluate_predictions(...) + run/split/weights fields
    predictions: Predictions
    keys: list[str]            # sample key of each prediction
    class_names: list[str]


# ---------------------------------------------------------------- distributed

def dist_env() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from the launcher's environment variables."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", 0))))


def init_distributed(world_size: int, local_rank: int) -> bool:
    """Join the process group if launched on several ranks; True if this call created it."""
    import torch
    import torch.distributed as dist
    if world_size <= 1 or dist.is_initialized():
        return False
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl")
    else:
        dist.init_process_group("gloo")
    return True


def gather_to_rank0(local: Predictions, rank: int, world_size: int) -> Predictions | None:
    """All ranks' predictions on rank 0 (None elsewhere), sorted by sample id."""
    parts = [local]
    if world_size > 1:
        import torch.distributed as dist
        gathered: list[Any] = [None] * world_size
        dist.all_gather_object(gathered, dataclasses.astuple(local))
        parts = [Predictions(*p) for p in gathered]
    if rank != 0:
        return None
    ids = np.concatenate([p.sample_ids for p in parts])
    order = np.argsort(ids, kind="stable")
    return Predictions(ids[order], *(np.concatenate([getattr(p, f) for p in parts])[order]
                                     for f in ("labels", "topk", "probs")))


def check_complete(pred: Predictions, manifest_labels: np.ndarray, where: str) -> None:
    """Every sample of the split exactly once, with the manifest's label."""
    n = manifest_labels.shape[0]
    ids = pred.sample_ids
    dupes = int((np.diff(ids) == 0).sum()) if ids.size else 0
    if dupes:
        raise FishscaleError(f"{where}: {dupes} samples were evaluated twice (loader gave them to several ranks)")
    if ids.size != n or (n and (ids[0] != 0 or ids[-1] != n - 1)):
        missing = np.setdiff1d(np.arange(n), ids)
        raise FishscaleError(f"{where}: evaluated {ids.size} of {n} samples (missing ids {missing[:5].tolist()}...)")
    wrong = np.flatnonzero(pred.labels != manifest_labels)
    if wrong.size:
        i = int(wrong[0])
        raise FishscaleError(f"{where}: loader label {int(pred.labels[i])} != manifest label "
                             f"{int(manifest_labels[i])} at sample {i} ({wrong.size} mismatches)")


# ---------------------------------------------------------------- evaluation

def _check_same_classes(manifest, class_names: Sequence[str], where: Path) -> None:
    if list(manifest.class_names) != list(class_names):
        diff = next((i for i, (a, b) in enumerate(zip(manifest.class_names, class_names)) if a != b),
                    min(len(manifest.class_names), len(class_names)))
        raise FishscaleError(f"{where}: class index differs from the run's ({manifest.num_classes} vs "
                             f"{len(class_names)} classes, first difference at index {diff}); "
                             "shard the split with the same train split the run used")


def predict(model, loader, device, progress: bool) -> Predictions:
    """Run the model over this rank's loader; keep top-k indices and probabilities."""
    import torch
    from tqdm import tqdm
    topk, probs, labels = [], [], []
    bar = tqdm(loader, total=len(loader), desc="eval", unit="batch", disable=not progress, file=sys.stderr)
    with torch.inference_mode():
        for images, batch_labels in bar:
            logits = model(images.to(device, non_blocking=True)).float()
            p, idx = logits.softmax(dim=1).topk(min(TOPK, logits.shape[1]), dim=1)
            topk.append(idx.cpu().numpy())
            probs.append(p.cpu().numpy())
            labels.append(batch_labels.cpu().numpy().astype(np.int64))
    ids = np.asarray(loader.sample_ids, dtype=np.int64).reshape(-1)
    k = min(TOPK, model_num_classes(model))
    pred = Predictions(ids, _cat(labels, (0,), np.int64), _cat(topk, (0, k), np.int64),
                       _cat(probs, (0, k), np.float32))
    if ids.size != pred.labels.size:
        raise FishscaleError(f"loader yielded {pred.labels.size} samples but lists {ids.size} sample_ids")
    return pred


def _cat(parts: list[np.ndarray], empty_shape: tuple[int, ...], dtype) -> np.ndarray:
    return np.concatenate(parts).astype(dtype) if parts else np.zeros(empty_shape, dtype)


def model_num_classes(model) -> int:
    return int(getattr(model, "num_classes", 0) or model.get_classifier().out_features)


def resolve_bins(run: Run, bin_edges: Sequence[int] | None) -> tuple[list[int], list[str] | None]:
    """--bin-edges, else the run config's eval.bin_edges; the manifest's names when edges agree."""
    classes = run.classes()
    edges = list(bin_edges) if bin_edges else list(run.config.eval.bin_edges)
    names = list(classes.bin_names) if edges == list(classes.bin_edges) else None
    return edges, names


def run_eval(run: Run, weights: Path, shards: Path, *, batch_size: int | None = None,
             backend: str | None = None, bin_edges: Sequence[int] | None = None,
             progress: bool = True) -> EvalOutput | None:
    """Evaluate on this rank's share; the full result on rank 0, None on the other ranks."""
    import torch
    from fishscale.loader.build import build_loader
    from fishscale.shards.manifest import load_manifest
    rank, world_size, local_rank = dist_env()
    created = init_distributed(world_size, local_rank)
    try:
        classes = run.classes()
        edges, names = resolve_bins(run, bin_edges)
        manifest = load_manifest(shards)
        _check_same_classes(manifest, classes.names, shards)
        cfg = eval_config(run.config)
        cuda = torch.cuda.is_available()
        data = dataclasses.replace(cfg.data, backend=backend or cfg.data.backend,
                                   device=cfg.data.device if cuda else "cpu")
        cfg = dataclasses.replace(cfg, data=data)
        device = torch.device(f"cuda:{local_rank}" if cuda else "cpu")
        model = build_run_model(run, weights, classes.num_classes).to(device)
        loader = build_loader(cfg, manifest, train=False, rank=rank, world_size=world_size,
                              batch_size=batch_size or cfg.eval.batch_size)
        local = predict(model, loader, device, progress and rank == 0)
        pred = gather_to_rank0(local, rank, world_size)
    finally:
        if created:
            import torch.distributed as dist
            dist.destroy_process_group()
    if pred is None:
        return None
    manifest_labels = manifest.labels()
    check_complete(pred, manifest_labels, str(shards))
    result = evaluate_predictions(pred.labels, pred.topk, classes.counts, edges, names, per_class=True)
    header = {"format_version": EVAL_FORMAT_VERSION, "run": str(run.path), "weights": str(weights),
              "checkpoint": weights.stem, "shards": str(shards), "split": manifest.split,
              "world_size": world_size, "backend": cfg.data.backend}
    keys = [k for s in manifest.shards for k in s.keys]
    return EvalOutput({**header, **result}, pred, keys, list(classes.names))


# ---------------------------------------------------------------- files

def write_predictions(path: str | Path, out: EvalOutput) -> Path:
    """CSV, one row per sample: sample_id, key, label, label_name, predN, predN_name, probN."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    p = out.predictions
    k = p.topk.shape[1]
    names = out.class_names
    header = ["sample_id", "key", "label", "label_name"]
    header += [f"pred{i + 1}" for i in range(k)] + [f"pred{i + 1}_name" for i in range(k)]
    header += [f"prob{i + 1}" for i in range(k)]
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for sid, label, idx, prob in zip(p.sample_ids, p.labels, p.topk, p.probs):
            writer.writerow([int(sid), out.keys[sid], int(label), names[label] if label >= 0 else ""]
                            + idx.tolist() + [names[i] for i in idx] + [f"{q:.6g}" for q in prob])
    return path


def default_stem(split: str, weights: Path) -> str:
    return split if weights.stem == "best" else f"{split}-{weights.stem}"


def save_outputs(out: EvalOutput, run: Run, *, save_in_run: bool, json_path: str | None,
                 csv_path: str | None, markdown_path: str | None, plot_path: str | None,
                 predictions_path: str | None) -> list[Path]:
    """Write every requested file; returns their paths."""
    written: list[Path] = []
    result = dict(out.result)
    stem = default_stem(result["split"], Path(result["weights"]))
    preds = [Path(predictions_path)] if predictions_path else []
    if save_in_run:
        preds.append(run.path / EVAL_DIR / f"{stem}.predictions.csv")
    for path in preds:
        written.append(write_predictions(path, out))
    if preds:
        result["predictions"] = str(preds[-1])
    jsons = ([Path(json_path)] if json_path else []) + ([run.path / EVAL_DIR / f"{stem}.json"] if save_in_run else [])
    for path in jsons:
        written.append(_write_text(path, json.dumps(result, indent=1) + "\n"))
    if csv_path:
        written.append(_write_text(Path(csv_path), to_csv(result)))
    if markdown_path:
        written.append(_write_text(Path(markdown_path), to_markdown(result)))
    if plot_path:
        from fishscale.evaluate.plots import per_bin_accuracy
        written.append(per_bin_accuracy([(run.name, result)], Path(plot_path)))
    return written


def _write_text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path


def parse_edges(text: str | None) -> list[int] | None:
    """'10,100,500' -> [10, 100, 500]; validated like the manifest's edges."""
    if text is None:
        return None
    from fishscale.data.bins import check_edges
    try:
        edges = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise FishscaleError(f"--bin-edges must be comma-separated integers like 10,100,500, got {text!r}") from None
    try:
        return check_edges(edges)[0]
    except FishscaleError as e:
        raise FishscaleError(f"--bin-edges {text!r}: {e}") from None


def overall_only(result: dict[str, Any]) -> str:
    """The table's summary line (without --bins)."""
    return format_table(result).splitlines()[0]


# ---------------------------------------------------------------- command

@click.command("eval")
@click.argument("run_or_checkpoint", type=click.Path(path_type=Path))
@click.option("--shards", type=click.Path(path_type=Path), default=None,
              help="Split folder to evaluate (holds manifest.json). Default: <config data.shards>/test.")
@click.option("--bins/--no-bins", default=False, show_default=True,
              help="Print the per-bin table (ultra-rare/minority/neutral/majority), not only the overall line.")
@click.option("--bin-edges", default=None, metavar="A,B,C",
              help="Bin edges in training images per class. Default: the run config's eval.bin_edges (10,100,500).")
@click.option("--checkpoint", type=click.Choice(["best", "last"]), default="best", show_default=True,
              help="Which weights of a run folder (ignored when a .safetensors file is given).")
@click.option("--batch-size", type=int, default=None, help="Per-rank batch size. Default: eval.batch_size.")
@click.option("--backend", type=click.Choice(["dali", "torch"]), default=None,
              help="Loader backend. Default: the run config's data.backend.")
@click.option("--json", "json_path", default=None, metavar="FILE", help="Also write the result as JSON here.")
@click.option("--csv", "csv_path", default=None, metavar="FILE", help="Write the table as CSV (fractions 0-1).")
@click.option("--markdown", "markdown_path", default=None, metavar="FILE", help="Write the table as Markdown.")
@click.option("--plot", "plot_path", default=None, metavar="FILE", help="Write a per-bin accuracy bar chart (PNG).")
@click.option("--predictions", "predictions_path", default=None, metavar="FILE",
              help="Write per-sample predictions (key, true, top-5 classes and probabilities) as CSV.")
@click.option("--save/--no-save", default=True, show_default=True,
              help="Also save <run>/eval/<split>.json and .predictions.csv (read by report and export).")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show a progress bar (stderr).")
def eval_command(run_or_checkpoint: Path, shards: Path | None, bins: bool, bin_edges: str | None,
                 checkpoint: str, batch_size: int | None, backend: str | None, json_path: str | None,
                 csv_path: str | None, markdown_path: str | None, plot_path: str | None,
                 predictions_path: str | None, save: bool, progress: bool) -> None:
    """Evaluate RUN_OR_CHECKPOINT (a run folder, or a .safetensors file in one) on a split.

    Prints top-1, top-5, macro accuracy (mean per-class accuracy), macro F1 and, with --bins,
    the same per frequency bin of training images per class; species absent from training get
    their own row. Launch under torchrun/deepspeed to split the work over several ranks.
    """
    edges = parse_edges(bin_edges)
    if batch_size is not None and batch_size <= 0:
        raise FishscaleError(f"--batch-size must be positive, got {batch_size}")
    run, weights = resolve_run(run_or_checkpoint, checkpoint)
    if shards is None:
        shards = run.train_manifest_dir().parent / "test"
    out = run_eval(run, weights, shards, batch_size=batch_size, backend=backend, bin_edges=edges,
                   progress=progress)
    if out is None:   # not rank 0
        return
    click.echo(format_table(out.result) if bins else overall_only(out.result))
    written = save_outputs(out, run, save_in_run=save, json_path=json_path, csv_path=csv_path,
                           markdown_path=markdown_path, plot_path=plot_path, predictions_path=predictions_path)
    for path in written:
        click.echo(f"wrote {path}", err=True)

"""Classification metrics for long-tailed data: overall, macro, and per frequency bin.

    result = evaluate_predictions(labels, logits, train_counts)            # bins 10/100/500
    print(format_table(result))
    result["top1"], result["macro_acc"], result["bins"]["ultra-rare"]["acc"]

Pure numpy; training's validation calls it every epoch (N ~ 10k, C ~ 1758 takes well under
a second). Definitions (docs/eval.md has the long form):

- ``top1`` / ``top5``: fraction of ALL evaluated images whose label is the first / among the
  first five predictions. Images of species unseen in training (label -1) count as wrong.
- ``macro_acc``: mean per-class recall over the classes present in the evaluated labels
  (= sklearn ``balanced_accuracy_score``).
- ``macro_f1``: mean per-class F1 over the classes present in the labels OR the top-1
  predictions (= sklearn ``f1_score(average="macro")``).
- Both macro metrics leave out images with label -1 entirely (they have no class to score).
- ``bins[name]``: classes (with at least one evaluated image), images, acc (image-level top-1),
  top5, class_mean_acc (mean per-class recall within the bin), train_classes (classes of the
  bin in training, evaluated or not). Bin of a class: count < edges[0] -> first bin, etc.
- ``bins["unseen-in-train"]``: present only when some labels are -1; always accuracy 0.
"""
from __future__ import annotations

import csv
import io
import math
from typing import Any, Sequence

import numpy as np

from fishscale.data.bins import DEFAULT_BIN_EDGES, UNSEEN_BIN, bin_index, bin_labels, check_edges
from fishscale.errors import FishscaleError

TOPK = 5


def topk_indices(scores: np.ndarray, k: int = TOPK) -> np.ndarray:
    """Indices of the k highest scores per row, best first ([N, C] -> [N, min(k, C)])."""
    scores = np.asarray(scores)
    k = min(k, scores.shape[1])
    if np.isnan(scores).any():   # a diverged model must still be scored (as wrong), not crash
        scores = np.where(np.isnan(scores), -np.inf, scores)
    if k < scores.shape[1]:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    else:
        part = np.broadcast_to(np.arange(scores.shape[1]), scores.shape).copy()
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-part_scores, axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def _numpy(values: Any) -> np.ndarray:
    """numpy view of a list, array or torch tensor (any device; bf16/fp16 as float32)."""
    if hasattr(values, "detach"):   # torch, without importing it here
        values = values.detach()
        if values.is_floating_point():
            values = values.float()
        return values.cpu().numpy()
    return np.asarray(values)


def _as_topk(labels: np.ndarray, predictions: Any, num_classes: int) -> np.ndarray:
    """Scores [N, C] (float) or top-k indices [N, k] / [N] (int) -> top-k indices [N, k]."""
    pred = _numpy(predictions)
    if pred.ndim == 1:
        pred = pred[:, None]
    if pred.ndim != 2 or pred.shape[0] != labels.shape[0]:
        raise FishscaleError(f"predictions must be [N, C] scores or [N, k] indices with N={labels.shape[0]}, "
                             f"got shape {pred.shape}")
    if np.issubdtype(pred.dtype, np.floating):
        if pred.shape[1] != num_classes:
            raise FishscaleError(f"scores have {pred.shape[1]} columns but train_counts has {num_classes} classes")
        return topk_indices(pred)
    if not np.issubdtype(pred.dtype, np.integer):
        raise FishscaleError(f"predictions must be float scores or integer indices, got dtype {pred.dtype}")
    if pred.size and (pred.min() < 0 or pred.max() >= num_classes):
        raise FishscaleError(f"predicted class indices must lie in [0, {num_classes}), "
                             f"got range [{pred.min()}, {pred.max()}]")
    return pred.astype(np.int64, copy=False)


def _mean_or_none(values: np.ndarray) -> float | None:
    return float(values.mean()) if values.size else None


def evaluate_predictions(labels: Sequence[int] | np.ndarray, scores_or_topk: Any,
                         train_counts: Sequence[int] | np.ndarray,
                         bin_edges: Sequence[int] = DEFAULT_BIN_EDGES,
                         bin_names: Sequence[str] | None = None,
                         per_class: bool = False) -> dict[str, Any]:
    """All metrics of one evaluation as a JSON-ready dict (see the module docstring).

    labels: [N] ints in [0, C) or -1 (species unseen in training).
    scores_or_topk: float logits/probabilities [N, C], or int top-k indices [N, k] best first
        (numpy or torch, any device; the dtype decides which).
    train_counts: [C] training images per class (defines C and each class's bin).
    per_class: also return per-class support / correct / predicted counts (lists of C ints).
    """
    edges, names = check_edges(bin_edges, bin_names)
    counts = _numpy(train_counts).astype(np.int64, copy=False)
    num_classes = counts.shape[0]
    labels = _numpy(labels).astype(np.int64, copy=False).reshape(-1)
    if labels.size and (labels.min() < -1 or labels.max() >= num_classes):
        raise FishscaleError(f"labels must lie in [-1, {num_classes}), got range [{labels.min()}, {labels.max()}]")
    topk = _as_topk(labels, scores_or_topk, num_classes)

    hit1 = topk[:, 0] == labels if topk.shape[1] else np.zeros(labels.shape, bool)
    hit5 = (topk[:, :TOPK] == labels[:, None]).any(axis=1)
    top5_known = topk.shape[1] >= min(TOPK, num_classes)   # fewer than 5 indices given: no top-5
    seen = labels >= 0

    support = np.bincount(labels[seen], minlength=num_classes)
    correct = np.bincount(labels[seen & hit1], minlength=num_classes)
    predicted = np.bincount(topk[seen, 0], minlength=num_classes) if topk.shape[1] else np.zeros_like(support)
    present = support > 0
    recall = correct[present] / support[present]
    in_f1 = present | (predicted > 0)
    f1 = 2 * correct[in_f1] / (support[in_f1] + predicted[in_f1])   # = 2TP / (2TP + FP + FN)

    class_bin = bin_index(counts, edges)
    label_bin = np.where(seen, class_bin[np.where(seen, labels, 0)], -1)
    bins: dict[str, dict[str, Any]] = {}
    for b, name in enumerate(names):
        in_bin = label_bin == b
        classes_b = present & (class_bin == b)
        bins[name] = {
            "classes": int(classes_b.sum()),
            "images": int(in_bin.sum()),
            "acc": _mean_or_none(hit1[in_bin]),
            "top5": _mean_or_none(hit5[in_bin]) if top5_known else None,
            "class_mean_acc": _mean_or_none(correct[classes_b] / support[classes_b]),
            "train_classes": int((class_bin == b).sum()),
        }
    unseen = int((~seen).sum())
    if unseen:
        bins[UNSEEN_BIN] = {"classes": None, "images": unseen, "acc": 0.0, "top5": 0.0 if top5_known else None,
                            "class_mean_acc": None, "train_classes": 0}

    result: dict[str, Any] = {
        "num_images": int(labels.size),
        "num_classes": int(num_classes),
        "classes_evaluated": int(present.sum()),
        "unseen_images": unseen,
        "top1": _mean_or_none(hit1),
        "top5": _mean_or_none(hit5) if top5_known else None,
        "macro_acc": _mean_or_none(recall),
        "macro_f1": _mean_or_none(f1),
        "bin_edges": list(edges),
        "bin_names": list(names),
        "bins": bins,
    }
    if per_class:
        result["per_class"] = {"support": support.tolist(), "correct": correct.tolist(),
                               "predicted": predicted.tolist()}
    return result


# ---------------------------------------------------------------- formatting

def _pct(value: float | None) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.2f}"


def _count(value: int | None) -> str:
    return "-" if value is None else str(value)


def table_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per line of the table: "all", each bin, then the unseen row (if any).

    Columns: row, train_images (per class), classes, images, top1, top5, class_mean_acc,
    macro_f1. For "all", class_mean_acc is macro_acc; macro_f1 is given only there.
    """
    ranges = bin_labels(result["bin_edges"])
    rows = [{"row": "all", "train_images": "any", "classes": result["classes_evaluated"],
             "images": result["num_images"], "top1": result["top1"], "top5": result["top5"],
             "class_mean_acc": result["macro_acc"], "macro_f1": result["macro_f1"]}]
    for name, span in zip(result["bin_names"], ranges):
        b = result["bins"][name]
        rows.append({"row": name, "train_images": span, "classes": b["classes"], "images": b["images"],
                     "top1": b["acc"], "top5": b["top5"], "class_mean_acc": b["class_mean_acc"],
                     "macro_f1": None})
    if UNSEEN_BIN in result["bins"]:
        b = result["bins"][UNSEEN_BIN]
        rows.append({"row": UNSEEN_BIN, "train_images": "0", "classes": b["classes"], "images": b["images"],
                     "top1": b["acc"], "top5": b["top5"], "class_mean_acc": None, "macro_f1": None})
    return rows


_HEADERS = ("", "train imgs/class", "classes", "images", "top-1 %", "top-5 %", "class-mean %", "macro F1 %")


def _cells(row: dict[str, Any]) -> list[str]:
    return [row["row"], row["train_images"], _count(row["classes"]), _count(row["images"]),
            _pct(row["top1"]), _pct(row["top5"]), _pct(row["class_mean_acc"]), _pct(row["macro_f1"])]


def format_table(result: dict[str, Any]) -> str:
    """A fixed-width terminal table: the overall line, each bin, the unseen row."""
    lines = [list(_HEADERS)] + [_cells(r) for r in table_rows(result)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(_HEADERS))]
    out = []
    for n, line in enumerate(lines):
        out.append("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths))))
        if n in (0, 1):
            out.append("  ".join("-" * w for w in widths))
    summary = (f"top-1 {_pct(result['top1'])}%  top-5 {_pct(result['top5'])}%  macro acc "
               f"{_pct(result['macro_acc'])}%  macro F1 {_pct(result['macro_f1'])}%  "
               f"({result['num_images']} images, {result['classes_evaluated']}/{result['num_classes']} classes)")
    return summary + "\n" + "\n".join(out)


def to_markdown(result: dict[str, Any]) -> str:
    """The same table as a GitHub Markdown table (percentages)."""
    head = "| " + " | ".join(h or "bin" for h in _HEADERS) + " |"
    sep = "|" + "|".join(["---"] * 2 + ["---:"] * (len(_HEADERS) - 2)) + "|"
    body = ["| " + " | ".join(_cells(r)) + " |" for r in table_rows(result)]
    return "\n".join([head, sep, *body]) + "\n"


CSV_COLUMNS = ("row", "train_images", "classes", "images", "top1", "top5", "class_mean_acc", "macro_f1")


def to_csv(result: dict[str, Any]) -> str:
    """The table as CSV: fractions in [0, 1] (not percent), empty cell where undefined."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in table_rows(result):
        writer.writerow({k: ("" if row[k] is None else row[k]) for k in CSV_COLUMNS})
    return buf.getvalue()

"""PNG charts for eval and report (matplotlib, Agg backend, no pyplot global state).

    per_bin_accuracy([("focal", result), ("ce", result2)], "bins.png")
    training_curves([("focal", records)], "curves.png")      # records: metrics.jsonl lines
    class_counts(train_counts, (10, 100, 500), names, "class_counts.png")
    confused_pairs([("A", "B", 7), ...], "confusions.png", title="...")

Each function writes one PNG and returns its path. Figures are built with
``matplotlib.figure.Figure`` directly, so plotting is safe to call from any thread and never
opens a window.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
from matplotlib.figure import Figure

from fishscale.data.bins import UNSEEN_BIN, bin_labels

DPI = 110


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=DPI, bbox_inches="tight")
    return path


def _pct(value: float | None) -> float:
    return np.nan if value is None else 100.0 * value


def per_bin_accuracy(results: Sequence[tuple[str, dict[str, Any]]], path: str | Path) -> Path:
    """Grouped bars: one group per bin (+ unseen when any run has it), one bar per run.

    Left panel image-level top-1 per bin, right panel class-mean accuracy per bin; the
    overall top-1 and macro accuracy sit in an "all" group at the end.
    """
    names = list(results[0][1]["bin_names"]) if results else []
    if any(UNSEEN_BIN in r["bins"] for _, r in results):
        names.append(UNSEEN_BIN)
    groups = names + ["all"]
    fig = Figure(figsize=(max(7.0, 1.6 * len(groups) * 2), 4.2))
    panels = (("acc", "top1", "image-level top-1 %"), ("class_mean_acc", "macro_acc", "class-mean accuracy %"))
    width = 0.8 / max(1, len(results))
    x = np.arange(len(groups))
    for p, (bin_key, overall_key, title) in enumerate(panels):
        ax = fig.add_subplot(1, 2, p + 1)
        for i, (label, r) in enumerate(results):
            values = [_pct(r["bins"].get(n, {}).get(bin_key)) for n in names] + [_pct(r.get(overall_key))]
            bars = ax.bar(x + (i - (len(results) - 1) / 2) * width, values, width, label=label)
            ax.bar_label(bars, fmt="%.0f", fontsize=7, padding=1)
        images = [results[0][1]["bins"].get(n, {}).get("images") if results else None for n in names]
        ax.set_xticks(x, [f"{n}\n(n={m})" if m is not None else n for n, m in zip(names, images)] + ["all"],
                      fontsize=8)
        ax.set_ylim(0, 105)
        ax.set_ylabel("%")
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
    fig.axes[0].legend(fontsize=8, loc="upper left")
    return _save(fig, path)


def _phase_starts(records: list[dict[str, Any]], x_key: str) -> list[tuple[float, str]]:
    """(x, phase name) where each phase begins among the train records."""
    starts, current = [], None
    for r in records:
        if r.get("kind") == "train" and r.get("phase") != current and r.get(x_key) is not None:
            current = r.get("phase")
            starts.append((float(r[x_key]), str(current)))
    return starts


def training_curves(runs: Sequence[tuple[str, list[dict[str, Any]]]], path: str | Path) -> Path:
    """Train loss per step (left) and val top-1 / macro accuracy per epoch (right); phases marked."""
    fig = Figure(figsize=(12, 4.2))
    ax_loss, ax_val = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    colors = [f"C{i % 10}" for i in range(len(runs))]
    for (label, records), color in zip(runs, colors):
        train = [r for r in records if r.get("kind") == "train" and r.get("loss") is not None]
        x_key = "step" if all(r.get("step") is not None for r in train) else "epoch"
        if train:
            ax_loss.plot([r[x_key] for r in train], [r["loss"] for r in train], color=color, lw=1.2, label=label)
        val = [r for r in records if r.get("kind") == "val" and r.get("epoch") is not None]
        if val:
            epochs = [r["epoch"] for r in val]
            ax_val.plot(epochs, [_pct(r.get("top1")) for r in val], color=color, marker="o", ms=3,
                        label=f"{label} top-1")
            ax_val.plot(epochs, [_pct(r.get("macro_acc")) for r in val], color=color, marker="s", ms=3,
                        ls="--", label=f"{label} macro acc")
        for ax, key in ((ax_loss, x_key), (ax_val, "epoch")):
            for n, (x, phase) in enumerate(_phase_starts(records, key)):
                if n:   # the first phase starts at the origin; mark each switch
                    ax.axvline(x, color=color, ls=":", lw=1)
                ax.annotate(phase, (x, 1.0), xycoords=("data", "axes fraction"), fontsize=7, color=color,
                            rotation=90, va="top", ha="right")
    ax_loss.set_xlabel("step" if runs and all(
        r.get("step") is not None for _, rec in runs for r in rec if r.get("kind") == "train") else "epoch")
    ax_loss.set_ylabel("train loss")
    ax_loss.set_title("training loss (phase starts dotted)")
    ax_val.set_xlabel("epoch")
    ax_val.set_ylabel("%")
    ax_val.set_title("validation accuracy")
    for ax in (ax_loss, ax_val):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    return _save(fig, path)


def class_counts(counts: Sequence[int], edges: Sequence[int], names: Sequence[str], path: str | Path) -> Path:
    """Histogram of training images per class, log-spaced bins on a log x axis, bin edges marked."""
    counts = np.asarray(counts, dtype=np.int64)
    fig = Figure(figsize=(8, 4.2))
    ax = fig.add_subplot(1, 1, 1)
    positive = counts[counts > 0]
    top = max(int(positive.max()) if positive.size else 1, max(edges) * 2)
    hist_edges = np.unique(np.geomspace(1, top + 1, 40).round())
    heights, _, _ = ax.hist(positive, bins=hist_edges, color="C0", edgecolor="white")
    ax.set_ylim(0, max(1.0, float(np.max(heights, initial=0))) * 1.45)   # room for the bin labels above the bars
    ax.set_xscale("log")
    ax.set_xlabel("training images per class (log)")
    ax.set_ylabel("classes")
    span = bin_labels(edges)
    per_bin = np.bincount(np.searchsorted(np.asarray(edges), counts, side="right"), minlength=len(names))
    for edge in edges:
        ax.axvline(edge, color="C3", ls="--", lw=1)
    bounds = [1, *edges, top + 1]
    for i, name in enumerate(names):
        mid = np.sqrt(bounds[i] * bounds[i + 1])
        ax.annotate(f"{name}\n{span[i]}\n{per_bin[i]} classes", (mid, 0.97), xycoords=("data", "axes fraction"),
                    ha="center", va="top", fontsize=8, color="C3")
    ax.set_title(f"train split: {counts.size} classes, {int(counts.sum())} images")
    return _save(fig, path)


def confused_pairs(pairs: Sequence[tuple[str, str, int]], path: str | Path, title: str) -> Path:
    """Horizontal bars: 'true -> predicted' with the number of images, most frequent on top."""
    fig = Figure(figsize=(9, 0.35 * max(3, len(pairs)) + 1.2))
    ax = fig.add_subplot(1, 1, 1)
    if pairs:
        labels = [f"{t}  ->  {p}" for t, p, _ in pairs][::-1]
        values = [n for _, _, n in pairs][::-1]
        bars = ax.barh(np.arange(len(pairs)), values, color="C1")
        ax.bar_label(bars, fontsize=7, padding=2)
        ax.set_yticks(np.arange(len(pairs)), labels, fontsize=7)
        ax.set_xlabel("test images (true -> predicted)")
    else:
        ax.text(0.5, 0.5, "no confusions among rare species", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
    ax.set_title(title, fontsize=9)
    return _save(fig, path)

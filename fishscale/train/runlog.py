"""What a run tells the world: metrics.jsonl, TensorBoard events, the rank-0 progress bar.

    log = RunLog(out, enabled=dist.is_main)
    log.open()                     # after log.resume_from(lines, purge_step) when resuming
    log.write({"kind": "train", "epoch": 0, "phase": 0, "step": 12, "loss": 2.3, "lr": 1e-3, "img_per_s": 80})
    bar = log.progress(total=steps, desc="phase head epoch 1/3")
    log.close()

metrics.jsonl holds one JSON object per line; "kind" is "train" (one per logged step: epoch,
phase, step, loss, lr, img_per_s), "val" (one per epoch: loss, top1, top5, macro_acc, macro_f1,
bins) or "summary" (one at the end). Each line is flushed as written, so a killed run keeps
what it logged. Resuming cuts the file back to the line count saved in the checkpoint, so
steps replayed after a resume are not logged twice; TensorBoard is told the same through
``purge_step``. Only rank 0 writes; on other ranks every method does nothing.
"""
from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

METRICS_NAME = "metrics.jsonl"
TB_DIR = "tb"


def _json_safe(value: Any) -> Any:
    """NaN/inf are not JSON: write them as null (a non-finite loss shows as a gap)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def truncate_lines(path: Path, keep: int) -> None:
    """Keep the first `keep` complete lines of `path` (drops a torn last line too)."""
    if not path.is_file():
        return
    text = path.read_text(encoding="utf-8")
    kept = "".join(line for line in text.splitlines(keepends=True)[:keep] if line.endswith("\n"))
    if kept != text:                       # renamed into place: a kill now leaves one or the other
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(kept, encoding="utf-8")
        os.replace(tmp, path)


class RunLog:
    """Rank 0's metrics.jsonl + TensorBoard writer. Nothing is touched before ``open()``: a resume
    calls ``resume_from(...)`` first and opens only once the checkpoint has loaded."""

    def __init__(self, out: Path, enabled: bool):
        self.enabled = enabled
        self.out = Path(out)
        self.path = self.out / METRICS_NAME
        self.lines = 0
        self.opened = False
        self._resume_lines: int | None = None
        self._purge_step: int | None = None
        self._file = None
        self._tb = None

    def resume_from(self, lines: int, purge_step: int) -> None:
        """On open: keep the first `lines` lines of metrics.jsonl and purge TensorBoard events from
        `purge_step` on (instead of starting both afresh)."""
        self._resume_lines, self._purge_step = lines, purge_step

    def open(self) -> None:
        self.opened = True
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self._resume_lines is None:
            self.path.write_text("", encoding="utf-8")
        else:
            truncate_lines(self.path, self._resume_lines)
        self.lines = len(self.path.read_text(encoding="utf-8").splitlines())
        self._file = self.path.open("a", encoding="utf-8")
        from torch.utils.tensorboard import SummaryWriter
        self._tb = SummaryWriter(str(self.out / TB_DIR), purge_step=self._purge_step)

    def write(self, record: dict[str, Any]) -> None:
        """Append one record to metrics.jsonl and its numbers to TensorBoard."""
        if not self.enabled:
            return
        if self._file is None:
            raise RuntimeError("RunLog.write before RunLog.open")
        self._file.write(json.dumps(_json_safe(record)) + "\n")
        self._file.flush()
        self.lines += 1
        self._to_tensorboard(record)

    def _to_tensorboard(self, record: dict[str, Any]) -> None:
        kind = record.get("kind")
        step = record.get("step")
        if step is None or kind not in ("train", "val"):
            return
        for key, value in record.items():
            if key in ("kind", "step", "epoch", "phase", "batch", "images") or isinstance(value, bool):
                continue
            if isinstance(value, (int, float)) and value is not None and math.isfinite(value):
                self._tb.add_scalar(f"{kind}/{key}", value, step)
        for name, row in (record.get("bins") or {}).items():
            if isinstance(row, dict) and isinstance(row.get("acc"), (int, float)):
                self._tb.add_scalar(f"{kind}/bin_acc/{name}", row["acc"], step)
        self._tb.flush()

    def progress(self, total: int, desc: str, initial: int = 0) -> tqdm:
        """A tqdm bar on stderr (rank 0 only; elsewhere a disabled bar)."""
        # into a log file (not a terminal) a redraw every 30 s is plenty
        interval = 0.2 if sys.stderr.isatty() else 30.0
        return tqdm(total=total, initial=initial, desc=desc, unit="step", file=sys.stderr, mininterval=interval,
                    disable=not self.enabled, dynamic_ncols=True, leave=True)

    def echo(self, text: str) -> None:
        if self.enabled:
            tqdm.write(text, file=sys.stderr)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None

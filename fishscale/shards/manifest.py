"""The manifest: one ``manifest.json`` per split folder, the contract between stages.

Written by `fishscale shard`, read by verify, the sampler, the loaders, training and eval.
Nothing downstream re-derives classes from the CSVs. It holds no timestamps, so the same
input and options give a byte-identical file.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fishscale.errors import FishscaleError

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"


@dataclass
class ShardInfo:
    file: str                    # tar name, relative to the split folder
    index: str                   # DALI index (wds2idx format), relative to the split folder
    num_samples: int
    bytes: int
    sha256: str
    class_histogram: dict[str, int]   # label (as str, JSON keys) -> samples in this shard
    keys: list[str]              # sample keys in tar order
    labels: list[int]            # labels in tar order (-1: species unseen in train)


@dataclass
class Manifest:
    split: str
    class_names: list[str]       # index order = label
    class_families: list[str]
    train_class_counts: list[int]
    bin_edges: list[int]
    bin_names: list[str]
    class_bins: list[str]        # bin name of each class, by training count
    shards: list[ShardInfo]
    skipped: list[dict[str, Any]] = field(default_factory=list)   # {split,row,filename,reason}
    options: dict[str, Any] = field(default_factory=dict)          # max_side, quality, seed, ...
    num_samples: int = 0
    format_version: int = FORMAT_VERSION
    root: Path | None = field(default=None, repr=False, compare=False)  # folder it was read from

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def labels(self) -> np.ndarray:
        """Labels of all samples, shards in manifest order, samples in tar order."""
        if not self.shards:
            return np.zeros(0, dtype=np.int64)
        return np.concatenate([np.asarray(s.labels, dtype=np.int64) for s in self.shards])

    def shard_of_sample(self) -> tuple[np.ndarray, np.ndarray]:
        """(shard number, position in shard) of each global sample id."""
        sizes = [s.num_samples for s in self.shards]
        shard = np.repeat(np.arange(len(sizes)), sizes)
        starts = np.cumsum([0] + sizes[:-1])
        return shard, np.arange(sum(sizes)) - np.repeat(starts, sizes)

    def shard_paths(self) -> list[Path]:
        base = self.root if self.root is not None else Path(".")
        return [base / s.file for s in self.shards]

    def to_json(self) -> str:
        d = asdict(self)
        d.pop("root")
        d = {"format_version": d.pop("format_version"), **d}
        return json.dumps(d, indent=1, ensure_ascii=False) + "\n"

    def save(self, folder: str | Path) -> Path:
        """Write atomically (temporary name, then rename)."""
        path = Path(folder) / MANIFEST_NAME
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(self.to_json(), encoding="utf-8")
        tmp.replace(path)
        return path


def load_manifest(folder_or_file: str | Path) -> Manifest:
    """Read a split folder's manifest.json (or the file itself), with clear errors."""
    path = Path(folder_or_file)
    if path.is_dir():
        path = path / MANIFEST_NAME
    if not path.is_file():
        raise FishscaleError(f"{path}: manifest not found (run `fishscale shard` first)")
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FishscaleError(f"{path}: not valid JSON: {e}") from None
    version = d.get("format_version")
    if version != FORMAT_VERSION:
        raise FishscaleError(f"{path}: manifest format_version {version!r}, this fishscale reads {FORMAT_VERSION}")
    try:
        shards = [ShardInfo(**s) for s in d.pop("shards")]
        return Manifest(shards=shards, root=path.parent, **d)
    except (TypeError, KeyError) as e:
        raise FishscaleError(f"{path}: malformed manifest: {e}") from None

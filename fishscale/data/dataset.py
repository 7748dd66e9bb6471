"""Read fish-vista's classification CSVs: validate rows, build the class index, count classes.

Layout under a dataset root (as published on the hub, or as `fishscale synth` writes it)::

    classification_train.csv  classification_val.csv  classification_test.csv
    Images/<filename>            (or the hub's Images/chunk_N/<filename>, named in `file_name`)

The label is ``standardized_species``. The class index is the sorted species of the TRAINING
split, built once and reused for val and test; a val/test species absent from train gets
label -1 and is reported, never given another class's index.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from fishscale.data.bins import DEFAULT_BIN_EDGES, assign_bins
from fishscale.errors import FishscaleError

SPLITS: tuple[str, ...] = ("train", "val", "test")
LABEL_COLUMN = "standardized_species"
COLUMNS: tuple[str, ...] = (
    "filename", "source_filename", "original_format", "arkid", "family", "source", "owner",
    "standardized_species", "original_url", "license", "adipose_fin", "pelvic_fin", "barbel",
    "multiple_dorsal_fin", "file_name",
)
REQUIRED_COLUMNS: tuple[str, ...] = ("filename", LABEL_COLUMN)
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png")
UNKNOWN_LABEL = -1


@dataclass
class RowProblem:
    """One rejected CSV row: where it is and why."""
    split: str
    row: int          # line number in the CSV file (header is line 1)
    filename: str
    reason: str

    def __str__(self) -> str:
        return f"classification_{self.split}.csv line {self.row} ({self.filename or 'no filename'}): {self.reason}"


def csv_path(root: str | Path, split: str) -> Path:
    return Path(root) / f"classification_{split}.csv"


def available_splits(root: str | Path) -> list[str]:
    """Splits whose CSV exists under root, train first."""
    return [s for s in SPLITS if csv_path(root, s).is_file()]


def read_split(root: str | Path, split: str, on_error: str = "fail") -> tuple[pd.DataFrame, list[RowProblem]]:
    """Read and validate one split's CSV.

    Returns the valid rows (all columns as str, plus ``row`` = CSV line number and
    ``image_path`` = resolved path of the image) and the rejected rows. Structural problems
    (missing file or column) always raise; row problems (empty label, duplicate filename,
    unsupported extension) raise with on_error="fail" or are dropped and returned with "skip".
    """
    if on_error not in ("fail", "skip"):
        raise FishscaleError(f"on_error must be 'fail' or 'skip', got {on_error!r}")
    root = Path(root)
    path = csv_path(root, split)
    if not path.is_file():
        raise FishscaleError(f"{path}: CSV not found (expected classification_{split}.csv under {root})")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig",
                         quoting=csv.QUOTE_MINIMAL)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as e:
        raise FishscaleError(f"{path}: cannot parse CSV: {e}") from None
    df.columns = [c.strip() for c in df.columns]
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise FishscaleError(f"{path}: missing column(s) {', '.join(missing)}; found {', '.join(df.columns)}")
    for column in COLUMNS:  # optional metadata columns default to empty
        if column not in df.columns:
            df[column] = ""
    df["row"] = np.arange(2, len(df) + 2)
    df["filename"] = df["filename"].str.strip()
    df[LABEL_COLUMN] = df[LABEL_COLUMN].str.strip()

    problems: list[RowProblem] = []
    bad = np.zeros(len(df), dtype=bool)

    def reject(mask: np.ndarray, reason_of) -> None:
        for i in np.flatnonzero(mask & ~bad):
            r = df.iloc[i]
            problems.append(RowProblem(split, int(r["row"]), r["filename"], reason_of(r)))
        bad[mask] = True

    reject((df["filename"] == "").to_numpy(), lambda r: "empty filename")
    # a file name, never a path: a CSV must not point the pipeline outside Images/
    has_dirs = df["filename"].str.contains(r"[/\\]", regex=True) | df["filename"].isin([".", ".."])
    reject(has_dirs.to_numpy(), lambda r: "filename must be a bare file name (no '/' or '\\')")
    reject((df[LABEL_COLUMN] == "").to_numpy(), lambda r: f"empty label ({LABEL_COLUMN})")
    ext_ok = df["filename"].str.lower().str.endswith(IMAGE_EXTENSIONS).to_numpy()
    reject(~ext_ok, lambda r: f"unsupported image extension (accepted: {', '.join(IMAGE_EXTENSIONS)}, any case)")
    first_row = df.groupby("filename")["row"].transform("min")
    dup = (df["filename"].duplicated(keep="first") & (df["filename"] != "")).to_numpy()
    reject(dup, lambda r: f"duplicate filename (first seen on line {int(first_row[r.name])})")

    if problems and on_error == "fail":
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise FishscaleError(f"{problems[0]}{more}; use on-error=skip to drop such rows and report them")
    df = df[~bad].reset_index(drop=True)
    df["image_path"] = [str(resolve_image(root, f, h)) for f, h in zip(df["filename"], df["file_name"])]
    return df, problems


def resolve_image(root: Path, filename: str, hub_path: str = "") -> Path:
    """Images/<filename>, else the hub layout named in `file_name` (Images/chunk_N/<filename>)."""
    flat = root / "Images" / filename
    if flat.exists() or not hub_path:
        return flat
    hub = root / hub_path
    if ".." in Path(hub_path).parts or Path(hub_path).is_absolute():
        return flat   # the hub path must stay under the dataset root
    return hub if hub.exists() else flat


@dataclass
class ClassIndex:
    """Classes of the training split in sorted order, with families and training counts."""
    names: list[str]
    families: list[str]
    counts: list[int]
    _lookup: dict[str, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._lookup = {name: i for i, name in enumerate(self.names)}

    @classmethod
    def from_train(cls, train: pd.DataFrame) -> "ClassIndex":
        counts = train[LABEL_COLUMN].value_counts()
        names = sorted(counts.index)
        family = train.groupby(LABEL_COLUMN)["family"].agg(lambda s: s.mode().iloc[0] if len(s) else "")
        return cls(names=names, families=[family[n] for n in names], counts=[int(counts[n]) for n in names])

    def __len__(self) -> int:
        return len(self.names)

    def label(self, species: str) -> int:
        return self._lookup.get(species, UNKNOWN_LABEL)

    def bins(self, edges: Sequence[int] = DEFAULT_BIN_EDGES, names: Sequence[str] | None = None) -> list[str]:
        return assign_bins(self.counts, edges, names)


@dataclass
class FishVista:
    """A dataset root read and labelled: valid rows per split, the class index, what was rejected."""
    root: Path
    splits: dict[str, pd.DataFrame]
    classes: ClassIndex
    problems: list[RowProblem]

    def unknown_species(self, split: str) -> pd.DataFrame:
        df = self.splits[split]
        return df[df["label"] == UNKNOWN_LABEL]


def load_dataset(root: str | Path, splits: Sequence[str] | None = None, on_error: str = "fail") -> FishVista:
    """Read the requested splits (default: all present). Train is always read for the class index.

    Val/test species absent from train get label -1; with on_error="fail" they raise (naming the
    rows), with "skip" they stay in the frame, labelled -1, and are listed in ``problems``.
    """
    root = Path(root)
    if not root.is_dir():
        raise FishscaleError(f"{root}: dataset root not found")
    wanted = list(splits) if splits else available_splits(root)
    unknown = [s for s in wanted if s not in SPLITS]
    if unknown:
        raise FishscaleError(f"unknown split(s) {', '.join(unknown)}; choose from {', '.join(SPLITS)}")
    if not wanted:
        raise FishscaleError(f"{root}: no classification_{{train,val,test}}.csv found")
    train, problems = read_split(root, "train", on_error)
    if train.empty:
        raise FishscaleError(f"{csv_path(root, 'train')}: no valid rows")
    classes = ClassIndex.from_train(train)
    frames = {}
    for split in wanted:
        df, split_problems = (train, []) if split == "train" else read_split(root, split, on_error)
        problems += split_problems
        df["label"] = [classes.label(s) for s in df[LABEL_COLUMN]]
        for r in df[df["label"] == UNKNOWN_LABEL].itertuples():
            problems.append(RowProblem(split, int(r.row), r.filename,
                                       f"species {getattr(r, LABEL_COLUMN)!r} is not in the training split"))
        frames[split] = df
    unseen = [p for p in problems if "not in the training split" in p.reason]
    if unseen and on_error == "fail":
        more = f" (and {len(unseen) - 1} more)" if len(unseen) > 1 else ""
        raise FishscaleError(f"{unseen[0]}{more}; use on-error=skip to keep them out of training and report them")
    return FishVista(root=root, splits={s: frames[s] for s in wanted}, classes=classes, problems=problems)

"""`fishscale shard`: a fish-vista root into WebDataset tar shards, DALI indexes and a manifest per split.

Output, per split: ``<out>/<split>/<split>-%06d.tar`` with members ``<key>.jpg`` (RGB JPEG,
upright, longer side <= max_side), ``<key>.cls`` (decimal label) and ``<key>.json`` (species,
family, source filename, ...); ``<split>-%06d.idx`` beside each tar (DALI ``wds2idx`` format);
``manifest.json`` (see fishscale.shards.manifest).

How it stays deterministic: the samples of a split are shuffled once with the seed (so every
shard mixes classes) and then consumed strictly in that order; worker processes only decode
and encode, and the parent writes the tars in plan order (``imap`` keeps order), so neither
the number of workers nor their timing can change a byte.

How it resumes: after a shard is closed and renamed, a small journal entry is written to
``<out>/<split>/.resume/``: the plan range it consumed, a digest of its recipe (options,
Pillow version, and each consumed row's key, label, metadata and the sha256 of the source
file's bytes) and the shard's sha256. A re-run walks the journal in order and keeps a shard
only if it starts where the previous one ended, its recipe digest is what this run would use
(hashing source files is far cheaper than decoding them) and the file on disk still has the
recorded sha256; everything from the first mismatch on is rewritten. Same recipe, same code
=> same bytes, so the result equals an uninterrupted run.
"""
from __future__ import annotations

import functools
import hashlib
import json
import multiprocessing
import os
import re
import sys
import zlib
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import click
import numpy as np
import PIL
from tqdm import tqdm

from fishscale.data.bins import DEFAULT_BIN_EDGES, check_edges
from fishscale.data.dataset import LABEL_COLUMN, SPLITS, FishVista, load_dataset
from fishscale.errors import FishscaleError
from fishscale.lock import folder_lock
from fishscale.shards.imagefix import DEFAULT_MAX_PIXELS, Normalized, normalize_file
from fishscale.shards.manifest import MANIFEST_NAME, Manifest, ShardInfo
from fishscale.shards.tarwrite import ShardWriter, index_path_for, sample_blob

DEFAULT_MAX_SIDE = 512          # see BENCHMARKS.md, "Sharding": headroom over 384-px training, cheap decode
DEFAULT_QUALITY = 90
DEFAULT_SAMPLES_PER_SHARD = 1000
MEMBER_EXTS = ("jpg", "cls", "json")
STATE_DIR = ".resume"
MAX_KEY_LENGTH = 80             # + ".json" stays inside the 100-byte ustar name field
_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
_SHARD_FILE = re.compile(r"^(?P<split>[a-z]+)-(?P<n>\d{6})\.(tar|idx)(\.tmp)?$")


@dataclass(frozen=True)
class ShardOptions:
    """Everything that decides the bytes written (workers does not)."""
    max_side: int | None = DEFAULT_MAX_SIDE
    quality: int = DEFAULT_QUALITY
    samples_per_shard: int | None = DEFAULT_SAMPLES_PER_SHARD
    shard_size_mb: float | None = None
    seed: int = 0
    on_error: str = "skip"
    max_pixels: int = DEFAULT_MAX_PIXELS

    def check(self) -> None:
        if self.on_error not in ("skip", "fail"):
            raise FishscaleError(f"on_error must be 'skip' or 'fail', got {self.on_error!r}")
        if not 1 <= self.quality <= 100:
            raise FishscaleError(f"quality must be in 1..100, got {self.quality}")
        if self.max_side is not None and self.max_side < 0:
            raise FishscaleError(f"max_side must be positive (0 or None: keep the source size), got {self.max_side}")
        if self.samples_per_shard is None and self.shard_size_mb is None:
            raise FishscaleError("give samples_per_shard or shard_size_mb (or both)")
        if self.samples_per_shard is not None and self.samples_per_shard < 1:
            raise FishscaleError(f"samples_per_shard must be >= 1, got {self.samples_per_shard}")
        if self.shard_size_mb is not None and self.shard_size_mb <= 0:
            raise FishscaleError(f"shard_size_mb must be > 0, got {self.shard_size_mb}")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PlannedSample:
    """One row of a split, in the order it will be written."""
    position: int                # in the shuffled plan
    row: int                     # CSV line number
    filename: str
    image_path: str
    key: str
    label: int
    meta: dict[str, Any]         # becomes <key>.json (plus the stored image size)


@dataclass
class SampleResult:
    """What a worker hands back for one planned sample: its tar bytes, or why it was skipped."""
    recipe_line: bytes
    reason: str | None = None
    blob: bytes = b""            # the sample's tar members, headers and padding included
    entries: list[tuple[str, int, int, str]] = field(default_factory=list)   # (ext, offset in blob, size, name)


@dataclass
class SplitResult:
    shards: list[ShardInfo] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    kept: int = 0                # shards reused from a previous run
    position: int = 0            # plan position where the reused shards end


# ---------------------------------------------------------------- keys and plan

def sample_keys(filenames: Sequence[str]) -> list[str]:
    """A unique, dot-free key per filename, from its stem (``a.b c.jpg`` -> ``a_b_c``), in input order."""
    keys, used = [], set()
    for filename in filenames:
        stem = Path(filename.replace("\\", "/")).name.rsplit(".", 1)[0]
        base = _KEY_UNSAFE.sub("_", stem).strip("_-")[:MAX_KEY_LENGTH - 8] or "sample"
        key, n = base, 1
        while key in used:
            n += 1
            key = f"{base}_{n}"
        used.add(key)
        keys.append(key)
    return keys


def split_seed(seed: int, split: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(split.encode())])


def plan_split(ds: FishVista, split: str, seed: int) -> list[PlannedSample]:
    """The split's labelled rows (unseen species excluded), keys from CSV order, shuffled by seed."""
    df = ds.splits[split]
    df = df[df["label"] >= 0]
    keys = sample_keys(list(df["filename"]))
    rows = []
    for key, r in zip(keys, df.itertuples(index=False)):
        meta = {"species": getattr(r, LABEL_COLUMN), "family": r.family, "filename": r.filename,
                "source_filename": r.source_filename, "split": split, "row": int(r.row), "label": int(r.label)}
        rows.append(PlannedSample(0, int(r.row), r.filename, r.image_path, key, int(r.label), meta))
    order = split_seed(seed, split).permutation(len(rows))
    plan = [rows[i] for i in order]
    for position, sample in enumerate(plan):
        sample.position = position
    return plan


# ---------------------------------------------------------------- recipe digest (resume)

def _recipe_header(split: str, options: ShardOptions) -> bytes:
    header = {"split": split, "options": options.as_dict(), "pillow": PIL.__version__, "members": MEMBER_EXTS}
    return json.dumps(header, sort_keys=True).encode()


def _recipe_line(sample: PlannedSample, source_sha256: str) -> bytes:
    return json.dumps([sample.position, sample.key, sample.label, sample.meta, source_sha256],
                      sort_keys=True, ensure_ascii=False).encode() + b"\n"


def file_sha256(path: str) -> str:
    """sha256 of a file's bytes; "" when it cannot be read (as normalize_file reports it)."""
    try:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    except OSError:
        return ""


# ---------------------------------------------------------------- main entry

def shard_dataset(root: str | Path, out: str | Path, splits: Sequence[str] | None = None,
                  max_side: int | None = DEFAULT_MAX_SIDE, quality: int = DEFAULT_QUALITY,
                  samples_per_shard: int | None = DEFAULT_SAMPLES_PER_SHARD, shard_size_mb: float | None = None,
                  workers: int | None = None, seed: int = 0, on_error: str = "skip",
                  bin_edges: Sequence[int] = DEFAULT_BIN_EDGES, max_pixels: int = DEFAULT_MAX_PIXELS,
                  progress: bool = True) -> dict[str, Manifest]:
    """Shard the requested splits (default: every split found, train first); return their manifests.

    Bad images are skipped and listed in the manifest (on_error="skip") or stop the run with a
    FishscaleError naming the file (on_error="fail"). Val/test rows whose species is not in the
    training split are always skipped and listed, never given another class's label.
    ``max_pixels``: images with more pixels are rejected as decompression bombs. ``progress``:
    a tqdm bar (on a terminal) and one summary line per split on stderr.
    """
    options = ShardOptions(max_side or None, quality, samples_per_shard, shard_size_mb, seed, on_error, max_pixels)
    options.check()
    edges, bin_names = check_edges(bin_edges)
    ds = load_dataset(root, splits, on_error="skip")
    if on_error == "fail":
        _fail_on_row_problems(ds)
    wanted = [s for s in SPLITS if s in ds.splits]
    workers = workers or default_workers()
    build = functools.partial(build_sample, options=options)
    manifests = {}
    # one writer per shard folder: a second `fishscale shard --out` on it fails at once
    with folder_lock(Path(out), "fishscale shard"), _worker_map(workers) as parallel_map:
        for split in wanted:
            folder = Path(out) / split
            result = shard_split(ds, split, folder, options, parallel_map, build, progress)
            manifest = _build_manifest(ds, split, result, options, edges, bin_names)
            manifest.save(folder)
            manifest.root = folder
            manifests[split] = manifest
            if progress:
                print(summary_line(manifest, result.kept), file=sys.stderr)
    return manifests


def default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


class _worker_map:
    """Context manager giving an order-preserving lazy map: a process pool, or in-process for 1 worker."""

    def __init__(self, workers: int):
        self.workers = workers
        self.pool = None

    def __enter__(self) -> Callable[[Callable, Iterable], Iterator]:
        if self.workers <= 1:
            return map
        # fork: workers only need PIL/numpy and start instantly; nothing they run touches the parent's threads
        context = multiprocessing.get_context("fork" if sys.platform == "linux" else None)
        self.pool = context.Pool(self.workers)
        return lambda fn, items: self.pool.imap(fn, items, chunksize=16)   # fewer round trips

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()


def _fail_on_row_problems(ds: FishVista) -> None:
    """on_error=fail: CSV row problems stop the run; unseen species (a property of the data) do not."""
    unseen = {(s, int(r)) for s, df in ds.splits.items() for r in df.loc[df["label"] < 0, "row"]}
    bad = sorted((p for p in ds.problems if (p.split, p.row) not in unseen),
                 key=lambda p: (SPLITS.index(p.split), p.row))
    if bad:
        raise FishscaleError(f"{bad[0]}" + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""))


# ---------------------------------------------------------------- one split

def shard_split(ds: FishVista, split: str, folder: Path, options: ShardOptions,
                parallel_map: Callable, build: Callable[[PlannedSample], SampleResult],
                progress: bool = True) -> SplitResult:
    """Write (or resume) one split's shards; the manifest is written by the caller."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MANIFEST_NAME).unlink(missing_ok=True)   # an old manifest must not vouch for half-new shards
    for stale in folder.glob("*.tmp"):
        stale.unlink()
    plan = plan_split(ds, split, options.seed)
    header = _recipe_header(split, options)
    result = _resume(folder, split, plan, header, parallel_map)
    _drop_journal_from(folder, split, len(result.shards))
    remaining = plan[result.position:]
    bar = tqdm(total=len(plan), initial=result.position, desc=f"shard {split}", unit="img", file=sys.stderr,
               disable=None if progress else True, dynamic_ncols=True)
    with bar:
        _write_from(folder, split, remaining, parallel_map(build, remaining), header, options, result, bar)
    _remove_stale_shards(folder, split, len(result.shards))
    return result


def build_sample(sample: PlannedSample, options: ShardOptions) -> SampleResult:
    """Worker side: normalize the image and serialize the sample's tar members (the parent only appends)."""
    outcome = normalize_file(sample.image_path, options.max_side, options.quality, options.max_pixels)
    line = _recipe_line(sample, outcome.source_sha256)
    if outcome.reason is not None:
        return SampleResult(line, outcome.reason)
    return SampleResult(line, None, *sample_blob(sample.key, _members(sample, outcome)))


def _write_from(folder: Path, split: str, samples: list[PlannedSample], outcomes: Iterable[SampleResult],
                header: bytes, options: ShardOptions, result: SplitResult, bar: tqdm) -> None:
    """Consume plan samples in order, filling shards; an error or interruption leaves no partial shard."""
    filler = _ShardFiller(folder, split, header, options, result)
    try:
        for sample, outcome in zip(samples, outcomes):
            filler.feed(sample, outcome)
            bar.update(1)
        filler.finish()
    finally:
        filler.abort()


class _ShardFiller:
    """The open shard and the plan range it has consumed; closes each full shard with its journal entry."""

    def __init__(self, folder: Path, split: str, header: bytes, options: ShardOptions, result: SplitResult):
        self.folder, self.split, self.header, self.options, self.result = folder, split, header, options, result
        self.writer: ShardWriter | None = None
        self._new_range(result.position)

    def _new_range(self, start: int) -> None:
        self.recipe = hashlib.sha256(self.header)
        self.start = self.stop = start
        self.skipped: list[dict[str, Any]] = []
        self.keys_labels: list[tuple[str, int]] = []

    def feed(self, sample: PlannedSample, outcome: SampleResult) -> None:
        self.recipe.update(outcome.recipe_line)
        self.stop = sample.position + 1
        if outcome.reason is not None:
            if self.options.on_error == "fail":
                raise FishscaleError(f"{sample.image_path} (classification_{self.split}.csv line {sample.row}): "
                                     f"{outcome.reason}")
            self.skipped.append(_skip_entry(self.split, sample.row, sample.filename, outcome.reason))
            return
        if self.writer is None:
            self.writer = ShardWriter(self.folder / f"{self.split}-{len(self.result.shards):06d}.tar")
        self.writer.add_blob(outcome.blob, outcome.entries)
        self.keys_labels.append((sample.key, sample.label))
        if _is_full(self.writer, self.options):
            self._close()

    def _close(self) -> None:
        info = _close_shard(self.writer, self.keys_labels)
        self.writer = None
        _write_journal(self.folder, self.split, len(self.result.shards), self.recipe.hexdigest(), self.start,
                       self.stop, info, self.skipped)
        self.result.shards.append(info)
        self.result.skipped += self.skipped
        self._new_range(self.stop)

    def finish(self) -> None:
        if self.writer is not None:
            self._close()
        self.result.skipped += self.skipped   # rows after the last sample: in no shard, redone on resume

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.abort()
            self.writer = None


def _members(sample: PlannedSample, outcome: Normalized) -> list[tuple[str, bytes]]:
    meta = dict(sample.meta, width=outcome.width, height=outcome.height, source_width=outcome.source_width,
                source_height=outcome.source_height, source_sha256=outcome.source_sha256)
    return [("jpg", outcome.jpeg),
            ("cls", str(sample.label).encode()),
            ("json", json.dumps(meta, sort_keys=True, ensure_ascii=False).encode("utf-8"))]


def _is_full(writer: ShardWriter, options: ShardOptions) -> bool:
    if options.samples_per_shard is not None and len(writer.samples) >= options.samples_per_shard:
        return True
    return options.shard_size_mb is not None and writer.size >= options.shard_size_mb * 1e6


def _close_shard(writer: ShardWriter, keys_labels: list[tuple[str, int]]) -> ShardInfo:
    size, sha = writer.close()
    keys = [k for k, _ in keys_labels]
    labels = [label for _, label in keys_labels]
    histogram = {str(label): n for label, n in sorted(Counter(labels).items())}
    return ShardInfo(file=writer.path.name, index=index_path_for(writer.path).name, num_samples=len(keys),
                     bytes=size, sha256=sha, class_histogram=histogram, keys=keys, labels=labels)


def _skip_entry(split: str, row: int, filename: str, reason: str) -> dict[str, Any]:
    return {"split": split, "row": int(row), "filename": filename, "reason": reason}


# ---------------------------------------------------------------- journal (resume)

def _journal_path(folder: Path, split: str, shard_no: int) -> Path:
    return folder / STATE_DIR / f"{split}-{shard_no:06d}.json"


def _write_journal(folder: Path, split: str, shard_no: int, recipe: str, start: int, stop: int,
                   info: ShardInfo, skipped: list[dict[str, Any]]) -> None:
    path = _journal_path(folder, split, shard_no)
    path.parent.mkdir(exist_ok=True)
    entry = {"recipe": recipe, "start": start, "stop": stop, "shard": asdict(info), "skipped": skipped,
             "index_sha256": file_sha256(str(folder / info.index))}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(entry, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(path)


def _read_journal(folder: Path, split: str, shard_no: int) -> dict[str, Any] | None:
    try:
        entry = json.loads(_journal_path(folder, split, shard_no).read_text(encoding="utf-8"))
        info = ShardInfo(**entry["shard"])
        # JSON with sort_keys orders labels as strings; the manifest orders them by number
        info.class_histogram = dict(sorted(info.class_histogram.items(), key=lambda item: int(item[0])))
        entry["shard"] = info
        return entry
    except (OSError, ValueError, TypeError, KeyError):
        return None


def _resume(folder: Path, split: str, plan: list[PlannedSample], header: bytes,
            parallel_map: Callable) -> SplitResult:
    """Shards of a previous run that are exactly what this run would write, in order, up to the first mismatch."""
    result = SplitResult()
    while (entry := _read_journal(folder, split, len(result.shards))) is not None:
        info: ShardInfo = entry["shard"]
        if entry["start"] != result.position or not result.position < entry["stop"] <= len(plan):
            break
        if info.file != f"{split}-{len(result.shards):06d}.tar" or not _file_matches(folder / info.file, info.sha256):
            break
        if file_sha256(str(folder / info.index)) != entry["index_sha256"]:
            break
        samples = plan[result.position:entry["stop"]]
        recipe = hashlib.sha256(header)
        for sample, source_sha in zip(samples, parallel_map(file_sha256, [s.image_path for s in samples])):
            recipe.update(_recipe_line(sample, source_sha))
        if recipe.hexdigest() != entry["recipe"]:
            break
        result.shards.append(info)
        result.skipped += entry["skipped"]
        result.position = entry["stop"]
    result.kept = len(result.shards)
    return result


def _file_matches(path: Path, sha256: str) -> bool:
    return path.is_file() and file_sha256(str(path)) == sha256


def _drop_journal_from(folder: Path, split: str, shard_no: int) -> None:
    for path in (folder / STATE_DIR).glob(f"{split}-*.json"):
        if int(path.stem.rsplit("-", 1)[1]) >= shard_no:
            path.unlink()


def _remove_stale_shards(folder: Path, split: str, num_shards: int) -> None:
    """Shards numbered past this run's last one (a previous run with other options) would mislead a glob."""
    for path in folder.iterdir():
        match = _SHARD_FILE.match(path.name)
        if match and match["split"] == split and int(match["n"]) >= num_shards:
            path.unlink()
    _drop_journal_from(folder, split, num_shards)


# ---------------------------------------------------------------- manifest and summary

def _build_manifest(ds: FishVista, split: str, result: SplitResult, options: ShardOptions,
                    edges: list[int], bin_names: list[str]) -> Manifest:
    csv_skips = [_skip_entry(p.split, p.row, p.filename, p.reason) for p in ds.problems if p.split == split]
    skipped = sorted(csv_skips + result.skipped, key=lambda s: (s["row"], s["reason"]))
    return Manifest(split=split, class_names=list(ds.classes.names), class_families=list(ds.classes.families),
                    train_class_counts=list(ds.classes.counts), bin_edges=edges, bin_names=bin_names,
                    class_bins=ds.classes.bins(edges, bin_names), shards=result.shards, skipped=skipped,
                    options=options.as_dict(), num_samples=sum(s.num_samples for s in result.shards))


def reason_kind(reason: str) -> str:
    """Short category of a skip reason, for summaries: 'missing file', 'not an image', ..."""
    if "not in the training split" in reason:
        return "species not in train"
    return re.split(r" \(|:", reason, maxsplit=1)[0]


def summary_line(manifest: Manifest, kept: int = 0) -> str:
    kinds = Counter(reason_kind(s["reason"]) for s in manifest.skipped)
    skipped = ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items())) or "none"
    reused = f" ({kept} reused from a previous run)" if kept else ""
    return (f"{manifest.split}: {manifest.num_samples} samples in {len(manifest.shards)} shards{reused}; "
            f"skipped {len(manifest.skipped)}: {skipped}")


# ---------------------------------------------------------------- CLI

def _parse_csv_list(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


@click.command("shard")
@click.argument("data_root", type=click.Path(file_okay=False, path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("shards"), show_default=True,
              help="Output folder; each split goes to OUT/<split>/.")
@click.option("--split", "splits", default=None, metavar="train,val,test",
              help="Comma-separated splits to shard. Default: every split found, train first.")
@click.option("--max-side", type=click.IntRange(min=0), default=DEFAULT_MAX_SIDE, show_default=True,
              help="Downscale so the longer side is at most this many pixels (0: keep the source size).")
@click.option("--quality", type=click.IntRange(1, 100), default=DEFAULT_QUALITY, show_default=True,
              help="JPEG quality for images that are re-encoded (untouched JPEGs keep their bytes).")
@click.option("--samples-per-shard", type=click.IntRange(min=1), default=None,
              help=f"Samples per tar shard [default: {DEFAULT_SAMPLES_PER_SHARD}]. Exclusive with --shard-size.")
@click.option("--shard-size", "shard_size_mb", type=click.FloatRange(min=0, min_open=True), default=None,
              metavar="MB", help="Close a shard once it reaches this many MB (10^6 bytes) instead.")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Image-processing processes [default: the CPU cores available]. Output does not depend on it.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the shuffle across shards.")
@click.option("--on-error", type=click.Choice(["skip", "fail"]), default="skip", show_default=True,
              help="Bad image or CSV row: skip it and list it in the manifest, or stop with an error.")
@click.option("--bin-edges", default=",".join(map(str, DEFAULT_BIN_EDGES)), show_default=True,
              help="Frequency-bin edges (training images per class) recorded in the manifest.")
def shard_command(data_root: Path, out: Path, splits: str | None, max_side: int, quality: int,
                  samples_per_shard: int | None, shard_size_mb: float | None, workers: int | None,
                  seed: int, on_error: str, bin_edges: str) -> None:
    """Pack DATA_ROOT (fish-vista layout) into WebDataset tar shards + DALI indexes + manifest.json.

    \b
    Writes OUT/<split>/<split>-000000.tar, .idx beside each, and OUT/<split>/manifest.json.
    Re-running after an interruption keeps the finished shards that match and redoes the rest.
    """
    if samples_per_shard is not None and shard_size_mb is not None:
        raise click.UsageError("--samples-per-shard and --shard-size are exclusive; give one")
    if shard_size_mb is None and samples_per_shard is None:
        samples_per_shard = DEFAULT_SAMPLES_PER_SHARD
    try:
        edges = [int(e) for e in _parse_csv_list(bin_edges) or []]
    except ValueError:
        raise click.BadParameter(f"{bin_edges!r} is not a comma-separated list of integers", param_hint="--bin-edges")
    shard_dataset(data_root, out, _parse_csv_list(splits), max_side=max_side, quality=quality,
                  samples_per_shard=samples_per_shard, shard_size_mb=shard_size_mb, workers=workers,
                  seed=seed, on_error=on_error, bin_edges=edges)

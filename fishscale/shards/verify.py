"""`fishscale verify shards/<split>`: re-read every shard against its manifest and report each problem.

Checks, per shard: size and sha256; the tar parses (read with Python's ``tarfile``, not the
writer's code) and holds exactly ``<key>.jpg``, ``<key>.cls``, ``<key>.json`` for the
manifest's keys, in order; each label is an integer in range and equals the manifest's;
the JSON parses and agrees; every image decodes to RGB within max_side; the DALI index
matches the tar's member offsets and sizes. Per split: sample counts and class histograms
add up, and no tar or index lies in the folder without being listed.
"""
from __future__ import annotations

import functools
import hashlib
import io
import json
import multiprocessing
import sys
import tarfile
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click
from PIL import Image
from tqdm import tqdm

from fishscale.data.dataset import SPLITS
from fishscale.errors import FishscaleError
from fishscale.shards.imagefix import DEFAULT_MAX_PIXELS
from fishscale.shards.manifest import MANIFEST_NAME, Manifest, ShardInfo, load_manifest
from fishscale.shards.tarwrite import read_index

MAX_PROBLEMS_PER_SHARD = 20
MEMBER_EXTS = ("jpg", "cls", "json")


def verify_split(folder: str | Path, workers: int | None = None, progress: bool = True) -> list[str]:
    """All problems found in a split folder (empty list: everything checks out)."""
    folder = Path(folder)
    manifest = load_manifest(folder)
    problems = _check_manifest(manifest, folder)
    check = functools.partial(check_shard, str(folder), num_classes=manifest.num_classes,
                              max_side=manifest.options.get("max_side"))
    infos = [asdict(s) for s in manifest.shards]
    workers = min(workers or 1, max(1, len(infos)))
    bar = tqdm(total=len(infos), desc=f"verify {manifest.split}", unit="shard", file=sys.stderr,
               disable=None if progress else True)
    with bar:
        if workers > 1:
            with multiprocessing.get_context("fork").Pool(workers) as pool:
                for found in pool.imap(check, infos):
                    problems += found
                    bar.update(1)
        else:
            for info in infos:
                problems += check(info)
                bar.update(1)
    return problems


def _check_manifest(manifest: Manifest, folder: Path) -> list[str]:
    problems = []
    total = sum(s.num_samples for s in manifest.shards)
    if manifest.num_samples != total:
        problems.append(f"manifest: num_samples {manifest.num_samples} != sum over shards {total}")
    for name, values in (("class_families", manifest.class_families), ("train_class_counts",
                         manifest.train_class_counts), ("class_bins", manifest.class_bins)):
        if len(values) != manifest.num_classes:
            problems.append(f"manifest: {name} has {len(values)} entries for {manifest.num_classes} classes")
    listed = {s.file for s in manifest.shards} | {s.index for s in manifest.shards}
    for path in sorted(folder.iterdir()):
        if path.suffix in (".tar", ".idx") and path.name not in listed:
            problems.append(f"{path.name}: in the folder but not listed in the manifest")
    for shard in manifest.shards:
        problems += [f"{shard.file}: {p}" for p in _check_shard_entry(shard)]
    return problems


def _check_shard_entry(info: ShardInfo) -> list[str]:
    problems = []
    if not (len(info.keys) == len(info.labels) == info.num_samples):
        problems.append(f"manifest lists {len(info.keys)} keys and {len(info.labels)} labels "
                        f"for num_samples {info.num_samples}")
    histogram = {str(label): n for label, n in sorted(Counter(info.labels).items())}
    if histogram != {str(k): int(v) for k, v in info.class_histogram.items()}:
        problems.append("manifest class_histogram does not match its labels")
    if len(set(info.keys)) != len(info.keys):
        problems.append("manifest lists duplicate keys")
    return problems


def check_shard(folder: str, info: dict[str, Any], num_classes: int, max_side: int | None) -> list[str]:
    """Problems of one shard (its tar, its index), each prefixed with the file name."""
    shard = ShardInfo(**info)
    path = Path(folder) / shard.file
    problems = _check_bytes(path, shard)
    members, read_problem = _read_members(path)
    if read_problem:
        problems.append(read_problem)
    problems += _check_members(members, shard, num_classes, max_side)
    problems += _check_index(Path(folder) / shard.index, members)
    if len(problems) > MAX_PROBLEMS_PER_SHARD:
        problems = problems[:MAX_PROBLEMS_PER_SHARD] + [f"... and {len(problems) - MAX_PROBLEMS_PER_SHARD} more"]
    return [f"{shard.file}: {p}" for p in problems]


def _check_bytes(path: Path, shard: ShardInfo) -> list[str]:
    if not path.is_file():
        return ["file missing"]
    problems = []
    size = path.stat().st_size
    if size != shard.bytes:
        problems.append(f"size {size} bytes, manifest says {shard.bytes}")
    with open(path, "rb") as f:
        sha = hashlib.file_digest(f, "sha256").hexdigest()
    if sha != shard.sha256:
        problems.append(f"sha256 {sha[:16]}... differs from the manifest's {shard.sha256[:16]}...")
    return problems


def _read_members(path: Path) -> tuple[list[tuple[str, int, bytes]], str | None]:
    """(name, data offset, data) of each regular member, and the reason reading stopped early, if any."""
    members: list[tuple[str, int, bytes]] = []
    if not path.is_file():
        return members, None
    try:
        with tarfile.open(path, "r:") as tar:
            for member in tar:
                if not member.isreg():
                    members.append((member.name, -1, b""))
                    continue
                data = tar.extractfile(member).read()
                if len(data) != member.size:
                    return members, f"{member.name}: truncated ({len(data)} of {member.size} bytes)"
                members.append((member.name, member.offset_data, data))
    except (tarfile.TarError, EOFError, OSError) as e:
        return members, f"tar unreadable after {len(members)} members: {e}"
    return members, None


def _check_members(members: list[tuple[str, int, bytes]], shard: ShardInfo, num_classes: int,
                   max_side: int | None) -> list[str]:
    problems = []
    by_name = {name: data for name, _, data in members}
    expected = [f"{key}.{ext}" for key in shard.keys for ext in MEMBER_EXTS]
    names = [name for name, _, _ in members]
    if names != expected:
        missing = [n for n in expected if n not in by_name]
        extra = [n for n in names if n not in set(expected)]
        parts = [f"{len(missing)} missing (e.g. {', '.join(missing[:3])})"] if missing else []
        parts += [f"{len(extra)} unexpected (e.g. {', '.join(extra[:3])})"] if extra else []
        problems.append(f"members differ from the manifest: {'; '.join(parts)}" if parts
                        else "members are not in manifest order")
    for key, label in zip(shard.keys, shard.labels):
        problems += [f"{key}: {p}" for p in _check_sample(key, label, by_name, num_classes, max_side)]
    return problems


def _check_sample(key: str, label: int, by_name: dict[str, bytes], num_classes: int,
                  max_side: int | None) -> list[str]:
    if any(f"{key}.{ext}" not in by_name for ext in MEMBER_EXTS):
        return []   # already reported as missing members
    problems = []
    cls_text = by_name[f"{key}.cls"].decode("ascii", "replace").strip()
    if not cls_text.lstrip("-").isdigit():
        problems.append(f".cls is not a decimal integer: {cls_text[:20]!r}")
    elif int(cls_text) != label:
        problems.append(f".cls says {cls_text}, manifest says {label}")
    if not 0 <= label < num_classes:
        problems.append(f"label {label} out of range 0..{num_classes - 1}")
    try:
        meta = json.loads(by_name[f"{key}.json"].decode("utf-8"))
        if meta.get("label") != label:
            problems.append(f".json label {meta.get('label')!r} != {label}")
    except (UnicodeDecodeError, json.JSONDecodeError, AttributeError) as e:
        problems.append(f".json does not parse: {e}")
    problems += _check_image(by_name[f"{key}.jpg"], max_side)
    return problems


def _check_image(data: bytes, max_side: int | None) -> list[str]:
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.width * im.height > DEFAULT_MAX_PIXELS:
                return [f".jpg is {im.width}x{im.height}, over the pixel limit"]
            im.load()
            problems = [] if im.format == "JPEG" else [f".jpg holds {im.format}, not JPEG"]
            if im.mode != "RGB":
                problems.append(f".jpg mode {im.mode}, expected RGB")
            if max_side and max(im.size) > max_side:
                problems.append(f".jpg is {im.width}x{im.height}, longer than max_side {max_side}")
            return problems
    except Exception as e:   # any decoder failure is the finding itself
        return [f".jpg does not decode ({type(e).__name__}: {e})"]


def _check_index(idx_path: Path, members: list[tuple[str, int, bytes]]) -> list[str]:
    if not idx_path.is_file():
        return [f"index {idx_path.name} missing"]
    try:
        indexed = read_index(idx_path)
    except FishscaleError as e:
        return [f"index unreadable: {e}"]
    actual: list[dict[str, tuple[int, int]]] = []
    last_key = None
    for name, offset, data in members:
        key, ext = name.split(".", 1) if "." in name else (name, "")
        if key != last_key:
            actual.append({})
            last_key = key
        actual[-1][ext] = (offset, len(data))
    if len(indexed) != len(actual):
        return [f"index lists {len(indexed)} samples, the tar holds {len(actual)}"]
    wrong = [i for i, (a, b) in enumerate(zip(indexed, actual)) if a != b]
    return [f"index disagrees with the tar at {len(wrong)} sample(s), first at sample {wrong[0]}"] if wrong else []


@click.command("verify")
@click.argument("split_folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Processes checking shards in parallel [default: the CPU cores available].")
def verify_command(split_folder: Path, workers: int | None) -> None:
    """Re-read every shard in SPLIT_FOLDER (e.g. shards/train) against its manifest.json.

    Prints each problem (sha256, size, members, labels, image decoding, index) and exits
    non-zero if there is any. Given the parent folder (shards/), verifies every split in it.
    """
    from fishscale.shards.shard import default_workers
    folders = [split_folder]
    if not (split_folder / MANIFEST_NAME).exists():
        order = {name: i for i, name in enumerate(SPLITS)}
        folders = sorted((p.parent for p in split_folder.glob(f"*/{MANIFEST_NAME}")),
                         key=lambda f: (order.get(f.name, len(order)), f.name)) or folders
    total = 0
    for folder in folders:
        problems = verify_split(folder, workers or default_workers())
        for problem in problems:
            click.echo(f"{folder}/{problem}", err=True)
        if not problems:
            manifest = load_manifest(folder)
            click.echo(f"ok: {folder}: {manifest.num_samples} samples in {len(manifest.shards)} shards verified")
        total += len(problems)
    if total:
        raise FishscaleError(f"{split_folder}: {total} problem(s) found")

"""`fishscale synth`: plan a synthetic fish-vista, draw its images in parallel, write the folder.

    fishscale synth OUT [--profile tiny|small|fishvista|upstream] [--seed N] [--workers N] [--scale F]

writes ``OUT/classification_{train,val,test}.csv`` (the 15 published columns, in order) and a flat
``OUT/Images/`` of JPEGs. See docs/synth.md.

- ``plan_dataset``: one row per image (split, image id, the 15 columns), from the profile's
  species table (``profiles``) and a metadata row per image (``metadata``); no drawing.
- ``write_dataset``: draws every image (``traits`` + ``drawing``) in worker processes, each from
  (seed, image id) alone, then writes the CSVs. OUT must be new, empty or an earlier synth output.
- Deterministic: species traits depend only on names, each image only on (seed, image id), so the
  bytes are identical whatever the number of workers.
"""
from __future__ import annotations

import io
import json
import multiprocessing
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np
import pandas as pd

from fishscale import __version__
from fishscale.data.bins import DEFAULT_BIN_EDGES, DEFAULT_BIN_NAMES, assign_bins
from fishscale.data.dataset import COLUMNS, SPLITS, csv_path
from fishscale.data.synth.drawing import draw_fish
from fishscale.data.synth.metadata import metadata_row
from fishscale.data.synth.profiles import IMAGE_SIDES, PROFILES, species_table
from fishscale.data.synth.traits import species_traits, specimen_traits
from fishscale.errors import FishscaleError

MARKER = ".fishscale-synth.json"   # provenance; also what lets a rerun replace the folder safely
SYNTH_ENTRIES = {MARKER, "Images", *(f"classification_{split}.csv" for split in SPLITS)}


def plan_dataset(profile: str = "tiny", seed: int = 0, scale: float = 1.0) -> pd.DataFrame:
    """The label table of a synthetic dataset, without drawing anything.

    One row per image: ``split``, ``image_id`` (what the image is seeded from) and the 15
    published columns. Rows are shuffled within each split, as in the real CSVs.
    """
    if seed < 0:
        raise FishscaleError(f"seed must be >= 0, got {seed}")
    table = species_table(profile, scale)
    rows, image_id = [], 0
    for split in SPLITS:
        for species, family, count in zip(table["species"], table["family"], table[split]):
            for _ in range(int(count)):
                rows.append({"split": split, "image_id": image_id, **metadata_row(species, family, image_id, seed)})
                image_id += 1
    plan = pd.DataFrame(rows)
    plan = _dedupe_filenames(plan)
    order = np.random.default_rng([seed, 2]).permutation(len(plan))
    plan = plan.iloc[order].sort_values("split", key=lambda s: s.map(SPLITS.index), kind="stable")
    return plan.reset_index(drop=True)


def _dedupe_filenames(plan: pd.DataFrame) -> pd.DataFrame:
    """Filenames are unique by construction; this guards the '#k' crop suffixes anyway."""
    seen = plan["filename"].duplicated(keep="first")
    for i in np.flatnonzero(seen.to_numpy()):
        stem, dot, ext = plan.at[i, "filename"].rpartition(".")
        name = f"{stem}_{plan.at[i, 'image_id']}.{ext}"
        plan.at[i, "filename"] = name
        if plan.at[i, "file_name"]:
            plan.at[i, "file_name"] = plan.at[i, "file_name"].rsplit("/", 1)[0] + "/" + name
    return plan


@dataclass(frozen=True)
class ImageJob:
    image_id: int
    path: str
    species: str
    family: str
    sides: tuple[int, int]
    seed: int


def render_image(job: ImageJob) -> int:
    """Draw and save one image; returns its size in bytes. Depends only on the job's fields."""
    rng = np.random.default_rng([job.seed, job.image_id, 0])
    traits = specimen_traits(species_traits(job.species, job.family), rng)
    longer_side = int(rng.integers(job.sides[0], job.sides[1] + 1))
    image = draw_fish(traits, rng, longer_side)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=int(rng.integers(86, 96)))
    data = buffer.getvalue()
    with open(job.path, "wb") as f:
        f.write(data)
    return len(data)


def _render_chunk(jobs: list[ImageJob]) -> int:
    return sum(render_image(job) for job in jobs)


def default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:   # not on Linux
        return os.cpu_count() or 1


def prepare_output(out: Path, provenance: dict) -> None:
    """Create OUT, or clear an earlier synth output there (it carries our marker file); refuse to
    touch anything else: a real fish-vista root has the same layout and must never be deleted."""
    if out.exists() and not out.is_dir():
        raise FishscaleError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            entries = ", ".join(sorted(p.name for p in out.iterdir())[:3])
            raise FishscaleError(f"{out}: folder is not empty ({entries} ...) and is not an earlier synth output "
                                 f"(no {MARKER}); choose a new or empty folder")
        foreign = sorted(p.name for p in out.iterdir() if p.name not in SYNTH_ENTRIES)
        if foreign:
            raise FishscaleError(f"{out}: earlier synth output holds other files too ({', '.join(foreign[:3])}); "
                                 "remove them or choose a new folder")
        shutil.rmtree(out / "Images", ignore_errors=True)
        for split in SPLITS:
            csv_path(out, split).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    # written first, so that an interrupted run can be replaced by the next one
    (out / MARKER).write_text(json.dumps(provenance, indent=1) + "\n", encoding="utf-8")
    (out / "Images").mkdir()


def write_dataset(plan: pd.DataFrame, out: str | Path, profile: str, seed: int = 0,
                  workers: int | None = None, progress: bool = True, scale: float = 1.0) -> Path:
    """Draw every image of ``plan`` into OUT/Images and write the three CSVs."""
    out = Path(out)
    prepare_output(out, {"generator": "fishscale synth", "version": __version__, "profile": profile,
                         "seed": seed, "scale": scale, "images": len(plan)})
    sides = IMAGE_SIDES[profile]
    jobs = [ImageJob(int(i), str(out / "Images" / name), species, family, sides, seed)
            for i, name, species, family in zip(plan["image_id"], plan["filename"],
                                                plan["standardized_species"], plan["family"])]
    jobs.sort(key=lambda job: job.image_id)
    _run_jobs(jobs, workers or default_workers(), progress)
    for split in SPLITS:
        rows = plan[plan["split"] == split]
        rows[list(COLUMNS)].to_csv(csv_path(out, split), index=False, lineterminator="\n")
    return out


def _run_jobs(jobs: list[ImageJob], workers: int, progress: bool) -> None:
    from tqdm import tqdm
    chunk = 16
    chunks = [jobs[i:i + chunk] for i in range(0, len(jobs), chunk)]
    with tqdm(total=len(jobs), desc="synth", unit="img", disable=not progress or None, file=sys.stderr) as bar:
        if workers <= 1 or len(chunks) <= 1:
            for part in chunks:
                _render_chunk(part)
                bar.update(len(part))
            return
        with multiprocessing.Pool(min(workers, len(chunks))) as pool:
            for part, _ in zip(chunks, pool.imap(_render_chunk, chunks)):
                bar.update(len(part))


def synthesize(out: str | Path, profile: str = "tiny", seed: int = 0, workers: int | None = None,
               scale: float = 1.0, progress: bool = True) -> Path:
    """Write a synthetic dataset in fish-vista's layout to OUT and return OUT.

    ``workers`` processes draw the images (default: all usable cores); the output is
    byte-identical for a given (profile, seed, scale) whatever ``workers`` is.
    """
    if workers is not None and workers < 1:
        raise FishscaleError(f"workers must be >= 1, got {workers}")
    plan = plan_dataset(profile, seed, scale)
    return write_dataset(plan, out, profile, seed, workers, progress, scale)


def summarize(plan: pd.DataFrame) -> list[str]:
    """Lines for the closing summary: images per split, classes per frequency bin."""
    per_split = plan["split"].value_counts()
    train_counts = plan[plan["split"] == "train"]["standardized_species"].value_counts()
    bins = pd.Series(assign_bins(train_counts.to_numpy(), DEFAULT_BIN_EDGES)).value_counts()
    edges = DEFAULT_BIN_EDGES
    ranges = [f"<{edges[0]}", *(f"{a}-{b - 1}" for a, b in zip(edges, edges[1:])), f">={edges[-1]}"]
    return [
        "images: " + ", ".join(f"{s} {int(per_split.get(s, 0))}" for s in SPLITS) + f" (total {len(plan)})",
        f"classes: {len(train_counts)}, by training images: "
        + ", ".join(f"{name} ({r}) {int(bins.get(name, 0))}" for name, r in zip(DEFAULT_BIN_NAMES, ranges)),
    ]


@click.command(name="synth")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--profile", type=click.Choice(PROFILES), default="tiny", show_default=True,
              help="tiny: 23 species, ~1.4k small images (seconds); small: 100 species, ~6k images; "
                   "fishvista: the real 1,758 species and long tail (~64k images at --scale 1); "
                   "upstream: 80 balanced species of other families, ~3.8k images (pretraining "
                   "stand-in for the long-tail study).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seed of the images and metadata; the same seed gives byte-identical files.")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Processes drawing images [default: all usable cores]. Does not change the output.")
@click.option("--scale", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True,
              help="Multiply every species' image counts (at least 2 train, 1 val, 1 test), "
                   "e.g. 0.1 for a tenth of fish-vista.")
def synth_command(out: Path, profile: str, seed: int, workers: int | None, scale: float) -> None:
    """Write a synthetic dataset in fish-vista's exact layout to OUT.

    OUT gets classification_{train,val,test}.csv (the 15 published columns) and a flat
    Images/ folder of JPEGs: procedurally drawn fish whose species share body plans within
    a family. OUT must be new, empty, or an earlier synth output (which is replaced).
    """
    started = time.perf_counter()
    plan = plan_dataset(profile, seed, scale)
    write_dataset(plan, out, profile, seed, workers, progress=True, scale=scale)
    for line in summarize(plan):
        click.echo(line)
    click.echo(f"wrote {out} (profile {profile}, seed {seed}, scale {scale:g}) "
               f"in {time.perf_counter() - started:.1f}s")

"""`fishscale bench loader`: four ways to feed the same training images, measured side by side.

    fishscale bench loader [--images 256] [--original-side 2400] [--max-side 512] [--workers N]

(a) baseline, the seed project's way: PIL opens each ORIGINAL image file, the same
    torchvision transforms, a DataLoader with N workers;
(b) the torch backend on the shards (fishscale.loader, data.backend=torch);
(c) the DALI backend on the shards (CPU decoder);
(c') the same without augmentation (eval transform: decode, resize, pad, normalize), to
    show what the augmentations cost;
(d) the ceiling: only decoding the stored shard JPEGs, on all N cores (DALI's CPU decoder
    and PIL in a process pool; the faster one counts).

The originals mimic fish-vista's multi-megapixel sources: `fishscale synth --profile tiny`
images scaled up so the longer side is ``--original-side``, written as JPEG q95; `fishscale
shard` then stores them at ``--max-side``. (a)-(c) run the full train transform (resize,
pad, rotation, flips, colour jitter, sharpness, normalize at the default probabilities).
Each figure is the best of ``--repeats`` full passes, as a steady rate (first batch to last)
and as CPU milliseconds per image (whole pass, workers included: robust to other tenants of
a shared machine); ratios come from the same run.
"""
from __future__ import annotations

import io
import json
import multiprocessing
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Callable, Iterator

import click
import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms.v2 import functional as F

from fishscale.config import Config
from fishscale.data.dataset import COLUMNS, read_split
from fishscale.errors import FishscaleError
from fishscale.loader.build import build_loader
from fishscale.loader.members import MemberReader
from fishscale.loader.transforms import augment, draw_augment, normalize, resize_and_pad
from fishscale.shards.manifest import Manifest, load_manifest


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _upscale(job: tuple[str, str, int]) -> None:
    source, target, side = job
    with Image.open(source) as img:
        img = img.convert("RGB")
        scale = side / max(img.size)
        img = img.resize((round(img.width * scale), round(img.height * scale)), Image.BICUBIC)
    Path(target).parent.mkdir(parents=True, exist_ok=True)
    img.save(target, format="JPEG", quality=95)


def make_originals(work: Path, images: int, side: int, workers: int) -> Path:
    """A fish-vista-style root of `images` large training images (reused when already there)."""
    root = work / f"originals-{images}-{side}"
    if (root / "classification_train.csv").is_file():
        return root
    from fishscale.data.synth.write import synthesize
    synth = synthesize(work / "synth-tiny", profile="tiny", seed=0, workers=workers, progress=False)
    rows, _ = read_split(synth, "train")
    if len(rows) < images:
        raise FishscaleError(f"--images {images}: the tiny profile has only {len(rows)} training images")
    rows = rows.sample(n=images, random_state=0).sort_values("row")
    jobs = [(path, str(root / Path(path).relative_to(synth)), side) for path in rows["image_path"]]
    log(f"writing {images} originals with the longer side {side} px ...")
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        pool.map(_upscale, jobs, chunksize=4)
    rows[list(COLUMNS)].to_csv(root / "classification_train.csv", index=False)
    return root


def make_shards(work: Path, root: Path, max_side: int, workers: int) -> Manifest:
    from fishscale.shards.shard import shard_dataset
    out = work / f"shards-{root.name}-{max_side}"
    if not (out / "train" / "manifest.json").is_file():
        log(f"sharding at max side {max_side} ...")
        shard_dataset(root, out, splits=["train"], max_side=max_side, workers=workers, seed=0, progress=False)
    return load_manifest(out / "train")


class OriginalFiles(Dataset):
    """The seed-style dataset: open the original file with PIL, transform, normalize."""

    def __init__(self, paths: list[str], labels: list[int], cfg: Config):
        self.paths, self.labels, self.cfg = paths, labels, cfg

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        with Image.open(self.paths[index]) as img:
            tensor = F.pil_to_tensor(img.convert("RGB"))
        tensor = resize_and_pad(tensor, self.cfg.data.image_size, self.cfg.data.pad_value)
        rng = np.random.default_rng([self.cfg.train.seed, index])
        tensor = augment(tensor, draw_augment(self.cfg.augment, rng), self.cfg.data.pad_value)
        return normalize(tensor, self.cfg.data), self.labels[index]


def baseline_pass(manifest: Manifest, root: Path, cfg: Config) -> Callable[[], Iterator[int]]:
    rows, _ = read_split(root, "train")
    by_name = dict(zip(rows["filename"], rows["image_path"]))
    names = _source_names(manifest, rows)
    dataset = OriginalFiles([by_name[n] for n in names], manifest.labels().tolist(), cfg)

    def run() -> Iterator[int]:
        loader = DataLoader(dataset, batch_size=cfg.train.batch_size, shuffle=True, drop_last=True,
                            num_workers=cfg.data.num_workers, generator=torch.Generator().manual_seed(0))
        return (len(labels) for _, labels in loader)
    return run


def _source_names(manifest: Manifest, rows: pd.DataFrame) -> list[str]:
    """Original filename of each shard sample, in sample-id order (read from the .json members)."""
    reader = MemberReader(manifest, ext="json")
    names = []
    for sample_id in range(len(reader)):
        meta = json.loads(reader.read(sample_id))
        names.append(meta.get("filename") or meta.get("source_filename"))
    known = set(rows["filename"])
    missing = [n for n in names if n not in known]
    if missing:
        raise FishscaleError(f"shard sample metadata names {missing[0]!r}, not in the originals' CSV")
    return names


def loader_pass(manifest: Manifest, cfg: Config, backend: str, train: bool = True) -> Callable[[], Iterator[int]]:
    def run() -> Iterator[int]:
        cfg.data.backend = backend
        loader = build_loader(cfg, manifest, train=train, batch_size=cfg.train.batch_size)
        return (len(labels) for _, labels in loader)
    return run


def _pil_decode(ids: np.ndarray) -> int:
    reader = _POOL_READER
    for sample_id in ids:
        with Image.open(io.BytesIO(reader.read(int(sample_id)))) as img:
            img.convert("RGB").load()
    return len(ids)


_POOL_READER: MemberReader | None = None


def pil_ceiling_pass(manifest: Manifest, workers: int) -> Callable[[], Iterator[int]]:
    def run() -> Iterator[int]:
        global _POOL_READER
        _POOL_READER = MemberReader(manifest)
        chunks = np.array_split(np.arange(len(_POOL_READER)), workers * 8)
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            yield from pool.imap(_pil_decode, chunks)
    return run


def dali_ceiling_pass(manifest: Manifest, workers: int, batch_size: int) -> Callable[[], Iterator[int]]:
    import nvidia.dali.fn as fn
    from nvidia.dali import pipeline_def

    reader = MemberReader(manifest)
    jpegs = [np.frombuffer(reader.read(i), dtype=np.uint8) for i in range(len(reader))]
    batches = [jpegs[i:i + batch_size] for i in range(0, len(jpegs) - batch_size + 1, batch_size)]

    @pipeline_def(batch_size=batch_size, num_threads=workers, device_id=None, prefetch_queue_depth=2)
    def decode_only():
        return fn.decoders.image(fn.external_source(source=batches, cycle=True, batch=True), device="cpu")

    def run() -> Iterator[int]:
        pipe = decode_only()
        pipe.build()
        for _ in batches:
            pipe.run()
            yield batch_size
    return run


def cpu_seconds() -> float:
    """CPU time of this process (all threads) and of its finished children (workers, pools)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def measure(run: Callable[[], Iterator[int]], repeats: int) -> tuple[float, float]:
    """(images/s, CPU ms per image), best of `repeats` passes.

    images/s is the steady rate: from the first batch to the last (start-up excluded, as it
    is negligible over a real epoch). CPU ms per image covers the whole pass, start-up and
    worker processes included; it is what the machine's other tenants cannot distort.
    """
    rates, cpu_ms = [], []
    for _ in range(repeats):
        cpu_start = cpu_seconds()
        batches = iter(run())
        first = next(batches)
        start = time.perf_counter()
        rest = sum(batches)
        rates.append(rest / (time.perf_counter() - start))
        cpu_ms.append(1000.0 * (cpu_seconds() - cpu_start) / (first + rest))
    return max(rates), min(cpu_ms)


LABELS = {
    "baseline": "(a) seed-style: PIL on original files, DataLoader",
    "torch": "(b) torch backend on shards",
    "dali": "(c) DALI backend on shards (CPU)",
    "dali_eval": "(c') DALI, eval transform (no augmentation)",
    "ceiling": "(d) ceiling: decode shard JPEGs only",
}


def markdown(results: dict, command: str) -> str:
    r, cpu = results["images_per_s"], results["cpu_ms_per_image"]
    lines = [
        f"Command: `{command}`  ",
        f"Machine: {results['machine']}; load average at start {results['load_average']}; {results['date']}.  ",
        f"{results['images']} training images; originals {results['original_side']} px (longer side), "
        f"shards at max side {results['max_side']} px; S = {results['image_size']}, batch {results['batch_size']}, "
        f"{results['workers']} workers; best of {results['repeats']} passes.",
        "",
        "| path | images/s | vs baseline | CPU ms / image |",
        "|---|---:|---:|---:|",
    ]
    for name, label in LABELS.items():
        lines.append(f"| {label} | {r[name]:.1f} | {r[name] / r['baseline']:.2f}x | {cpu[name]:.2f} |")
    lines += ["", f"DALI / baseline = {results['dali_vs_baseline']:.2f}x (goal >= 5x); "
              f"DALI / ceiling = {results['dali_vs_ceiling']:.2f} (goal >= 0.7). "
              f"Ceiling = the faster of DALI's decoder ({r['ceiling_dali']:.1f}/s) and a PIL process pool "
              f"({r['ceiling_pil']:.1f}/s)."]
    return "\n".join(lines)


@click.command(name="loader")
@click.option("--work", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for the generated originals and shards (kept and reused); default: a temporary folder.")
@click.option("--images", type=click.IntRange(min=32), default=256, show_default=True,
              help="Training images used (drawn from the tiny synthetic profile).")
@click.option("--original-side", type=click.IntRange(min=64), default=2400, show_default=True,
              help="Longer side of the 'original' files in px (fish-vista sources are multi-megapixel).")
@click.option("--max-side", type=click.IntRange(min=64), default=None,
              help="Shard max side in px [default: fishscale shard's default].")
@click.option("--image-size", type=click.IntRange(min=8), default=224, show_default=True,
              help="Training image size S.")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True, help="Batch size.")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Loader workers / decoder threads / pool size [default: usable cores].")
@click.option("--repeats", type=click.IntRange(min=1), default=3, show_default=True,
              help="Full passes per path; the best counts.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the results as JSON here.")
def bench_loader_command(work, images, original_side, max_side, image_size, batch_size, workers, repeats, json_out):
    """Seed-style PIL baseline vs torch backend vs DALI vs the decode ceiling, same images and cores."""
    from fishscale.shards.shard import DEFAULT_MAX_SIDE, default_workers
    workers = workers or default_workers()
    max_side = max_side or DEFAULT_MAX_SIDE
    temporary = work is None
    work = Path(work) if work else Path(tempfile.mkdtemp(prefix="fishscale-bench-loader-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        results = run_benchmark(work, images, original_side, max_side, image_size, batch_size, workers, repeats)
    finally:
        if temporary:
            shutil.rmtree(work, ignore_errors=True)
    command = "fishscale bench loader " + " ".join(sys.argv[3:]) if len(sys.argv) > 3 else "fishscale bench loader"
    click.echo(markdown(results, command.strip()))
    if json_out:
        json_out.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")


def run_benchmark(work: Path, images: int, original_side: int, max_side: int, image_size: int,
                  batch_size: int, workers: int, repeats: int) -> dict:
    root = make_originals(work, images, original_side, workers)
    manifest = make_shards(work, root, max_side, workers)
    cfg = Config()
    cfg.data.image_size, cfg.data.num_workers = image_size, workers
    cfg.train.batch_size, cfg.sampler.strategy = batch_size, "instance"
    paths: dict[str, Callable[[], Iterator[int]]] = {
        "baseline": baseline_pass(manifest, root, cfg),
        "torch": loader_pass(manifest, cfg, "torch"),
        "dali": loader_pass(manifest, cfg, "dali"),
        "dali_eval": loader_pass(manifest, cfg, "dali", train=False),
        "ceiling_dali": dali_ceiling_pass(manifest, workers, batch_size),
        "ceiling_pil": pil_ceiling_pass(manifest, workers),
    }
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    rates, cpu = {}, {}
    for name, run in paths.items():
        log(f"measuring {name} ...")
        rates[name], cpu[name] = measure(run, repeats)
        log(f"  {name}: {rates[name]:.1f} images/s, {cpu[name]:.2f} CPU ms/image")
    best = "ceiling_dali" if rates["ceiling_dali"] >= rates["ceiling_pil"] else "ceiling_pil"
    rates["ceiling"], cpu["ceiling"] = rates[best], cpu[best]
    return {
        "images_per_s": rates,
        "cpu_ms_per_image": cpu,
        "dali_vs_baseline": rates["dali"] / rates["baseline"],
        "torch_vs_baseline": rates["torch"] / rates["baseline"],
        "dali_vs_ceiling": rates["dali"] / rates["ceiling"],
        "images": images, "original_side": original_side, "max_side": max_side, "image_size": image_size,
        "batch_size": batch_size, "workers": workers, "repeats": repeats, "date": date.today().isoformat(),
        "load_average": load,
        "machine": f"{platform.machine()}, {workers} usable cores ({platform.system()})",
    }

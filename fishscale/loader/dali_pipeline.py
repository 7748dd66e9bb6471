"""The DALI pipeline: one ``@pipeline_def`` for train and eval, CPU or GPU decoder.

Bytes reach DALI in the sampler's order through a parallel, batch-mode ``external_source``
(`ShardSource`: member bytes by index offset, one pread each). Batch mode because DALI's
per-sample mode drops a partial last batch; here the last eval batch is simply shorter.

Per sample (``size`` = S, see fishscale.loader.transforms for the shared geometry):
decode -> resize longer side to S (explicit size: the torch backend rounds the same way)
-> pad to S x S, centred -> [train: rotate (white fill, on the square canvas) -> flips ->
colour jitter -> sharpness] -> normalize to float CHW. Each train augmentation sits under a
DALI conditional (``if fn.random.coin_flip(...)``), so with probability 0 it never runs and
the output equals the eval output exactly.
"""
from __future__ import annotations

import os
import zlib
from typing import Iterator, Sequence

import numpy as np
import torch

from fishscale.config import Config
from fishscale.loader.members import MemberReader
from fishscale.loader.transforms import BLUR_SIGMA, BLUR_WINDOW
from fishscale.manifest import Manifest

try:
    import nvidia.dali.fn as fn
    import nvidia.dali.math as dmath
    import nvidia.dali.types as types
    from nvidia.dali import pipeline_def
    from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy
except ImportError as e:   # build_loader checks first and names the torch fallback
    raise ImportError(f"NVIDIA DALI is not installed ({e}); use data.backend=torch") from None

PY_WORKERS = 1            # the source only preads bytes; decoding runs in DALI's threads


class ShardSource:
    """Batch-mode source: iteration i -> (jpeg bytes, [label]) of the i-th batch of sample ids."""

    def __init__(self, manifest: Manifest, batches: Sequence[np.ndarray]):
        self.reader = MemberReader(manifest)
        self.labels = manifest.labels()
        self.batches = [np.asarray(ids, dtype=np.int64) for ids in batches]

    def __call__(self, info) -> tuple[list[np.ndarray], list[np.ndarray]]:
        if info.iteration >= len(self.batches):
            raise StopIteration
        ids = self.batches[info.iteration]
        jpegs = [np.frombuffer(self.reader.read(int(i)), dtype=np.uint8) for i in ids]
        labels = [self.labels[i:i + 1] for i in ids]
        return jpegs, labels


def _uniform(low: float, high: float):
    """A random uniform draw per sample; a constant when the range is empty."""
    return fn.random.uniform(range=(low, high)) if high > low else low


def _resize_longer(img, size: int):
    """Longer side -> size, the shorter rounded half up (same numbers as the torch backend)."""
    shape = fn.cast(img.shape(), dtype=types.FLOAT)
    height, width = shape[0], shape[1]
    longer = dmath.max(height, width)
    new_h = dmath.max(dmath.floor(height * size / longer + 0.5), 1.0)
    new_w = dmath.max(dmath.floor(width * size / longer + 0.5), 1.0)
    return fn.resize(img, resize_x=new_w, resize_y=new_h, antialias=True, interp_type=types.INTERP_LINEAR)


def _augment(img, aug, pad_value: int):
    """Train-time augmentations on the padded uint8 square, each under its own coin."""
    if fn.random.coin_flip(probability=aug.rotate_prob):
        img = fn.rotate(img, angle=_uniform(-aug.rotate_degrees, aug.rotate_degrees), keep_size=True,
                        fill_value=float(pad_value), interp_type=types.INTERP_LINEAR)
    img = fn.flip(img, horizontal=fn.random.coin_flip(probability=aug.hflip_prob),
                  vertical=fn.random.coin_flip(probability=aug.vflip_prob))
    if fn.random.coin_flip(probability=aug.color_jitter_prob):
        img = fn.color_twist(img, brightness=_uniform(1 - aug.brightness, 1 + aug.brightness),
                             contrast=_uniform(1 - aug.contrast, 1 + aug.contrast),
                             saturation=_uniform(1 - aug.saturation, 1 + aug.saturation),
                             hue=_uniform(-aug.hue * 360.0, aug.hue * 360.0))   # DALI: degrees
    if fn.random.coin_flip(probability=aug.sharpness_prob):
        # DALI has no sharpness op: blend with a blurred copy, factor in [1-s, 1+s]
        factor = _uniform(1 - aug.sharpness, 1 + aug.sharpness)
        blurred = fn.cast(fn.gaussian_blur(img, window_size=BLUR_WINDOW, sigma=BLUR_SIGMA), dtype=types.FLOAT)
        mixed = blurred + factor * (fn.cast(img, dtype=types.FLOAT) - blurred)
        img = fn.cast(dmath.clamp(mixed, 0.0, 255.0), dtype=types.UINT8)
    return img


@pipeline_def(enable_conditionals=True)
def fishscale_pipeline(source, cfg: Config, train: bool, decoder_device: str):
    """Shard bytes -> decode -> resize -> pad -> [augment] -> normalized float CHW; labels."""
    jpegs, labels = fn.external_source(source=source, num_outputs=2, batch=True, batch_info=True,
                                       parallel=True, dtype=[types.UINT8, types.INT64])
    size, pad_value = cfg.data.image_size, cfg.data.pad_value
    images = fn.decoders.image(jpegs, device=decoder_device, output_type=types.RGB)
    images = _resize_longer(images, size)
    images = fn.crop(images, crop=(size, size), out_of_bounds_policy="pad",
                     fill_values=float(pad_value))          # centred: crop_pos defaults to 0.5
    if train:
        images = _augment(images, cfg.augment, pad_value)
    images = fn.crop_mirror_normalize(images, dtype=types.FLOAT, output_layout="CHW",
                                      mean=[255.0 * m for m in cfg.data.mean],
                                      std=[255.0 * s for s in cfg.data.std])
    return images, labels


def pipeline_seed(seed: int, epoch: int, rank: int) -> int:
    """Augmentation seed per (run seed, epoch, rank): reproducible, different across ranks."""
    return zlib.crc32(f"{seed}/{epoch}/{rank}".encode()) & 0x7FFFFFFF


def build_pipeline(cfg: Config, manifest: Manifest, batches: Sequence[np.ndarray], *, train: bool,
                   epoch: int, rank: int):
    on_gpu = cfg.data.device == "gpu"
    source = ShardSource(manifest, batches)
    return fishscale_pipeline(
        source, cfg, train, "mixed" if on_gpu else "cpu",
        batch_size=max(len(ids) for ids in batches),
        num_threads=max(1, cfg.data.num_workers),
        device_id=torch.cuda.current_device() if on_gpu else None,
        seed=pipeline_seed(cfg.train.seed, epoch, rank),
        py_num_workers=PY_WORKERS,
        # fork is cheap, but only safe before CUDA is initialised in this process
        py_start_method="spawn" if on_gpu else "fork",
        prefetch_queue_depth=2)


def dali_batches(cfg: Config, manifest: Manifest, batches: Sequence[tuple[np.ndarray, np.ndarray]],
                 *, train: bool, epoch: int, rank: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (images, labels) for batches of (positions, sample ids), in order."""
    pipe = build_pipeline(cfg, manifest, [ids for _, ids in batches], train=train, epoch=epoch, rank=rank)
    iterator = DALIGenericIterator([pipe], ["images", "labels"], auto_reset=False,
                                   last_batch_policy=LastBatchPolicy.PARTIAL)
    try:
        for (out,) in iterator:
            yield out["images"], out["labels"].view(-1).to(torch.int64)
    finally:
        del iterator, pipe

"""The DALI pipeline: one ``@pipeline_def`` for train and eval, CPU or GPU decoder.

Bytes reach DALI in the sampler's order through a parallel, batch-mode ``external_source``
(`ShardSource`: member bytes by index offset, one pread each). Batch mode because DALI's
per-sample mode drops a partial last batch; here the last eval batch is simply shorter.

Per sample (``size`` = S, see fishscale.loader.transforms for the shared geometry):
decode -> resize longer side to S (explicit size: the torch backend rounds the same way)
-> pad to S x S, centred -> [train: rotate (white fill, on the square canvas) -> vertical
flip -> colour jitter -> sharpness (one 3x3 filter) -> horizontal flip, inside
crop_mirror_normalize (flips commute with the pointwise and symmetric ops)] -> normalize to
float CHW. The source draws every augmentation coin and parameter with the torch backend's
`draw_augment`, seeded by plan position; each augmentation runs under a DALI conditional on
its coin, and one with probability 0 is left out of the graph, so the output then equals
the eval output exactly.
"""
from __future__ import annotations

import warnings
import zlib
from typing import Iterator, Sequence

import numpy as np
import torch

from fishscale.config import AugmentConfig, Config
from fishscale.errors import FishscaleError
from fishscale.loader.members import MemberReader, jpeg_header_problem
from fishscale.loader.transforms import BLUR_SIGMA, BLUR_WINDOW, AugmentDraw, augment_rng, draw_augment
from fishscale.shards.manifest import Manifest
from fishscale.train.preempt import workers_ignore_usr1

try:
    import nvidia.dali.fn as fn
    import nvidia.dali.math as dmath
    import nvidia.dali.types as types
    from nvidia.dali import pipeline_def
    from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy
except ImportError as e:   # build_loader checks first and names the torch fallback
    raise ImportError(f"NVIDIA DALI is not installed ({e}); use data.backend=torch") from None

PY_WORKERS = 1            # the source only preads bytes; decoding runs in DALI's threads
GAUSS_1D = np.exp(-0.5 * (np.linspace(-1.0, 1.0, BLUR_WINDOW) / BLUR_SIGMA) ** 2)
BLUR_KERNEL = np.outer(GAUSS_1D, GAUSS_1D).astype(np.float32) / np.float32(GAUSS_1D.sum() ** 2)
IDENTITY_KERNEL = np.pad(np.ones((1, 1), np.float32), BLUR_WINDOW // 2)


class ShardSource:
    """Batch-mode source: iteration i -> the i-th batch's JPEG bytes, labels and, for train,
    each sample's augmentation draw (coins [5] and parameters [6], from `draw_augment` seeded
    by plan position: the same draws as the torch backend, at any world size or resume point).
    """

    def __init__(self, manifest: Manifest, batches: Sequence[tuple[np.ndarray, np.ndarray]], *,
                 augment: AugmentConfig | None, seed: int, epoch: int):
        self.reader = MemberReader(manifest)
        self.labels = manifest.labels()
        self.batches = [(np.asarray(pos, dtype=np.int64), np.asarray(ids, dtype=np.int64)) for pos, ids in batches]
        self.augment, self.seed, self.epoch = augment, seed, epoch

    def __call__(self, info) -> tuple[list[np.ndarray], ...]:
        if info.iteration >= len(self.batches):
            raise StopIteration
        positions, ids = self.batches[info.iteration]
        jpegs = [np.frombuffer(self._jpeg(int(i)), dtype=np.uint8) for i in ids]
        labels = [self.labels[i:i + 1] for i in ids]
        if self.augment is None:
            return jpegs, labels
        draws = [draw_augment(self.augment, augment_rng(self.seed, self.epoch, int(p))) for p in positions]
        return jpegs, labels, [_coins(d) for d in draws], [_params(d) for d in draws]

    def _jpeg(self, sample_id: int) -> bytes:
        data = self.reader.read(sample_id)
        problem = jpeg_header_problem(data)
        if problem:     # DALI's decoder may crash on it rather than raise: fail here, clearly
            raise FishscaleError(f"{self.reader.where(sample_id)}: not a readable JPEG: {problem}")
        return data


def _coins(draw: AugmentDraw) -> np.ndarray:
    return np.array([draw.angle is not None, draw.hflip, draw.vflip, draw.jitter is not None,
                     draw.sharpness is not None], dtype=np.bool_)


def _params(draw: AugmentDraw) -> np.ndarray:
    jitter = draw.jitter or (1.0, 1.0, 1.0, 0.0)
    return np.array([draw.angle or 0.0, *jitter, draw.sharpness or 1.0], dtype=np.float32)


def _resize_longer(img, size: int):
    """Longer side -> size, the shorter rounded half up (same numbers as the torch backend)."""
    shape = fn.cast(img.shape(), dtype=types.FLOAT)
    height, width = shape[0], shape[1]
    longer = dmath.max(height, width)
    new_h = dmath.max(dmath.floor(height * size / longer + 0.5), 1.0)
    new_w = dmath.max(dmath.floor(width * size / longer + 0.5), 1.0)
    return fn.resize(img, resize_x=new_w, resize_y=new_h, antialias=True, interp_type=types.INTERP_LINEAR)


def _augment(img, coins, params, aug: AugmentConfig, pad_value: int):
    """Train-time augmentations on the padded uint8 square, each under its own coin.

    An augmentation whose probability is 0 is left out of the graph; the others run only for
    the samples whose coin came up. Horizontal flips happen in crop_mirror_normalize.
    """
    if aug.rotate_prob > 0 and coins[0]:
        img = fn.rotate(img, angle=params[0], keep_size=True, fill_value=float(pad_value),
                        interp_type=types.INTERP_LINEAR)
    if aug.vflip_prob > 0:
        img = fn.flip(img, horizontal=0, vertical=fn.cast(coins[2], dtype=types.INT32))
    if aug.color_jitter_prob > 0 and coins[3]:
        img = fn.color_twist(img, brightness=params[1], contrast=params[2], saturation=params[3],
                             hue=params[4] * 360.0)          # DALI's hue is in degrees
    if aug.sharpness_prob > 0 and coins[4]:
        # DALI has no sharpness op; blending with a blurred copy is linear, so it is one
        # 3x3 filter per sample: factor * identity + (1 - factor) * Gaussian
        factor = params[5]
        kernel = factor * types.Constant(IDENTITY_KERNEL) + (1.0 - factor) * types.Constant(BLUR_KERNEL)
        img = fn.filter(img, kernel, border="reflect_101")
    return img


@pipeline_def(enable_conditionals=True)
def fishscale_pipeline(source, cfg: Config, train: bool, decoder_device: str):
    """Shard bytes -> decode -> resize -> pad -> [augment] -> normalized float CHW; labels."""
    outputs = fn.external_source(source=source, num_outputs=4 if train else 2, batch=True, batch_info=True,
                                 parallel=True, dtype=[types.UINT8, types.INT64, types.BOOL, types.FLOAT][:4 if train else 2])
    jpegs, labels = outputs[0], outputs[1]
    size, pad_value = cfg.data.image_size, cfg.data.pad_value
    images = fn.decoders.image(jpegs, device=decoder_device, output_type=types.RGB)
    images = _resize_longer(images, size)
    images = fn.crop(images, crop=(size, size), out_of_bounds_policy="pad",
                     fill_values=float(pad_value))          # centred: crop_pos defaults to 0.5
    mirror = 0
    if train:
        coins, params = outputs[2], outputs[3]
        images = _augment(images, coins, params, cfg.augment, pad_value)
        mirror = fn.cast(coins[1], dtype=types.INT32) if cfg.augment.hflip_prob > 0 else 0
    images = fn.crop_mirror_normalize(images, dtype=types.FLOAT, output_layout="CHW", mirror=mirror,
                                      mean=[255.0 * m for m in cfg.data.mean],
                                      std=[255.0 * s for s in cfg.data.std])
    return images, labels


def pipeline_seed(seed: int, epoch: int, rank: int) -> int:
    """DALI's own seed per (run seed, epoch, rank). No operator here draws from it (the source
    supplies every random draw); fixed anyway so that any future random op is reproducible."""
    return zlib.crc32(f"{seed}/{epoch}/{rank}".encode()) & 0x7FFFFFFF


def build_pipeline(cfg: Config, manifest: Manifest, batches: Sequence[tuple[np.ndarray, np.ndarray]], *,
                   train: bool, epoch: int, rank: int):
    on_gpu = cfg.data.device == "gpu"
    source = ShardSource(manifest, batches, augment=cfg.augment if train else None, seed=cfg.train.seed, epoch=epoch)
    return fishscale_pipeline(
        source, cfg, train, "mixed" if on_gpu else "cpu",
        batch_size=max(len(ids) for _, ids in batches),
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
    pipe = build_pipeline(cfg, manifest, batches, train=train, epoch=epoch, rank=rank)
    with warnings.catch_warnings():     # coins/params of augmentations switched off go unused
        warnings.filterwarnings("ignore", message=".*ShardSource.*not used")
        with workers_ignore_usr1():    # the python workers start here: they ignore SIGUSR1
            pipe.build()
    done, iterator = 0, None
    try:
        # the iterator prefetches on construction: a bad first batch fails here already
        iterator = DALIGenericIterator([pipe], ["images", "labels"], auto_reset=False,
                                       last_batch_policy=LastBatchPolicy.PARTIAL)
        for (out,) in iterator:
            yield out["images"], out["labels"].view(-1).to(torch.int64)
            done += 1
    except Exception as e:          # a corrupt member, typically: name where, not DALI's stack
        own = _source_error(str(e))     # DALI re-raises a source error as a bare Exception of its text
        if own is None and not isinstance(e, RuntimeError):
            raise
        if own is not None:             # it names the shard and sample itself
            raise FishscaleError(f"{own}; check the shards with `fishscale verify`") from None
        ids = batches[done][1] if done < len(batches) else []
        reason = _dali_reason(str(e)) or type(e).__name__
        raise FishscaleError(f"{manifest.root}: DALI failed on batch {done} (sample ids {np.asarray(ids)[:8].tolist()}"
                             f"{'...' if len(ids) > 8 else ''}): "
                             f"{reason}; check the shards with `fishscale verify`") from None
    finally:
        del iterator, pipe


def _source_error(text: str) -> str | None:
    """The message of a FishscaleError raised in ShardSource (in a DALI worker), if that is what
    ``text`` reports."""
    prefix = f"{FishscaleError.__module__}.{FishscaleError.__name__}: "
    lines = [line.strip() for line in text.splitlines() if line.strip().startswith(prefix)]
    return lines[-1][len(prefix):] if lines else None


def _dali_reason(text: str) -> str:
    """The operator and cause out of DALI's multi-line error ("Error in CPU operator `op`" ...
    "encountered:" cause)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    operator = next((line.split("`")[1] for line in lines if line.startswith("Error in") and "`" in line), "")
    after = [lines[i + 1] for i, line in enumerate(lines[:-1]) if line == "encountered:"]
    cause = after[0] if after else (lines[-1] if lines else "")
    return f"{operator}: {cause}" if operator else cause

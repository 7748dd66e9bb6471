"""The torch backend: PIL decode + torchvision.transforms.v2 in DataLoader workers.

The reference the DALI pipeline is tested against, the fallback where DALI is absent, and
the path on machines where DALI cannot be installed. It reads the same shards (member bytes
by index offset) in the same sampler order. Augmentation draws come from a generator seeded
by (seed, epoch, position in the epoch plan), so a sample's augmentation does not depend on
the world size, the number of workers, or where a resumed run started.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from fishscale.config import Config
from fishscale.errors import FishscaleError
from fishscale.loader.members import MemberReader
from fishscale.loader.transforms import augment, augment_rng, decode, draw_augment, normalize, resize_and_pad
from fishscale.shards.manifest import Manifest
from fishscale.train.preempt import ignore_in_worker


class ShardSamples(Dataset):
    """Item (position, sample id) -> (float32 [3,S,S], label). Positions seed augmentation."""

    def __init__(self, cfg: Config, manifest: Manifest, train: bool, epoch: int):
        self.cfg, self.train, self.epoch = cfg, train, epoch
        self.reader = MemberReader(manifest)
        self.labels = manifest.labels()
        self.keys = [key for shard in manifest.shards for key in shard.keys]
        self.split = manifest.split

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, int]:
        position, sample_id = item
        img = decode(self.reader.read(sample_id), where=f"{self.split} sample {self.keys[sample_id]}")
        img = resize_and_pad(img, self.cfg.data.image_size, self.cfg.data.pad_value)
        if self.train:
            draw = draw_augment(self.cfg.augment, augment_rng(self.cfg.train.seed, self.epoch, position))
            img = augment(img, draw, self.cfg.data.pad_value)
        return normalize(img, self.cfg.data), int(self.labels[sample_id])


def torch_batches(cfg: Config, manifest: Manifest, batches: Sequence[tuple[np.ndarray, np.ndarray]],
                  *, train: bool, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (images, labels) for batches of (positions, sample ids), in order."""
    dataset = ShardSamples(cfg, manifest, train, epoch)
    batch_items = [list(zip(pos.tolist(), ids.tolist())) for pos, ids in batches]
    workers = max(0, cfg.data.num_workers)
    on_gpu = cfg.data.device == "gpu" and torch.cuda.is_available()
    loader = DataLoader(dataset, batch_sampler=batch_items, num_workers=workers, pin_memory=on_gpu,
                        prefetch_factor=4 if workers else None, worker_init_fn=ignore_in_worker if workers else None)
    try:
        for images, labels in loader:
            labels = labels.to(torch.int64)
            if on_gpu:
                images, labels = images.cuda(non_blocking=True), labels.cuda(non_blocking=True)
            yield images, labels
    except FishscaleError as e:     # from a worker: its message carries the worker's traceback
        raise FishscaleError(str(e).strip().splitlines()[-1].split("FishscaleError: ", 1)[-1]) from None

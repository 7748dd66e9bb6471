"""Loaders on real shards (the `tiny_shards` fixture): DALI on the CPU vs the torch backend.

Tolerance for DALI vs torch (eval): both decode with libjpeg-turbo (identical pixels) and
resize bilinear with antialiasing to the same explicit size; the filters' fixed-point
arithmetic differs, so pixel values may differ by at most 3 levels of 255 (mean below 0.5);
the pad geometry must be identical.
"""
from __future__ import annotations

import io
import re
import shutil
import sys
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from fishscale.config import Config
from fishscale.errors import FishscaleError
from fishscale.loader.build import build_loader
from fishscale.loader.members import MemberReader
from fishscale.shards.manifest import load_manifest

SIZE = 64
AUGMENTATIONS = {"rotate": "rotate_prob", "hflip": "hflip_prob", "vflip": "vflip_prob",
                 "jitter": "color_jitter_prob", "sharpness": "sharpness_prob"}


def make_cfg(backend: str, pad_value: int = 255, **probs: float) -> Config:
    """Small images, every augmentation off unless given."""
    cfg = Config()
    cfg.data.backend, cfg.data.image_size, cfg.data.pad_value, cfg.data.num_workers = backend, SIZE, pad_value, 1
    for field in AUGMENTATIONS.values():
        setattr(cfg.augment, field, probs.get(field, 0.0))
    cfg.train.batch_size = 40
    cfg.eval.batch_size = 40
    return cfg


def collect(loader) -> tuple[torch.Tensor, torch.Tensor]:
    batches = list(loader)
    assert len(batches) == len(loader)
    return torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])


def levels(images: torch.Tensor, cfg: Config) -> torch.Tensor:
    """Normalized float CHW back to 0..255 pixel levels."""
    mean = torch.tensor(cfg.data.mean).view(1, 3, 1, 1)
    std = torch.tensor(cfg.data.std).view(1, 3, 1, 1)
    return (images * std + mean) * 255.0


@pytest.fixture(scope="module")
def val(tiny_shards):
    return load_manifest(tiny_shards / "val")


def shard_members(manifest, ext: str) -> dict[str, bytes]:
    """Every `<key>.<ext>` member, read with tarfile (not the loader's offset reader)."""
    out = {}
    for path in manifest.shard_paths():
        with tarfile.open(path) as tar:
            for member in tar.getmembers():
                key, _, member_ext = member.name.partition(".")
                if member_ext == ext:
                    out[key] = tar.extractfile(member).read()
    return out


def test_member_reader_matches_tarfile(val):
    reader = MemberReader(val)
    jpegs = shard_members(val, "jpg")
    keys = [k for s in val.shards for k in s.keys]
    assert len(reader) == len(keys) == len(jpegs)
    assert all(reader.read(i) == jpegs[key] for i, key in enumerate(keys))


@pytest.fixture(scope="module")
def eval_outputs(val):
    """Eval images of the val split, both backends, white and black pad."""
    out = {}
    for backend in ("dali", "torch"):
        for pad in (0, 255):
            cfg = make_cfg(backend, pad_value=pad)
            loader = build_loader(cfg, val, train=False)
            assert [len(ids) for _, ids in loader.batches][-1] == (val.num_samples - 1) % 40 + 1   # short last batch
            images, labels = collect(loader)
            assert images.shape == (val.num_samples, 3, SIZE, SIZE) and images.dtype == torch.float32
            assert labels.dtype == torch.int64 and labels.tolist() == val.labels().tolist()
            out[backend, pad] = levels(images, cfg)
    return out


def test_eval_pad_geometry_identical(eval_outputs, val):
    """The pad region (pixels that follow the pad value) is the same in both, and centred."""
    masks = {b: (eval_outputs[b, 255] - eval_outputs[b, 0]).abs().amin(dim=1) > 200 for b in ("dali", "torch")}
    assert torch.equal(masks["dali"], masks["torch"])
    # content rectangle from the stored JPEG's size, read with PIL: centred, odd pixel top/left
    jpegs = shard_members(val, "jpg")
    keys = [k for s in val.shards for k in s.keys]
    padded = 0
    for i, key in enumerate(keys):
        width, height = Image.open(io.BytesIO(jpegs[key])).size
        h = max(1, int(np.floor(height * SIZE / max(height, width) + 0.5)))
        w = max(1, int(np.floor(width * SIZE / max(height, width) + 0.5)))
        expected = torch.ones(SIZE, SIZE, dtype=torch.bool)
        top, left = (SIZE - h + 1) // 2, (SIZE - w + 1) // 2
        expected[top:top + h, left:left + w] = False
        assert torch.equal(masks["torch"][i], expected), key
        padded += int(expected.any())
    assert padded > len(keys) // 2          # the fixture's fish are elongated: most need padding


def test_eval_pixels_within_tolerance(eval_outputs):
    diff = (eval_outputs["dali", 255] - eval_outputs["torch", 255]).abs()
    assert diff.max().item() <= 3.0 + 1e-3
    assert diff.mean().item() < 0.5


@pytest.mark.parametrize("backend", ["dali", "torch"])
def test_train_shapes_dtypes_and_labels_as_in_shard(tiny_shards, backend):
    train = load_manifest(tiny_shards / "train")
    cfg = make_cfg(backend, rotate_prob=0.5, hflip_prob=0.5, color_jitter_prob=0.5, sharpness_prob=0.5)
    cfg.sampler.strategy, cfg.sampler.epoch_length = "balanced", 120
    loader = build_loader(cfg, train, train=True, epoch=1)
    assert len(loader) == 3
    labels = []
    for images, batch_labels in loader:
        assert images.dtype == torch.float32 and images.shape == (40, 3, SIZE, SIZE)
        assert batch_labels.dtype == torch.int64 and batch_labels.shape == (40,)
        assert torch.isfinite(images).all()
        labels.append(batch_labels)
    cls = shard_members(train, "cls")
    keys = [k for s in train.shards for k in s.keys]
    in_shard = [int(cls[keys[i]].decode()) for i in loader.sample_ids]
    assert torch.cat(labels).tolist() == in_shard


@pytest.fixture(scope="module")
def unaugmented(val):
    """Train-mode outputs with every augmentation off, per backend (must equal eval)."""
    return {backend: train_levels(val, backend) for backend in ("dali", "torch")}


def train_levels(manifest, backend: str, **probs: float) -> tuple[torch.Tensor, np.ndarray]:
    cfg = make_cfg(backend, **probs)
    cfg.sampler.epoch_length = 200
    loader = build_loader(cfg, manifest, train=True, epoch=0)
    images, _ = collect(loader)
    return levels(images, cfg), loader.sample_ids


@pytest.mark.parametrize("backend", ["dali", "torch"])
def test_probability_zero_means_eval_output(unaugmented, eval_outputs, backend):
    images, ids = unaugmented[backend]
    assert len(ids) == 200
    torch.testing.assert_close(images, eval_outputs[backend, 255][torch.as_tensor(ids)], rtol=0, atol=1e-3)


@pytest.mark.parametrize("augmentation", sorted(AUGMENTATIONS))
def test_augmentation_fires_at_its_probability(val, unaugmented, augmentation):
    """prob 0.5, the rest 0: the share of changed samples is binomial(200, 0.5) (4.5 sigma
    bound), and both backends change the same samples (they share the per-position draws)."""
    changed = {}
    for backend in ("dali", "torch"):
        base, ids = unaugmented[backend]
        images, same_ids = train_levels(val, backend, **{AUGMENTATIONS[augmentation]: 0.5})
        assert np.array_equal(ids, same_ids)
        changed[backend] = (images - base).abs().flatten(1).amax(dim=1) > 0.5
    n, p = len(ids), 0.5
    count = int(changed["dali"].sum())
    assert abs(count - n * p) <= 4.5 * (n * p * (1 - p)) ** 0.5, count
    assert torch.equal(changed["dali"], changed["torch"])


def test_train_parity_for_exact_augmentations(val):
    """Flips and sharpness are the same arithmetic in both backends. Sharpening (factor up to
    1.5 here) amplifies the <= 3-level resize difference, so the bound is 6 levels."""
    probs = {"hflip_prob": 0.5, "vflip_prob": 0.5, "sharpness_prob": 1.0}
    dali, _ = train_levels(val, "dali", **probs)
    ref, _ = train_levels(val, "torch", **probs)
    diff = (dali - ref).abs()
    assert diff.max().item() <= 6.0 + 1e-3 and diff.mean().item() < 0.5


@pytest.mark.parametrize("backend", ["dali", "torch"])
def test_resume_mid_epoch_equals_the_tail(val, backend):
    """Stop after 2 global batches, resume: the stream is the uninterrupted one's tail, exactly."""
    cfg = make_cfg(backend, hflip_prob=0.5 if backend == "torch" else 0.0)
    cfg.sampler.strategy, cfg.sampler.epoch_length = "sqrt", 200
    full_images, full_labels = collect(build_loader(cfg, val, train=True, epoch=2))
    resumed = build_loader(cfg, val, train=True, epoch=2, start_batch=2)
    images, labels = collect(resumed)
    assert len(resumed) == 3
    assert torch.equal(labels, full_labels[80:])
    assert torch.equal(images, full_images[80:])


def test_dali_missing_names_the_torch_backend(val, monkeypatch):
    monkeypatch.setitem(sys.modules, "nvidia.dali", None)    # as if DALI were not installed
    with pytest.raises(FishscaleError, match="data.backend=torch"):
        build_loader(make_cfg("dali"), val, train=False)


def test_bad_backend_and_device_are_errors(val):
    cfg = make_cfg("jax")
    with pytest.raises(FishscaleError, match="data.backend"):
        build_loader(cfg, val, train=False)
    cfg = make_cfg("torch")
    cfg.data.device = "tpu"
    with pytest.raises(FishscaleError, match="data.device"):
        build_loader(cfg, val, train=False)


@pytest.mark.parametrize("backend", ["dali", "torch"])
def test_corrupt_member_is_a_clear_error(tiny_shards, tmp_path, backend):
    """A zeroed JPEG inside a shard: FishscaleError naming the split folder or the sample."""
    shutil.copytree(tiny_shards / "val", tmp_path / "val")
    manifest = load_manifest(tmp_path / "val")
    reader = MemberReader(manifest)
    with open(manifest.shard_paths()[0], "r+b") as shard:
        shard.seek(int(reader.offset[50]))
        shard.write(b"\0" * int(reader.size[50]))
    key = manifest.shards[0].keys[50]
    with pytest.raises(FishscaleError, match=f"{re.escape(str(tmp_path / 'val'))}|{re.escape(key)}"):
        for _ in build_loader(make_cfg(backend), manifest, train=False):
            pass


def test_jpeg_header_check_passes_every_shard_image_and_names_broken_ones(tiny_shards):
    """The check the DALI source runs on every member: no complaint about any image the shards
    hold (PIL, the writer's reader, decodes them all), a reason for each kind of broken header."""
    from fishscale.loader.members import jpeg_header_problem
    for split in ("train", "val", "test"):
        manifest = load_manifest(tiny_shards / split)
        reader = MemberReader(manifest)
        for sample_id in range(len(reader)):
            assert jpeg_header_problem(reader.read(sample_id)) is None, reader.where(sample_id)
    good = MemberReader(load_manifest(tiny_shards / "val")).read(0)
    Image.open(io.BytesIO(good)).load()
    sos = good.index(b"\xff\xda")
    assert jpeg_header_problem(b"") == jpeg_header_problem(bytes(len(good))) == "does not start with a JPEG SOI marker"
    assert "no JPEG marker at byte 2 " in jpeg_header_problem(good[:2] + bytes(len(good) - 2))
    assert "no JPEG marker at byte 20 " in jpeg_header_problem(good[:20])
    assert "cut off" in jpeg_header_problem(good[:sos + 3])
    assert "bad length" in jpeg_header_problem(good[:4] + b"\x00\x01" + good[6:])
    assert jpeg_header_problem(good[:2] + good[sos:]) == "JPEG has no frame header before its scan"
    assert jpeg_header_problem(good[:sos] + bytes(len(good) - sos)) is not None
    assert jpeg_header_problem(good[:len(good) // 2 + sos // 2]) is None      # a cut scan is the decoder's business


@pytest.mark.parametrize("backend", ["dali", "torch"])
def test_broken_jpeg_header_is_a_clear_error(tiny_shards, tmp_path, backend):
    """A member whose JPEG header is zeroed after its SOI marker (DALI's CPU decoder can crash the
    process on such a header instead of raising): a FishscaleError naming the shard and the sample."""
    shutil.copytree(tiny_shards / "val", tmp_path / "val")
    manifest = load_manifest(tmp_path / "val")
    reader = MemberReader(manifest)
    with open(manifest.shard_paths()[0], "r+b") as shard:
        shard.seek(int(reader.offset[50]) + 2)
        shard.write(b"\0" * 200)
    key = manifest.shards[0].keys[50]
    with pytest.raises(FishscaleError, match=re.escape(key)):
        for _ in build_loader(make_cfg(backend), manifest, train=False):
            pass

"""`fishscale shard`: image normalization, tar/index format, outside readers, determinism, bad files, resume.

Every output is read back with a reader other than fishscale's writer: PIL on the stored JPEGs,
the webdataset library, DALI's CPU reader with our index files, GNU tar, DALI's own wds2idx tool.
"""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tarfile
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image, ImageOps

from fishscale.cli import main as cli
from fishscale.shards.imagefix import normalize_bytes, target_size
from fishscale.shards.manifest import load_manifest
from fishscale.shards.shard import reason_kind, sample_keys, shard_dataset
from fishscale.shards.tarwrite import read_index

# ----------------------------------------------------------------------------- helpers


def encode(im: Image.Image, fmt: str = "JPEG", **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def two_colour(size=(200, 100), mode="RGB", left=(255, 0, 0), right=(0, 0, 255)) -> Image.Image:
    """Left half one colour, right half another: orientation and compositing are visible."""
    im = Image.new(mode, size, right)
    im.paste(left, (0, 0, size[0] // 2, size[1]))
    return im


def bomb_png(width: int = 30000, height: int = 30000) -> bytes:
    """A valid 1-KB PNG whose header claims width x height pixels (well past PIL's limit)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under folder (hidden ones too) -> bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def csv_species(root: Path, split: str) -> dict[str, str]:
    with open(root / f"classification_{split}.csv", newline="", encoding="utf-8") as f:
        return {r["filename"]: r["standardized_species"] for r in csv.DictReader(f)}


def decoded(jpeg: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"), dtype=np.int16)


# ----------------------------------------------------------------------------- imagefix


def test_upright_rgb_jpeg_within_size_keeps_its_bytes():
    source = encode(two_colour(), quality=80)
    out = normalize_bytes(source, max_side=256, quality=90)
    assert out.reason is None and out.jpeg == source and not out.reencoded


def test_downscale_keeps_aspect_and_caps_longer_side():
    source = encode(two_colour((1600, 900)), quality=90)
    out = normalize_bytes(source, max_side=512, quality=90)
    im = Image.open(io.BytesIO(out.jpeg))
    assert im.format == "JPEG" and im.size == (512, 288) == (out.width, out.height)
    assert (out.source_width, out.source_height) == (1600, 900)
    assert target_size(300, 200, None) == (300, 200) and target_size(100, 1000, 500) == (50, 500)
    pixels = decoded(out.jpeg)
    assert np.abs(pixels[144, 100] - (255, 0, 0)).max() < 20 and np.abs(pixels[144, 400] - (0, 0, 255)).max() < 20


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_is_applied(orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    source = encode(two_colour(), quality=95, exif=exif.tobytes())
    out = normalize_bytes(source, max_side=None, quality=95)
    expected = ImageOps.exif_transpose(Image.open(io.BytesIO(source))).convert("RGB")
    assert out.reencoded and (out.width, out.height) == expected.size
    assert np.abs(decoded(out.jpeg) - np.asarray(expected, dtype=np.int16)).mean() < 3


def test_modes_are_converted_not_skipped():
    rgba = two_colour((80, 40), "RGBA", left=(255, 0, 0, 255), right=(0, 0, 255, 0))
    palette = Image.new("P", (40, 40), 0)
    palette.putpalette([0, 255, 0] + [0, 0, 0] * 255)
    cases = {
        "cmyk": (encode(Image.new("CMYK", (40, 40), (0, 255, 0, 0))), (255, 0, 255)),
        "rgba_left": (encode(rgba, "PNG"), (255, 0, 0)),
        "rgba_transparent_right": (encode(rgba, "PNG"), (255, 255, 255)),
        "palette_transparent": (encode(palette, "PNG", transparency=0), (255, 255, 255)),
        "gray16": (encode(Image.fromarray(np.full((30, 40), 32768, np.uint16)), "PNG"), (128, 128, 128)),
        "gray_jpeg": (encode(Image.new("L", (40, 30), 60)), (60, 60, 60)),
        "bilevel": (encode(Image.new("1", (40, 30), 1), "PNG"), (255, 255, 255)),
    }
    for name, (source, colour) in cases.items():
        out = normalize_bytes(source, max_side=512, quality=95)
        assert out.reason is None, name
        im = Image.open(io.BytesIO(out.jpeg))
        assert im.format == "JPEG" and im.mode == "RGB", name
        pixels = decoded(out.jpeg)
        probe = pixels[pixels.shape[0] // 2, -5 if "right" in name else 5]
        assert np.abs(probe - colour).max() <= 6, (name, probe)


def test_bad_bytes_give_reasons():
    good = encode(two_colour((300, 200)))
    cases = {
        "empty": (b"", "empty file"),
        "text": (b"this is not an image\n" * 10, "not an image"),
        "truncated": (good[: len(good) // 2], "cannot decode"),
        "bomb": (bomb_png(), "decompression bomb"),
    }
    for name, (data, kind) in cases.items():
        out = normalize_bytes(data, max_side=512, quality=90)
        assert out.jpeg is None and reason_kind(out.reason) == kind, (name, out.reason)
    # the pixel limit is a parameter: local to the call, PIL's global limit untouched
    limited = normalize_bytes(good, max_side=512, quality=90, max_pixels=300 * 200 - 1)
    assert reason_kind(limited.reason) == "decompression bomb" and Image.MAX_IMAGE_PIXELS > 10**7


def test_sample_keys_are_unique_and_dot_free():
    names = ["a.b c.jpg", "a b.c.jpg", "INHS_FISH_1#0.JPG", "x" * 200 + ".png", ".hidden.jpg", "dup.jpg", "dup.png"]
    keys = sample_keys(names)
    assert len(set(keys)) == len(keys)
    assert all(k and "." not in k and "/" not in k and len(k) <= 80 for k in keys)
    assert keys[0] == "a_b_c" and keys[2] == "INHS_FISH_1_0" and keys[5:] == ["dup", "dup_2"]


# ----------------------------------------------------------------------------- format and outside readers


def test_manifests_describe_the_shards(tiny_dataset, tiny_shards):
    train = load_manifest(tiny_shards / "train")
    for split in ("train", "val", "test"):
        m = load_manifest(tiny_shards / split)
        rows = csv_species(tiny_dataset, split)
        assert m.class_names == train.class_names == sorted(set(csv_species(tiny_dataset, "train").values()))
        assert m.num_samples + len(m.skipped) == len(rows)
        assert m.options["max_side"] == 256 and m.options["samples_per_shard"] == 200 and "workers" not in m.options
        assert len(m.class_bins) == len(m.train_class_counts) == m.num_classes
        for i, s in enumerate(m.shards):
            assert s.file == f"{split}-{i:06d}.tar" and s.index == f"{split}-{i:06d}.idx"
            assert s.num_samples == len(s.keys) == len(s.labels) <= 200
            assert (tiny_shards / split / s.file).stat().st_size == s.bytes
            assert sum(s.class_histogram.values()) == s.num_samples
    counts = np.bincount(train.labels(), minlength=train.num_classes)
    assert list(counts) == train.train_class_counts   # tiny has no bad images: every train row written


def test_shuffle_mixes_classes_across_shards(tiny_shards):
    train = load_manifest(tiny_shards / "train")
    majority = int(np.argmax(train.train_class_counts))
    full = [s for s in train.shards if s.num_samples == 200]
    assert len(full) >= 5
    for s in full:   # ~42% of samples are the majority class; every full shard holds many classes
        assert len(s.class_histogram) >= 8 and 40 <= s.class_histogram[str(majority)] <= 130


def test_webdataset_reads_labels_and_images(tiny_dataset, tiny_shards):
    import webdataset as wds
    for split in ("train", "val"):
        m = load_manifest(tiny_shards / split)
        species_of = csv_species(tiny_dataset, split)
        urls = [str(p) for p in m.shard_paths()]
        samples = list(wds.WebDataset(urls, shardshuffle=False).decode("pil").to_tuple("jpg", "cls", "json", "__key__"))
        assert [s[1] for s in samples] == m.labels().tolist()
        assert [s[3] for s in samples] == [k for sh in m.shards for k in sh.keys]
        for image, label, meta, _ in samples:
            assert m.class_names[label] == meta["species"] == species_of[meta["filename"]]
            assert image.mode == "RGB" and max(image.size) <= 256 and image.size == (meta["width"], meta["height"])


def test_dali_reads_with_written_index(tiny_shards):
    from nvidia.dali import fn, pipeline_def
    m = load_manifest(tiny_shards / "train")
    paths = [str(p) for p in m.shard_paths()]
    index_paths = [str(tiny_shards / "train" / s.index) for s in m.shards]

    @pipeline_def(batch_size=128, num_threads=2, device_id=None)
    def pipe():
        jpg, cls, meta = fn.readers.webdataset(paths=paths, index_paths=index_paths, ext=["jpg", "cls", "json"],
                                               name="reader")
        return fn.decoders.image(jpg, device="cpu"), cls, meta

    p = pipe()
    p.build()
    assert p.epoch_size("reader") == m.num_samples
    labels, metas, shapes = [], [], []
    while len(labels) < m.num_samples:
        images, cls, meta = p.run()
        labels += [int(np.array(c).tobytes()) for c in cls]
        metas += [json.loads(np.array(j).tobytes()) for j in meta]
        shapes += [np.array(im).shape for im in images]
    n = m.num_samples
    assert labels[:n] == m.labels().tolist()
    assert [m.class_names[label] for label in labels[:n]] == [j["species"] for j in metas[:n]]
    assert shapes[:n] == [(j["height"], j["width"], 3) for j in metas[:n]]


def test_gnu_tar_lists_fixed_metadata(tiny_shards):
    m = load_manifest(tiny_shards / "val")
    listing = subprocess.run(["tar", "-tvf", str(m.shard_paths()[0])], capture_output=True, text=True, check=True,
                             env=dict(os.environ, TZ="UTC")).stdout.splitlines()
    names = [f"{k}.{ext}" for k in m.shards[0].keys for ext in ("jpg", "cls", "json")]
    assert [line.split()[-1] for line in listing] == names
    for line in listing:
        mode, owner, _size, date, clock, _name = line.split()
        assert (mode, owner, date, clock) == ("-rw-r--r--", "root/root", "1970-01-01", "00:00")


def test_index_equals_dali_wds2idx_and_points_at_member_data(tiny_shards, tmp_path):
    m = load_manifest(tiny_shards / "val")
    tar_path, idx_path = m.shard_paths()[0], tiny_shards / "val" / m.shards[0].index
    tool = shutil.which("wds2idx")
    if tool:   # DALI's own index tool (installed with nvidia-dali) must produce the very same bytes
        subprocess.run([tool, str(tar_path), str(tmp_path / "x.idx")], check=True, capture_output=True)
        assert (tmp_path / "x.idx").read_bytes() == idx_path.read_bytes()
    index = read_index(idx_path)
    raw = tar_path.read_bytes()
    with tarfile.open(tar_path) as tar:
        members = {mem.name: tar.extractfile(mem).read() for mem in tar}
    assert len(index) == len(m.shards[0].keys)
    for key, entry in zip(m.shards[0].keys, index):
        assert set(entry) == {"jpg", "cls", "json"}
        for ext, (offset, size) in entry.items():
            assert raw[offset:offset + size] == members[f"{key}.{ext}"]


# ----------------------------------------------------------------------------- determinism and options


@pytest.fixture(scope="module")
def ref64(tiny_dataset, tmp_path_factory) -> Path:
    """Train split re-encoded at max_side 64 (every image resized), 50 per shard, 2 workers."""
    out = tmp_path_factory.mktemp("ref64")
    shard_dataset(tiny_dataset, out, splits=["train"], max_side=64, samples_per_shard=50, workers=2, progress=False)
    return out


def test_byte_identical_whatever_workers(tiny_dataset, tiny_shards, ref64, tmp_path):
    shard_dataset(tiny_dataset, tmp_path / "w1", splits=["train"], max_side=64, samples_per_shard=50, workers=1,
                  progress=False)
    assert tree(tmp_path / "w1") == tree(ref64)
    assert len(load_manifest(ref64 / "train").shards) == 25
    shard_dataset(tiny_dataset, tmp_path / "v", splits=["val"], max_side=256, samples_per_shard=200, workers=1,
                  progress=False)
    assert tree(tmp_path / "v" / "val") == tree(tiny_shards / "val")


def test_seed_changes_order_only(tiny_dataset, tiny_shards, tmp_path):
    m = shard_dataset(tiny_dataset, tmp_path, splits=["val"], max_side=256, samples_per_shard=200, seed=1,
                      workers=1, progress=False)["val"]
    ref = load_manifest(tiny_shards / "val")
    assert m.shards[0].keys != ref.shards[0].keys and sorted(m.shards[0].keys) == sorted(ref.shards[0].keys)


def test_shard_size_option(tiny_dataset, tmp_path):
    result = CliRunner().invoke(cli, ["shard", str(tiny_dataset), "--out", str(tmp_path), "--split", "val",
                                      "--shard-size", "0.15", "--workers", "1"])
    assert result.exit_code == 0, result.output
    m = load_manifest(tmp_path / "val")
    assert len(m.shards) >= 3 and m.options["samples_per_shard"] is None
    assert all(s.bytes >= 150_000 for s in m.shards[:-1]) and all(s.bytes < 250_000 for s in m.shards)
    both = CliRunner().invoke(cli, ["shard", str(tiny_dataset), "--out", str(tmp_path), "--shard-size", "1",
                                    "--samples-per-shard", "5"])
    assert both.exit_code == 2 and "exclusive" in both.output


# ----------------------------------------------------------------------------- bad files


@pytest.fixture(scope="module")
def messy_dataset(tiny_dataset, tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A copy of tiny with bad and odd files mixed into train, and one val species unseen in train."""
    root = tmp_path_factory.mktemp("messy") / "data"
    shutil.copytree(tiny_dataset, root)
    names = list(csv_species(root, "train"))
    exif = Image.Exif()
    exif[0x0112] = 6
    content = {
        "zero": b"", "truncated": (root / "Images" / names[1]).read_bytes()[:1500],
        "text": b"<html>not an image</html>\n", "bomb": bomb_png(),
        "cmyk": encode(Image.new("CMYK", (120, 80), (0, 255, 0, 0))),
        "rgba": encode(two_colour((120, 80), "RGBA", left=(255, 0, 0, 255), right=(0, 0, 255, 0)), "PNG"),
        "gray16": encode(Image.fromarray(np.full((80, 120), 32768, np.uint16)), "PNG"),
        "rotated": encode(two_colour((120, 80)), quality=95, exif=exif.tobytes()),
    }
    case_of = {}
    for name, (case, data) in zip(names, content.items()):
        (root / "Images" / name).write_bytes(data)
        case_of[case] = name
    case_of["missing"] = names[len(content)]
    (root / "Images" / case_of["missing"]).unlink()
    with open(root / "classification_val.csv", newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        fields, val_rows = reader.fieldnames, list(reader)
    val_rows[0]["standardized_species"] = "imaginary fish"
    with open(root / "classification_val.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fields)
        writer.writeheader()
        writer.writerows(val_rows)
    return root, case_of


def test_bad_files_are_skipped_with_reasons_and_odd_ones_converted(messy_dataset, tmp_path):
    root, case_of = messy_dataset
    manifests = shard_dataset(root, tmp_path, max_side=256, samples_per_shard=200, workers=2, progress=False)
    train = manifests["train"]
    reasons = {s["filename"]: reason_kind(s["reason"]) for s in train.skipped}
    assert reasons == {case_of["zero"]: "empty file", case_of["truncated"]: "cannot decode",
                       case_of["text"]: "not an image", case_of["bomb"]: "decompression bomb",
                       case_of["missing"]: "missing file"}
    rows = {r: i + 2 for i, r in enumerate(csv_species(root, "train"))}
    assert all(s["row"] == rows[s["filename"]] and s["split"] == "train" for s in train.skipped)
    assert train.num_samples == len(rows) - 5
    val = manifests["val"]
    assert [reason_kind(s["reason"]) for s in val.skipped] == ["species not in train"] and val.skipped[0]["row"] == 2
    assert "imaginary fish" not in json.dumps([s.keys for s in val.shards])

    import webdataset as wds
    by_file = {meta["filename"]: image for image, meta in
               wds.WebDataset([str(p) for p in train.shard_paths()], shardshuffle=False).decode("pil")
               .to_tuple("jpg", "json")}
    for case in ("cmyk", "rgba", "gray16", "rotated"):
        assert by_file[case_of[case]].mode == "RGB", case
    probe = {case: np.asarray(by_file[case_of[case]], dtype=np.int16) for case in ("cmyk", "rgba", "gray16", "rotated")}
    assert np.abs(probe["cmyk"][40, 60] - (255, 0, 255)).max() < 8
    assert np.abs(probe["rgba"][40, 110] - (255, 255, 255)).max() < 8   # transparent -> white
    assert np.abs(probe["gray16"][40, 60] - 128).max() < 4              # scaled, not clipped to 255
    assert probe["rotated"].shape == (120, 80, 3)                          # orientation 6: rotated upright
    assert np.abs(probe["rotated"][10, 40] - (255, 0, 0)).max() < 30       # left (red) half is now on top

    verified = CliRunner().invoke(cli, ["verify", str(tmp_path / "train"), "--workers", "1"])
    assert verified.exit_code == 0, verified.output


def test_on_error_fail_names_file_and_leaves_no_partial_shard(messy_dataset, tmp_path):
    root, _ = messy_dataset
    result = CliRunner().invoke(cli, ["shard", str(root), "--out", str(tmp_path), "--split", "train",
                                      "--samples-per-shard", "20", "--on-error", "fail", "--workers", "2"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    message = result.output.strip().splitlines()[-1]
    assert message.startswith("error: ") and "classification_train.csv line" in message
    assert str(root / "Images") in message
    folder = tmp_path / "train"
    assert not (folder / "manifest.json").exists() and not list(folder.glob("*.tmp"))
    for tar_path in folder.glob("*.tar"):   # whatever was renamed into place is complete
        with tarfile.open(tar_path) as tar:
            assert len(tar.getnames()) == 60


# ----------------------------------------------------------------------------- resume


def test_resume_after_damage_equals_uninterrupted_run(tiny_dataset, ref64, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(ref64, out)
    folder = out / "train"
    untouched = {p.name: p.stat().st_mtime_ns for p in folder.glob("train-00000[0-2].tar")}
    (folder / "train-000003.tar").unlink()
    with open(folder / "train-000005.tar", "r+b") as f:
        f.truncate(5000)
    (folder / "train-000010.tar.tmp").write_bytes(b"half a shard")
    (folder / "manifest.json").unlink()
    time.sleep(0.01)
    shard_dataset(tiny_dataset, out, splits=["train"], max_side=64, samples_per_shard=50, workers=2, progress=False)
    assert tree(out) == tree(ref64)
    assert {p.name: p.stat().st_mtime_ns for p in folder.glob("train-00000[0-2].tar")} == untouched


def test_changed_source_image_is_redone(tiny_dataset, tiny_shards, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(tiny_dataset, root)
    out = tmp_path / "out"
    shutil.copytree(tiny_shards / "val", out / "val")   # same options as this run: fully reusable
    first = load_manifest(out / "val").shards[0]
    meta_name = json.loads(_member(out / "val" / first.file, f"{first.keys[0]}.json"))["filename"]
    new_bytes = encode(two_colour((120, 80)), quality=70)
    (root / "Images" / meta_name).write_bytes(new_bytes)
    m = shard_dataset(root, out, splits=["val"], max_side=256, samples_per_shard=200, workers=1, progress=False)
    assert m["val"].shards[0].sha256 != first.sha256
    assert _member(out / "val" / first.file, f"{first.keys[0]}.jpg") == new_bytes


def _member(tar_path: Path, name: str) -> bytes:
    with tarfile.open(tar_path) as tar:
        return tar.extractfile(name).read()


def test_resume_after_kill_equals_uninterrupted_run(tiny_dataset, ref64, tmp_path):
    out = tmp_path / "out"
    command = [sys.executable, "-m", "fishscale.cli", "shard", str(tiny_dataset), "--out", str(out),
               "--split", "train", "--max-side", "64", "--samples-per-shard", "50", "--workers", "1"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    journal = out / "train" / ".resume" / "train-000003.json"
    deadline = time.monotonic() + 60
    while not journal.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (out / "train" / "manifest.json").exists(), "the run finished before it could be interrupted"
    done = len(list((out / "train").glob("*.tar")))
    assert 4 <= done < 25
    shard_dataset(tiny_dataset, out, splits=["train"], max_side=64, samples_per_shard=50, workers=2, progress=False)
    assert tree(out) == tree(ref64)


def test_csv_row_problems_follow_on_error(tmp_path):
    root = tmp_path / "data"
    (root / "Images").mkdir(parents=True)
    rows = [("a.jpg", "fish one"), ("b.jpg", "fish two"), ("a.jpg", "fish two"), ("c.gif", "fish one")]
    for name in ("a.jpg", "b.jpg"):
        (root / "Images" / name).write_bytes(encode(two_colour((60, 40))))
    lines = ["filename,family,standardized_species"] + [f"{f},fam,{s}" for f, s in rows]
    (root / "classification_train.csv").write_text("\n".join(lines) + "\n")
    result = CliRunner().invoke(cli, ["shard", str(root), "--out", str(tmp_path / "out"), "--on-error", "fail"])
    assert result.exit_code == 2 and "line 4 (a.jpg): duplicate filename" in result.output
    m = shard_dataset(root, tmp_path / "out", workers=1, progress=False)["train"]
    assert m.num_samples == 2 and [s["row"] for s in m.skipped] == [4, 5]


def test_bench_shard_runs_and_reports_ratios(tmp_path):
    result = CliRunner().invoke(cli, ["bench", "shard", "--images", "6", "--source-side", "400", "--max-side",
                                      "128", "--workers", "1", "--repeat", "1", "--keep", str(tmp_path / "imgs")])
    assert result.exit_code == 0, result.output
    table = [line.split() for line in result.output.splitlines() if line.strip().startswith("128 ")]
    assert len(table) == 1 and float(table[0][4]) > 0   # shard/ceiling ratio column
    assert len(list((tmp_path / "imgs" / "Images").glob("*.jpg"))) == 6


def test_fast_tar_header_equals_tarfiles():
    from fishscale.shards.tarwrite import _slow_member_header, member_header
    for name, size in [("a.jpg", 0), ("k" * 95 + ".json", 8**11 - 1), ("INHS_FISH_1_0.cls", 1), ("x.jpg", 512)]:
        assert member_header(name, size) == _slow_member_header(name, size), name
    with pytest.raises(Exception, match="longer than 100"):
        member_header("k" * 101, 1)

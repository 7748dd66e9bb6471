"""`fishscale verify`: clean shards pass; each kind of damage is caught, named, and exits non-zero."""
from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from fishscale.cli import main as cli
from fishscale.shards.manifest import load_manifest
from fishscale.shards.verify import verify_split


def run_verify(folder: Path):
    return CliRunner().invoke(cli, ["verify", str(folder), "--workers", "1"])


@pytest.fixture
def val_copy(tiny_shards, tmp_path) -> Path:
    """A private copy of the tiny val split (one shard) to damage."""
    folder = tmp_path / "val"
    shutil.copytree(tiny_shards / "val", folder)
    return folder


def member_span(tar_path: Path, name: str) -> tuple[int, int]:
    """(data offset, size) of a member, found with tarfile (not fishscale's index)."""
    with tarfile.open(tar_path) as tar:
        member = tar.getmember(name)
        return member.offset_data, member.size


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_clean_shards_verify(tiny_shards):
    result = CliRunner().invoke(cli, ["verify", str(tiny_shards / "train"), "--workers", "2"])
    assert result.exit_code == 0, result.output
    assert "ok:" in result.output and "1201 samples" in result.output
    every_split = CliRunner().invoke(cli, ["verify", str(tiny_shards), "--workers", "2"])
    assert every_split.exit_code == 0, every_split.output
    assert [line.split()[1].rstrip(":").rsplit("/", 1)[1] for line in every_split.output.splitlines()
            if line.startswith("ok:")] == ["train", "val", "test"]


def test_flipped_byte_in_a_label_is_caught(val_copy):
    shard = load_manifest(val_copy).shards[0]
    tar_path = val_copy / shard.file
    offset, _ = member_span(tar_path, f"{shard.keys[3]}.cls")
    flip_byte(tar_path, offset)          # e.g. '7' -> '6': a wrong label with a valid tar
    problems = verify_split(val_copy, progress=False)
    assert any("sha256" in p for p in problems)
    assert any(shard.keys[3] in p and ".cls says" in p for p in problems)
    result = run_verify(val_copy)
    assert result.exit_code != 0 and "problem(s) found" in result.output and shard.file in result.output


def test_flipped_byte_in_image_data_is_caught(val_copy):
    shard = load_manifest(val_copy).shards[0]
    tar_path = val_copy / shard.file
    offset, size = member_span(tar_path, f"{shard.keys[0]}.jpg")
    flip_byte(tar_path, offset + size // 2)   # may still decode: sha256 must catch it
    result = run_verify(val_copy)
    assert result.exit_code != 0 and "sha256" in result.output


def test_truncated_tar_is_caught(val_copy):
    shard = load_manifest(val_copy).shards[0]
    tar_path = val_copy / shard.file
    tar_path.write_bytes(tar_path.read_bytes()[: shard.bytes // 2])
    problems = verify_split(val_copy, progress=False)
    text = "\n".join(problems)
    assert f"size {shard.bytes // 2} bytes" in text and "sha256" in text
    assert "missing" in text and "index lists" in text
    assert run_verify(val_copy).exit_code != 0


def test_corrupt_jpeg_header_is_reported_as_undecodable(val_copy):
    shard = load_manifest(val_copy).shards[0]
    tar_path = val_copy / shard.file
    offset, _ = member_span(tar_path, f"{shard.keys[5]}.jpg")
    data = bytearray(tar_path.read_bytes())
    data[offset:offset + 4] = b"NOPE"     # destroy the JPEG SOI marker
    tar_path.write_bytes(bytes(data))
    problems = verify_split(val_copy, progress=False)
    assert any(shard.keys[5] in p and "does not decode" in p for p in problems)


def test_index_inconsistent_with_tar_is_caught(val_copy):
    shard = load_manifest(val_copy).shards[0]
    idx = val_copy / shard.index
    lines = idx.read_text().splitlines()
    fields = lines[2].split()
    fields[1] = str(int(fields[1]) + 512)   # jpg offset of the 2nd sample
    lines[2] = " ".join(fields)
    idx.write_text("\n".join(lines) + "\n")
    problems = verify_split(val_copy, progress=False)
    assert problems == [f"{shard.file}: index disagrees with the tar at 1 sample(s), first at sample 1"]


def test_missing_shard_and_stray_file_and_bad_manifest_are_caught(val_copy):
    shard = load_manifest(val_copy).shards[0]
    (val_copy / "val-000007.tar").write_bytes(b"\0" * 1024)
    manifest = json.loads((val_copy / "manifest.json").read_text())
    manifest["class_names"] = manifest["class_names"][:2]          # labels now out of range
    manifest["shards"][0]["labels"][0] = manifest["shards"][0]["labels"][0] + 1   # disagrees with .cls
    (val_copy / "manifest.json").write_text(json.dumps(manifest))
    problems = "\n".join(verify_split(val_copy, progress=False))
    assert "val-000007.tar: in the folder but not listed" in problems
    assert "out of range 0..1" in problems and ".cls says" in problems
    assert "class_histogram does not match" in problems
    (val_copy / shard.file).unlink()
    assert "file missing" in "\n".join(verify_split(val_copy, progress=False))


def test_missing_manifest_is_a_clean_error(tmp_path):
    result = run_verify(tmp_path)
    assert result.exit_code == 2 and "manifest not found" in result.output and "Traceback" not in result.output

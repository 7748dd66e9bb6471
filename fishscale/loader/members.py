"""Read a sample's member bytes straight from its shard by the DALI index offsets.

    reader = MemberReader(manifest)
    jpeg = reader.read(sample_id)          # bytes of <key>.jpg, one pread, no tar parsing

The index files (wds2idx format, written by `fishscale shard`) give every member's offset and
size; file handles stay open per shard (and per process: DataLoader workers and DALI's Python
workers reopen after a fork, since sharing a descriptor's offset is harmless with pread but
the handles would leak into unrelated processes).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from fishscale.errors import FishscaleError
from fishscale.manifest import Manifest

IMAGE_EXT = "jpg"


def parse_index(idx_path: str | Path) -> list[dict[str, tuple[int, int]]]:
    """Read a wds2idx index (``v1.2 N`` then ``ext offset size name ...`` per sample)."""
    try:
        from fishscale.shard import read_index   # helper B's reader, when present
        return read_index(idx_path)
    except ImportError:
        pass
    path = Path(idx_path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise FishscaleError(f"{path}: cannot read shard index: {e}") from None
    head = lines[0].split() if lines else []
    if len(head) != 2 or not head[0].startswith("v1"):
        raise FishscaleError(f"{path}: not a DALI webdataset index (first line {lines[:1]})")
    samples = []
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split()
        if len(fields) % 4:
            raise FishscaleError(f"{path} line {number}: expected groups of 'ext offset size name'")
        samples.append({fields[i]: (int(fields[i + 1]), int(fields[i + 2])) for i in range(0, len(fields), 4)})
    if len(samples) != int(head[1]):
        raise FishscaleError(f"{path}: header says {head[1]} samples, found {len(samples)}")
    return samples


class MemberReader:
    """Bytes of one member (default: the image) of any global sample id of a manifest."""

    def __init__(self, manifest: Manifest, ext: str = IMAGE_EXT):
        if manifest.root is None:
            raise FishscaleError("manifest has no root folder (load it with load_manifest)")
        self.paths = [str(p) for p in manifest.shard_paths()]
        shard_of, position = manifest.shard_of_sample()
        self.shard_of = shard_of.astype(np.int64)
        self.offset = np.zeros(len(shard_of), dtype=np.int64)
        self.size = np.zeros(len(shard_of), dtype=np.int64)
        base = manifest.root
        for number, info in enumerate(manifest.shards):
            index = parse_index(base / info.index)
            if len(index) != info.num_samples:
                raise FishscaleError(f"{base / info.index}: {len(index)} samples, manifest says {info.num_samples}")
            rows = np.flatnonzero(self.shard_of == number)
            for row, members in zip(rows, index):
                if ext not in members:
                    raise FishscaleError(f"{base / info.file}: sample {info.keys[position[row]]} has no .{ext} member")
                self.offset[row], self.size[row] = members[ext]
        self._fds: dict[int, int] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self.shard_of)

    def _fd(self, shard: int) -> int:
        if self._pid != os.getpid():        # forked: the parent's handles are not ours
            self._fds, self._pid = {}, os.getpid()
        fd = self._fds.get(shard)
        if fd is None:
            try:
                fd = self._fds[shard] = os.open(self.paths[shard], os.O_RDONLY)
            except OSError as e:
                raise FishscaleError(f"{self.paths[shard]}: cannot open shard: {e}") from None
        return fd

    def read(self, sample_id: int) -> bytes:
        shard, size = int(self.shard_of[sample_id]), int(self.size[sample_id])
        data = os.pread(self._fd(shard), size, int(self.offset[sample_id]))
        if len(data) != size:
            raise FishscaleError(f"{self.paths[shard]}: truncated member at offset {self.offset[sample_id]}")
        return data

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds = {}

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_fds"] = {}                  # descriptors do not travel to spawned workers
        return state

    def __del__(self) -> None:
        if getattr(self, "_pid", None) == os.getpid():
            self.close()

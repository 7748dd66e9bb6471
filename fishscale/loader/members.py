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

import numpy as np

from fishscale.errors import FishscaleError
from fishscale.shards.manifest import Manifest
from fishscale.shards.tarwrite import read_index

IMAGE_EXT = "jpg"
# JPEG markers that stand alone (no length field): TEM, RST0-7, SOI, EOI
_STANDALONE = {0x01, *range(0xD0, 0xDA)}
_SOF = set(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}     # frame headers (DHT, JPG, DAC are not)


def jpeg_header_problem(data: bytes) -> str | None:
    """Why ``data`` is not a well-formed JPEG header (SOI, then marker segments up to SOS with
    a frame header among them), or None. Walks the segment lengths only, a few microseconds.

    DALI's CPU decoder (seen in nvidia-dali 2.4) can crash the whole process, at random, on a
    JPEG whose header its parser rejects, instead of raising; so the DALI source checks every
    member with this first and fails with a clear error naming the shard.
    """
    n = len(data)
    if n < 4 or data[0] != 0xFF or data[1] != 0xD8:
        return "does not start with a JPEG SOI marker"
    pos, frame = 2, False
    while True:
        if pos + 1 >= n or data[pos] != 0xFF:
            return f"no JPEG marker at byte {pos} of {n}"
        while pos + 1 < n and data[pos + 1] == 0xFF:     # fill bytes
            pos += 1
        if pos + 1 >= n:
            return f"no JPEG marker at byte {pos} of {n}"
        marker = data[pos + 1]
        if marker in _STANDALONE:
            pos += 2
            continue
        if marker == 0x00:
            return f"no JPEG marker at byte {pos} of {n}"
        if pos + 3 >= n:
            return f"JPEG segment at byte {pos} of {n} is cut off"
        length = (data[pos + 2] << 8) | data[pos + 3]
        if length < 2 or pos + 2 + length > n:
            return f"JPEG segment at byte {pos} of {n} has a bad length ({length})"
        if marker == 0xDA:                                    # start of scan: the header is complete
            return None if frame else "JPEG has no frame header before its scan"
        frame = frame or marker in _SOF
        pos += 2 + length


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
            index = read_index(base / info.index)
            if len(index) != info.num_samples:
                raise FishscaleError(f"{base / info.index}: {len(index)} samples, manifest says {info.num_samples}")
            rows = np.flatnonzero(self.shard_of == number)
            for row, members in zip(rows, index):
                if ext not in members:
                    raise FishscaleError(f"{base / info.file}: sample {info.keys[position[row]]} has no .{ext} member")
                self.offset[row], self.size[row] = members[ext]
        self._keys, self._position = [info.keys for info in manifest.shards], position
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

    def where(self, sample_id: int) -> str:
        """The shard, sample key and byte offset of a sample's member, for error messages."""
        shard = int(self.shard_of[sample_id])
        key = self._keys[shard][int(self._position[sample_id])]
        return f"{self.paths[shard]}: sample {key} (id {sample_id}, member at byte {self.offset[sample_id]})"

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

"""One writer per output folder: an exclusive lock for `fishscale train` and `fishscale shard`.

    with folder_lock(Path("runs/try1"), "fishscale train"):
        ...                      # a second process on runs/try1 fails at once, naming this one

The lock is ``<folder>/.fishscale.lock``, a small JSON file (command, host, pid, start time)
held with ``flock`` for as long as the process lives. The kernel drops a flock when its process
dies, SIGKILL included, so a lock file whose flock is free was left by a dead process: it is taken
over with a message naming that process. On a file system without flock (Lustre mounted without
``-o flock`` answers ENOSYS) the file's content decides instead: a live pid on this host, or any
pid on another host, holds the folder; a dead pid on this host is stale. What this guarantees
on NFS and Lustre: docs/training.md, "Locks".
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from fishscale.errors import FishscaleError

LOCK_NAME = ".fishscale.lock"
NO_FLOCK = {errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL}
_held: set[int] = set()            # descriptors of the locks this process holds


def _close_in_child() -> None:
    """A forked child (loader worker, shard pool) must not keep the lock alive: orphaned after a
    kill -9 of its parent, it would hold the folder for seconds. Closing its copy of the
    descriptor does not release the parent's flock (only LOCK_UN or the last close does)."""
    for fd in _held:
        try:
            os.close(fd)
        except OSError:
            pass
    _held.clear()


os.register_at_fork(after_in_child=_close_in_child)


class FolderLocked(FishscaleError):
    """Another process holds the folder."""


def describe(holder: dict[str, Any] | None) -> str:
    if not holder:
        return "another process (its lock file is empty: it is starting up)"
    return (f"`{holder.get('command', '?')}` (pid {holder.get('pid', '?')} on {holder.get('host', '?')}, "
            f"started {holder.get('started', '?')})")


def _read(fd: int) -> dict[str, Any] | None:
    try:
        data = json.loads(os.pread(fd, 65536, 0).decode("utf-8") or "null")
    except (ValueError, UnicodeDecodeError):
        return {"command": "unknown (unreadable lock file)"}
    return data if isinstance(data, dict) else None


def _alive(holder: dict[str, Any]) -> bool:
    """Without flock: does the holder still run? Another host's process cannot be checked: yes."""
    if holder.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(holder.get("pid", -1)), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, OverflowError):
        return True
    return True


class FolderLock:
    def __init__(self, folder: Path, command: str, echo: Callable[[str], None]):
        self.folder, self.command, self.echo = Path(folder), command, echo
        self.path = self.folder / LOCK_NAME
        self.fd: int | None = None
        self.created_folder = False

    def acquire(self) -> "FolderLock":
        if self.folder.exists() and not self.folder.is_dir():
            raise FishscaleError(f"{self.folder}: exists and is not a folder")
        if not self.folder.exists():
            try:
                self.folder.mkdir(parents=True)
                self.created_folder = True
            except FileExistsError:
                pass
            except OSError as e:
                raise FishscaleError(f"{self.folder}: cannot create the folder: {e.strerror}") from None
        for _ in range(20):                       # retry only while a releasing holder unlinks the file
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise FishscaleError(f"{self.path}: cannot create the lock file: {e.strerror}") from None
            flocked = True
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read(fd)
                os.close(fd)
                raise FolderLocked(f"{self.folder} is in use by {describe(holder)}; wait for it to finish, "
                                   f"or stop it, or use another folder") from None
            except OSError as e:
                if e.errno not in NO_FLOCK:
                    os.close(fd)
                    raise FishscaleError(f"{self.path}: cannot lock: {e.strerror}") from None
                flocked = False
            try:
                same_file = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same_file = False
            if not same_file:                     # the previous holder removed it as we opened it
                os.close(fd)
                time.sleep(0.01)
                continue
            previous = _read(fd)
            if previous and not flocked and _alive(previous):
                os.close(fd)
                raise FolderLocked(f"{self.folder} is in use by {describe(previous)} (this file system has no "
                                   f"flock; if that process is gone, delete {self.path})")
            if previous:
                self.echo(f"note: {self.folder}: taking over the stale lock of {describe(previous)}: "
                          f"that process is gone")
            info = {"command": self.command, "host": socket.gethostname(), "pid": os.getpid(),
                    "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(info) + "\n").encode("utf-8"), 0)
            os.fsync(fd)
            self.fd = fd
            _held.add(fd)
            return self
        raise FishscaleError(f"{self.path}: the lock file keeps changing; another process is starting and "
                             f"stopping on this folder")

    def release(self) -> None:
        """Remove the lock file (while still holding it), then let go; and a folder we made for nothing."""
        if self.fd is None:
            return
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        _held.discard(self.fd)
        os.close(self.fd)
        self.fd = None
        if self.created_folder:
            try:
                self.folder.rmdir()               # only when still empty: a failed start leaves nothing
            except OSError:
                pass


def _stderr(text: str) -> None:
    print(text, file=sys.stderr)


@contextmanager
def folder_lock(folder: Path, command: str, echo: Callable[[str], None] = _stderr) -> Iterator[FolderLock]:
    """Hold `folder` exclusively for the block (FolderLocked at once if another process has it)."""
    lock = FolderLock(folder, command, echo).acquire()
    try:
        yield lock
    finally:
        lock.release()

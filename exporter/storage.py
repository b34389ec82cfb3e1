"""Files on disk that may be served: confinement to a directory, opening, digests.

Every path a request can name is resolved (symlinks followed) and must land inside its
directory, as a regular file: ``..``, absolute paths, symlinks pointing out, FIFOs and
devices all end as None (a 404 for the routes). The file is opened once, and everything after (size,
ETag, the bytes) comes from that one descriptor, so a file replaced by rename while it is
being served is served whole, old version, with the old validators.

Digests are computed once per version of a file, keyed by (device, inode, size, mtime):
files here are replaced by writing aside and renaming (the seeder and the job files do),
never rewritten in place, so a new version always has a new key.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import stat
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import aiofiles

log = logging.getLogger("exporter.storage")

HASH_BLOCK_BYTES = 1024 * 1024
MAX_NAME_LENGTH = 255  # NAME_MAX on Linux
# Files being written aside before a rename (the seeder's `x.part`, `exporter export`'s
# `.x.part`) are not downloadable: they are incomplete by definition.
TEMPORARY_SUFFIXES = (".part", ".tmp", "~")
OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK  # NONBLOCK: a FIFO
# must not hang the opening thread; it has no effect on reading a regular file


ChunkStream = AsyncGenerator[bytes, None]  # bytes as they go out: a file's, an export's


class FileKey(NamedTuple):
    device: int
    inode: int
    size: int
    mtime_ns: int


class StoredFile(Protocol):
    """A file a download can send: a local file (``OpenFile``) or an object in a bucket
    (job_storage.py). Its size and time are fixed when it is opened."""

    @property
    def name(self) -> str: ...

    @property
    def size(self) -> int: ...

    @property
    def mtime(self) -> float: ...

    def read(self, start: int, length: int, chunk_bytes: int) -> ChunkStream:
        """``length`` bytes from ``start``, in chunks; raises if the file ends early."""
        ...

    async def close(self) -> None: ...


@dataclass
class OpenFile:
    """A regular file opened for reading (aiofiles), with the ``stat`` of that descriptor."""

    path: Path
    handle: Any  # aiofiles' async binary reader
    stat: os.stat_result

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def size(self) -> int:
        return self.stat.st_size

    @property
    def mtime(self) -> float:
        return self.stat.st_mtime

    async def read(self, start: int, length: int, chunk_bytes: int) -> ChunkStream:
        await self.handle.seek(start)
        while length:
            chunk = await self.handle.read(min(chunk_bytes, length))
            if not chunk:  # shrunk since it was opened: abort, never a short 200
                raise OSError(f"{self.path} ended {length} bytes early")
            length -= len(chunk)
            yield chunk

    @property
    def key(self) -> FileKey:
        st = self.stat
        return FileKey(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)

    async def close(self) -> None:
        await self.handle.close()


def is_public_name(name: str) -> bool:
    """A plain file name that may be asked for: no separators, no dot files, no NUL or
    control characters, nothing being written."""
    return (
        0 < len(name) <= MAX_NAME_LENGTH
        and not name.startswith(".")
        and not name.endswith(TEMPORARY_SUFFIXES)
        and "/" not in name
        and "\\" not in name
        and name.isprintable()
    )


async def open_within(root: Path, path: Path) -> OpenFile | None:
    """Open ``path`` if it resolves to a regular file inside ``root``; else None."""
    opened = await asyncio.to_thread(_open_contained, root, path)
    if opened is None:
        return None
    fd, resolved, status = opened
    try:
        handle = await aiofiles.open(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    return OpenFile(resolved, handle, status)


def _open_contained(root: Path, path: Path) -> tuple[int, Path, os.stat_result] | None:
    try:
        base = root.resolve(strict=True)
        resolved = path.resolve(strict=True)
        if not resolved.is_relative_to(base) or resolved == base:
            log.info("refusing %r: it resolves to %r, outside %r", str(path), str(resolved),
                     str(base))
            return None
        # The path is resolved, so O_NOFOLLOW refuses only a symlink swapped in since.
        fd = os.open(resolved, OPEN_FLAGS)
    # ValueError: a NUL byte; RuntimeError: a symlink loop (Path.resolve before 3.13).
    except (OSError, ValueError, RuntimeError) as exc:
        log.debug("refusing %r: %s", str(path), exc)
        return None
    status = os.fstat(fd)
    if not stat.S_ISREG(status.st_mode):
        os.close(fd)
        return None
    return fd, resolved, status


def public_names(directory: Path) -> list[str]:
    """The names in ``directory`` that ``is_public_name`` allows, sorted (blocking)."""
    try:
        with os.scandir(directory) as entries:
            return sorted(entry.name for entry in entries if is_public_name(entry.name))
    except FileNotFoundError:
        return []


class DigestCache:
    """sha256 of each file version, computed once, in a thread, however many ask at once."""

    def __init__(self) -> None:
        self._entries: dict[Path, tuple[FileKey, asyncio.Task[str]]] = {}

    async def sha256(self, file: OpenFile) -> str:
        entry = self._entries.get(file.path)
        if entry is None or entry[0] != file.key:
            # A duplicate descriptor: the request may close its own before hashing ends.
            fd = os.dup(file.handle.fileno())
            task = asyncio.create_task(asyncio.to_thread(_sha256_of, fd))
            task.add_done_callback(lambda done: self._forget_failure(file.path, done))
            entry = (file.key, task)
            self._entries[file.path] = entry
        # Shielded: a request that goes away must not cancel a digest others wait for.
        return await asyncio.shield(entry[1])

    def _forget_failure(self, path: Path, task: asyncio.Task[str]) -> None:
        if not task.cancelled() and task.exception() is not None:
            current = self._entries.get(path)
            if current is not None and current[1] is task:
                del self._entries[path]


def _sha256_of(fd: int) -> str:
    """Hash with pread, which leaves the descriptor's offset to the body reader."""
    digest = hashlib.sha256()
    offset = 0
    try:
        while block := os.pread(fd, HASH_BLOCK_BYTES, offset):
            digest.update(block)
            offset += len(block)
    finally:
        os.close(fd)
    return digest.hexdigest()

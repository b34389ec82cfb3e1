"""The one atomic file writer, for job files and ``exporter export --out``: a complete file at
its final path, or none.

The bytes go to ``.<name>.part`` in the destination directory (hidden, and a name no
download serves: storage.py), hashed and counted as they are written, fsynced, renamed to
``<name>`` and the directory fsynced, so that the rename survives a crash too. A failure or
a cancel at any point, even just after the rename, removes what was written, partial or
renamed: a file at the final path is always a whole export.

Job files are named ``<id>-<attempt>.<ext>`` (``JOB_FILE``), in the job storage
(job_storage.py: ``<data_dir>/jobs``, or a bucket): the
attempt keeps a worker that lost its claim from ever renaming over the file of the run that
took over.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
from collections.abc import Callable
from contextlib import aclosing, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import aiofiles
import aiofiles.os
from sqlalchemy.ext.asyncio import AsyncEngine

from exporter.catalog import Catalog
from exporter.config import Settings
from exporter.errors import StorageUnavailable
from exporter.jobs import Job, JobSpec
from exporter.leases import Counts
from exporter.pipeline import Progress, open_export
from exporter.storage import ChunkStream

if TYPE_CHECKING:  # job_storage.py builds on this module's writer
    from exporter.job_storage import JobStorage

log = logging.getLogger("exporter.job_files")
PARTIAL_SUFFIX = ".part"
# <id>-<attempt>.<ext> once complete; .<id>-<attempt>.<ext>.part while written.
JOB_FILE = re.compile(r"^(?P<partial>\.)?(?P<id>[0-9a-f]{32})-(?P<attempt>\d+)\.")


@dataclass(frozen=True)
class WrittenFile:
    path: Path
    size: int
    sha256: str


def partial_path(final: Path) -> Path:
    """Where ``final`` is written before it is renamed into place."""
    return final.with_name(f".{final.name}{PARTIAL_SUFFIX}")


async def write_file(
    final: Path, chunks: ChunkStream, on_write: Callable[[int], None] | None = None,
) -> WrittenFile:
    """``chunks`` to ``final``, whole or not at all; ``on_write`` hears each chunk's size.
    ``chunks`` is closed either way (an export's generator frees its connection)."""
    partial = partial_path(final)
    digest = hashlib.sha256()
    size = 0
    try:
        async with aclosing(chunks) as source, aiofiles.open(partial, "wb") as out:
            async for chunk in source:
                digest.update(chunk)
                await out.write(chunk)
                size += len(chunk)
                if on_write is not None:
                    on_write(len(chunk))
            await out.flush()
            await asyncio.to_thread(os.fsync, out.fileno())
        await aiofiles.os.replace(partial, final)
        await asyncio.to_thread(_fsync_directory, final.parent)
    except BaseException:  # stopped (even just after the rename) or failed: leave nothing
        await remove_file(partial)
        await remove_file(final)
        raise
    return WrittenFile(final, size, digest.hexdigest())


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


async def remove_file(path: Path) -> None:
    with suppress(FileNotFoundError):
        await aiofiles.os.remove(path)


# --- Job files ------------------------------------------------------------------------------


@dataclass
class JobProgress:
    export: Progress = field(default_factory=Progress)
    size: int = 0  # bytes written to the file (compressed, for gzip)

    def counts(self) -> Counts:
        return Counts(self.export.rows, self.export.total, self.size)

    def wrote(self, size: int) -> None:
        self.size += size


@dataclass(frozen=True)
class JobFile:
    path: str  # name in the jobs directory
    size: int
    sha256: str
    rows: int


async def write_job_file(
    engine: AsyncEngine, catalog: Catalog, spec: JobSpec, settings: Settings,
    storage: JobStorage, stem: str, progress: JobProgress,
) -> JobFile:
    """The job's export (the bytes of the live HTTP export) to ``<stem>.<ext>`` in the job
    storage, whole or not at all."""
    chunks = open_export(
        engine, await spec.query(catalog), spec.fmt, settings, gzip=spec.gzip,
        progress=progress.export, count=True,
    )
    written = await storage.write(f"{stem}.{spec.extension}", chunks, progress.wrote)
    return JobFile(written.path.name, written.size, written.sha256, progress.export.rows)


async def remove_job_file(storage: JobStorage, job: Job) -> None:
    if job.file_path:
        await storage.remove(job.file_path)


async def remove_or_leave(storage: JobStorage, name: str) -> None:
    """Remove a file whose job's record says already what became of it: a storage that
    fails now leaves it to the sweep, which removes every file no record owns."""
    try:
        await storage.remove(name)
    except StorageUnavailable as exc:
        log.warning("could not remove %s now (%s); the sweep will", name, exc.message)

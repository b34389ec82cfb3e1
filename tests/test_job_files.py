"""The one atomic writer of job files and ``exporter export --out``: the whole file at its
final path, or nothing there, whatever stops it."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncGenerator
from pathlib import Path

import pytest

from exporter.job_files import partial_path, write_file

CHUNKS = [b"id,name\r\n", b"1,a\r\n", b"2,b\r\n"]


def listing(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir())


async def chunks_of(parts: list[bytes], then: BaseException | None = None,
                    seen: tuple[Path, list[list[str]]] | None = None
                    ) -> AsyncGenerator[bytes, None]:
    """``parts``; then ``then`` raised. ``seen``: a directory, and what it held after each."""
    for part in parts:
        yield part
        if seen is not None:
            seen[1].append(listing(seen[0]))
    if then is not None:
        raise then


async def test_a_file_is_written_aside_then_renamed_and_its_size_and_sha256_told(
    tmp_path: Path,
) -> None:
    seen: list[list[str]] = []
    sizes: list[int] = []
    final = tmp_path / "orders.csv"
    written = await write_file(final, chunks_of(CHUNKS, seen=(tmp_path, seen)), sizes.append)
    assert final.read_bytes() == b"".join(CHUNKS)
    assert written.path == final and written.size == len(b"".join(CHUNKS))
    assert written.sha256 == hashlib.sha256(b"".join(CHUNKS)).hexdigest()
    assert sizes == [len(chunk) for chunk in CHUNKS]
    assert seen[0] == [".orders.csv.part"], "written aside, in the destination directory"
    assert partial_path(final) == tmp_path / ".orders.csv.part"
    assert listing(tmp_path) == ["orders.csv"]


async def test_an_export_that_fails_midway_leaves_no_file(tmp_path: Path) -> None:
    final = tmp_path / "orders.csv"
    with pytest.raises(RuntimeError, match="the database went away"):
        await write_file(final, chunks_of(CHUNKS, RuntimeError("the database went away")))
    assert list(tmp_path.iterdir()) == []


async def test_a_canceled_export_leaves_no_file(tmp_path: Path) -> None:
    started = asyncio.Event()

    async def endless() -> AsyncGenerator[bytes, None]:
        yield b"id\r\n"
        started.set()
        await asyncio.Event().wait()
        yield b"never"

    writing = asyncio.create_task(write_file(tmp_path / "orders.csv", endless()))
    await started.wait()
    assert listing(tmp_path) == [".orders.csv.part"]
    writing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await writing
    assert list(tmp_path.iterdir()) == []


async def test_the_source_is_closed_even_when_the_file_cannot_be_made(tmp_path: Path) -> None:
    closed: list[bool] = []

    async def source() -> AsyncGenerator[bytes, None]:
        try:
            yield b"id\r\n"
        finally:
            closed.append(True)

    chunks = source()
    await chunks.__anext__()  # started: it holds what an export holds (a connection)
    with pytest.raises(FileNotFoundError):
        await write_file(tmp_path / "no" / "orders.csv", chunks)
    assert closed == [True]

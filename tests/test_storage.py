"""Confinement, opening and digests of the files the service may serve."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path
from unittest import mock

import pytest

from exporter import storage
from exporter.storage import DigestCache, is_public_name, open_within, public_names


@pytest.mark.parametrize(
    "name", ["large-file.bin", "résumé 2024.csv", "王伟.txt", "a..b", "x.partial", "1"]
)
def test_plain_names_are_public(name: str) -> None:
    assert is_public_name(name)


@pytest.mark.parametrize(
    "name",
    ["", ".", "..", ".hidden", ".x.part", "x.part", "x.tmp", "x~", "a/b", "../x", "/etc/passwd",
     "a\\b", "..\\x", "a\x00b", "a\nb", "a\tb", "\x7f", "x" * 256],
)
def test_hidden_partial_and_pathlike_names_are_not(name: str) -> None:
    assert not is_public_name(name)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "served"
    root.mkdir()
    (root / "ok.bin").write_bytes(b"ok")
    (root / "dir").mkdir()
    (root / "dir" / "nested.bin").write_bytes(b"nested")
    (tmp_path / "secret").write_bytes(b"secret")
    (root / "out").symlink_to(tmp_path / "secret")
    (root / "in").symlink_to(root / "ok.bin")
    (root / "dangling").symlink_to(tmp_path / "nothing")
    (root / "loop").symlink_to(root / "loop")
    os.mkfifo(root / "fifo")
    return root


async def read_all(root: Path, relative: str) -> bytes | None:
    file = await open_within(root, root / relative)
    if file is None:
        return None
    try:
        return bytes(await file.handle.read())
    finally:
        await file.close()


async def test_regular_files_inside_open(tree: Path) -> None:
    assert await read_all(tree, "ok.bin") == b"ok"
    assert await read_all(tree, "in") == b"ok"
    assert await read_all(tree, "dir/nested.bin") == b"nested"


@pytest.mark.parametrize(
    "relative",
    ["out", "../secret", "dir/../../secret", "dangling", "loop", "fifo", "dir", ".", "",
     "missing", "/etc/passwd", "ok.bin\x00", "x" * 5000],
)
async def test_anything_else_is_refused_without_blocking(tree: Path, relative: str) -> None:
    assert await asyncio.wait_for(read_all(tree, relative), timeout=5) is None


async def test_a_missing_root_refuses_everything(tmp_path: Path) -> None:
    assert await read_all(tmp_path / "nowhere", "x") is None
    assert public_names(tmp_path / "nowhere") == []


def test_the_listing_skips_what_cannot_be_asked_for(tree: Path) -> None:
    (tree / ".hidden").write_bytes(b"")
    (tree / "x.part").write_bytes(b"")
    assert ".hidden" not in public_names(tree)
    assert "x.part" not in public_names(tree)
    assert "ok.bin" in public_names(tree)


async def test_a_digest_is_computed_once_per_version(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"one")
    cache = DigestCache()
    calls = []
    real = storage._sha256_of

    def counting(fd: int) -> str:
        calls.append(fd)
        return real(fd)

    with mock.patch.object(storage, "_sha256_of", counting):
        files = [await open_within(tmp_path, path) for _ in range(5)]
        digests = await asyncio.gather(*(cache.sha256(f) for f in files if f is not None))
        assert set(digests) == {hashlib.sha256(b"one").hexdigest()}
        assert len(calls) == 1
        for file in files:
            assert file is not None
            await file.close()

        aside = tmp_path / "f.bin.part"
        aside.write_bytes(b"two!")
        aside.replace(path)  # a new version: a new inode
        file = await open_within(tmp_path, path)
        assert file is not None
        assert await cache.sha256(file) == hashlib.sha256(b"two!").hexdigest()
        assert len(calls) == 2
        await file.close()


async def test_a_digest_outlives_the_request_that_asked_for_it(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"x" * 1_000_000)
    cache = DigestCache()
    file = await open_within(tmp_path, path)
    assert file is not None
    waiter = asyncio.ensure_future(cache.sha256(file))
    await asyncio.sleep(0)
    waiter.cancel()
    await file.close()  # the request is gone; the hash reads its own descriptor
    again = await open_within(tmp_path, path)
    assert again is not None
    assert await cache.sha256(again) == hashlib.sha256(b"x" * 1_000_000).hexdigest()
    await again.close()

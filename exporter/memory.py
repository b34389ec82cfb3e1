"""Giving memory back to the system once the exports are over.

A burst of exports (800 clients that hang up after a few KB, 20 at a time) left the
process 270 MB above idle for good: the rendering threads' freed blocks stay in glibc's
heaps, which return memory to the system only from their top. ``malloc_trim(0)`` returns
every free page; the service calls it once no export has run for ``TRIM_AFTER_IDLE_S``,
on a worker thread (it walks the heaps), so that the next burst starts from near idle.
A libc other than glibc has no ``malloc_trim``, and nothing is done there.

Blocks of a MiB and more (a Parquet row group's texts, Arrow's buffers, a job's upload
parts) are given their own mappings, returned the moment they are freed
(``return_big_blocks``): glibc would otherwise raise its mmap threshold each time such a
block is freed, serve the next ones from its heaps, and keep them. An all-users Parquet
export peaked 90 MB above idle and stayed 86 MB above; with the threshold fixed at 1 MiB,
56 and 36 (300k users, `/tmp` measurement of 2026-12-07). Below a MiB, as the 256 KiB
chunks of every export, the heaps serve as before: no system call per chunk.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
from collections.abc import Callable

log = logging.getLogger("exporter.memory")
TRIM_AFTER_IDLE_S = 1.0


def _glibc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim: Callable[[int], int] = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    return trim


M_MMAP_THRESHOLD = -3  # mallopt's parameter (malloc.h); setting it ends its adjustment
BIG_BLOCK_BYTES = 1 << 20


def return_big_blocks(threshold: int = BIG_BLOCK_BYTES) -> bool:
    """Give blocks of ``threshold`` bytes and more their own mappings (glibc only)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        done = bool(libc.mallopt(M_MMAP_THRESHOLD, threshold))
    except (OSError, AttributeError):
        return False
    log.debug("blocks of %d bytes and more are mapped apart: %s", threshold, done)
    return done


class MemoryTrimmer:
    """Calls ``malloc_trim`` when the process has been idle of exports for a moment."""

    def __init__(self, after_idle_s: float = TRIM_AFTER_IDLE_S) -> None:
        self.after_idle_s = after_idle_s
        self._trim = _glibc_trim()
        self._pending: asyncio.TimerHandle | None = None

    def busy(self) -> None:
        """An export started: a trim waiting for idleness waits on."""
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None

    def idle(self) -> None:
        """The last running export ended: trim once it has stayed so."""
        if self._trim is None:
            return
        self.busy()
        loop = asyncio.get_running_loop()
        self._pending = loop.call_later(self.after_idle_s, self._start, loop)

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._pending = None
        loop.run_in_executor(None, self._run)

    def _run(self) -> None:
        assert self._trim is not None
        self._trim(0)
        log.debug("gave freed memory back to the system")

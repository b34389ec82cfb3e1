"""Giving memory back to the system once the exports are over.

A burst of exports (800 clients that hang up after a few KB, 20 at a time) left the
process 270 MB above idle for good: the rendering threads' freed blocks stay in glibc's
heaps, which return memory to the system only from their top. ``malloc_trim(0)`` returns
every free page; the service calls it once no export has run for ``TRIM_AFTER_IDLE_S``,
on a worker thread (it walks the heaps), so that the next burst starts from near idle.
A libc other than glibc has no ``malloc_trim``, and nothing is done there.

Blocks above a MiB (the SQLite batches of a Parquet row group's texts, about 1.3 MB each; a
job's upload parts) are given their own mappings, returned the moment they are freed
(``return_big_blocks``): glibc would otherwise raise its mmap threshold each time such a
block is freed, serve the next ones from its heaps, and keep them. An all-users Parquet
export of 300k users peaked 90 MB above idle and stayed 86 MB above; with the threshold
fixed, 60 and 40 (measured 2026-12-07). The threshold sits just above the 1 MiB blocks that
file downloads read and hash, and the heaps are trimmed only beyond twice it (glibc's own
ratio, which fixing the threshold would otherwise leave at 128 KiB): so those reads and the
256 KiB chunks of every export cost no system call each (strace: 2,000 of each, none).
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


# mallopt's parameters (malloc.h); setting the threshold ends glibc's adjusting of both.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
BIG_BLOCK_BYTES = (1 << 20) + (64 << 10)  # above the 1 MiB reads of files and digests


def return_big_blocks(threshold: int = BIG_BLOCK_BYTES) -> bool:
    """Give blocks of ``threshold`` bytes and more their own mappings (glibc only)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        done = bool(libc.mallopt(M_MMAP_THRESHOLD, threshold))
        done = done and bool(libc.mallopt(M_TRIM_THRESHOLD, 2 * threshold))
    except (OSError, AttributeError):  # not glibc: nothing to set
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

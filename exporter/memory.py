"""Giving memory back to the system once the exports are over.

A burst of exports (800 clients that hang up after a few KB, 20 at a time) left the
process 270 MB above idle for good: the rendering threads' freed blocks stay in glibc's
heaps, which return memory to the system only from their top. ``malloc_trim(0)`` returns
every free page; the service calls it once no export has run for ``TRIM_AFTER_IDLE_S``,
on a worker thread (it walks the heaps), so that the next burst starts from near idle.
A libc other than glibc has no ``malloc_trim``, and nothing is done there.
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

"""Which process a worker is, certainly enough to tell whether it has died.

A worker's owner string goes with every run it claims (leases.py). A worker that starts
where a dead one ran (same host, same boot, same pid namespace: the service restarted, not
its container) can tell from /proc that the owner process is gone and take its runs at once;
anywhere else nothing is certain, and the runs wait for their leases to lapse.
"""

from __future__ import annotations

import os
import secrets
import socket
from pathlib import Path


def worker_owner() -> str:
    """host:pid:start:boot:pidns:random: which process, certainly, on Linux: its start
    time (clock ticks since boot), the kernel's boot id and its pid namespace tell it
    apart from an earlier process with the same pid, and from a process of another
    container that shares the host name. The random part tells workers of one process apart."""
    host, pid = socket.gethostname(), os.getpid()
    return ":".join((host, str(pid), _started(pid) or "", _boot_id(), _pid_namespace(),
                     secrets.token_hex(4)))


def owner_is_gone(owner: str, me: str) -> bool:
    """True only when certain: the owner ran in this boot of this kernel, in this pid
    namespace, and no process runs under its pid any more, or another one does (started at
    another time). An owner that may be in another container, machine or boot is never
    gone: its jobs wait for their lease to lapse."""
    fields, mine = owner.split(":"), me.split(":")
    if owner == me or len(fields) != len(mine) or not fields[1].isdigit():
        return False
    host, pid_text, started, boot, namespace, _ = fields
    if "" in (started, boot, namespace) or (host, boot, namespace) != (
        mine[0], mine[3], mine[4]
    ):
        return False
    pid = int(pid_text)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's: its start time says whether it is
        pass
    now_started = _started(pid)  # None: unreadable, or it just exited: not certain
    return now_started is not None and now_started != started


def _started(pid: int) -> str | None:
    """Field 22 of /proc/<pid>/stat: when it started, in clock ticks since boot."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()  # after the command name, which may hold spaces
    return fields[19] if len(fields) > 19 else None


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip().replace("-", "")[:12]
    except OSError:
        return ""


def _pid_namespace() -> str:
    try:
        return "".join(filter(str.isdigit, os.readlink("/proc/self/ns/pid")))
    except OSError:
        return ""

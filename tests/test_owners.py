"""owners.py on its own: which process a worker is (its owner string), and when the owner of a
run is certainly dead, so that its runs may be taken over at once rather than when their
lease lapses. The take-over itself is tested in ``test_leases.py`` and, with real servers
killed, in ``test_jobs_server.py``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from exporter import owners

# Taking over the runs of a dead worker at once, only when it is certainly dead.

def test_a_worker_is_gone_only_when_certainly_dead() -> None:
    me = owners.worker_owner()
    host, pid, started, boot, namespace, _ = me.split(":")

    def owner(**fields: str) -> str:
        values = {"host": host, "pid": pid, "started": started, "boot": boot,
                  "namespace": namespace, "random": "0badc0de"} | fields
        return ":".join(values.values())

    with subprocess.Popen([sys.executable, "-c", "pass"]) as ended:
        ended.wait()
    parent = str(os.getppid())
    parent_started = Path(f"/proc/{parent}/stat").read_text().rpartition(")")[2].split()[19]

    assert not owners.owner_is_gone(me, me)
    assert not owners.owner_is_gone(owner(), me), "another worker of this very process"
    assert owners.owner_is_gone(owner(started="1"), me), "an earlier process under my pid"
    assert owners.owner_is_gone(owner(pid=str(ended.pid), started="1"), me), "exited"
    assert not owners.owner_is_gone(owner(pid=parent, started=parent_started), me), "alive"
    assert owners.owner_is_gone(owner(pid=parent, started="1"), me), "its pid reused"
    # Never certain: a container that shares the host name (its own pid namespace, where
    # it may well be pid 1 as this one is), another boot, another host, an old owner id.
    assert not owners.owner_is_gone(owner(namespace="4026530000", started="1"), me)
    assert not owners.owner_is_gone(owner(boot="0123456789ab", started="1"), me)
    assert not owners.owner_is_gone(owner(host="elsewhere", started="1"), me)
    assert not owners.owner_is_gone(f"{host}:{ended.pid}:0badc0de", me)

"""The bench's child processes: each in a session of its own with its output in a log file,
ended by process group; a loopback port for one, and waiting until it answers."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO

import httpx

from bench import ROOT
from bench.probes import BenchError

LOOPBACK = "127.0.0.1"


class Processes:
    """Every child of the bench: own session, output to a log file, ended by process group."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.started: list[subprocess.Popen[bytes]] = []

    def start(
        self,
        name: str,
        command: Sequence[str],
        env: dict[str, str] | None = None,
        stdout: int | IO[bytes] | None = None,
    ) -> subprocess.Popen[bytes]:
        log = self.log_dir / f"{name}.log"
        with log.open("ab") as log_file:
            proc = subprocess.Popen(
                list(command),
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log_file if stdout is None else stdout,
                stderr=log_file,
                start_new_session=True,
            )
        self.started.append(proc)
        return proc

    def log_tail(self, name: str, lines: int = 15) -> str:
        log = self.log_dir / f"{name}.log"
        if not log.exists():
            return ""
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()

    def stop_all(self) -> None:
        for proc in reversed(self.started):
            with contextlib.suppress(Exception):
                self.stop(proc)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_http(
    url: str, proc: subprocess.Popen[bytes], timeout: float, what: str, procs: Processes
) -> None:
    """Poll ``url`` until it answers 200; fail early if the process died."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    with httpx.Client(trust_env=False, timeout=5) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise BenchError(
                    f"{what} exited with {proc.returncode}: {procs.log_tail(what)}"
                )
            try:
                response = client.get(url)
                if response.status_code == 200:
                    return
                last = f"{response.status_code} {response.text[:200]}"
            except httpx.HTTPError as exc:
                last = repr(exc)
            time.sleep(0.1)
    raise BenchError(f"{what} not ready at {url} after {timeout:.0f} s: {last}")


def wait_for_answer(url: str, proc: subprocess.Popen[bytes], name: str, procs: Processes) -> None:
    """Until ``url`` answers at all (an S3 server refuses an unsigned request: 403)."""
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(url, timeout=1, trust_env=False)
            return
        except httpx.TransportError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"{name} did not start: {procs.log_tail(name)}"
                                 ) from None
            time.sleep(0.1)


def find_tool(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/local/sbin")

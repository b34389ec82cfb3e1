"""The scripts behind the README's two commands, as a newcomer meets them twice."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def install(extras: str) -> float:
    started = time.monotonic()
    done = subprocess.run(
        ["bash", "-c", f'source scripts/_venv.sh && install_into_venv "{extras}"'],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    return time.monotonic() - started


def test_a_set_up_checkout_starts_without_running_pip_again() -> None:
    install("[dev]")  # whatever this checkout had: now it is installed with the dev extras
    # pip alone takes about 5 s when nothing changed; ./scripts/serve's later starts skip it.
    assert install("[dev]") < 2.0

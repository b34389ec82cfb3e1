"""The OpenAPI document says what the service answers: Schemathesis, run against a real
``exporter serve``, finds no answer the document does not describe.

Schemathesis runs as its command line, ``schemathesis run <server>/openapi.json``, in a
subprocess, rather than through its pytest plugin: the server is a separate process anyway
(``serving``), the command line runs every phase (examples, coverage, fuzzing, and the
stateful phase that follows links such as ``POST /jobs`` -> ``GET /jobs/{id}/download``),
which the plugin does not in one test, and its report is the one a developer would see by
running the same command by hand. Every check is on (``--checks all``); the number of cases
per operation is bounded, and the generation deterministic, so the run takes seconds and
gives the same cases each time.

Nothing here may hang: every request has a timeout (``--request-timeout``), the whole run
has one (``RUN_TIMEOUT``), and the server's event streams send keepalives less often than
a request waits, so that an event stream of a job that never ended would fail its request
rather than hold the run. Jobs here end within a second: the database is small.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import SEED, Database, build_database, scratch_postgres_url, serving

USERS = 300  # enough for every format and filter; small enough that a download is quick
MAX_EXAMPLES = 25  # test cases per operation and phase
# With API keys: what the run adds is the access check (ignored_auth), the same on every
# operation, and the open runs fuzz the rest; fewer cases (it was the slowest test at 25).
KEYED_EXAMPLES = 8
REQUEST_TIMEOUT = 10  # seconds: no answer here takes more than a fraction of one
KEEPALIVE_SECONDS = REQUEST_TIMEOUT * 3  # an idle event stream fails its request, not hangs
RUN_TIMEOUT = 300  # seconds for the whole run: about 15 on two cores
CONFIG = Path(__file__).with_name("schemathesis.toml")


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
async def fuzzed(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Database]:
    """A database of its own: the run starts, cancels and deletes jobs and schedules."""
    data_dir = tmp_path_factory.mktemp(f"openapi-{request.param}")
    url = await scratch_postgres_url("openapi") if request.param == "postgresql" else None
    yield await build_database(request.param, data_dir, USERS, SEED, url=url)


def schemathesis_run(
    base_url: str, workdir: Path, *options: str, examples: int = MAX_EXAMPLES
) -> subprocess.CompletedProcess[str]:
    """``schemathesis run`` against a server, with ``CONFIG``; in ``workdir``, where its
    reports go."""
    command = [
        sys.executable, "-m", "schemathesis.cli", "--config-file", str(CONFIG),
        "run", f"{base_url}/openapi.json",
        "--checks", "all",
        "--max-examples", str(examples),
        "--generation-deterministic",
        "--workers", "1",
        "--request-timeout", str(REQUEST_TIMEOUT),
        "--no-color",
        *options,
    ]
    return subprocess.run(
        command, cwd=workdir, capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False
    )


@pytest.mark.parametrize("api_key", [None, "fuzz-key"], ids=["open", "keys"])
def test_the_openapi_document_describes_every_answer_schemathesis_gets(
    fuzzed: Database, tmp_path: Path, api_key: str | None
) -> None:
    """With API keys, the document has the bearer scheme: Schemathesis sends the key, and
    checks (ignored_auth) that a request without it, or with a wrong one, is a 401."""
    if api_key and fuzzed.backend == "postgresql":
        pytest.skip("the access check is the same whatever the database: SQLite shows it")
    env = fuzzed.env(EXPORTER_EVENTS_KEEPALIVE_SECONDS=str(KEEPALIVE_SECONDS))
    options: list[str] = []
    if api_key:
        env["EXPORTER_API_KEYS"] = api_key
        options = ["--header", f"Authorization: Bearer {api_key}"]
    with serving(env) as server:
        started = time.monotonic()
        run = schemathesis_run(server.url, tmp_path, *options,
                               examples=KEYED_EXAMPLES if api_key else MAX_EXAMPLES)
        took = time.monotonic() - started
    report = run.stdout + run.stderr
    failures = report[report.find("FAILURES"):] if "FAILURES" in report else report
    assert run.returncode == 0, f"schemathesis found problems in {took:.0f} s:\n{failures}"
    # Every phase ran, each on every operation: a run that tested nothing would pass too.
    tested = re.search(r"Tested: (\d+)", report)
    selected = re.search(r"Selected: (\d+)/(\d+)", report)
    assert tested and selected and tested.group(1) == selected.group(2), report
    for phase in ("Examples", "Coverage", "Fuzzing", "Stateful"):
        assert f"✅ {phase}" in report, report

"""Which tests meet which module's mutants (``./scripts/mutation``, docs/mutation.md).

mutmut runs, for each mutant, the tests that executed its function in an unmutated run. For
code every request passes through (the access middleware, the parameters, the rendering)
that is hundreds of tests, most of them about something else: a surviving mutant of auth.py
would wait for every export test. This pytest plugin (``-p tests.mutation`` in
``[tool.mutmut]``) keeps, while a mutant is under test, only the tests of its module's
selection below: the ones written about that module. Outside a mutation run it does nothing.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass

import pytest


@dataclass(frozen=True)
class Module:
    mutants: tuple[str, ...]  # mutmut's names of the mutants that count, as globs
    tests: tuple[str, ...]  # test files, or ``file::words`` for the tests whose names hold them

    def rank(self, nodeid: str) -> int | None:
        """Which of ``tests`` selects the test, or None."""
        for rank, entry in enumerate(self.tests):
            path, _, words = entry.partition("::")
            if nodeid.startswith(f"{path}::") and words in nodeid.partition("::")[2]:
                return rank
        return None


# Not test_parquet.py: mutmut forks each mutant from a process that ran the tests once, and
# pyarrow's thread pools do not survive a fork (its mutants hung or crashed, whatever they
# changed); formats/parquet.py and formats/arrow.py are left out of the run (pyproject).
EXPORTS = ("tests/test_exports.py", "tests/test_foreign.py", "tests/test_tsv.py")
MODULES: dict[str, Module] = {
    # Its own tests alone: every format's framing and COPY handling against Python's csv and
    # json, in a second. With the whole exports after them, mutmut's clean run of the
    # selection took over 8 minutes (their fixtures rebuilt as it interleaves them) and did
    # not finish under it. A narrower selection can only kill fewer: the score is not
    # flattered.
    "formats": Module(("exporter.formats.*",), ("tests/test_formats.py",)),
    "render": Module(("exporter.render.*",),
                     ("tests/test_render.py", *EXPORTS, "tests/test_pg_copy.py")),
    # Its own tests alone, as queries: on 2026-12-07 they killed every mutant the exports'
    # tests did, in minutes where the exports took hours (5 to 40 s a surviving mutant).
    "params": Module(("exporter.params.*",), ("tests/test_params.py",)),
    # Its own tests alone: they check every function against Python's oracle in 3 s, where
    # the whole exports took minutes a mutant, hours for the equivalent ones that survive.
    # A narrower selection can only kill fewer: the score is not flattered.
    "queries": Module(("exporter.queries.*",), ("tests/test_queries.py",)),
    "ranges": Module(("exporter.ranges.*",), ("tests/test_ranges.py", "tests/test_files.py")),
    "preconditions": Module(("exporter.preconditions.*",),
                            ("tests/test_preconditions.py", "tests/test_files.py")),
    "auth": Module(("exporter.auth.*",), ("tests/test_auth.py",)),
    # Its own tests alone, as queries: they check each function's every change to a job on
    # both backends in about 10 s, where test_jobs (its worker, its schedules, its servers)
    # took 20 to 30 s a mutant, hours in all; a narrower selection can only kill fewer.
    "leases": Module(("exporter.leases.*",), ("tests/test_leases.py",)),
    # Only the claiming and firing, and the cron times they fire at (cron.py's, which were
    # schedules.py's): schedules' CRUD and retention decide neither bytes nor access. Their
    # own tests first (the cron times' in milliseconds), then the schedules API's tests and
    # the worker's tests of jobs whose schedule went.
    "schedules": Module((
        *(f"exporter.schedules.{function}__mutmut_*"
          for function in ("x_fire_due", "x__fire", "x__in_flight")),
        *(f"exporter.cron.{function}__mutmut_*" for function in ("x_latest_time", "x_next_time")),
    ), ("tests/test_cron.py", "tests/test_schedules.py", "tests/test_jobs.py::schedule",
        "tests/test_worker.py::schedule")),
}


# mutmut stops a mutant's tests after a CPU time; one that makes a test wait forever (an
# export whose reader died mid-COPY, its consumer waiting) uses none, and would stop the run.
MUTANT_SECONDS = 120  # wall clock; the slowest surviving mutants take about 30 s
TIMEOUT = 36  # the exit code mutmut counts as a timeout: the mutant never finished


def module_of(mutant: str) -> Module | None:
    """The module a mutant (``exporter.ranges.x_parse_range__mutmut_3``) belongs to."""
    from fnmatch import fnmatch

    for module in MODULES.values():
        if any(fnmatch(mutant, glob) for glob in module.mutants):
            return module
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    module = module_of(os.environ.get("MUTANT_UNDER_TEST", ""))
    if module is None:  # not a mutant: the stats run, the clean run, or no mutation run
        return
    signal.signal(signal.SIGALRM, lambda *_: os._exit(TIMEOUT))
    signal.alarm(MUTANT_SECONDS)
    ranks = {item.nodeid: module.rank(item.nodeid) for item in items}
    config.hook.pytest_deselected(items=[item for item in items if ranks[item.nodeid] is None])
    # In the order of ``tests`` (each file's own order kept): the first failure ends the run,
    # so the files that kill a mutant fastest come first.
    items[:] = sorted((item for item in items if ranks[item.nodeid] is not None),
                      key=lambda item: ranks[item.nodeid] or 0)

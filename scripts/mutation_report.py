"""Mutation testing of the modules that decide bytes and access (issue 18.4), and its report.

Run by ``./scripts/mutation [MODULE ...]``: mutmut mutates each module's functions and runs,
for each mutant, the tests of the selection (``[tool.mutmut]`` in pyproject.toml) that
executed that function in a first, unmutated run. It prints each module's score and the
total, and rewrites those modules' rows of docs/mutation.md, keeping the explanation written
for each surviving mutant there (a survivor without one says so, to be explained or killed).
"""

from __future__ import annotations

import ast
import datetime
import fnmatch
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.mutation import MODULES  # noqa: E402  (the module map, and the plugin that uses it)

REPORT = ROOT / "docs" / "mutation.md"
STATS = ROOT / "mutants" / "mutmut-stats.json"
PG_VARIABLE = "EXPORTER_TEST_DATABASE_URL"

# mutmut's exit codes, as its own stats module reads them.
KILLED = {1, 3}
SURVIVED = {0}
TIMEOUT = {36, 24, -24, 152, 255, -9}  # -9: killed after its CPU time limit
NO_TESTS = {5, 33}
EQUIVALENT = "Equivalent"  # how the explanation of an equivalent survivor begins
UNEXPLAINED = "**not explained yet**: explain why it survives, or kill it"
START, END = "<!-- mutation:{}:start -->", "<!-- mutation:{}:end -->"


@dataclass
class Survivor:
    module: str
    location: str  # path:line
    function: str
    mutation: str
    why: str = UNEXPLAINED

    @property
    def key(self) -> tuple[str, str, str]:
        return self.location.partition(":")[0], self.function, self.mutation

    def row(self) -> str:
        return (f"| {self.module} | `{self.location}` | `{self.function}` | {self.mutation} "
                f"| {self.why} |")


@dataclass
class Counts:
    module: str
    date: str
    killed: int = 0
    survived: int = 0
    equivalent: int = 0
    timeout: int = 0
    no_tests: int = 0
    other: int = 0  # mutmut's "suspicious" and "segfault"
    not_checked: int = 0

    @property
    def total(self) -> int:
        return (self.killed + self.survived + self.timeout + self.no_tests + self.other
                + self.not_checked)

    def score(self) -> float:
        """Killed (a timeout is a kill: the mutant never finished) of the mutants checked
        that are not equivalent."""
        counted = self.total - self.not_checked - self.equivalent
        return 100.0 * (self.killed + self.timeout) / counted if counted else 100.0

    def raw_score(self) -> float:
        """Killed of every mutant checked, equivalent ones too."""
        counted = self.total - self.not_checked
        return 100.0 * (self.killed + self.timeout) / counted if counted else 100.0

    def scores(self) -> tuple[str, str]:
        if self.not_checked == self.total:
            return "not run", "not run"
        return f"{self.score():.1f}%", f"{self.raw_score():.1f}%"

    def row(self) -> str:
        score, raw = self.scores()
        return (f"| {self.module} | {self.total} | {self.killed} | {self.timeout} | "
                f"{self.survived - self.equivalent} | {self.equivalent} | {self.no_tests} | "
                f"{self.other} | {self.not_checked} | {score} | {raw} | {self.date} |")


def main(argv: list[str]) -> int:
    mode = argv[0] if argv and argv[0] in ("--resume", "--report") else ""
    modules = argv[bool(mode):] or list(MODULES)
    unknown = [name for name in modules if name not in MODULES]
    if unknown:
        print(f"unknown module {unknown[0]!r}; valid: {', '.join(MODULES)}", file=sys.stderr)
        return 2
    with_postgres = bool(os.environ.get(PG_VARIABLE))
    if not with_postgres:
        print(f"!!! {PG_VARIABLE} is not set: the PostgreSQL tests skip, so PostgreSQL's code "
              "(COPY rendering, row_to_json, FOR UPDATE SKIP LOCKED) survives; the scores "
              "below are printed but docs/mutation.md is left as it is", file=sys.stderr)
    if mode == "--report" and not STATS.parent.exists():
        print("no mutants/ here: run ./scripts/mutation first", file=sys.stderr)
        return 2
    if mode != "--report":
        if mode == "--resume":  # the verdicts that new tests may change, and the missing ones
            names = [name for name, code in mutants(modules) if code not in KILLED | TIMEOUT]
        else:  # which tests run which function: recorded afresh
            STATS.unlink(missing_ok=True)
            names = [glob for name in modules for glob in MODULES[name].mutants]
        # One worker: the tests drop and rebuild one PostgreSQL database, which two would share.
        mutmut = Path(sys.executable).parent / "mutmut"
        if names and subprocess.run([mutmut, "run", "--max-children", "1", *names],
                                    cwd=ROOT, check=False).returncode:
            return 1
    today = datetime.date.today().isoformat()
    old_counts, old_survivors = read_report()
    explained = {survivor.key: survivor.why for survivor in old_survivors}
    counts: dict[str, Counts] = {}
    survivors: list[Survivor] = []
    for name in modules:
        module_counts, module_survivors = results(name, today, explained)
        counts[name] = module_counts
        survivors += module_survivors
    for name, row in old_counts.items():
        counts.setdefault(name, row)
    survivors += [s for s in old_survivors if s.module not in modules]
    print_scores([counts[name] for name in MODULES if name in counts])
    if with_postgres:
        write_report([counts[name] for name in MODULES if name in counts], survivors)
        print(f"wrote {REPORT.relative_to(ROOT)}")
    unexplained = [s for s in survivors if s.why == UNEXPLAINED]
    if unexplained:
        print(f"{len(unexplained)} surviving mutants are not explained yet: see "
              f"{REPORT.relative_to(ROOT)}")
    return 0


def mutants(modules: list[str]) -> list[tuple[str, int | None]]:
    """The mutants of these modules that mutants/ holds, and their verdicts."""
    from mutmut.__main__ import walk_mutatable_files
    from mutmut.mutation.data import SourceFileMutationData

    os.chdir(ROOT)
    globs = [glob for name in modules for glob in MODULES[name].mutants]
    found = []
    for path in walk_mutatable_files():
        data = SourceFileMutationData(path=path)
        data.load()
        found += [(name, code) for name, code in data.exit_code_by_key.items()
                  if any(fnmatch.fnmatch(name, glob) for glob in globs)]
    return found


def results(module: str, date: str, explained: dict[tuple[str, str, str], str]
            ) -> tuple[Counts, list[Survivor]]:
    """A module's counts and survivors, from the files mutmut leaves in mutants/."""
    from mutmut.__main__ import walk_mutatable_files
    from mutmut.mutation.data import SourceFileMutationData
    from mutmut.mutation.diff_apply import get_diff_for_mutant

    counts = Counts(module, date)
    survivors = []
    os.chdir(ROOT)
    for path in walk_mutatable_files():
        data = SourceFileMutationData(path=path)
        data.load()
        for name, code in sorted(data.exit_code_by_key.items(), key=natural_order):
            if not any(fnmatch.fnmatch(name, glob) for glob in MODULES[module].mutants):
                continue
            if code in KILLED:
                counts.killed += 1
            elif code in TIMEOUT:
                counts.timeout += 1
            elif code in NO_TESTS:
                counts.no_tests += 1
            elif code is None:
                counts.not_checked += 1
            elif code in SURVIVED:
                counts.survived += 1
                survivor = describe(module, str(path), name, get_diff_for_mutant(name, path=path))
                survivor.why = explained.get(survivor.key, UNEXPLAINED)
                counts.equivalent += survivor.why.startswith(EQUIVALENT)
                survivors.append(survivor)
            else:
                counts.other += 1
    return counts, survivors


def natural_order(item: tuple[str, object]) -> tuple[str, int]:
    name, _ = item
    stem, _, number = name.rpartition("__mutmut_")
    return stem, int(number) if number.isdigit() else 0


def describe(module: str, path: str, name: str, diff: str) -> Survivor:
    """Where a mutant is and what it changed, from its diff of the function."""
    from mutmut.utils.format_utils import parse_mutant_key

    method, cls = parse_mutant_key(name.rpartition(".")[2].partition("__mutmut_")[0])
    function = f"{cls}.{method}" if cls else method
    removed, added, offset = [], [], None
    old_line = 0
    for line in diff.splitlines():
        if hunk := re.match(r"@@ -(\d+)", line):
            old_line = int(hunk.group(1)) - 1
        elif line.startswith(("---", "+++")):
            continue
        elif line.startswith("-"):
            old_line += 1
            offset = old_line if offset is None else offset
            removed.append(line[1:].strip())
        elif line.startswith("+"):
            added.append(line[1:].strip())
        elif line.startswith(" "):
            old_line += 1
    line_number = source_line(path, function, removed[0] if removed else "", offset or 1)
    mutation = f"{code(' '.join(removed))} → {code(' '.join(added))}"
    return Survivor(module, f"{path}:{line_number}", function, mutation)


def source_line(path: str, function: str, text: str, offset: int) -> int:
    """The line of ``text`` in ``function`` of the source file (the diff counts from the
    function's first line)."""
    source = (ROOT / path).read_text()
    lines = source.splitlines()
    name = function.rpartition(".")[2]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == name:
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            guess = first + offset - 1
            span = range(first, (node.end_lineno or first) + 1)
            if lines[guess - 1].strip() == text:
                return guess
            matches = [n for n in span if lines[n - 1].strip() == text]
            return min(matches, key=lambda n: abs(n - guess)) if matches else guess
    return offset


def code(text: str) -> str:
    text = text.replace("|", "\\|")
    return f"`` {text} ``" if "`" in text else f"`{text}`"


def print_scores(counts: list[Counts]) -> None:
    print(f"{'module':<14}{'mutants':>8}{'killed':>8}{'timeout':>8}{'survived':>9}"
          f"{'equiv.':>7}{'no tests':>9}{'unchecked':>10}{'score':>8}{'w/ equiv.':>10}")
    for c in [*counts, total(counts)]:
        print(f"{c.module:<14}{c.total:>8}{c.killed:>8}{c.timeout:>8}"
              f"{c.survived - c.equivalent:>9}{c.equivalent:>7}{c.no_tests:>9}"
              f"{c.not_checked:>10}{c.scores()[0]:>8}{c.scores()[1]:>10}")


def total(counts: list[Counts]) -> Counts:
    whole = Counts("total", max((c.date for c in counts), default=""))
    for c in counts:
        for name in ("killed", "survived", "equivalent", "timeout", "no_tests", "other",
                     "not_checked"):
            setattr(whole, name, getattr(whole, name) + getattr(c, name))
    return whole


# --- The report -----------------------------------------------------------------------------

COUNTS_HEAD = ("| module | mutants | killed | timeout | survived | equivalent | no tests | other "
               "| not checked | score | with equivalents | run |\n"
               "|---|---|---|---|---|---|---|---|---|---|---|---|")
SURVIVORS_HEAD = ("| module | where | function | mutation | why it survives |\n"
                  "|---|---|---|---|---|")


def read_report() -> tuple[dict[str, Counts], list[Survivor]]:
    if not REPORT.exists():
        return {}, []
    text = REPORT.read_text()
    counts = {}
    for cells in table_rows(section(text, "scores")):
        if cells[0] in MODULES:
            numbers = [int(cell) for cell in cells[1:9]]
            _, killed, timeout, survived, equivalent, no_tests, other, unchecked = numbers
            counts[cells[0]] = Counts(cells[0], cells[-1], killed, survived + equivalent,
                                      equivalent, timeout, no_tests, other, unchecked)
    survivors = [Survivor(cells[0], cells[1].strip("`"), cells[2].strip("`"), cells[3], cells[4])
                 for cells in table_rows(section(text, "survivors")) if cells[0] in MODULES]
    return counts, survivors


def section(text: str, name: str) -> str:
    start, end = text.find(START.format(name)), text.find(END.format(name))
    return text[start:end] if start >= 0 and end >= 0 else ""


def table_rows(text: str) -> list[list[str]]:
    rows = []
    for line in text.splitlines():
        if line.startswith("| ") and not line.startswith("| module"):
            cells = re.split(r"(?<!\\)\|", line.strip()[1:-1])
            rows.append([cell.strip() for cell in cells])
    return rows


def write_report(counts: list[Counts], survivors: list[Survivor]) -> None:
    order = list(MODULES)
    survivors.sort(key=lambda s: (order.index(s.module), s.location.partition(":")[0],
                                  int(s.location.rpartition(":")[2])))
    scores = "\n".join([COUNTS_HEAD, *(c.row() for c in counts),
                        total(counts).row().replace("| total |", "| **total** |")])
    listed = "\n".join([SURVIVORS_HEAD, *(s.row() for s in survivors)])
    text = REPORT.read_text()
    for name, body in (("scores", scores), ("survivors", listed)):
        start, end = START.format(name), END.format(name)
        before, _, rest = text.partition(start)
        _, _, after = rest.partition(end)
        text = f"{before}{start}\n{body}\n{end}{after}"
    REPORT.write_text(text)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

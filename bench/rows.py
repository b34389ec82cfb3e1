"""A row of the bench's table: the cells a measurement fills, and the words it writes them in.

Which rows there are, in which order and with which targets is the report's
(``report.fresh_rows``): the rows quote the measurements' knobs, and the measurements write
their cells with these words, so the two live apart.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Row:
    key: str
    what: str
    target: str
    exporter: str = ""
    anchor: str = ""
    value: str = ""
    result: str = "n/a: not run"


def seconds(value: float) -> str:
    return f"{value:.2f} s"


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


"""A row of the bench's table: the cells a measurement fills, the goal it is judged by, and
the words it writes them in.

Which rows there are, in which order and with which goals is the report's
(``report.fresh_rows``): the rows quote the measurements' knobs, and the measurements write
their cells with these words, so the two live apart. A goal is declared once, there: its
target text is rendered from the limit the measurement is judged by.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from fractions import Fraction

Number = float | Fraction


class Direction(Enum):
    """The side of its limit a measured value passes on; the value is the table's sign."""

    AT_MOST = "<="
    AT_LEAST = ">="
    BELOW = "<"
    WITHIN = "within"  # either side of zero, by at most the limit


@dataclass(frozen=True)
class Goal:
    """What a measured value must be for its row to pass, and how the target column says it.

    ``shown`` is the limit in the target's words: ``{}`` stands for it, with a format spec
    where the number needs one (``"{:.1f}x `sqlite3 -json`"``, ``"{:.0%} of nginx"``). The
    limit is in the unit of the value the measurement judges, and ``scale`` converts it to
    the unit the words use (1000 for seconds written in ms)."""

    direction: Direction
    limit: Number
    shown: str
    subject: str = ""  # what is judged, where a row judges more than one value: "RSS"
    scale: int = 1

    @property
    def text(self) -> str:
        words = self.shown.format(self.limit * self.scale)
        return " ".join(part for part in (self.subject, self.direction.value, words) if part)

    def met(self, value: Number) -> bool:
        if self.direction is Direction.AT_MOST:
            return value <= self.limit
        if self.direction is Direction.AT_LEAST:
            return self.limit <= value
        if self.direction is Direction.BELOW:
            return value < self.limit
        return -self.limit <= value <= self.limit


def at_most(limit: Number, shown: str, subject: str = "", scale: int = 1) -> Goal:
    return Goal(Direction.AT_MOST, limit, shown, subject, scale)


def at_least(limit: Number, shown: str, subject: str = "", scale: int = 1) -> Goal:
    return Goal(Direction.AT_LEAST, limit, shown, subject, scale)


def below(limit: Number, shown: str, subject: str = "", scale: int = 1) -> Goal:
    return Goal(Direction.BELOW, limit, shown, subject, scale)


def within(limit: Number, shown: str, subject: str = "", scale: int = 1) -> Goal:
    return Goal(Direction.WITHIN, limit, shown, subject, scale)


@dataclass
class Row:
    key: str
    what: str
    # What passes: one goal, or several that must all be met; a row judged by no limit has
    # the words that say so instead ("none (reported)") and its result is written as is.
    goal: Goal | tuple[Goal, ...] | str
    exporter: str = ""
    anchor: str = ""
    value: str = ""
    result: str = "n/a: not run"

    @property
    def goals(self) -> tuple[Goal, ...]:
        if isinstance(self.goal, str):
            return ()
        return self.goal if isinstance(self.goal, tuple) else (self.goal,)

    @property
    def target(self) -> str:
        if isinstance(self.goal, str):
            return self.goal
        return "; ".join(goal.text for goal in self.goals)

    def judge(self, *measured: Number) -> str:
        """PASS if every goal is met by its measured value, given in the goals' order."""
        if not self.goals:
            raise ValueError(f"row {self.key!r} has no goal to judge {measured} by")
        return verdict(all(goal.met(value)
                           for goal, value in zip(self.goals, measured, strict=True)))


def seconds(value: float) -> str:
    return f"{value:.2f} s"


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"

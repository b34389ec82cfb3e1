"""Cron expressions and time zones: which are accepted, and when their times come.

Cron expressions are croniter's: five fields (minute hour day-of-month month day-of-week),
or six with seconds as the sixth, last field (``* * * * * */2``: every two seconds), or an
alias such as ``@daily``; they are read in the schedule's IANA time zone. Refused: croniter's
random and hashed fields (``R``, ``H``), whose times differ between replicas and restarts,
and expressions whose time never comes (``0 0 30 2 *``).
"""

from __future__ import annotations

import functools
import re
from datetime import UTC, datetime
from zoneinfo import ZoneInfo, available_timezones

from croniter import croniter

from exporter.errors import echo

CRON_FIELDS = (5, 6)  # croniter's optional sixth field is seconds
# The shape parse_cron wants, for the document: an @alias, or five or six fields.
CRON_SHAPE = r"^\s*(@[A-Za-z]+|\S+(\s+\S+){4,5})\s*$"
CRON_LENGTH = 255  # the column's
REBOOT = "@reboot"  # croniter knows it, but a schedule has no boot to run at
# croniter's random (R) and hashed (H) fields, as its own HashExpander reads a field.
RANDOM_FIELD = re.compile(r"[hr](\(\d+-\d+\))?(/\d+)?", re.IGNORECASE)
# Zone files that are not places: the host's own zone, and placeholders.
NOT_ZONES = frozenset({"localtime", "posixrules", "Factory"})

def parse_cron(expression: str) -> str:
    """The expression, normalised, or a ValueError naming what is wrong."""
    text = " ".join(expression.split())
    shown = repr(echo(expression))
    if text.startswith("@"):
        if text.lower() == REBOOT or not croniter.is_valid(text):
            raise ValueError(
                f"{shown} is not a cron alias this service runs; use @yearly, @monthly, "
                "@weekly, @daily, @hourly or five or six fields"
            )
    elif len(text.split()) not in CRON_FIELDS:
        raise ValueError(
            f"{shown} has {len(text.split())} fields; a cron expression has five "
            "(minute hour day-of-month month day-of-week), or six with seconds last "
            "('* * * * * */2' is every two seconds)"
        )
    elif any(RANDOM_FIELD.fullmatch(field) for field in text.split()):
        raise ValueError(
            f"{shown} has a random (R) or hashed (H) field; a schedule's times must be the "
            "same on every replica and after every restart, so give the minute or hour itself"
        )
    elif not croniter.is_valid(text):
        raise ValueError(f"{shown} is not a valid cron expression")
    try:  # valid, yet some never come: 0 0 30 2 * (February 30th)
        croniter(text, datetime.now(UTC)).get_next(datetime)
    except Exception:  # croniter's own errors, whatever this expression trips on
        raise ValueError(
            f"{shown} never comes (croniter finds no such time within 50 years)"
        ) from None
    return text


@functools.cache
def zone_names() -> frozenset[str]:
    """The IANA names this host knows (it reads the zone directories: once)."""
    return frozenset(available_timezones()) - NOT_ZONES


def parse_zone(name: str) -> ZoneInfo:
    """Only names of the zone database: never a path, nor a file that is not a place."""
    if name not in zone_names():
        raise ValueError(
            f"{echo(name)!r} is not an IANA time zone name such as UTC, Europe/Berlin or "
            "America/New_York"
        )
    return ZoneInfo(name)


def next_time(cron: str, zone: str, after: datetime) -> datetime:
    """The first scheduled time strictly after ``after``, in UTC."""
    start = after.astimezone(ZoneInfo(zone))
    return croniter(cron, start).get_next(datetime).astimezone(UTC)  # type: ignore[no-any-return]


def latest_time(cron: str, zone: str, now: datetime, due: datetime) -> datetime:
    """The latest scheduled time at or before ``now``; ``due`` (a scheduled time that has
    passed) is the answer when no later one has."""
    latest = due
    candidate = next_time(cron, zone, due)
    if candidate <= now:
        start = now.astimezone(ZoneInfo(zone))
        latest = croniter(cron, start).get_prev(datetime).astimezone(UTC)
        if next_time(cron, zone, latest) <= now:  # ``now`` was itself a scheduled time
            latest = next_time(cron, zone, latest)
    return latest

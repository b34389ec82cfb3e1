"""cron.py's times on their own: when a cron expression's next time comes
(``next_time``), and which of the times a schedule missed its job is for (``latest_time``),
read in the schedule's time zone. Which expressions and zones a schedule accepts is tested
through the API, in ``test_jobs.py``; the firing that uses these times in
``test_schedules.py``."""

from __future__ import annotations

from exporter.cron import latest_time, next_time
from tests.conftest import at


def test_the_sixth_cron_field_is_seconds() -> None:
    assert next_time("* * * * * */2", "UTC", at("2026-01-01T12:00:00.500")) == at(
        "2026-01-01T12:00:02"
    )
    assert next_time("* * * * * */2", "UTC", at("2026-01-01T12:00:02")) == at(
        "2026-01-01T12:00:04"
    )


def test_cron_times_are_read_in_the_schedule_time_zone() -> None:
    winter, summer = at("2026-01-10T12:00:00"), at("2026-07-10T12:00:00")
    assert next_time("0 2 * * *", "Europe/Berlin", winter) == at("2026-01-11T01:00:00")
    assert next_time("0 2 * * *", "Europe/Berlin", summer) == at("2026-07-11T00:00:00")


def test_missed_times_collapse_into_the_latest_one() -> None:
    due = at("2026-01-01T12:00:00")
    assert latest_time("* * * * * */2", "UTC", at("2026-01-01T12:00:01.9"), due) == due
    assert latest_time("* * * * * */2", "UTC", at("2026-01-01T12:00:07.3"), due) == at(
        "2026-01-01T12:00:06"
    )
    assert latest_time("* * * * * */2", "UTC", at("2026-01-01T12:00:08"), due) == at(
        "2026-01-01T12:00:08"
    )
    assert latest_time("0 2 * * *", "UTC", at("2026-01-05T09:00:00"), at("2026-01-02T02:00")) \
        == at("2026-01-05T02:00:00")


def test_the_latest_time_counts_now_itself_and_is_read_in_the_schedule_time_zone() -> None:
    due = at("2026-01-01T12:00:00")
    assert latest_time("* * * * * */2", "UTC", at("2026-01-01T12:00:02"), due) == at(
        "2026-01-01T12:00:02"
    )
    # 02:00 in Berlin is 01:00 UTC in winter: five days late, the latest is this morning's
    assert latest_time("0 2 * * *", "Europe/Berlin", at("2026-01-05T09:00:00"),
                       at("2026-01-01T01:00:00")) == at("2026-01-05T01:00:00")

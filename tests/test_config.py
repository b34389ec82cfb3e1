"""config.py on its own: how settings are read from the environment, refused with a message
that names the variable (never a secret), and what the service derives from them (the size
of its database pool)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from exporter.config import FOLLOW_READS_AT_ONCE, describe, load_settings
from tests.conftest import API_KEYS as KEYS

# API keys.

def test_api_keys_come_from_the_environment_separated_by_commas(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("EXPORTER_API_KEYS", ",".join(KEYS))
    assert [key.get_secret_value() for key in load_settings().api_keys] == list(KEYS)
    monkeypatch.setenv("EXPORTER_API_KEYS", "")
    assert load_settings().api_keys == ()


def test_api_keys_stay_out_of_the_settings_repr() -> None:
    settings = load_settings(api_keys=",".join(KEYS))
    assert len(settings.api_keys) == 2
    for shown in (repr(settings), str(settings), repr(settings.api_keys)):
        assert KEYS[0] not in shown and KEYS[1] not in shown


@pytest.mark.parametrize(("value", "problem"), [
    ("key-one-7Hq2xLp9,,key-two-Rv4mWz8c", "key 2 of 3 is empty"),
    ("key-one-7Hq2xLp9,", "key 2 of 2 is empty"),
    (",", "key 1 of 2 is empty"),
    ("key-one-7Hq2xLp9, key-two-Rv4mWz8c", "key 2 of 2 contains whitespace"),
    ("key-one-7Hq2xLp9\n", "key 1 of 1 contains whitespace"),
    ("key\tone-7Hq2xLp9", "key 1 of 1 contains whitespace"),
    ("kéy-one-7Hq2xLp9", "key 1 of 1 contains a character that is not visible ASCII"),
])
def test_a_bad_key_list_is_refused_naming_the_problem_never_the_key(
    monkeypatch: pytest.MonkeyPatch, value: str, problem: str
) -> None:
    monkeypatch.setenv("EXPORTER_API_KEYS", value)
    with pytest.raises(ValidationError) as refused:
        load_settings()
    message = describe(refused.value)
    assert message.startswith(f"EXPORTER_API_KEYS: {problem}")
    for shown in (message, str(refused.value)):
        assert "7Hq2xLp9" not in shown and "Rv4mWz8c" not in shown


def test_other_settings_errors_still_quote_the_value_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("EXPORTER_MAX_CONCURRENT_EXPORTS", "0")
    with pytest.raises(ValidationError) as refused:
        load_settings()
    assert describe(refused.value) == (
        "EXPORTER_MAX_CONCURRENT_EXPORTS: Input should be greater than or equal to 1 (got '0')"
    )


# Other settings.

def test_heartbeats_must_come_at_least_three_times_a_lease(tmp_path: Path) -> None:
    load_settings(data_dir=tmp_path, job_lease_seconds=30, job_progress_seconds=10)
    with pytest.raises(ValueError, match="EXPORTER_JOB_PROGRESS_SECONDS=11.0.*"
                                         "EXPORTER_JOB_LEASE_SECONDS=30.0"):
        load_settings(data_dir=tmp_path, job_lease_seconds=30, job_progress_seconds=11)


@pytest.mark.parametrize(("url", "readers", "per_export"), [
    ("sqlite+aiosqlite:///x.db", 1, 1),  # one connection plans and renders
    ("sqlite+aiosqlite:///x.db", 2, 4),  # two readers, a planner, the snapshot's lock
    ("postgresql+asyncpg://u@h/db", 1, 1),
    ("postgresql+asyncpg://u@h/db", 3, 4),  # three readers and a planner
])
def test_the_pool_holds_every_export_job_and_live_read_at_once(
    tmp_path: Path, url: str, readers: int, per_export: int,
) -> None:
    """No export waits for a connection: exporter serve keeps db_pool_size open and may
    open one set per export slot and per job, one heartbeat per job, and the live streams'
    reads; exporter worker, only its jobs' (and their heartbeats, and the sweep's)."""
    settings = load_settings(data_dir=tmp_path, database_url=url, sqlite_readers=readers,
                             postgres_readers=readers, db_pool_size=5,
                             max_concurrent_exports=8, worker_concurrency=2)
    assert settings.connections_per_export == per_export
    assert FOLLOW_READS_AT_ONCE == 4
    assert settings.pool(api=True) == (5, (8 + 2) * per_export + 2 + 4)
    assert settings.pool(api=False) == (2 * 2 + 1, 2 * per_export)

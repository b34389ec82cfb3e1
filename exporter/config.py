"""Settings from ``EXPORTER_*`` environment variables, validated, each with its help text.

Nothing here runs at import time: ``load_settings()`` is the factory, called by the CLI and
by ``create_app``. The README's settings table is checked against ``Settings.model_fields``
by ``tests/test_docs.py``, so a setting cannot exist without being documented.

API keys are secrets: they are held as ``SecretStr`` (``repr`` shows asterisks), and no
error quotes them back. Validation errors hide every input (``hide_input_in_errors``), and
``describe()`` puts back the inputs of the settings that are not secret.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from exporter.state import STATE_FILE_NAME

FOLLOW_READS_AT_ONCE = 4  # live streams' reads at once per process (changes.py)

SECRET_SETTINGS = frozenset({"api_keys"})
# What an Authorization header carries safely: visible ASCII (RFC 9110 field values are
# bytes; anything else depends on the client's encoding).
KEY_CHARACTERS = frozenset(map(chr, range(0x21, 0x7F)))
# s3://bucket or s3://bucket/prefix: a bucket name as S3 allows it (3-63 characters).
S3_URL = re.compile(r"s3://(?P<bucket>[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9])(/(?P<prefix>[^\x00-\x1f]*))?")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="EXPORTER_", extra="ignore", hide_input_in_errors=True
    )

    data_dir: Path = Field(
        Path("./data"),
        description=(
            "Where the SQLite database, the service's own state on SQLite "
            "(exporter-state.db), files, images and job outputs live."
        ),
    )
    database_url: str | None = Field(
        None,
        description=(
            "SQLAlchemy async URL. Unset: sqlite+aiosqlite:///<data_dir>/exporter.db. "
            "For scale-out: postgresql+asyncpg://user@host/db."
        ),
    )
    tables: Annotated[tuple[str, ...], NoDecode] = Field(
        ("*",),
        description=(
            "The tables and views that can be listed and exported, separated by commas; "
            "shell-style globs (`orders,report_*`). Default: every table and view of the "
            "database (on PostgreSQL, of its current schema)."
        ),
    )
    hidden_columns: Annotated[tuple[str, ...], NoDecode] = Field(
        (),
        description=(
            "Columns never listed, exported, filtered on or resumed on, as `table.column`, "
            "separated by commas; globs in either part (`users.password_hash,*.secret_*`)."
        ),
    )
    follow_keys: Annotated[tuple[str, ...], NoDecode] = Field(
        (),
        description=(
            "Live streams: the columns a table is followed by, where its primary key will not "
            "do (none, or one that does not grow), as `table.column` separated by commas; "
            "several of one table make one key, in the order given "
            "(`events.created_at,events.id`: a time the application sets, then a tie-breaker)."
        ),
    )
    catalog_refresh_seconds: float = Field(
        2.0, ge=0,
        description=(
            "How old the list of tables and columns may get: a table or column added while "
            "the service runs is exported within this many seconds."
        ),
    )
    api_keys: Annotated[tuple[SecretStr, ...], NoDecode] = Field(
        (),
        description=(
            "API keys, separated by commas: every endpoint but /health and /ready then needs "
            "`Authorization: Bearer <key>` with one of them. Unset or empty: no keys, and "
            "`exporter serve` listens on loopback only unless allow_open is true."
        ),
    )
    allow_open: bool = Field(
        False,
        description=(
            "Without API keys, let `exporter serve` listen on an address that is not loopback, "
            "and answer there: for a port published on loopback alone (as docker-compose.yml "
            "does), or behind a proxy that authenticates. No effect when keys are set."
        ),
    )
    max_concurrent_exports: int = Field(
        8, ge=1, description="Streams running at once; the next one gets 503 with Retry-After."
    )
    parquet_row_group_mb: float = Field(
        3, gt=0,
        description=(
            "Parquet: a row group is written once its rows' rendered texts reach this many "
            "MiB (or 65,536 rows); two are in memory at a time. Larger: fewer, better "
            "compressed row groups, more memory."
        ),
    )
    batch_rows: int = Field(
        5000, ge=1,
        description=(
            "Rows per batch: one SQLite statement step; on PostgreSQL with several "
            "readers, a COPY range is 4 batches."
        ),
    )
    chunk_bytes: int = Field(
        256 * 1024, ge=1, description="Encoded bytes gathered before a chunk is sent."
    )
    sqlite_readers: int = Field(
        2, ge=1, le=16,
        description=(
            "SQLite connections that render one export's batches in turn, in one snapshot, "
            "each on a thread of its own: 2 render on two cores (1M CSV rows in 3.0 s "
            "against 5.8 s with 1, measured on 2 cores). More than 1 holds one more "
            "connection each, plus one that plans the batches."
        ),
    )
    postgres_readers: int = Field(
        2, ge=1, le=16,
        description=(
            "PostgreSQL connections that COPY one export's id ranges in turn, in one "
            "snapshot (pg_export_snapshot), so that several server processes render it; "
            "with 1, one COPY of the whole export. More than 1 holds one more connection "
            "each, plus one that plans the ranges."
        ),
    )
    sqlite_nice: int = Field(
        10, ge=0, le=19,
        description=(
            "CPU niceness of the threads that run SQLite (Linux), so that rendering exports "
            "cannot delay the event loop: /health and new requests stay fast; 0 leaves them "
            "at the service's own priority."
        ),
    )
    gzip_level: int = Field(
        6, ge=1, le=9, description="zlib level for gzip bodies (Accept-Encoding: gzip)."
    )
    retry_after_seconds: int = Field(
        5, ge=1, description="Retry-After sent with 503 when every export slot is taken."
    )
    shutdown_grace_seconds: int = Field(
        20, ge=0,
        description=(
            "On SIGTERM, how long `exporter serve` lets running responses finish after it "
            "stops accepting connections; then it cuts what is left (the clients see an "
            "incomplete body, never a complete-looking one) and exits. Under Kubernetes' "
            "default 30 s termination grace, so that the cut is ours and logged."
        ),
    )
    db_pool_size: int = Field(
        5, ge=1,
        description=(
            "Database connections `exporter serve` keeps open; more open while exports, "
            "jobs and live streams run, as many as they can hold at once (Settings.pool), "
            "so that none waits for a connection."
        ),
    )
    file_chunk_bytes: int = Field(
        1024 * 1024,
        ge=1,
        description=(
            "Bytes read from disk per read for files and images: 64 KiB reads cost several "
            "times the CPU of 512 KiB to 1 MiB ones; memory per download is about two chunks."
        ),
    )
    max_ranges: int = Field(
        16,
        ge=1,
        description=(
            "Most ranges one Range header may ask for; beyond it the Range header is ignored "
            "and the whole file is sent with 200 (RFC 9110 14.2 allows ignoring it)."
        ),
    )

    run_worker: bool = Field(
        True,
        description=(
            "Run the export-job worker inside the service (the embedded case). false: only "
            "`exporter worker` processes run jobs and schedules."
        ),
    )
    worker_concurrency: int = Field(2, ge=1, description="Jobs one worker process runs at once.")
    worker_poll_seconds: float = Field(
        1.0, gt=0,
        description=(
            "How often a worker looks for queued jobs and due schedules (a job posted to the "
            "same process starts at once; a schedule fires on its second)."
        ),
    )
    job_lease_seconds: float = Field(
        30.0, gt=0,
        description=(
            "How long a running job's claim lasts without a heartbeat; a job whose worker died "
            "is taken over by another worker once it lapses (or at once by a restart on the "
            "same host)."
        ),
    )
    job_progress_seconds: float = Field(
        0.25, gt=0,
        description=(
            "How often a running job writes its progress and heartbeat and checks for a "
            "cancel request."
        ),
    )
    job_max_attempts: int = Field(
        3, ge=1,
        description="Runs a job gets when its worker keeps dying under it; then it fails.",
    )
    job_ttl_seconds: int = Field(
        7 * 24 * 3600, ge=1,
        description=(
            "How long a one-off job's file stays downloadable after it succeeds; then the job "
            "is expired (410) and its file removed. Scheduled jobs are kept by keep_last."
        ),
    )
    job_sweep_seconds: float = Field(
        60.0, gt=0,
        description=(
            "How often a worker removes expired job files, files left over from dead runs, "
            "and scheduled jobs beyond keep_last."
        ),
    )
    job_storage: str = Field(
        "",
        description=(
            "Where job files live: empty for the jobs directory under EXPORTER_DATA_DIR, or "
            "s3://bucket/prefix for an S3-compatible bucket that every replica and worker "
            "shares (endpoint, region and credentials from the usual AWS variables and files: "
            "AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID, AWS_PROFILE...; needs "
            "`pip install 'exporter[s3]'`)."
        ),
    )
    s3_addressing_style: Literal["auto", "path", "virtual"] = Field(
        "auto",
        description=(
            "How bucket URLs are built: path (http://host/bucket/key, what MinIO and most "
            "self-hosted stores want), virtual (http://bucket.host/key) or auto (botocore's "
            "choice: virtual on AWS)."
        ),
    )
    s3_part_mb: int = Field(
        8, ge=5, le=1024,
        description=(
            "Size of each part of a job file's multipart upload, in MiB (S3's minimum is 5); "
            "a worker holds about two parts per running job in memory."
        ),
    )
    job_download_redirect: bool = Field(
        False,
        description=(
            "With job files in a bucket: answer GET /jobs/{id}/download with a 307 redirect "
            "to a presigned URL of the object, so that its bytes leave the bucket directly "
            "(docs/jobs.md says what that trades away)."
        ),
    )
    job_download_url_seconds: int = Field(
        300, ge=1, le=7 * 24 * 3600,
        description="How long a presigned download URL is valid.",
    )
    events_poll_seconds: float = Field(
        0.5, gt=0, description="How often a /jobs/{id}/events stream reads the job's progress."
    )
    events_keepalive_seconds: float = Field(
        15.0, gt=0,
        description="Seconds between keepalive comments on an event stream.",
    )
    max_followers: int = Field(
        1000, ge=1,
        description=(
            "Live streams (follow=true, GET /streams/{table}) open at once per process; the "
            "next gets 503 with Retry-After. Apart from the export slots: a live stream "
            "takes none."
        ),
    )
    follow_max_seconds: float = Field(
        3600.0, gt=0,
        description=(
            "How long one live stream lasts; it then ends cleanly, and the client resumes "
            "with after= (NDJSON) or Last-Event-ID (an EventSource does so by itself)."
        ),
    )
    follow_heartbeat_seconds: float = Field(
        15.0, gt=0,
        description=(
            "Seconds of quiet after which a live stream sends a keepalive (a space on "
            "NDJSON, which JSON allows before a value; a comment on Server-Sent Events), so "
            "that proxies do not close it."
        ),
    )
    follow_poll_seconds: float = Field(
        0.5, gt=0,
        description=(
            "How often new rows are looked for where nothing announces them: PostgreSQL "
            "tables without `exporter follow install` (one max(key) query per table, "
            "whatever the followers); SQLite's file is looked at every 50 ms instead."
        ),
    )
    follow_send_seconds: float = Field(
        30.0, gt=0,
        description=(
            "A live stream whose client has not taken a write for this long is cut: a slow "
            "follower is disconnected, never buffered for."
        ),
    )

    @field_validator("database_url")
    @classmethod
    def _async_driver(cls, url: str | None) -> str | None:
        if url is None or url == "":
            return None
        allowed = ("sqlite+aiosqlite://", "postgresql+asyncpg://")
        if not url.startswith(allowed):
            raise ValueError(
                f"EXPORTER_DATABASE_URL={url!r} is not an async URL; "
                f"it must start with one of {', '.join(allowed)}"
            )
        return url

    @field_validator("tables", "hidden_columns", "follow_keys", mode="before")
    @classmethod
    def _split_names(cls, value: object) -> object:
        if isinstance(value, str):  # from the environment: one string, comma-separated
            return tuple(item.strip() for item in value.split(",") if item.strip())
        return value

    @field_validator("hidden_columns", "follow_keys")
    @classmethod
    def _table_dot_column(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            if "." not in item.strip("."):
                raise ValueError(
                    f"{item!r} is not table.column; name each column with its table, "
                    "e.g. users.password_hash (or *.password_hash for every table)"
                )
        return value

    def follow_key(self, table: str) -> tuple[str, ...]:
        """The columns ``follow_keys`` names for ``table``, in order; () for none."""
        return tuple(item.split(".", 1)[1] for item in self.follow_keys
                     if item.split(".", 1)[0] == table)

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):  # from the environment: one string, comma-separated
            value = value.split(",") if value else []
        if not isinstance(value, list | tuple):
            return value
        keys = [k.get_secret_value() if isinstance(k, SecretStr) else k for k in value]
        for number, key in enumerate(keys, 1):
            problem = _key_problem(key) if isinstance(key, str) else None
            if problem:  # never the key itself: the message goes to logs and terminals
                raise ValueError(f"key {number} of {len(keys)} {problem}")
        return keys

    @field_validator("job_storage")
    @classmethod
    def _storage_url(cls, value: str) -> str:
        if value and not S3_URL.fullmatch(value):
            raise ValueError(
                f"EXPORTER_JOB_STORAGE={value!r} is not a storage this service knows: leave it "
                "empty for the jobs directory, or write s3://bucket or s3://bucket/prefix"
            )
        return value

    @model_validator(mode="after")
    def _heartbeats_fit_in_a_lease(self) -> Settings:
        # A worker gives a job up after half a lease without a heartbeat: at least two
        # heartbeats must fit in that half, or one slow beat would lose the job.
        if self.job_progress_seconds > self.job_lease_seconds / 3:
            raise ValueError(
                f"EXPORTER_JOB_PROGRESS_SECONDS={self.job_progress_seconds} is more than a "
                f"third of EXPORTER_JOB_LEASE_SECONDS={self.job_lease_seconds}; heartbeats "
                "must come at least three times a lease"
            )
        return self

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'exporter.db').resolve()}"

    @property
    def state_database_path(self) -> Path:
        """SQLite's home for the service's own state, attached to every connection as the
        schema ``exporter`` (PostgreSQL keeps it in that schema of its own database)."""
        return (self.data_dir / STATE_FILE_NAME).resolve()

    @property
    def connections_per_export(self) -> int:
        """Most connections one export holds: its readers, its planner, and on SQLite for a
        moment the lock that lines their snapshots up."""
        if self.readers == 1:
            return 1
        return self.readers + (2 if self.resolved_database_url.startswith("sqlite") else 1)

    def pool(self, *, api: bool) -> tuple[int, int]:
        """This process's database pool: the connections kept open, and how many more may
        open under load, sized so that no export waits for one. An export or a running job
        holds ``connections_per_export``; a job's heartbeat takes one more for a moment;
        live streams read on at most ``FOLLOW_READS_AT_ONCE``. ``api``: ``exporter serve``
        (with its worker, unless run_worker is off); else ``exporter worker`` alone."""
        jobs = self.worker_concurrency
        if api:
            return self.db_pool_size, ((self.max_concurrent_exports + jobs)
                                       * self.connections_per_export + jobs
                                       + FOLLOW_READS_AT_ONCE)
        return 2 * jobs + 1, jobs * self.connections_per_export

    @property
    def readers(self) -> int:
        """Connections that render one export, for this database's backend."""
        if self.resolved_database_url.startswith("sqlite"):
            return self.sqlite_readers
        return self.postgres_readers

    @property
    def files_dir(self) -> Path:
        return self.data_dir / "files"

    @property
    def images_dir(self) -> Path:
        return self.data_dir / "images"

    @property
    def jobs_dir(self) -> Path:
        return self.data_dir / "jobs"


def _key_problem(key: str) -> str | None:
    if not key:
        return "is empty (a comma at either end, or two in a row); separate keys with one comma"
    if any(character.isspace() for character in key):
        return (
            "contains whitespace; separate keys with commas alone, and keep spaces, tabs and "
            "newlines out of keys"
        )
    if not set(key) <= KEY_CHARACTERS:
        return (
            "contains a character that is not visible ASCII, which an Authorization header "
            "cannot carry reliably; use letters, digits and punctuation (secrets.token_urlsafe)"
        )
    return None


def make_directory(directory: Path, what: str,
                   error: type[RuntimeError] = RuntimeError) -> None:
    """Make a directory under the data directory, or raise ``error`` saying what to fix."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise error(
            f"{what} {directory} cannot be made ({exc}); EXPORTER_DATA_DIR must be a "
            "writable directory"
        ) from exc


def load_settings(**overrides: object) -> Settings:
    """Build settings from the environment, with explicit overrides winning."""
    return Settings(**overrides)  # type: ignore[arg-type]


def describe(error: ValidationError) -> str:
    """A settings error for a terminal: each problem naming its variable, and quoting the value
    given unless the setting is secret (or the message already names it)."""
    problems = []
    for detail in error.errors():
        name = str(detail["loc"][0]) if detail["loc"] else ""
        message = detail["msg"].removeprefix("Value error, ")
        if name and name not in SECRET_SETTINGS and detail["type"] != "value_error":
            message += f" (got {detail['input']!r})"
        problems.append(f"EXPORTER_{name.upper()}: {message}" if name else message)
    return "; ".join(problems)

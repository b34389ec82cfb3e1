"""Export jobs: what they export, their records, and every change of state.

    POST /jobs ─> queued ──claim──> running ──> succeeded ──(job_ttl_seconds)──> expired
                    │                 │   └───> failed
                    └────cancel────> canceled <── cancel_requested, honoured by the worker

Every change is one conditional statement, so it is atomic on both backends whichever
process makes it. How a worker claims, keeps and ends a run is leases.py's.

``revision`` grows with every change an event stream shows; it is the SSE event id.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema
from sqlalchemy import Row, delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from exporter.catalog import Catalog
from exporter.errors import Conflict, InvalidParameter, NotFound
from exporter.formats import FORMATS, Format
from exporter.params import parse_query
from exporter.queries import ExportQuery
from exporter.state import export_jobs, utc_values

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELED, EXPIRED = (
    "queued", "running", "succeeded", "failed", "canceled", "expired",
)
STATUSES = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELED, EXPIRED)
FINISHED = (SUCCEEDED, FAILED, CANCELED, EXPIRED)
GZIP_MEDIA_TYPE = "application/gzip"
ERROR_LIMIT = 2000  # characters of an exception kept as a failed job's error

# Documented shapes of what ``JobRequest.spec`` checks itself, for its messages' sake: a
# field name, or an item of a filter's list, is one name or value, so it holds no comma.
NO_COMMA: dict[str, Any] = {"type": "string", "pattern": "^[^,]+$"}
FILTER_VALUE: dict[str, Any] = {"anyOf": [
    {"type": "string"}, {"type": "number"}, {"type": "boolean"},
    {"type": "array", "items": NO_COMMA},
]}


class JobRequest(BaseModel):
    """The body of ``POST /jobs`` (and a schedule's ``job``)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"table": "users", "format": "csv"},
        {"table": "users", "format": "ndjson", "fields": ["id", "email"],
         "filters": {"plan": ["pro", "enterprise"], "id__gt": 100}, "compression": "gzip"},
    ]})

    table: Annotated[str, Field(
        min_length=1, description="The table or view to export (GET /tables lists them).",
    )] = "users"
    format: Literal["csv", "tsv", "ndjson", "json", "parquet"]
    fields: Annotated[
        list[Annotated[str, WithJsonSchema(NO_COMMA)]] | None,
        Field(min_length=1, description="Columns, in order; omitted: every column."),
    ] = None
    # Checked in ``spec`` rather than typed, so that an error names ``filters.<name>``.
    filters: Annotated[
        dict[str, Annotated[Any, WithJsonSchema(FILTER_VALUE)]],
        Field(description=(
            "The export's query parameters but fields (col, col__gt, col__isnull, after, "
            "limit...), each with a string, a number, true/false, or a list of strings for "
            "a comma list."
        )),
    ] = {}
    compression: Literal["none", "gzip"] = "none"

    def spec(self) -> JobSpec:
        """Validated as the live export validates its query string: same names, same
        values, same messages, with the JSON path of the bad value."""
        for item in self.fields or ():
            if "," in item:  # joined with commas for the query, it would be several fields
                raise InvalidParameter("fields", self.fields, f"{item!r} holds a comma; "
                                       "give each field as its own list item")
        if self.compression == "gzip" and not FORMATS[self.format].compressible:
            raise InvalidParameter("compression", self.compression,
                                   f"a {self.format} file is compressed inside; use none")
        filters: dict[str, str] = {}
        for name, value in self.filters.items():
            if name == "fields":
                raise InvalidParameter(
                    "filters.fields", value,
                    "fields is not a filter; give it as the top-level fields list",
                )
            filters[name] = _query_value(name, value)
        return JobSpec(self.format, tuple(self.fields) if self.fields else None, filters,
                       self.compression, self.table)


def _query_value(name: str, value: Any) -> str:
    """A JSON filter value as the query string would give it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    if isinstance(value, list) and all(
        isinstance(item, str) and "," not in item for item in value
    ):
        return ",".join(value)
    raise InvalidParameter(
        f"filters.{name}", value,
        "expected a string, a whole number, true or false, or a list of strings "
        "without commas",
    )


@dataclass(frozen=True)
class JobSpec:
    """What a job exports: the live export's parameters, as query-string values."""

    format: str
    fields: tuple[str, ...] | None
    filters: dict[str, str]
    compression: str
    table: str = "users"

    def pairs(self) -> list[tuple[str, str]]:
        pairs = list(self.filters.items())
        if self.fields is not None:
            pairs.append(("fields", ",".join(self.fields)))
        return pairs

    async def query(self, catalog: Catalog) -> ExportQuery:
        """The export, validated against its table as the live export's query string is:
        same names, same values, same messages, with the JSON path of the bad value."""
        try:
            table = await catalog.get(self.table)
        except NotFound as exc:
            raise InvalidParameter("table", self.table, "no exportable table or view by "
                                   "that name", exc.details.get("valid")) from None
        try:
            return parse_query(table, self.pairs())
        except InvalidParameter as exc:
            raise InvalidParameter.combined([self._in_body(e) for e in exc.each()]) from None

    def _in_body(self, error: InvalidParameter) -> InvalidParameter:
        """A query-string error as the body's field: ``fields`` (a list), ``filters.<name>``."""
        if error.parameter == "fields":
            return InvalidParameter("fields", list(self.fields or ()), error.reason, error.valid)
        return error.within("filters")

    @property
    def fmt(self) -> type[Format]:
        return FORMATS[self.format]

    @property
    def gzip(self) -> bool:
        return self.compression == "gzip"

    @property
    def extension(self) -> str:
        return self.fmt.extension + (".gz" if self.gzip else "")

    @property
    def media_type(self) -> str:
        return GZIP_MEDIA_TYPE if self.gzip else self.fmt.media_type


@dataclass(frozen=True)
class Job:
    """One ``export_jobs`` row, timestamps in UTC."""

    id: str
    table_name: str
    format: str
    fields: list[str] | None
    filters: dict[str, str]
    compression: str
    status: str
    rows_written: int
    total_rows: int | None
    bytes_written: int
    revision: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    expires_at: datetime | None
    error: str | None
    file_name: str | None
    file_path: str | None
    file_size: int | None
    row_count: int | None
    sha256: str | None
    schedule_id: str | None
    scheduled_for: datetime | None
    lease_owner: str | None
    lease_expires_at: datetime | None
    heartbeat_at: datetime | None
    attempts: int
    cancel_requested: bool
    retry_at: datetime | None

    @classmethod
    def from_row(cls, row: Row[Any]) -> Job:
        return cls(**utc_values(row))

    @property
    def spec(self) -> JobSpec:
        fields_ = tuple(self.fields) if self.fields else None
        return JobSpec(self.format, fields_, dict(self.filters), self.compression,
                       self.table_name)

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    def expired_at(self, now: datetime) -> bool:
        return self.status == EXPIRED or (
            self.status == SUCCEEDED and self.expires_at is not None and self.expires_at <= now
        )

    @property
    def percent(self) -> float | None:
        if self.status == SUCCEEDED:
            return 100.0
        if self.total_rows is None:
            return None
        if self.total_rows == 0:
            return 100.0 if self.finished else 0.0
        return round(min(100.0, 100.0 * self.rows_written / self.total_rows), 1)


def new_id() -> str:
    """128 random bits, hex: unguessable, and safe in URLs and file names."""
    return secrets.token_hex(16)


def download_name(job_id: str, spec: JobSpec) -> str:
    return f"{spec.table}-{job_id}.{spec.extension}"


def job_values(
    spec: JobSpec, now: datetime, schedule_id: str | None = None,
    scheduled_for: datetime | None = None,
) -> dict[str, Any]:
    """A new queued job's row."""
    return {
        "id": new_id(), "table_name": spec.table, "format": spec.format,
        "fields": list(spec.fields) if spec.fields is not None else None,
        "filters": spec.filters, "compression": spec.compression, "status": QUEUED,
        "rows_written": 0, "bytes_written": 0, "revision": 1, "attempts": 0,
        "cancel_requested": False, "created_at": now, "schedule_id": schedule_id,
        "scheduled_for": scheduled_for,
    }


async def insert_job(conn: AsyncConnection, values: dict[str, Any]) -> Job:
    await conn.execute(insert(export_jobs).values(**values))
    row = (await conn.execute(
        select(export_jobs).where(export_jobs.c.id == values["id"])
    )).one()
    return Job.from_row(row)


async def create_job(engine: AsyncEngine, spec: JobSpec, now: datetime) -> Job:
    async with engine.begin() as conn:
        return await insert_job(conn, job_values(spec, now))


async def get_job(engine: AsyncEngine, job_id: str) -> Job | None:
    async with engine.connect() as conn:
        row = (await conn.execute(
            select(export_jobs).where(export_jobs.c.id == job_id)
        )).first()
    return None if row is None else Job.from_row(row)


async def find_job(engine: AsyncEngine, job_id: str) -> Job:
    job = await get_job(engine, job_id)
    if job is None:
        raise NotFound(f"no job with id {job_id!r}; GET /jobs lists the jobs there are")
    return job


async def list_jobs(
    engine: AsyncEngine, limit: int, status: str | None = None, schedule_id: str | None = None
) -> list[Job]:
    """Newest first."""
    statement = select(export_jobs)
    if status is not None:
        statement = statement.where(export_jobs.c.status == status)
    if schedule_id is not None:
        statement = statement.where(export_jobs.c.schedule_id == schedule_id)
    statement = statement.order_by(
        export_jobs.c.created_at.desc(), export_jobs.c.id.desc()
    ).limit(limit)
    async with engine.connect() as conn:
        return [Job.from_row(row) for row in await conn.execute(statement)]


async def cancel_job(engine: AsyncEngine, job_id: str, now: datetime) -> Job:
    """A queued job is canceled at once; a running one is flagged, and its worker stops it
    at its next heartbeat. Canceling a canceled job is a no-op; a finished one, a 409."""
    where = export_jobs.c.id == job_id
    async with engine.begin() as conn:
        queued = await conn.execute(
            update(export_jobs).where(where, export_jobs.c.status == QUEUED).values(
                status=CANCELED, finished_at=now, cancel_requested=True,
                revision=export_jobs.c.revision + 1,
            )
        )
        if not queued.rowcount:
            await conn.execute(
                update(export_jobs).where(
                    where, export_jobs.c.status == RUNNING,
                    export_jobs.c.cancel_requested.is_(False),
                ).values(cancel_requested=True)
            )
    job = await find_job(engine, job_id)
    if job.status in (SUCCEEDED, FAILED, EXPIRED):
        raise Conflict(
            f"job {job_id} has already {job.status}: there is nothing to cancel"
            + ("; DELETE /jobs/{id} removes it and its file" if job.status == SUCCEEDED else ""),
            status=job.status,
        )
    return job


async def delete_job(engine: AsyncEngine, job_id: str) -> Job:
    """Remove the record; the caller removes the file. A worker running it notices at its
    next heartbeat that its claim is gone, stops, and removes its partial file."""
    async with engine.begin() as conn:
        row = (await conn.execute(
            delete(export_jobs).where(export_jobs.c.id == job_id).returning(*export_jobs.c)
        )).first()
    if row is None:
        raise NotFound(f"no job with id {job_id!r}")
    return Job.from_row(row)


async def expire_jobs(engine: AsyncEngine, now: datetime) -> list[Job]:
    """Succeeded jobs past their expiry become ``expired``; returns them, for their files."""
    statement = (
        update(export_jobs)
        .where(
            export_jobs.c.status == SUCCEEDED, export_jobs.c.expires_at.is_not(None),
            export_jobs.c.expires_at <= now,
        )
        .values(status=EXPIRED, revision=export_jobs.c.revision + 1)
        .returning(*export_jobs.c)
    )
    async with engine.begin() as conn:
        return [Job.from_row(row) for row in await conn.execute(statement)]


async def jobs_by_id(engine: AsyncEngine, ids: Sequence[str]) -> dict[str, Job]:
    if not ids:
        return {}
    async with engine.connect() as conn:
        rows = await conn.execute(select(export_jobs).where(export_jobs.c.id.in_(list(ids))))
        return {row.id: Job.from_row(row) for row in rows}


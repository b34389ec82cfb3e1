"""``/jobs``: start export jobs, follow them (JSON or Server-Sent Events), download, cancel.

The event stream reads the job from the database every ``events_poll_seconds``, so any
replica can serve it, whichever worker runs the job. Each event's id is the job's
``revision``: a client that reconnects with ``Last-Event-ID`` gets only what changed since;
one that already has the final event gets 204, which tells an EventSource to stop.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import RedirectResponse
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncEngine
from sse_starlette import EventSourceResponse, ServerSentEvent

from exporter import jobs
from exporter.errors import (
    DATABASE_UNREACHABLE,
    Conflict,
    Gone,
    InvalidParameter,
    NotFound,
)
from exporter.files import strong_etag
from exporter.job_files import remove_or_leave
from exporter.jobs import Job, JobRequest
from exporter.openapi import (
    BAD_BODY,
    BAD_PARAMETER,
    DATABASE_BUSY,
    JOB_FILE_MEDIA_TYPES,
    RETRY_AFTER,
    Responses,
    error,
    file_responses,
    header,
    not_found,
)
from exporter.routes.deps import (
    CatalogDep,
    DigestsDep,
    EngineDep,
    FileSenderDep,
    JobStorageDep,
    SettingsDep,
    StrictJsonBody,
    WorkerDep,
)
from exporter.routes.files import FILE_CACHE_CONTROL
from exporter.storage import DigestCache, OpenFile, StoredFile
from exporter.streaming import EVENT_STREAM_HEADERS

log = logging.getLogger("exporter.routes.jobs")
router = APIRouter(tags=["jobs"])

RETRY_MILLISECONDS = 2000  # how long an EventSource waits before it reconnects
MAX_LIST = 1000
NO_JOB = not_found("No such job.")
DOWNLOAD_RESPONSES: Responses = file_responses(
    JOB_FILE_MEDIA_TYPES, "The job's file: its format's media type, or application/gzip."
) | {
    307: {"description": "With EXPORTER_JOB_DOWNLOAD_REDIRECT and job files in a bucket: "
                         "a presigned URL of the object, in Location.",
          "headers": {"Location": header("The presigned URL.")}},
    404: error("No such job, or its file is missing from the job storage."),
    409: error("The job has not succeeded (yet): `status` says what it is."),
    410: error("The job's file expired and was removed."),
} | {503: error(
    "The database could not be reached or was busy, or the bucket that holds job files "
    "could not be reached or refused the service; ask again after Retry-After. GET /ready "
    "says which.",
    RETRY_AFTER,
)}
EVENTS_RESPONSES: Responses = NO_JOB | DATABASE_BUSY | {
    200: {"content": {"text/event-stream": {}},
          "description": "Progress events, then succeeded, failed or canceled."},
    204: {"description": "Last-Event-ID is the job's final event: nothing more to say."},
}


class JobFileOut(BaseModel):
    name: str
    size: int
    row_count: int
    sha256: str
    url: str


class JobOut(BaseModel):
    id: str
    status: str
    table: str
    format: str
    fields: list[str] | None
    filters: dict[str, str]
    compression: str
    rows_written: int
    total_rows: int | None
    bytes_written: int
    percent: float | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    expires_at: datetime | None
    error: str | None
    cancel_requested: bool
    attempts: int
    retry_at: datetime | None  # queued again after a transient failure: not before then
    worker: str | None
    schedule_id: str | None
    scheduled_for: datetime | None
    file: JobFileOut | None
    links: dict[str, str]


def job_out(job: Job) -> JobOut:
    base = f"/jobs/{job.id}"
    file = None
    if job.status == jobs.SUCCEEDED and job.file_name and job.sha256:
        file = JobFileOut(
            name=job.file_name, size=job.file_size or 0, row_count=job.row_count or 0,
            sha256=job.sha256, url=f"{base}/download",
        )
    return JobOut(
        id=job.id, status=job.status, table=job.table_name, format=job.format,
        fields=job.fields,
        filters=job.filters, compression=job.compression, rows_written=job.rows_written,
        total_rows=job.total_rows, bytes_written=job.bytes_written, percent=job.percent,
        created_at=job.created_at, started_at=job.started_at, finished_at=job.finished_at,
        expires_at=job.expires_at, error=job.error, cancel_requested=job.cancel_requested,
        attempts=job.attempts, retry_at=job.retry_at, worker=job.lease_owner,
        schedule_id=job.schedule_id,
        scheduled_for=job.scheduled_for, file=file,
        links={"self": base, "events": f"{base}/events", "download": f"{base}/download",
               "cancel": f"{base}/cancel"},
    )


def _no_file_yet(job: Job) -> str:
    """Why a job has no file to download: not yet, or never (canceled, failed)."""
    if job.status == jobs.CANCELED:
        return (f"job {job.id} was canceled: it has no file, and never will; POST /jobs "
                "to start it again")
    if job.status == jobs.FAILED:
        return (f"job {job.id} failed ({job.error or 'no reason recorded'}): it has no "
                "file, and never will; POST /jobs to try again")
    done = f", {job.percent:.0f}% done" if job.percent is not None else ""
    return (f"job {job.id} is {job.status}{done}; its file can be downloaded once it has "
            f"succeeded (GET /jobs/{job.id}/events follows it)")


def _now() -> datetime:
    return datetime.now(UTC)


@router.post(
    "/jobs", status_code=202, dependencies=[StrictJsonBody],
    responses={202: {"description": "Queued; follow it at Location.",
                     "headers": {"Location": header("/jobs/<id>")}}}
    | BAD_BODY | not_found("No such table.") | DATABASE_BUSY,
)
async def start_job(
    body: JobRequest, response: Response, engine: EngineDep, catalog: CatalogDep,
    worker: WorkerDep,
) -> JobOut:
    """Queue an export to a file; follow it at the Location given."""
    spec = body.spec()
    await spec.query(catalog)  # a 422 now, naming the bad value, rather than a failed job
    job = await jobs.create_job(engine, spec, _now())
    if worker is not None:
        worker.wake()
    response.headers["Location"] = f"/jobs/{job.id}"
    return job_out(job)


@router.get("/jobs", responses=BAD_PARAMETER | DATABASE_BUSY)
async def list_jobs(
    engine: EngineDep,
    limit: Annotated[int, Query(ge=1, le=MAX_LIST, description="At most this many.")] = 50,
    # Checked below rather than typed, for the service's own 422; the document says which.
    status: Annotated[str | None, Query(
        description="Only jobs in this status.",
        json_schema_extra={"enum": list(jobs.STATUSES)},
    )] = None,
    schedule_id: Annotated[str | None, Query(description="Only this schedule's.")] = None,
) -> list[JobOut]:
    """Jobs, newest first."""
    if status is not None and status not in jobs.STATUSES:
        raise InvalidParameter("status", status, "unknown status", jobs.STATUSES)
    return [job_out(job) for job in await jobs.list_jobs(engine, limit, status, schedule_id)]


@router.get("/jobs/{job_id}", responses=NO_JOB | DATABASE_BUSY)
async def get_job(job_id: str, engine: EngineDep) -> JobOut:
    """One job: its status, progress and, once succeeded, its file."""
    return job_out(await jobs.find_job(engine, job_id))


@router.post(
    "/jobs/{job_id}/cancel",
    responses={200: {"model": JobOut, "description": "Canceled (it was queued)."},
               202: {"model": JobOut, "description": "Running: it stops within a second."},
               409: error("It has already finished: `status` says how.")}
    | NO_JOB | DATABASE_BUSY,
)
async def cancel_job(job_id: str, engine: EngineDep) -> Response:
    """Cancel a queued job (at once) or a running one (its worker stops it and removes its
    partial file within a second)."""
    job = await jobs.cancel_job(engine, job_id, _now())
    status = 202 if job.status == jobs.RUNNING else 200
    return Response(job_out(job).model_dump_json(), status_code=status,
                    media_type="application/json")


@router.delete("/jobs/{job_id}", status_code=204, responses=NO_JOB | DATABASE_BUSY)
async def delete_job(job_id: str, engine: EngineDep, storage: JobStorageDep) -> Response:
    """Remove the job and its file (a running job is stopped first)."""
    job = await jobs.delete_job(engine, job_id)
    if job.file_path:  # the record is gone: a file the storage keeps now, the sweep removes
        await remove_or_leave(storage, job.file_path)
    return Response(status_code=204)


@router.get("/jobs/{job_id}/download", response_class=Response, responses=DOWNLOAD_RESPONSES)
@router.head("/jobs/{job_id}/download", response_class=Response, responses=DOWNLOAD_RESPONSES)
async def download_job(
    job_id: str,
    request: Request,
    engine: EngineDep,
    storage: JobStorageDep,
    sender: FileSenderDep,
    digests: DigestsDep,
) -> Response:
    """The job's file, as ``GET /files/{name}`` serves files: Range, ETag (its sha256); or,
    with ``EXPORTER_JOB_DOWNLOAD_REDIRECT``, a 307 to a presigned URL of its object."""
    job = await jobs.find_job(engine, job_id)
    if job.expired_at(_now()):
        when = job.expires_at.isoformat() if job.expires_at else "some time"
        raise Gone(f"job {job_id}'s file expired at {when} and was removed; "
                   "POST /jobs to make it again", status=jobs.EXPIRED)
    if job.status != jobs.SUCCEEDED or not job.file_path or not job.sha256:
        raise Conflict(_no_file_yet(job), status=job.status)
    filename = job.file_name or job.file_path
    file = await storage.open(job.file_path)
    if file is None:
        log.warning("job %s: %s is missing from the %s", job_id, job.file_path,
                    storage.description)
        raise NotFound(f"job {job_id}'s file is missing from the {storage.description}")
    try:
        etag = await _etag(job, file, digests)
        # GET alone: a presigned URL is signed for one method; a HEAD is answered here.
        url = None
        if request.method == "GET":
            url = await storage.download_url(job.file_path, filename, job.spec.media_type)
    except BaseException:
        await file.close()
        raise
    if url is not None:
        await file.close()
        return RedirectResponse(url, status_code=307, headers={"Cache-Control": "no-store"})
    return await sender.response(
        request, file, etag=etag, content_type=job.spec.media_type,
        disposition="attachment", filename=filename,
        cache_control=FILE_CACHE_CONTROL,
    )


@router.get(
    "/jobs/{job_id}/events",
    response_class=EventSourceResponse,
    responses=EVENTS_RESPONSES,
)
async def job_events(
    job_id: str,
    engine: EngineDep,
    settings: SettingsDep,
    last_event_id: Annotated[str | None, Header(description="The last id received.")] = None,
) -> Response:
    """Server-Sent Events: ``progress`` while it runs, then one ``succeeded``, ``failed``,
    ``canceled`` (or ``expired``) event, and the stream ends."""
    job = await jobs.find_job(engine, job_id)
    seen = _revision(last_event_id)
    if seen > job.revision:  # not an id of this job's: start from the beginning
        seen = 0
    if job.finished and seen == job.revision:
        return Response(status_code=204)
    # Set by sse-starlette when the server shuts down: the stream then ends cleanly, and the
    # EventSource reconnects (to another replica, or to this one restarted).
    shutdown = anyio.Event()
    return EventSourceResponse(
        _events(engine, job, seen, settings.events_poll_seconds, shutdown),
        shutdown_event=shutdown,
        shutdown_grace_period=settings.events_poll_seconds + 1,
        ping=settings.events_keepalive_seconds,
        ping_message_factory=lambda: ServerSentEvent(comment="keepalive"),
        headers=EVENT_STREAM_HEADERS,
    )


async def _etag(job: Job, file: StoredFile, digests: DigestCache) -> str:
    """The sha256 recorded when the file was written, unless the stored file plainly is
    not that file any more: an ETag must never name other bytes."""
    if job.sha256 and job.file_size == file.size:
        return strong_etag(job.sha256)
    log.error("job %s: %s is not the file its record describes", job.id, file.name)
    if isinstance(file, OpenFile):
        return strong_etag(await digests.sha256(file))
    raise NotFound(f"job {job.id}'s file in the bucket is not the one it wrote")


def _revision(last_event_id: str | None) -> int:
    """A Last-Event-ID we did not send (or garbage) counts as nothing seen."""
    text = (last_event_id or "").strip()
    return int(text) if text.isdigit() and len(text) < 19 else 0


async def _events(
    engine: AsyncEngine, job: Job, seen: int, poll: float, shutdown: anyio.Event
) -> AsyncIterator[ServerSentEvent]:
    yield ServerSentEvent(retry=RETRY_MILLISECONDS, comment=f"job {job.id}")
    current: Job | None = job
    while True:
        if current is None:
            yield ServerSentEvent(event="deleted", data=json.dumps({"id": job.id}))
            return
        if current.revision > seen:
            seen = current.revision
            if current.finished:
                yield ServerSentEvent(event=current.status, id=str(seen),
                                      data=job_out(current).model_dump_json())
                return
            yield ServerSentEvent(
                event="progress", id=str(seen),
                data=json.dumps(_progress(current), separators=(",", ":")),
            )
        with anyio.move_on_after(poll):
            await shutdown.wait()
        if shutdown.is_set():
            return
        try:
            current = await jobs.get_job(engine, job.id)
        except DATABASE_UNREACHABLE as exc:  # keep the stream; the next poll may succeed
            log.warning("events for job %s: %s", job.id, exc)


def _progress(job: Job) -> dict[str, Any]:
    return {
        "id": job.id, "status": job.status, "rows_written": job.rows_written,
        "total_rows": job.total_rows, "bytes_written": job.bytes_written,
        "percent": job.percent,
    }

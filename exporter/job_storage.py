"""Where job files live: the jobs directory (the default) or an S3-compatible bucket.

Both keep the promise of ``job_files.py``: a file under its final name is a whole export,
or there is none. In the directory, the bytes go to ``.<name>.part`` and are renamed; in a
bucket, they go up as a multipart upload as the export runs (memory: about two parts per
job), and the object exists only once the upload is completed after its last part. A file
smaller than one part is sent in one PUT at the end, which S3 makes visible whole too. A
failed or canceled write aborts its upload; one whose worker died (kill -9) is aborted by
the next attempt of its job, or by the sweep.

Names are ``<id>-<attempt>.<ext>`` (``job_files.JOB_FILE``). ``names()`` lists the complete
files and those being written, the latter as ``.<name>.part`` in both storages, so that the
worker's sweep and takeover treat a partial file and a multipart upload alike.

The bucket is reached with aiobotocore (botocore's requests, signatures, credential chain
and presigning, on aiohttp): every error it raises becomes ``StorageUnavailable`` (could not
reach the bucket: a job runs again later) or ``StorageRefused`` (it answered no: a job fails
with the reason), so that nothing above this module knows botocore.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AsyncExitStack, aclosing, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from exporter.config import S3_URL, Settings, make_directory
from exporter.errors import StorageRefused, StorageUnavailable
from exporter.job_files import PARTIAL_SUFFIX, WrittenFile, remove_file, write_file
from exporter.storage import ChunkStream, StoredFile, open_within

log = logging.getLogger("exporter.job_storage")

MiB = 1024 * 1024
# Answers that mean "no" from the bucket, not "not now": only an operator can cure them.
REFUSALS = frozenset({
    "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "NoSuchBucket",
    "InvalidBucketName", "AllAccessDisabled", "AccountProblem", "InvalidToken",
    "ExpiredToken", "403", "401",
})
CONNECT_SECONDS = 5
MAX_PARTS = 10_000  # S3's limit on one multipart upload
WRITER_CONNECTIONS = 16  # uploads (two a running job at most), listings, removals, /ready
READER_CONNECTIONS = 64  # downloads, one held while its client reads a range
# Answers that mean the object is not there.
MISSING = frozenset({"404", "NoSuchKey", "NotFound"})
# 4xx answers that mean "not now": a job that meets one runs again later.
TRANSIENT_ANSWERS = frozenset({
    "RequestTimeout", "408", "429", "SlowDown", "Throttling", "ThrottlingException",
    "TooManyRequests", "RequestLimitExceeded", "OperationAborted", "503",
    # A body that arrived damaged or cut: sending it again is the cure.
    "IncompleteBody", "BadDigest", "XAmzContentSHA256Mismatch",
})
READ_SECONDS = 60
CHECK_SECONDS = 2  # /ready's and the start's look at the bucket: one answer, not retries


def partial_name(name: str) -> str:
    return f".{name}{PARTIAL_SUFFIX}"


class JobStorage:
    """The interface both storages offer the worker and the routes."""

    description = ""

    async def start(self, writing: bool = True) -> None:
        """Get ready; raise RuntimeError, naming what to change, if job files cannot be kept
        here at all (a bucket that does not answer yet is only logged: it may come back).
        ``writing``: whether this process runs jobs (a worker) or only serves them."""

    async def close(self) -> None:
        """Release connections."""

    async def write(self, name: str, chunks: ChunkStream,
                    on_write: Callable[[int], None] | None = None) -> WrittenFile:
        """``chunks`` under ``name``, whole or not at all; ``chunks`` is closed either way."""
        raise NotImplementedError

    async def open(self, name: str) -> StoredFile | None:
        """The complete file ``name``, or None."""
        raise NotImplementedError

    async def remove(self, name: str) -> None:
        """Remove a complete file, or (``.<name>.part``) one being written; no error if
        there is none."""
        raise NotImplementedError

    async def names(self, beginning: str = "") -> list[str]:
        """Every file here whose name begins so, complete or being written (then listed as
        ``.<name>.part``)."""
        raise NotImplementedError

    async def problem(self) -> str | None:
        """None when job files can be written and read now; else what is wrong."""
        raise NotImplementedError

    async def download_url(self, name: str, filename: str, media_type: str) -> str | None:
        """A URL the client may fetch the file from directly, or None to stream it."""
        return None


def job_storage(settings: Settings) -> JobStorage:
    """The storage ``EXPORTER_JOB_STORAGE`` names."""
    match = S3_URL.fullmatch(settings.job_storage)
    if match is None:
        return DirectoryStorage(settings.jobs_dir)
    return BucketStorage(match["bucket"], match["prefix"] or "", settings)


# --- A directory ----------------------------------------------------------------------------


class DirectoryStorage(JobStorage):
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.description = f"directory {directory}"
        self.writing = True

    async def start(self, writing: bool = True) -> None:
        self.writing = writing
        if not writing:  # a replica without a worker reads what others wrote, if anything
            return
        make_directory(self.directory, "the job files directory")

    async def write(self, name: str, chunks: ChunkStream,
                    on_write: Callable[[int], None] | None = None) -> WrittenFile:
        return await write_file(self.directory / name, chunks, on_write)

    async def open(self, name: str) -> StoredFile | None:
        return await open_within(self.directory, self.directory / name)

    async def remove(self, name: str) -> None:
        await remove_file(self.directory / name)

    async def names(self, beginning: str = "") -> list[str]:
        found = await asyncio.to_thread(_file_names, self.directory)
        return [name for name in found if name.removeprefix(".").startswith(beginning)]

    async def problem(self) -> str | None:
        if not self.writing or await asyncio.to_thread(os.access, self.directory,
                                                      os.W_OK | os.X_OK):
            return None
        return f"the job files directory {self.directory} is missing or not writable"


def _file_names(directory: Path) -> list[str]:
    try:
        with os.scandir(directory) as entries:
            return [entry.name for entry in entries if entry.is_file(follow_symlinks=False)]
    except FileNotFoundError:
        return []


# --- A bucket -------------------------------------------------------------------------------


class BucketStorage(JobStorage):
    def __init__(self, bucket: str, prefix: str, settings: Settings) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.settings = settings
        self.part_bytes = settings.s3_part_mb * MiB
        self.description = f"bucket s3://{bucket}/{self.prefix}"
        self._stack = AsyncExitStack()
        # Two clients, two connection pools: slow downloads holding every connection of one
        # must not stall the uploads, listings and /ready checks of the other.
        self._client: Any = None
        self._reader: Any = None

    async def start(self, writing: bool = True) -> None:
        try:
            from aiobotocore.session import get_session
        except ImportError as exc:
            raise RuntimeError(
                f"EXPORTER_JOB_STORAGE={self.settings.job_storage} needs the S3 client: "
                "pip install 'exporter[s3]'"
            ) from exc
        try:
            session = get_session()
            self._client = await self._new_client(session, WRITER_CONNECTIONS)
            self._reader = await self._new_client(session, READER_CONNECTIONS)
        except Exception as exc:  # a malformed AWS_* variable, an unknown profile...
            await self._stack.aclose()
            raise RuntimeError(
                f"the S3 client for EXPORTER_JOB_STORAGE={self.settings.job_storage} could "
                f"not be set up: {type(exc).__name__}: {exc} (check the AWS_* variables "
                "and ~/.aws files)"
            ) from exc
        log.info("job files: %s at %s", self.description, self._client.meta.endpoint_url)
        if (problem := await self.problem()) is not None:
            log.warning("job files: %s; jobs will fail or wait until it answers", problem)

    async def _new_client(self, session: Any, connections: int) -> Any:
        from botocore.config import Config

        config = Config(
            signature_version="s3v4",  # presigned URLs too: every S3-compatible store has v4
            s3={"addressing_style": self.settings.s3_addressing_style},
            connect_timeout=CONNECT_SECONDS, read_timeout=READ_SECONDS,
            max_pool_connections=connections,
            # botocore's own attempts, as AWS_RETRY_MODE and AWS_MAX_ATTEMPTS say (attempts,
            # the first one included), else 3: a job that still fails runs again later.
            retries={"mode": os.environ.get("AWS_RETRY_MODE", "standard"),
                     "total_max_attempts": int(os.environ.get("AWS_MAX_ATTEMPTS", "3"))},
            # Checksums only where S3 requires them: many S3-compatible stores do not know
            # botocore's newer default ones, and some send the whole object's with a range.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        # AWS_REGION is what most tools set; botocore itself reads AWS_DEFAULT_REGION and
        # the profile's region; S3 answers us-east-1 for a bucket anywhere else too.
        region = (os.environ.get("AWS_REGION") or session.get_config_variable("region")
                  or "us-east-1")
        return await self._stack.enter_async_context(
            session.create_client("s3", region_name=region, config=config)
        )

    async def close(self) -> None:
        await self._stack.aclose()

    def key(self, name: str) -> str:
        return self.prefix + name

    async def call(self, operation: str, *, reading: bool = False, **params: Any) -> Any:
        """One request to the bucket, its failures translated (see the module's doc)."""
        client = self._reader if reading else self._client
        with _translated(self.description):
            return await getattr(client, operation)(Bucket=self.bucket, **params)

    async def write(self, name: str, chunks: ChunkStream,
                    on_write: Callable[[int], None] | None = None) -> WrittenFile:
        digest = hashlib.sha256()
        size = 0
        upload = Upload(self, self.key(name))
        try:
            async with aclosing(chunks) as source:
                async for chunk in source:
                    digest.update(chunk)
                    size += len(chunk)
                    await upload.add(chunk)
                    if on_write is not None:
                        on_write(len(chunk))
            await upload.complete(size)
        except BaseException:  # stopped (even while completing) or failed: leave nothing
            await _finish_anyway(upload.abort())
            raise
        return WrittenFile(Path(name), size, digest.hexdigest())

    async def open(self, name: str) -> StoredFile | None:
        try:
            head = await self.call("head_object", reading=True, Key=self.key(name))
        except StorageRefused as exc:
            if exc.details.get("answer") in MISSING:
                return None
            raise
        return BucketFile(self, name, head["ContentLength"], head["LastModified"].timestamp(),
                          head["ETag"])

    async def remove(self, name: str) -> None:
        if name.startswith(".") and name.endswith(PARTIAL_SUFFIX):
            key = self.key(name[1:-len(PARTIAL_SUFFIX)])
            for upload in await self._uploads(key):
                if upload["Key"] == key:
                    await self.call("abort_multipart_upload", Key=key,
                                    UploadId=upload["UploadId"])
            return
        await self.call("delete_object", Key=self.key(name))  # S3 says 204 for none too

    async def names(self, beginning: str = "") -> list[str]:
        below = self.key(beginning)
        found = []
        token: dict[str, Any] = {}
        while True:
            page = await self.call("list_objects_v2", Prefix=below, **token)
            found += [item["Key"][len(self.prefix):] for item in page.get("Contents", [])]
            if not (page.get("IsTruncated") and page.get("NextContinuationToken")):
                break
            token = {"ContinuationToken": page["NextContinuationToken"]}
        found += [partial_name(u["Key"][len(self.prefix):]) for u in await self._uploads(below)]
        return [name for name in found if name and "/" not in name]

    async def _uploads(self, below: str) -> list[dict[str, Any]]:
        """The multipart uploads under way whose keys begin with ``below``."""
        uploads: list[dict[str, Any]] = []
        markers: dict[str, Any] = {}
        while True:
            try:
                page = await self.call("list_multipart_uploads", Prefix=below, **markers)
            except StorageRefused as exc:
                # rclone's S3 server answers "no such upload" where S3 lists none.
                if exc.details.get("answer") == "NoSuchUpload":
                    return uploads
                raise
            uploads += page.get("Uploads", [])
            if not (page.get("IsTruncated") and page.get("NextKeyMarker")):
                return uploads
            markers = {"KeyMarker": page["NextKeyMarker"],
                       "UploadIdMarker": page.get("NextUploadIdMarker", "")}

    async def problem(self) -> str | None:
        try:
            async with asyncio.timeout(CHECK_SECONDS):
                await self.call("head_bucket")
        except StorageUnavailable as exc:
            return exc.message
        except TimeoutError:
            return f"the {self.description} did not answer within {CHECK_SECONDS} s"
        return None

    async def download_url(self, name: str, filename: str, media_type: str) -> str | None:
        if not self.settings.job_download_redirect:
            return None
        from exporter.files import content_disposition

        with _translated(self.description):
            url: str = await self._reader.generate_presigned_url(
                "get_object",
                Params={"Bucket": self.bucket, "Key": self.key(name),
                        "ResponseContentDisposition": content_disposition("attachment",
                                                                          filename),
                        "ResponseContentType": media_type},
                ExpiresIn=self.settings.job_download_url_seconds,
            )
        return url


class Upload:
    """One object written part by part, every part but the last exactly ``part_bytes`` long
    (Cloudflare R2 and others refuse parts of different sizes). A part is sent while the
    next one fills, so the export waits for the bucket only when the bucket is the slower;
    at most one part in flight and one filling are held."""

    def __init__(self, storage: BucketStorage, key: str) -> None:
        self.storage = storage
        self.key = key
        self.buffer = bytearray()
        self.upload_id: str | None = None
        self.parts: list[dict[str, Any]] = []
        self.sending: asyncio.Task[None] | None = None
        self.completing = False  # from the request that makes the object on: abort deletes

    async def add(self, chunk: bytes) -> None:
        self.buffer += chunk
        size = self.storage.part_bytes
        while len(self.buffer) >= size:
            await self._sent()  # the previous part is up and freed before the next is cut
            # bytes, which botocore streams from a BytesIO (aiohttp would send a bytearray in
            # one write, and the event loop keep a copy of what the socket did not take).
            with memoryview(self.buffer) as view:
                part = bytes(view[:size])
            del self.buffer[:size]
            await self._send(part)

    async def _send(self, body: bytes) -> None:
        if len(self.parts) + 1 > MAX_PARTS:
            raise StorageRefused(
                f"the job file is larger than S3's {MAX_PARTS} parts of "
                f"{self.storage.settings.s3_part_mb} MiB; raise EXPORTER_S3_PART_MB"
            )
        if self.upload_id is None:
            started = await self.storage.call("create_multipart_upload", Key=self.key)
            self.upload_id = started["UploadId"]
        self.sending = asyncio.create_task(self._part(len(self.parts) + 1, body))

    async def _part(self, number: int, body: bytes) -> None:
        sent = await self.storage.call("upload_part", Key=self.key, UploadId=self.upload_id,
                                       PartNumber=number, Body=body)
        self.parts.append({"ETag": sent["ETag"], "PartNumber": number})

    async def _sent(self) -> None:
        if self.sending is not None:
            sending, self.sending = self.sending, None
            await sending

    async def complete(self, size: int) -> None:
        await self._sent()
        if self.upload_id is None:  # smaller than one part: one PUT, visible whole
            self.completing = True
            await self.storage.call("put_object", Key=self.key, Body=bytes(self.buffer))
            return
        if self.buffer:
            await self._send(bytes(self.buffer))
            self.buffer.clear()
            await self._sent()
        self.completing = True
        try:
            await self.storage.call("complete_multipart_upload", Key=self.key,
                                    UploadId=self.upload_id,
                                    MultipartUpload={"Parts": self.parts})
        except StorageRefused as exc:
            # A completion whose answer was lost and that botocore sent again: the first
            # one made the object, the second finds no upload.
            if exc.details.get("answer") != "NoSuchUpload":
                raise
            if not await self._made(size):  # taken over, or a store slow to show it: later
                raise StorageUnavailable(exc.message, answer="NoSuchUpload") from exc

    async def _made(self, size: int) -> bool:
        try:
            head = await self.storage.call("head_object", Key=self.key)
        except StorageRefused:
            return False
        return bool(head["ContentLength"] == size)

    async def abort(self) -> None:
        """Leave no object and no upload behind (errors are logged: the sweep retries)."""
        if self.sending is not None:
            self.sending.cancel()
            with suppress(BaseException):
                await self.sending
        try:
            if self.upload_id is not None:
                with suppress(StorageRefused):  # completed meanwhile: no such upload
                    await self.storage.call("abort_multipart_upload", Key=self.key,
                                            UploadId=self.upload_id)
            if self.completing:  # the object may exist: the request may have gone through
                await self.storage.call("delete_object", Key=self.key)
        except StorageUnavailable as exc:
            log.warning("%s: could not clean up after a stopped upload (%s); the sweep will",
                        self.key, exc.message)


@dataclass
class BucketFile:
    """An object as it was when opened: its reads ask for that version (If-Match)."""

    storage: BucketStorage
    name: str
    size: int
    mtime: float
    etag: str

    async def read(self, start: int, length: int, chunk_bytes: int) -> ChunkStream:
        if length == 0:
            return
        answer = await self.storage.call(
            "get_object", reading=True, Key=self.storage.key(self.name), IfMatch=self.etag,
            Range=f"bytes={start}-{start + length - 1}",
        )
        with _translated(self.storage.description):
            async with answer["Body"] as body:
                if answer.get("ContentLength") != length:  # a store that ignored the Range
                    raise OSError(f"{self.name}: asked for {length} bytes from {start}, the "
                                  f"bucket answers {answer.get('ContentLength')}")
                async for chunk in body.iter_chunks(chunk_bytes):
                    length -= len(chunk)
                    yield chunk
        if length:
            raise OSError(f"{self.name} ended {length} bytes early")

    async def close(self) -> None:
        """Nothing is held between reads."""


async def _finish_anyway(cleanup: Awaitable[None]) -> None:
    """Run ``cleanup`` to its end even if this task is cancelled again meanwhile."""
    task = asyncio.ensure_future(cleanup)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.wait({task})
        raise


@contextmanager
def _translated(description: str) -> Iterator[None]:
    """Turns botocore's and aiohttp's errors into StorageUnavailable or StorageRefused."""
    try:
        yield
    except StorageUnavailable:
        raise
    except Exception as error:
        raise _storage_error(description, error) from error


def _storage_error(description: str, error: Exception) -> StorageUnavailable:
    from botocore.exceptions import ClientError, NoCredentialsError, PartialCredentialsError

    if isinstance(error, ClientError):
        answer = str(error.response.get("Error", {}).get("Code", ""))
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        message = f"the {description} answered {answer or status}: {error}"
        if status in (401, 403):
            message += (" (are AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, "
                        "right, and may they read and write this bucket?)")
        if answer not in TRANSIENT_ANSWERS and (answer in REFUSALS or 400 <= status < 500):
            return StorageRefused(message, answer=answer)
        return StorageUnavailable(message, answer=answer)
    if isinstance(error, NoCredentialsError | PartialCredentialsError):
        return StorageRefused(
            f"no credentials for the {description}: set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE with a credentials file"
        )
    return StorageUnavailable(
        f"the {description} could not be reached: {type(error).__name__}: {error}"
    )

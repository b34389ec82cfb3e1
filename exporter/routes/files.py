"""``/files`` and ``/images/{image_id}``: bytes from the data directory, via ``FileSender``.

Files are the plain names in ``<data_dir>/files``; images are rows of the ``images`` table
whose ``storage_path`` must resolve inside ``<data_dir>/images`` (not merely the data
directory, which also holds the SQLite database).
"""

from __future__ import annotations

import asyncio
import logging
import mimetypes
import re
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi import Path as PathParameter
from fastapi.responses import Response
from pydantic import BaseModel
from sqlalchemy import Connection, inspect, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from exporter.errors import DATABASE_UNREACHABLE, DatabaseUnavailable, InvalidParameter, NotFound
from exporter.files import strong_etag
from exporter.models import images
from exporter.openapi import (
    BAD_PARAMETER,
    DATABASE_BUSY,
    Responses,
    file_responses,
    not_found,
)
from exporter.preconditions import http_date
from exporter.routes.deps import DigestsDep, EngineDep, FileSenderDep, SettingsDep
from exporter.storage import DigestCache, OpenFile, is_public_name, open_within, public_names

log = logging.getLogger("exporter.routes.files")
router = APIRouter(tags=["files"])

# Files keep their name from one version to the next (a re-seed, a new job file), so
# caches must ask again each time; with the ETag that costs a 304.
FILE_CACHE_CONTROL = "no-cache"
# An image id names one set of bytes for good: replacing an image means a new id.
IMAGE_CACHE_CONTROL = "public, max-age=31536000, immutable"
# Shown in the browser only if it is one of these; anything else (SVG, HTML) is a download,
# so a stored type can never make the service serve a page.
INLINE_IMAGE_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp", "image/avif"})
DOWNLOAD_TYPE = "application/octet-stream"
SHA256_HEX = re.compile(r"[0-9a-f]{64}")
MAX_IMAGE_ID = 2**31 - 1  # images.id is a 32-bit integer on PostgreSQL
IMAGE_ID = re.compile(r"[1-9][0-9]{0,9}")
# Any file in the directory: the type its name suggests (mimetypes), else DOWNLOAD_TYPE.
FILE_RESPONSES: Responses = file_responses(
    ["*/*"], "The whole file, typed by its name's extension, else as application/octet-stream."
) | not_found("No such file, or one the service will not serve.")
IMAGE_RESPONSES: Responses = file_responses(
    [*sorted(INLINE_IMAGE_TYPES), DOWNLOAD_TYPE],
    "The image, with its stored type if a browser may show it, else as a download.",
) | not_found("No such image, or it has no file.") | BAD_PARAMETER | DATABASE_BUSY


class FileEntry(BaseModel):
    name: str
    size: int
    sha256: str
    etag: str
    last_modified: str
    url: str


# GET and HEAD as two routes, not one api_route: the OpenAPI needs one operation id each.
@router.get("/files")
@router.head("/files")
async def list_files(settings: SettingsDep, digests: DigestsDep) -> list[FileEntry]:
    """The downloadable files, by name, with their size, sha256 and ETag."""
    entries = []
    for name in await asyncio.to_thread(public_names, settings.files_dir):
        file = await open_within(settings.files_dir, settings.files_dir / name)
        if file is None:  # a directory, a FIFO, a symlink pointing out
            continue
        try:
            digest = await digests.sha256(file)
        finally:
            await file.close()
        entries.append(FileEntry(
            name=name, size=file.size, sha256=digest, etag=strong_etag(digest),
            last_modified=http_date(file.stat.st_mtime), url=f"/files/{quote(name, safe='')}",
        ))
    return entries


@router.get("/files/{name}", response_class=Response, responses=FILE_RESPONSES)
@router.head("/files/{name}", response_class=Response, responses=FILE_RESPONSES)
async def download_file(
    name: str, request: Request, settings: SettingsDep, sender: FileSenderDep, digests: DigestsDep
) -> Response:
    """One file, as an attachment: resumable (Range, If-Range) and cacheable (ETag)."""
    file = None
    if is_public_name(name):
        file = await open_within(settings.files_dir, settings.files_dir / name)
    if file is None:
        raise NotFound(f"no file named {name!r}; GET /files lists the files there are")
    try:
        digest = await digests.sha256(file)
    except BaseException:
        await file.close()
        raise
    return await sender.response(
        request, file, etag=strong_etag(digest), content_type=_media_type(name),
        disposition="attachment", filename=name, cache_control=FILE_CACHE_CONTROL,
    )


async def _has_demo_images(engine: AsyncEngine) -> bool:
    """Whether the database holds the demo's ``images`` table. Asked only when reading it
    failed: a database the service did not create has no such table, or one of its own
    by that name, and either is a 404, not a 503 to retry nor a 500."""
    def columns(conn: Connection) -> set[str]:
        found = inspect(conn)
        if not found.has_table(images.name):
            return set()
        return {column["name"] for column in found.get_columns(images.name)}

    try:
        async with engine.connect() as conn:
            present = await conn.run_sync(columns)
    except DATABASE_UNREACHABLE:
        return True  # the database itself is away: the caller's 503 stands
    return set(images.c.keys()) <= present


def _image_number(raw: str) -> int:
    """An image id in plain digits: Python's ``int`` would also take ``01``, ``+1``,
    `` 1``, ``1_0`` and non-ASCII digits, each then naming another resource's URL."""
    if not IMAGE_ID.fullmatch(raw) or int(raw) > MAX_IMAGE_ID:
        raise InvalidParameter(
            "image_id", raw, f"expected a whole number from 1 to {MAX_IMAGE_ID} in plain "
            "digits, with no sign, spaces or leading zeros",
        )
    return int(raw)


@router.get("/images/{image_id}", response_class=Response, responses=IMAGE_RESPONSES)
@router.head("/images/{image_id}", response_class=Response, responses=IMAGE_RESPONSES)
async def get_image(
    # Read as text, so that _image_number refuses 01, +1 and other spellings of a number,
    # but documented as what it is: a number, which a client writes in plain digits.
    image_id: Annotated[str, PathParameter(
        description=f"images.id: a whole number from 1 to {MAX_IMAGE_ID}, in plain digits",
        examples=[1],
        json_schema_extra={"type": "integer", "minimum": 1, "maximum": MAX_IMAGE_ID},
    )],
    request: Request,
    settings: SettingsDep,
    engine: EngineDep,
    sender: FileSenderDep,
    digests: DigestsDep,
) -> Response:
    """One image, shown inline with its stored content type; cached for a year."""
    number = _image_number(image_id)
    try:
        async with engine.connect() as conn:
            row = (await conn.execute(select(images).where(images.c.id == number))).first()
    except (DBAPIError, *DATABASE_UNREACHABLE) as exc:
        if not await _has_demo_images(engine):
            raise NotFound(
                "this database has no images table of the demo's (exporter seed makes it); "
                "/images serves the demo's images only"
            ) from None
        if isinstance(exc, DATABASE_UNREACHABLE):
            raise DatabaseUnavailable(f"the database could not be read: {exc}") from exc
        raise
    if row is None:
        raise NotFound(f"no image with id {image_id}")
    file = await open_within(settings.images_dir, settings.data_dir / row.storage_path)
    if file is None:
        log.warning("image %d: storage_path %r is missing or outside %s",
                    number, row.storage_path, settings.images_dir)
        raise NotFound(f"image {image_id} has no file")
    try:
        etag = await _image_etag(row.sha256, row.byte_size, file, digests)
    except BaseException:
        await file.close()
        raise
    inline = row.content_type in INLINE_IMAGE_TYPES
    return await sender.response(
        request, file, etag=etag, content_type=row.content_type if inline else DOWNLOAD_TYPE,
        disposition="inline" if inline else "attachment", filename=row.filename,
        cache_control=IMAGE_CACHE_CONTROL,
    )


async def _image_etag(sha256: str, byte_size: int, file: OpenFile, digests: DigestCache) -> str:
    """The stored sha256, unless the file on disk is plainly not what the row describes:
    then its own digest, as an ETag must never name other bytes."""
    if SHA256_HEX.fullmatch(sha256) and byte_size == file.size:
        return strong_etag(sha256)
    log.warning("%s does not match its images row; hashing it", file.path)
    return strong_etag(await digests.sha256(file))


def _media_type(name: str) -> str:
    media_type, encoding = mimetypes.guess_type(name, strict=True)
    # x.csv.gz guesses text/csv with encoding gzip, but the bytes are sent as stored.
    return DOWNLOAD_TYPE if media_type is None or encoding is not None else media_type

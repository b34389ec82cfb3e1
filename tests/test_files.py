"""``/files`` and ``/images`` in process: headers, 304, 412, 206, 416, multipart, HEAD.

The ASGI client buffers whole bodies, which is fine for what is checked here; streaming,
memory, disconnects and real download tools are in ``test_files_server.py``.
"""

from __future__ import annotations

import email.parser
import email.policy
import hashlib
import os
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from sqlalchemy import insert, select, text

from exporter.app import create_app
from exporter.config import load_settings
from exporter.db import create_engine, migrate
from exporter.files import content_disposition
from exporter.models import images
from tests.conftest import SEED, Database, build_database, scratch_postgres_url

CHUNK = 4096  # small, so that ranges and files span many reads
PAST = 1_600_000_000  # Sun, 13 Sep 2020 12:26:40 GMT: old enough for If-Range dates
PAST_HTTP = "Sun, 13 Sep 2020 12:26:40 GMT"
NON_ASCII_NAME = 'résumé "2024" 😀.csv'


@dataclass(frozen=True)
class Served:
    client: httpx.AsyncClient
    data_dir: Path
    blob: bytes  # the bytes of files/large-file.bin

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.blob).hexdigest()

    @property
    def etag(self) -> str:
        return f'"{self.sha256}"'


def write_files(data_dir: Path, source: Database) -> bytes:
    """A data directory with the seeded images, a file of known bytes, and things that must
    stay invisible: dot files, partial files, a directory, a FIFO, symlinks out or looping."""
    shutil.copytree(source.data_dir / "images", data_dir / "images")
    files = data_dir / "files"
    files.mkdir()
    blob = bytes(range(256)) * 1200 + b"tail"  # 307204 bytes: not a multiple of any chunk
    (files / "large-file.bin").write_bytes(blob)
    os.utime(files / "large-file.bin", (PAST, PAST))
    (files / NON_ASCII_NAME).write_bytes(b"id\r\n1\r\n")
    (files / ".hidden").write_bytes(b"hidden")
    (files / "large-file.bin.part").write_bytes(b"partial")
    (files / "empty.txt").write_bytes(b"")
    (files / "subdir").mkdir()
    os.mkfifo(files / "pipe")
    (data_dir.parent / "outside-secret.txt").write_bytes(b"SECRET")
    (files / "escape").symlink_to(data_dir.parent / "outside-secret.txt")
    (files / "alias.bin").symlink_to(files / "large-file.bin")  # inside: allowed
    (files / "loop").symlink_to(files / "loop")
    return blob


@pytest.fixture(scope="module")
async def served(
    database: Database, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Served]:
    data_dir = tmp_path_factory.mktemp("files") / "data"
    data_dir.mkdir()
    blob = write_files(data_dir, database)
    app = create_app(database.settings(data_dir=data_dir, file_chunk_bytes=CHUNK, max_ranges=4))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://exporter") as client:
            yield Served(client, data_dir, blob)


def multipart_parts(response: httpx.Response) -> list[tuple[str, str, bytes]]:
    """(Content-Type, Content-Range, bytes) of each part, as the stdlib MIME parser sees them."""
    head = f"Content-Type: {response.headers['content-type']}\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + response.content)
    assert message.is_multipart() and not message.defects
    return [
        (part["Content-Type"], part["Content-Range"], part.get_payload(decode=True))
        for part in message.iter_parts()
    ]


async def test_the_list_holds_only_the_files_that_can_be_downloaded(served: Served) -> None:
    response = await served.client.get("/files")
    assert response.status_code == 200
    listed = {entry["name"]: entry for entry in response.json()}
    assert sorted(listed) == sorted(["alias.bin", "empty.txt", "large-file.bin", NON_ASCII_NAME])
    large = listed["large-file.bin"]
    assert large["size"] == len(served.blob)
    assert large["sha256"] == served.sha256
    assert large["etag"] == served.etag
    assert large["last_modified"] == PAST_HTTP
    assert large["url"] == "/files/large-file.bin"
    assert listed[NON_ASCII_NAME]["url"] == (
        "/files/r%C3%A9sum%C3%A9%20%222024%22%20%F0%9F%98%80.csv"
    )
    assert (await served.client.get(listed[NON_ASCII_NAME]["url"])).content == b"id\r\n1\r\n"


async def test_a_whole_file_has_every_validator_and_download_header(served: Served) -> None:
    response = await served.client.get("/files/large-file.bin")
    assert response.status_code == 200
    assert response.content == served.blob
    headers = response.headers
    assert headers["content-length"] == str(len(served.blob))
    assert headers["accept-ranges"] == "bytes"
    assert headers["etag"] == served.etag
    assert headers["last-modified"] == PAST_HTTP
    assert headers["cache-control"] == "no-cache"
    assert headers["content-type"] == "application/octet-stream"
    assert headers["content-disposition"] == content_disposition("attachment", "large-file.bin")
    assert headers["x-content-type-options"] == "nosniff"
    assert "content-range" not in headers


async def test_head_sends_the_headers_get_would_and_no_body(served: Served) -> None:
    for extra in ({}, {"Range": "bytes=10-19"}, {"Range": "bytes=0-1,10-11"}):
        get = await served.client.get("/files/large-file.bin", headers=extra)
        head = await served.client.head("/files/large-file.bin", headers=extra)
        assert head.status_code == get.status_code
        assert head.content == b""
        ignored = {"date", "content-type"}  # the multipart boundary is new each time
        assert {k: v for k, v in head.headers.items() if k not in ignored} == {
            k: v for k, v in get.headers.items() if k not in ignored
        }


async def test_a_non_ascii_name_gets_an_ascii_fallback_and_an_rfc_8187_name(
    served: Served,
) -> None:
    response = await served.client.get(f"/files/{NON_ASCII_NAME}")
    assert response.headers["content-disposition"] == (
        "attachment; filename=\"r_sum_ _2024_ _.csv\"; "
        "filename*=UTF-8''r%C3%A9sum%C3%A9%20%222024%22%20%F0%9F%98%80.csv"
    )
    assert response.headers["content-type"].startswith("text/csv")


@pytest.mark.parametrize(
    ("range_header", "start", "end"),
    [
        ("bytes=0-0", 0, 1),
        ("bytes=100-5000", 100, 5001),
        ("bytes=300000-", 300000, 307204),
        ("bytes=-4", 307200, 307204),
        ("bytes=4090-8200", 4090, 8201),  # across chunk boundaries
        ("bytes=307000-999999999999999999999999", 307000, 307204),
        ("bytes=0-10,5-20", 0, 21),  # merged: one range is never multipart
    ],
)
async def test_one_range_gives_206_with_its_content_range(
    served: Served, range_header: str, start: int, end: int
) -> None:
    response = await served.client.get("/files/large-file.bin", headers={"Range": range_header})
    assert response.status_code == 206
    assert response.headers["content-range"] == f"bytes {start}-{end - 1}/{len(served.blob)}"
    assert response.headers["content-length"] == str(end - start)
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.content == served.blob[start:end]


async def test_several_ranges_give_a_multipart_body_a_mime_parser_reads(served: Served) -> None:
    response = await served.client.get(
        "/files/large-file.bin", headers={"Range": "bytes=-4,0-9,4000-8999"}
    )
    assert response.status_code == 206
    assert response.headers["content-type"].startswith("multipart/byteranges; boundary=")
    assert "content-range" not in response.headers
    assert int(response.headers["content-length"]) == len(response.content)
    size = len(served.blob)
    assert multipart_parts(response) == [
        ("application/octet-stream", f"bytes 0-9/{size}", served.blob[0:10]),
        ("application/octet-stream", f"bytes 4000-8999/{size}", served.blob[4000:9000]),
        ("application/octet-stream", f"bytes {size - 4}-{size - 1}/{size}", served.blob[-4:]),
    ]


async def test_a_range_beyond_the_end_is_416_with_the_size(served: Served) -> None:
    response = await served.client.get("/files/large-file.bin", headers={"Range": "bytes=307204-"})
    assert response.status_code == 416
    assert response.headers["content-range"] == "bytes */307204"
    assert response.json()["error"] == "range_not_satisfiable"
    assert "307204" in response.json()["message"]


@pytest.mark.parametrize(
    "range_header",
    ["bytes=5-1", "garbage", "items=0-1", "bytes=-", "bytes=0-1,2-3,4-5,6-7,8-9", "bytes=a-b"],
)
async def test_malformed_or_too_many_ranges_send_the_whole_file(
    served: Served, range_header: str
) -> None:
    response = await served.client.get("/files/large-file.bin", headers={"Range": range_header})
    assert response.status_code == 200
    assert response.content == served.blob


async def test_an_empty_file_ignores_range(served: Served) -> None:
    response = await served.client.get("/files/empty.txt", headers={"Range": "bytes=0-"})
    assert response.status_code == 200
    assert response.content == b""
    assert response.headers["content-length"] == "0"


async def test_if_none_match_gives_304_with_the_validators_repeated(served: Served) -> None:
    for tag in (served.etag, f"W/{served.etag}", f'"nope", {served.etag}', "*"):
        response = await served.client.get(
            "/files/large-file.bin", headers={"If-None-Match": tag, "Range": "bytes=0-1"}
        )
        assert response.status_code == 304, tag
        assert response.content == b""
        assert response.headers["etag"] == served.etag
        assert response.headers["last-modified"] == PAST_HTTP
        assert response.headers["cache-control"] == "no-cache"
    stale = await served.client.get("/files/large-file.bin", headers={"If-None-Match": '"x"'})
    assert stale.status_code == 200


async def test_if_modified_since_gives_304_unless_the_file_is_newer(served: Served) -> None:
    same = await served.client.get(
        "/files/large-file.bin", headers={"If-Modified-Since": PAST_HTTP}
    )
    assert same.status_code == 304
    older = "Sun, 13 Sep 2020 12:26:39 GMT"
    newer = await served.client.get("/files/large-file.bin", headers={"If-Modified-Since": older})
    assert newer.status_code == 200
    ignored = await served.client.get(  # If-None-Match wins over the date
        "/files/large-file.bin", headers={"If-Modified-Since": PAST_HTTP, "If-None-Match": '"x"'}
    )
    assert ignored.status_code == 200


async def test_if_match_and_if_unmodified_since_give_412_when_they_fail(served: Served) -> None:
    mismatch = await served.client.get("/files/large-file.bin", headers={"If-Match": '"other"'})
    assert mismatch.status_code == 412
    assert mismatch.json()["error"] == "precondition_failed"
    assert mismatch.json()["etag"] == served.etag
    older = "Sun, 13 Sep 2020 12:26:39 GMT"
    unmodified = await served.client.get(
        "/files/large-file.bin", headers={"If-Unmodified-Since": older}
    )
    assert unmodified.status_code == 412
    match = await served.client.get(
        "/files/large-file.bin", headers={"If-Match": served.etag, "Range": "bytes=1-2"}
    )
    assert match.status_code == 206


@pytest.mark.parametrize(
    ("if_range", "status"),
    [
        (None, 206),
        ("strong", 206),
        ("weak", 200),
        ('"someone-elses"', 200),
        (PAST_HTTP, 206),
        ("Sun, 13 Sep 2020 12:26:41 GMT", 200),
        ("garbage", 200),
    ],
)
async def test_if_range_resumes_only_the_same_version(
    served: Served, if_range: str | None, status: int
) -> None:
    headers = {"Range": "bytes=100-199"}
    if if_range is not None:
        headers["If-Range"] = {"strong": served.etag, "weak": f"W/{served.etag}"}.get(
            if_range, if_range
        )
    response = await served.client.get("/files/large-file.bin", headers=headers)
    assert response.status_code == status
    assert response.content == (served.blob[100:200] if status == 206 else served.blob)


async def test_a_symlink_inside_the_directory_is_served(served: Served) -> None:
    response = await served.client.get("/files/alias.bin")
    assert response.status_code == 200
    assert response.headers["etag"] == served.etag
    assert 'filename="alias.bin"' in response.headers["content-disposition"]


@pytest.mark.parametrize(
    "name",
    [".hidden", "large-file.bin.part", "subdir", "pipe", "escape", "loop", "missing.bin", "%2e%2e",
     "..%5Coutside-secret.txt", "%00", "large-file.bin%00", "a%0Ab", "x" * 300],
)
async def test_names_that_must_not_be_served_are_404_as_json(served: Served, name: str) -> None:
    response = await served.client.get(f"/files/{name}")
    assert response.status_code == 404, response.text
    assert response.json()["error"] == "not_found"
    assert b"SECRET" not in response.content


async def test_images_are_inline_with_their_stored_type_and_cached_for_a_year(
    served: Served, database: Database
) -> None:
    engine = database.engine()
    try:
        async with engine.connect() as conn:
            rows = (await conn.execute(select(images).order_by(images.c.id))).all()
    finally:
        await engine.dispose()
    assert len(rows) >= 2
    for row in rows:
        response = await served.client.get(f"/images/{row.id}")
        assert response.status_code == 200
        assert response.headers["content-type"] == row.content_type
        assert response.headers["etag"] == f'"{row.sha256}"'
        assert hashlib.sha256(response.content).hexdigest() == row.sha256
        assert response.headers["content-length"] == str(row.byte_size)
        assert response.headers["cache-control"] == "public, max-age=31536000, immutable"
        assert response.headers["content-disposition"] == content_disposition(
            "inline", row.filename
        )
        again = await served.client.get(
            f"/images/{row.id}", headers={"If-None-Match": response.headers["etag"]}
        )
        assert again.status_code == 304
        assert again.headers["cache-control"] == "public, max-age=31536000, immutable"
        part = await served.client.get(f"/images/{row.id}", headers={"Range": "bytes=0-7"})
        assert part.status_code == 206
        assert part.content == response.content[:8]


@pytest.mark.parametrize(
    ("image_id", "status"),
    [("999999", 404), ("abc", 422), ("0", 422), ("-1", 422), ("1.5", 422),
     ("2147483648", 422), ("99999999999999999999999", 422), ("%2e%2e", 422),
     # each of these would read as image 1 (or 10) to int(), and so name its bytes twice
     ("01", 422), ("+1", 422), ("1.0", 422), ("%201", 422), ("1_0", 422), ("%D9%A1", 422)],
)
async def test_unknown_image_ids_are_404_and_malformed_ones_422(
    served: Served, image_id: str, status: int
) -> None:
    response = await served.client.get(f"/images/{image_id}")
    assert response.status_code == status
    assert response.json()["error"] in ("not_found", "invalid_parameter")


@pytest.fixture(scope="module")
async def hostile_images(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Served]:
    """A SQLite database whose images rows point where they must not, or lie."""
    data_dir = tmp_path_factory.mktemp("hostile") / "data"
    data_dir.mkdir()
    database = await build_database("sqlite", data_dir, 10, SEED)
    (data_dir.parent / "outside-secret.txt").write_bytes(b"SECRET")
    (data_dir / "images" / "leak.png").symlink_to(data_dir.parent / "outside-secret.txt")
    avatar = data_dir / "images" / "avatar-0001.png"
    real = hashlib.sha256(avatar.read_bytes()).hexdigest()
    size = avatar.stat().st_size
    rows = [
        (101, "../outside-secret.txt", "image/png", real, size),
        (102, "/etc/passwd", "image/png", real, size),
        (103, "images/../exporter.db", "image/png", real, size),
        (104, "images/leak.png", "image/png", real, size),
        (105, "files/large-file.bin", "image/png", real, size),
        (106, "images", "image/png", real, size),
        (107, "images/\x00.png", "image/png", real, size),
        (108, str(data_dir / "exporter.db"), "image/png", real, size),
        (110, "images/avatar-0001.png", "text/html", real, size),
        (111, "images/avatar-0001.png", "image/png", 'zz"\r\nX-Evil: 1', size),
        (112, "images/avatar-0001.png", "image/png", "0" * 64, size + 1),
    ]
    engine = database.engine()
    try:
        async with engine.begin() as conn:
            await conn.execute(insert(images), [
                dict(id=i, filename=f"evil-{i}.png", content_type=t, sha256=h, byte_size=n,
                     storage_path=p)
                for i, p, t, h, n in rows
            ])
    finally:
        await engine.dispose()
    app = create_app(database.settings())
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://exporter") as client:
            yield Served(client, data_dir, avatar.read_bytes())


@pytest.mark.parametrize("image_id", [101, 102, 103, 104, 105, 106, 107, 108])
async def test_image_rows_pointing_outside_the_images_directory_are_404(
    hostile_images: Served, image_id: int
) -> None:
    response = await hostile_images.client.get(f"/images/{image_id}")
    assert response.status_code == 404
    assert response.json() == {"error": "not_found", "message": f"image {image_id} has no file"}


async def test_a_stored_type_that_is_not_an_image_is_downloaded_not_shown(
    hostile_images: Served,
) -> None:
    response = await hostile_images.client.get("/images/110")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.headers["content-disposition"].startswith("attachment;")


async def test_an_image_row_that_lies_about_its_bytes_gets_their_real_etag(
    hostile_images: Served,
) -> None:
    for image_id in (111, 112):
        response = await hostile_images.client.get(f"/images/{image_id}")
        assert response.status_code == 200
        assert response.headers["etag"] == hostile_images.etag
        assert "x-evil" not in response.headers


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
@pytest.mark.parametrize("own_images", [False, True], ids=["no images table", "its own images"])
async def test_images_on_a_database_without_the_demos_images_table_are_404_not_503(
    tmp_path: Path, backend: str, own_images: bool
) -> None:
    """A database the service did not create: no ``images``, or an ``images`` of its own.
    Either is a 404 that says why; a 503 would have clients retry forever."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    url = (f"sqlite+aiosqlite:///{tmp_path / 'app.db'}" if backend == "sqlite"
           else await scratch_postgres_url("images_absent"))
    settings = load_settings(database_url=url, data_dir=data_dir)
    engine = create_engine(url, state_path=settings.state_database_path)
    try:
        async with engine.begin() as conn:
            await conn.execute(text("CREATE TABLE orders (id integer PRIMARY KEY)"))
            if own_images:
                await conn.execute(text("CREATE TABLE images (image_id integer PRIMARY KEY, "
                                        "caption text)"))
                await conn.execute(text("INSERT INTO images VALUES (1, 'ours')"))
        await migrate(engine)
    finally:
        await engine.dispose()
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://exporter") as client:
            response = await client.get("/images/1")
    assert response.status_code == 404, response.text
    assert "no images table of the demo's" in response.json()["message"]

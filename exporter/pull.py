"""``exporter pull``: an export, or a job's file, into a local file that is only ever
complete, resumed by itself on failure and after a restart.

- An export (NDJSON or CSV) is written to ``FILE.part`` as its rows arrive and renamed to
  FILE when the body ended as a complete one does. Run again after a Ctrl-C or a crash, it
  keeps the complete rows of ``FILE.part`` (a half-written last row is cut off) and asks
  for the rows after the last one (client.py). The file then holds the bytes one
  uninterrupted export would have given, its CSV header once.
- A job's file is fetched with ``Range`` after what ``FILE.part`` holds (``If-Range``: the
  file's sha256, so that a file replaced meanwhile is fetched whole), then hashed: only a
  file whose sha256 is the job's is renamed into place; a partial file that does not hash
  right is discarded and fetched again from the start.

Exit codes: 0 done, 1 failed (after the retries, or the job is not done), 2 bad usage (a
wrong URL or option, or a request the service refuses: 4xx).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO
from urllib.parse import parse_qsl, unquote, urlsplit

import httpx

from exporter.client import (
    RETRYABLE,
    Client,
    ExportError,
    Failures,
    Refused,
    Retry,
    _Export,
    check,
)

EXIT_DONE, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
READ_SIZE = 1 << 20


@dataclass(frozen=True)
class Target:
    """What a URL names: an export (table, format, query) or a job."""

    base_url: str
    table: str = ""
    format: str = ""
    params: tuple[tuple[str, str], ...] = ()
    job: str = ""


def parse_url(url: str) -> Target:
    parts = urlsplit(url)
    base = f"{parts.scheme}://{parts.netloc}"
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{url!r} is not an http(s) URL; e.g. "
                         "http://127.0.0.1:8000/exports/users.ndjson?country=DE")
    path = parts.path
    if path.startswith("/exports/"):
        table, dot, extension = unquote(path.removeprefix("/exports/")).rpartition(".")
        if not dot or not table:
            raise ValueError(f"{url!r}: an export's path is /exports/<table>.<ndjson|csv>")
        return Target(base, table, extension, tuple(parse_qsl(parts.query,
                                                              keep_blank_values=True)))
    if path.startswith("/jobs/"):
        job = path.removeprefix("/jobs/").removesuffix("/download").strip("/")
        if job and "/" not in job:
            return Target(base, job=job)
    raise ValueError(f"{url!r} names neither an export (/exports/<table>.<ndjson|csv>) nor a "
                     "job (/jobs/<id> or /jobs/<id>/download)")


class Bar:
    """A progress bar on a terminal (rows, bytes, rate; percent and time left once the
    total is known); nothing otherwise, not even tqdm's import (30 ms of a pull's start)."""

    def __init__(self, unit: str, quiet: bool) -> None:
        self.bar: Any = None
        if not quiet and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(unit=unit, unit_scale=True, dynamic_ncols=True, leave=True)

    @property
    def shown(self) -> bool:
        return self.bar is not None

    def __enter__(self) -> Bar:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        if self.bar is not None:
            self.bar.close()

    def rows(self, rows: int, size: int, total: int | None) -> None:
        if self.bar is None:
            return
        if total is not None and self.bar.total != total:
            self.bar.total = total
        self.bar.set_postfix_str(f"{size / 1e6:.1f} MB", refresh=False)
        self.bar.update(rows - self.bar.n)

    def bytes(self, size: int, total: int) -> None:
        if self.bar is None:
            return
        self.bar.total = total
        self.bar.update(size - self.bar.n)


SYNC_BYTES = 32 << 20


class Syncer:
    """The file on disk before it is renamed into place (a crash must not leave a renamed,
    empty file), flushed in the background every ``SYNC_BYTES`` while it is written, so that
    the last fsync has only the tail to write (1M users: it was 0.1 s of a 2 s pull)."""

    def __init__(self, file: BinaryIO) -> None:
        self.file = file
        self.synced = 0
        self.thread: threading.Thread | None = None
        self.error: OSError | None = None

    def wrote(self) -> None:
        if self.file.tell() - self.synced < SYNC_BYTES:
            return
        if self.thread is not None and self.thread.is_alive():
            return  # the disk is behind: one sync at a time
        self.file.flush()
        self.synced = self.file.tell()
        self.thread = threading.Thread(target=self._sync, daemon=True)
        self.thread.start()

    def _sync(self) -> None:
        try:
            os.fdatasync(self.file.fileno())
        except OSError as error:  # raised by finish(): the file is not known to be on disk
            self.error = error

    def finish(self) -> None:
        if self.thread is not None:
            self.thread.join()
        if self.error is not None:
            raise self.error
        self.file.flush()
        os.fsync(self.file.fileno())


def _aside(path: Path) -> Path:
    return path.with_name(path.name + ".part")


def _stored(part: Path, export: _Export) -> None:
    """Keep the complete rows of a partial file, cut off the rest, and tell the export to go
    on after its last row."""
    with part.open("r+b") as file:
        file.truncate(export.resume(iter(lambda: file.read(READ_SIZE), b"")))
    if export.limit is not None and export.rows > export.limit:
        raise ExportError(f"{part} holds {export.rows} rows, more than limit={export.limit}: "
                          "not this export's partial file; remove it to start again")


def _identity(target: Target) -> str:
    """What a partial file is a part of: the export's URL, beside it in FILE.part.url."""
    return f"{target.table}.{target.format}?{sorted(target.params)}"


def pull_export(client: Client, target: Target, out: Path, quiet: bool = False) -> int:
    """The export into ``out``; its row count."""
    with Bar("rows", quiet) as bar:
        return _pull_export(client, target, out, bar)


def _pull_export(client: Client, target: Target, out: Path, bar: Bar) -> int:
    # The total is for the bar's percent alone; counting costs the service a count(*).
    export = client.export(target.table, target.format, target.params, count=bar.shown)
    part = _aside(out)
    label = part.with_name(part.name + ".url")
    if part.exists():
        made_by = label.read_text() if label.exists() else "an unknown export"
        if made_by != _identity(target):
            raise ValueError(f"{part} is part of {made_by}, not of {_identity(target)}: "
                             "remove it (and its .url) to start again, or pull that export")
        _stored(part, export)
    else:
        label.write_text(_identity(target))
    with part.open("ab") as file:
        syncer = Syncer(file)
        for block, _rows in client.blocks(export, progress=bar.rows):
            if file.tell() == 0 and export.header:
                file.write(export.header)
            file.write(block)
            syncer.wrote()
        if file.tell() == 0 and export.header:  # no rows: the header alone
            file.write(export.header)
        syncer.finish()
    part.replace(out)
    label.unlink(missing_ok=True)
    return export.rows


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while data := file.read(READ_SIZE):
            digest.update(data)
    return digest.hexdigest()


def pull_job(client: Client, job_id: str, out: Path | None, quiet: bool = False) -> Path:
    """A succeeded job's file into ``out`` (default: its own name), sha256 checked."""
    job: dict[str, Any] = client.get_json(f"/jobs/{job_id}")
    if job["status"] != "succeeded" or not job.get("file"):
        done = f", {job['percent']:.0f}% done" if job.get("percent") is not None else ""
        raise ExportError(f"job {job_id} is {job['status']}{done}: its file can be pulled "
                          "once it has succeeded")
    file = job["file"]
    # The name is the service's (it holds the table's): a name, never a path elsewhere.
    out = out or Path(Path(str(file["name"]).replace("/", "_")).name)
    part = _aside(out)
    failures = Failures(client.retry, f"job {job_id}'s file")
    with Bar("B", quiet) as bar:
        while True:
            before = _size(part)
            try:
                _fetch_rest(client, file, part, lambda have: bar.bytes(have, file["size"]))
            except RETRYABLE as error:
                if _size(part) > before:
                    failures.progressed()  # bytes came: a new run of failures
                time.sleep(failures.wait(error))
                continue
            if sha256_of(part) == file["sha256"]:
                break
            part.unlink()
            time.sleep(failures.wait(ExportError(
                f"{part} did not hash to the job's sha256 {file['sha256']} (a damaged partial "
                "file): fetched again from the start")))
    part.replace(out)
    return out


REDIRECTS = (301, 302, 303, 307, 308)


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def _fetch_rest(client: Client, file: dict[str, Any], part: Path,
                progress: Callable[[int], None]) -> None:
    have = _size(part)
    if have > file["size"]:  # longer than the file: not a prefix of it
        part.unlink()
        have = 0
    if have == file["size"]:
        part.touch()  # an empty file too (a scheduled export that found no rows)
        return
    headers = {"Accept-Encoding": "identity"}
    if have:
        headers |= {"Range": f"bytes={have}-", "If-Range": f'"{file["sha256"]}"'}
    with client.http.stream("GET", file["url"], headers=headers) as response:
        if response.status_code in REDIRECTS and "location" in response.headers:
            # A presigned URL of the file's object in a bucket: asked without the API key
            # (it is its own credential) and without If-Range, since the bucket's ETag is not
            # the sha256; an object of a job's attempt is never replaced, and the sha256
            # checked at the end catches what a wrong range would do.
            headers.pop("If-Range", None)
            location = response.url.join(response.headers["location"])
            with httpx.stream("GET", location, headers=headers,
                              timeout=client.http.timeout) as redirected:
                _write_rest(redirected, file, part, progress)
            return
        _write_rest(response, file, part, progress)


def _write_rest(response: httpx.Response, file: dict[str, Any], part: Path,
                progress: Callable[[int], None]) -> None:
    check(response)
    if response.status_code not in (200, 206):
        raise ExportError(f"{file['url']} answered {response.status_code}, not the file")
    # 206: the rest, after what the part holds; 200: the whole file (If-Range said no).
    with part.open("ab" if response.status_code == 206 else "wb") as out:
        for data in response.iter_raw():
            out.write(data)
            progress(out.tell())
        out.flush()
        os.fsync(out.fileno())


def run_pull(args: argparse.Namespace) -> int:
    """``exporter pull``, with its exit code and a message naming what went wrong."""
    try:
        if args.job and args.url:
            raise ValueError("give an export's or a job's URL, or --job ID, not both")
        if not args.job and not args.url:
            raise ValueError("give an export's or a job's URL, or --job ID")
        target = Target(args.server.rstrip("/"), job=args.job) if args.job else parse_url(args.url)
        if args.attempts < 1:
            raise ValueError("--attempts must be 1 or more")
    except ValueError as exc:
        print(f"exporter pull: {exc}", file=sys.stderr)
        return EXIT_USAGE
    retry = Retry(attempts=args.attempts)
    with Client(target.base_url, api_key=args.api_key, retry=retry) as client:
        try:
            if target.job:
                out = pull_job(client, target.job, args.out, args.quiet)
                print(f"exporter pull: {out} (sha256 checked)", file=sys.stderr)
            else:
                out = args.out or Path(f"{target.table.replace('/', '_')}.{target.format}")
                rows = pull_export(client, target, out, args.quiet)
                print(f"exporter pull: {out}, {rows} rows", file=sys.stderr)
        except (Refused, ValueError) as exc:
            print(f"exporter pull: {exc}", file=sys.stderr)
            return EXIT_USAGE
        except ExportError as exc:
            print(f"exporter pull: {exc}", file=sys.stderr)
            return EXIT_FAILED
        except OSError as exc:  # the output directory is missing, the disk is full...
            print(f"exporter pull: {exc}", file=sys.stderr)
            return EXIT_FAILED
        except KeyboardInterrupt:
            print("exporter pull: interrupted; run it again to go on where it stopped",
                  file=sys.stderr)
            return 130
    return EXIT_DONE

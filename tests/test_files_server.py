"""Files against a real ``exporter serve``: what download tools, sockets and ``/proc`` see.

curl, wget and aria2c resume or split a download to the right sha256; raw requests that
no client would normalise never reach a byte outside the data directory; a 64 MiB download
keeps the server's memory flat; and a client that goes away stops the reads at once.
"""

from __future__ import annotations

import hashlib
import random
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import Database, serving
from tests.test_files import multipart_parts
from tests.test_server import metric, read_until, slow_reader, wait_for

BIG_BYTES = 64 * 1024 * 1024
CHUNK_BYTES = 1024 * 1024  # the default EXPORTER_FILE_CHUNK_BYTES, stated for the bounds
SECRET = b"TOP-SECRET-" + random.Random(9).randbytes(8).hex().encode()


@dataclass(frozen=True)
class FileServer:
    url: str
    pid: int
    data_dir: Path
    sha256: str

    @property
    def big_url(self) -> str:
        return f"{self.url}/files/big.bin"


def write_data_dir(data_dir: Path, source: Database) -> str:
    """images/ from the seeded database, files/big.bin, and secrets to keep out of reach:
    one in the data directory, one beside it, reached by symlinks from files/ and images/."""
    shutil.copytree(source.data_dir / "images", data_dir / "images")
    files = data_dir / "files"
    files.mkdir()
    digest = hashlib.sha256()
    rng = random.Random(5)
    with (files / "big.bin").open("wb") as out:
        for _ in range(BIG_BYTES // CHUNK_BYTES):
            block = rng.randbytes(CHUNK_BYTES)
            digest.update(block)
            out.write(block)
    (data_dir / "secret.txt").write_bytes(SECRET)
    (data_dir.parent / "outside.txt").write_bytes(SECRET)
    (files / "escape").symlink_to(data_dir.parent / "outside.txt")
    (files / "escape-up").symlink_to("../secret.txt")
    (files / ".secret.part").write_bytes(SECRET)
    (data_dir / "images" / "leak.png").symlink_to(data_dir.parent / "outside.txt")
    return digest.hexdigest()


@pytest.fixture(scope="module")
def file_server(
    sqlite_database: Database, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FileServer]:
    data_dir = tmp_path_factory.mktemp("served") / "data"
    data_dir.mkdir()
    sha256 = write_data_dir(data_dir, sqlite_database)
    env = sqlite_database.env(EXPORTER_DATA_DIR=str(data_dir))
    with serving(env) as server:
        # The first request hashes the file; the tests below measure downloads, not that.
        assert httpx.head(f"{server.url}/files/big.bin", timeout=30).status_code == 200
        yield FileServer(server.url, server.pid, data_dir, sha256)


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run(*command: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(c) for c in command], capture_output=True, text=True, timeout=60)


def needs(tool: str) -> None:
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed (apt-get install {tool.replace('aria2c', 'aria2')})")


@pytest.mark.parametrize("first_part", [1, 1_000_001, BIG_BYTES - 1])
def test_curl_resumes_a_partial_download_to_the_same_sha256(
    file_server: FileServer, tmp_path: Path, first_part: int
) -> None:
    out = tmp_path / "big.bin"
    partial = run("curl", "-sS", "-f", "-r", f"0-{first_part - 1}", "-o", out, file_server.big_url)
    assert partial.returncode == 0, partial.stderr
    assert out.stat().st_size == first_part
    resumed = run("curl", "-sS", "-f", "-C", "-", "-o", out, file_server.big_url)
    assert resumed.returncode == 0, resumed.stderr
    assert sha256_of(out) == file_server.sha256


def test_curl_resumes_a_truncated_download_and_leaves_a_complete_one_alone(
    file_server: FileServer, tmp_path: Path
) -> None:
    out = tmp_path / "big.bin"
    assert run("curl", "-sS", "-f", "-o", out, file_server.big_url).returncode == 0
    with out.open("r+b") as handle:
        handle.truncate(12_345_678)
    assert run("curl", "-sS", "-f", "-C", "-", "-o", out, file_server.big_url).returncode == 0
    assert sha256_of(out) == file_server.sha256
    again = run("curl", "-sS", "-C", "-", "-o", out, file_server.big_url)
    assert again.returncode == 0, again.stderr
    assert sha256_of(out) == file_server.sha256


def test_wget_continues_a_partial_download(file_server: FileServer, tmp_path: Path) -> None:
    needs("wget")
    out = tmp_path / "big.bin"
    out.write_bytes((file_server.data_dir / "files" / "big.bin").read_bytes()[:7_777_777])
    result = run("wget", "-q", "-c", "-O", out, file_server.big_url)
    assert result.returncode == 0, result.stderr
    assert sha256_of(out) == file_server.sha256
    done = run("wget", "-c", "-O", out, file_server.big_url)
    assert done.returncode == 0
    assert "already fully retrieved" in done.stderr
    assert sha256_of(out) == file_server.sha256


def test_aria2c_splits_a_download_over_four_connections(
    file_server: FileServer, tmp_path: Path
) -> None:
    needs("aria2c")
    result = run("aria2c", "-q", "-x4", "-s4", "-k1M", "--file-allocation=none",
                 "-d", tmp_path, "-o", "big.bin", file_server.big_url)
    assert result.returncode == 0, result.stdout + result.stderr
    assert sha256_of(tmp_path / "big.bin") == file_server.sha256


def test_aria2c_continues_a_partial_download(file_server: FileServer, tmp_path: Path) -> None:
    needs("aria2c")
    out = tmp_path / "big.bin"
    out.write_bytes((file_server.data_dir / "files" / "big.bin").read_bytes()[:3_000_001])
    result = run("aria2c", "-q", "-c", "-x4", "-s4", "-k1M", "--file-allocation=none",
                 "-d", tmp_path, "-o", "big.bin", file_server.big_url)
    assert result.returncode == 0, result.stdout + result.stderr
    assert sha256_of(out) == file_server.sha256


def test_curl_revalidates_with_the_etag_and_gets_304(
    file_server: FileServer, tmp_path: Path
) -> None:
    etag_file = tmp_path / "etag"
    image = f"{file_server.url}/images/1"
    first = run("curl", "-sS", "--etag-save", etag_file, "-o", tmp_path / "a.png",
                "-w", "%{http_code}", image)
    assert first.stdout == "200"
    second = run("curl", "-sS", "--etag-compare", etag_file, "-o", tmp_path / "b.png",
                 "-w", "%{http_code}", image)
    assert second.stdout == "304"


def test_several_ranges_parse_as_multipart_from_a_real_server(file_server: FileServer) -> None:
    blob = (file_server.data_dir / "files" / "big.bin").read_bytes()
    response = httpx.get(file_server.big_url, headers={"Range": "bytes=0-99,5000000-6999999,-7"})
    assert response.status_code == 206
    size = len(blob)
    assert multipart_parts(response) == [
        ("application/octet-stream", f"bytes 0-99/{size}", blob[:100]),
        ("application/octet-stream", f"bytes 5000000-6999999/{size}", blob[5000000:7000000]),
        ("application/octet-stream", f"bytes {size - 7}-{size - 1}/{size}", blob[-7:]),
    ]


# Request targets sent byte for byte: no client library gets to normalise them.
HOSTILE_TARGETS = [
    "/files/../secret.txt", "/files/..%2Fsecret.txt", "/files/..%2fsecret.txt",
    "/files/%2e%2e%2fsecret.txt", "/files/%2E%2E%2F%2E%2E%2Foutside.txt",
    "/files/..%5Csecret.txt", "/files/..\\secret.txt", "/files/%2Fetc%2Fpasswd",
    "/files//etc/passwd", "/files/%00", "/files/big.bin%00.txt", "/files/escape",
    "/files/escape-up", "/files/.secret.part", "/files/..", "/files/.", "/files/%2e%2e",
    "/files/..%252Fsecret.txt", "/files/%c0%ae%c0%ae%2fsecret.txt", "/files/%2e%2e/secret.txt",
    "/files/./../secret.txt", "/../secret.txt", "/files/x/../../secret.txt",
    "/files/%2e%2e%5c%2e%2e%5coutside.txt", "/files/secret.txt", "/files/..%00/secret.txt",
    "/images/..%2Fsecret.txt", "/images/1%2F..%2F..%2Fsecret.txt", "/images/leak.png",
    "/images/../secret.txt", "/images/%2e%2e", "/images/0x1", "/images/1;/../secret.txt",
    "http://127.0.0.1/files/../secret.txt", "/files/../../../../../../etc/passwd",
    "/files/%2e%2e%2f%2e%2e%2f%2e%2e%2f%2e%2e%2fetc%2fpasswd", "/files/big.bin/../../secret.txt",
]


def raw_get(server: FileServer, target: str) -> bytes:
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        request = f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        sock.sendall(request.encode("latin-1"))
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return received


@pytest.mark.parametrize("target", HOSTILE_TARGETS)
def test_traversal_attempts_never_leak_a_byte(file_server: FileServer, target: str) -> None:
    response = raw_get(file_server, target)
    status = int(response.split(b" ", 2)[1])
    assert status in (400, 404, 422), response[:300]
    assert SECRET not in response
    assert b"root:x:0:0" not in response


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def read_chars(pid: int) -> int:
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar")


def test_a_64_mib_download_keeps_server_memory_flat(
    file_server: FileServer, tmp_path: Path
) -> None:
    warm = run("curl", "-sS", "-f", "-o", "/dev/null", file_server.big_url)
    assert warm.returncode == 0  # allocator arenas and buffers exist before the baseline
    baseline = rss_kib(file_server.pid)
    peak = baseline
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, rss_kib(file_server.pid))
            time.sleep(0.005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        # Rate-limited so that the download lasts long enough to be sampled (about 0.5 s).
        result = run("curl", "-sS", "-f", "--limit-rate", "128M", "-o", tmp_path / "big.bin",
                     file_server.big_url)
    finally:
        stop.set()
        sampler.join()
    assert result.returncode == 0, result.stderr
    assert sha256_of(tmp_path / "big.bin") == file_server.sha256
    growth_mib = (peak - baseline) / 1024
    assert growth_mib < 16, f"RSS grew {growth_mib:.1f} MiB over {baseline / 1024:.0f} MiB"


def test_a_client_that_disconnects_stops_the_reads_at_once(file_server: FileServer) -> None:
    url = file_server.url
    assert wait_for(lambda: metric(url, "exporter_file_bodies_in_progress") == 0)
    disconnected = metric(url, "exporter_file_bodies_finished_total", outcome="disconnected")
    sock = slow_reader(url, "/files/big.bin")
    head = read_until(sock, b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK")
    time.sleep(0.5)  # the server runs ahead as far as the socket buffers allow, then waits
    assert metric(url, "exporter_file_bodies_in_progress") == 1
    sent_while_stalled = metric(url, "exporter_file_bytes_sent_total")
    time.sleep(0.3)
    assert metric(url, "exporter_file_bytes_sent_total") == sent_while_stalled
    sock.close()
    assert wait_for(lambda: metric(url, "exporter_file_bodies_in_progress") == 0, seconds=5)
    assert metric(url, "exporter_file_bodies_finished_total", outcome="disconnected") == (
        disconnected + 1
    )
    reads_after = read_chars(file_server.pid)
    time.sleep(0.5)
    assert read_chars(file_server.pid) - reads_after < CHUNK_BYTES, "reads went on"
    sent = metric(url, "exporter_file_bytes_sent_total") - sent_while_stalled
    assert sent <= 2 * CHUNK_BYTES
    assert httpx.get(f"{url}/health").status_code == 200


def test_no_file_body_failed_in_any_of_these_tests(file_server: FileServer) -> None:
    assert httpx.get(f"{file_server.url}/files").status_code == 200
    assert metric(file_server.url, "exporter_file_bodies_finished_total", outcome="failed") == 0

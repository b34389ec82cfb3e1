"""API keys: every endpoint but the probes needs ``Authorization: Bearer <key>``; without
keys, loopback only. The keys never show up in a message, a log line or a repr."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from exporter import auth
from exporter.app import create_app
from exporter.auth import KeyRing, bearer_token, is_loopback
from exporter.config import load_settings
from tests.conftest import API_KEYS as KEYS
from tests.conftest import GOLDEN_ROWS, TOTAL_ROWS, Database, running_server

NO_JOB = "0" * 32
GUARDED = [
    "/exports/users.csv", "/exports/users.ndjson?limit=5", "/exports/users.json",
    "/files", "/files/large-file.bin", "/images/1",
    "/jobs", f"/jobs/{NO_JOB}", f"/jobs/{NO_JOB}/events", f"/jobs/{NO_JOB}/download",
    "/schedules", "/metrics", "/docs", "/openapi.json", "/",
    "/health/", "/healthz", "/ready/now", "/no/such/page",
]


def bearer(key: str, scheme: str = "Bearer") -> dict[str, str]:
    return {"Authorization": f"{scheme} {key}"}


@pytest.fixture(scope="module")
async def keyed(sqlite_database: Database) -> AsyncIterator[httpx.AsyncClient]:
    """In-process client of a service with two API keys."""
    app = create_app(sqlite_database.settings(run_worker=False, api_keys=",".join(KEYS)))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://exporter") as c:
            yield c


def assert_refused(response: httpx.Response, says: str, oauth_error: str | None = None) -> None:
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["error"] == "unauthorized"
    assert says in body["message"]
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith("Bearer ")
    assert ("error=" in challenge) == (oauth_error is not None)
    if oauth_error:
        assert f'error="{oauth_error}"' in challenge


@pytest.mark.parametrize("path", GUARDED)
async def test_every_endpoint_but_the_probes_is_401_without_an_authorization_header(
    keyed: httpx.AsyncClient, path: str
) -> None:
    assert_refused(await keyed.get(path), "no Authorization header")


@pytest.mark.parametrize("path", GUARDED)
async def test_a_wrong_key_is_401_and_is_never_quoted_back(
    keyed: httpx.AsyncClient, path: str
) -> None:
    response = await keyed.get(path, headers=bearer("guess-S3CRET-value"))
    assert_refused(response, "not one of this service's API keys", "invalid_token")
    assert "S3CRET" not in response.text and "S3CRET" not in str(response.headers)


@pytest.mark.parametrize("value", ["Basic a2V5LW9uZTo=", KEYS[0], f"Token {KEYS[0]}"])
async def test_another_scheme_or_a_bare_key_is_401_without_quoting_it(
    keyed: httpx.AsyncClient, value: str
) -> None:
    response = await keyed.get("/files", headers={"Authorization": value})
    assert_refused(response, "does not use the Bearer scheme")
    assert KEYS[0] not in response.text and "Token" not in response.text


async def test_bearer_without_a_key_or_two_headers_are_malformed_requests(
    keyed: httpx.AsyncClient,
) -> None:
    assert_refused(
        await keyed.get("/files", headers={"Authorization": "Bearer "}), "holds no key",
        "invalid_request",
    )
    two = [("Authorization", f"Bearer {KEYS[0]}"), ("Authorization", f"Bearer {KEYS[1]}")]
    assert_refused(await keyed.get("/files", headers=two), "send exactly one", "invalid_request")


SEND = "send `Authorization: Bearer <key>`"


@pytest.mark.parametrize(("headers", "message"), [
    ([], f"no Authorization header; {SEND} with one of this service's API keys"),
    ([("Authorization", "Basic eDp5")],
     f"the Authorization header does not use the Bearer scheme; {SEND}"),
    ([("Authorization", "Bearer \t")],
     f"the Authorization header says Bearer but holds no key; {SEND}"),
    ([("Authorization", f"Bearer {KEYS[0]}")] * 2,
     "2 Authorization headers; send exactly one, `Authorization: Bearer <key>`"),
    ([("Authorization", "Bearer wrong-key")],
     "the key in the Authorization header is not one of this service's API keys"),
])
async def test_each_refusal_says_what_was_wrong_and_how_to_send_a_key(
    keyed: httpx.AsyncClient, headers: list[tuple[str, str]], message: str
) -> None:
    response = await keyed.get("/files", headers=headers)
    assert response.status_code == 401
    assert response.json()["message"] == message  # as docs/access.md quotes them


def test_blanks_around_the_key_are_dropped_and_nothing_else() -> None:
    sent = [(b"authorization", b"Bearer \tX-key-X \t")]
    assert bearer_token(sent) == b"X-key-X"


async def test_a_refused_post_never_reaches_the_route(keyed: httpx.AsyncClient) -> None:
    before = (await keyed.get("/jobs", headers=bearer(KEYS[0]))).json()
    refused = await keyed.post("/jobs", json={"format": "csv"}, headers=bearer("wrong-key"))
    assert refused.status_code == 401
    assert (await keyed.get("/jobs", headers=bearer(KEYS[0]))).json() == before


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
async def test_each_key_opens_every_endpoint_with_the_scheme_in_any_case(
    keyed: httpx.AsyncClient, key: str, scheme: str
) -> None:
    headers = bearer(key, scheme)
    export = await keyed.get("/exports/users.csv?limit=3&fields=id", headers=headers)
    assert export.status_code == 200
    assert export.text == "id\r\n1\r\n2\r\n3\r\n"
    for path in ("/", "/files", "/metrics", "/openapi.json", "/docs", "/schedules"):
        assert (await keyed.get(path, headers=headers)).status_code == 200, path
    # Past the key, the routes answer as ever: no such job is a 404, not a 401.
    assert (await keyed.get(f"/jobs/{NO_JOB}/events", headers=headers)).status_code == 404


@pytest.mark.parametrize("headers", [{}, bearer("wrong-key"), {"Authorization": "Basic eDp5"}])
async def test_the_probes_answer_without_a_key_whatever_is_sent(
    keyed: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    assert (await keyed.get("/health", headers=headers)).json() == {"status": "ok"}
    assert (await keyed.get("/ready", headers=headers)).status_code == 200


async def test_a_websocket_without_a_key_is_refused_before_its_handshake(tmp_path: Path) -> None:
    app = create_app(load_settings(data_dir=tmp_path, run_worker=False, api_keys=KEYS[0]))
    scope = {
        "type": "websocket", "asgi": {"version": "3.0"}, "scheme": "ws", "path": "/jobs",
        "raw_path": b"/jobs", "root_path": "", "query_string": b"", "headers": [],
        "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 50000), "subprotocols": [],
    }
    sent: list[dict[str, object]] = []

    async def receive() -> dict[str, object]:
        return {"type": "websocket.connect"}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    assert sent == [
        {"type": "websocket.close", "code": auth.POLICY_VIOLATION, "reason": "unauthorized"}
    ]


def test_a_key_is_compared_with_every_key_every_time(monkeypatch: pytest.MonkeyPatch) -> None:
    compared = []

    def counting(a: bytes, b: bytes) -> bool:
        compared.append((len(a), len(b)))
        return a == b

    ring = KeyRing(["first-key", "second-key", "a-much-longer-third-key"])
    monkeypatch.setattr(auth.hmac, "compare_digest", counting)
    assert ring.admits(b"first-key")
    assert not ring.admits(b"x")
    assert compared == [(32, 32)] * 6, "no early exit, and lengths that tell nothing"


async def test_an_export_streams_whole_through_a_real_server_with_a_key(
    sqlite_database: Database,
) -> None:
    # One row a batch: the export takes seconds, so a middleware that held the body back
    # would send its first byte only once every row had been read.
    env = sqlite_database.env(
        EXPORTER_API_KEYS=",".join(KEYS), EXPORTER_RUN_WORKER="false",
        EXPORTER_BATCH_ROWS="1", EXPORTER_CHUNK_BYTES="4096",
    )
    with running_server(env) as base_url:
        url = f"{base_url}/exports/users.ndjson"
        refused = httpx.get(url)
        assert refused.status_code == 401 and refused.json()["error"] == "unauthorized"
        headers = {**bearer(KEYS[1]), "Accept-Encoding": "identity"}
        chunks: list[bytes] = []
        with httpx.stream("GET", url, headers=headers, timeout=30) as response:
            assert response.status_code == 200
            for chunk in response.iter_raw():
                if not chunks:  # the first bytes are here: how far has the export read?
                    read_so_far = rows_exported(base_url, headers)
                chunks.append(chunk)
        lines = b"".join(chunks).decode().splitlines()
        assert read_so_far < TOTAL_ROWS / 2, "the first bytes came before the last row was read"
        assert len(lines) == TOTAL_ROWS
        assert json.loads(lines[-1])["id"] == GOLDEN_ROWS[-1]["id"]
        assert httpx.get(f"{base_url}/health").status_code == 200


def rows_exported(base_url: str, headers: dict[str, str]) -> float:
    """``exporter_export_rows_total`` of NDJSON exports, read from /metrics (behind the key)."""
    text = httpx.get(f"{base_url}/metrics", headers=headers).text
    return sum(sample.value for family in text_string_to_metric_families(text)
               for sample in family.samples
               if sample.name == "exporter_export_rows_total"
               and sample.labels.get("format") == "ndjson")


# Without keys: loopback only.

@pytest.mark.parametrize("host", [
    "127.0.0.1", "127.8.9.10", "::1", "localhost", "LOCALHOST", "::ffff:127.0.0.1",
])
def test_loopback_hosts(host: str) -> None:
    assert is_loopback(host)


@pytest.mark.parametrize("host", [
    "0.0.0.0", "::", "", "192.168.1.10", "10.0.0.1", "::ffff:10.0.0.1", "fe80::1",
    "example.com", "localhost.example.com", "[::1]",
])
def test_hosts_that_are_not_loopback(host: str) -> None:
    assert not is_loopback(host)


REFUSAL = (  # as the README quotes it
    "refusing to listen on 0.0.0.0, which is not a loopback address, without API keys: anyone "
    "who reaches it could read every export. Either set EXPORTER_API_KEYS=<key>[,<key>...] so "
    "that requests need `Authorization: Bearer <key>`, or set EXPORTER_ALLOW_OPEN=true if it "
    "is meant to be open (a port published on loopback only, or a proxy in front that "
    "authenticates)"
)


@pytest.mark.parametrize(("host", "settings", "refusal"), [
    ("0.0.0.0", {}, REFUSAL),
    ("0.0.0.0", {"api_keys": KEYS[0]}, None),
    ("0.0.0.0", {"allow_open": True}, None),
    ("127.0.0.1", {}, None),
    ("localhost", {}, None),
])
def test_serve_refuses_an_open_address_without_keys_and_says_both_ways_out(
    tmp_path: Path, host: str, settings: dict[str, object], refusal: str | None
) -> None:
    assert auth.listen_refusal(host, load_settings(data_dir=tmp_path, **settings)) == refusal


@pytest.mark.parametrize(("server", "allow_open", "status"), [
    ("127.0.0.1", False, 200), ("[::1]", False, 200), ("192.0.2.1", False, 403),
    ("[2001:db8::1]", False, 403), ("192.0.2.1", True, 200),
    ("exporter", False, 200),  # a name, not an address (a unix socket's path): not judged
])
async def test_without_keys_a_request_on_an_address_beyond_loopback_is_refused(
    tmp_path: Path, server: str, allow_open: bool, status: int
) -> None:
    app = create_app(load_settings(data_dir=tmp_path, run_worker=False, allow_open=allow_open))
    transport = httpx.ASGITransport(app=app)  # tells the app the request came in on `server`
    async with httpx.AsyncClient(transport=transport, base_url=f"http://{server}") as client:
        response = await client.get("/health")
    assert response.status_code == status
    if status == 403:
        assert response.json()["error"] == "loopback_only"
        assert "EXPORTER_API_KEYS" in response.json()["message"]
        assert response.json()["address"] == server.strip("[]")


async def test_a_service_with_keys_starts_and_stops_through_the_key_check(
    tmp_path: Path,
) -> None:
    app = create_app(load_settings(data_dir=tmp_path, run_worker=False, api_keys=KEYS[0]))
    events = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])
    sent: list[object] = []

    async def receive() -> dict[str, str]:
        return next(events)

    async def send(message: dict[str, object]) -> None:
        sent.append(message["type"])

    await app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, receive, send)
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]

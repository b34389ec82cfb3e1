"""The start page in a real browser (headless Chromium) against a real ``exporter serve``:
what a person sees and gets, on a database that holds, besides the demo, a table of its
own whose name needs encoding, with a composite key, dates, booleans and JSON."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import httpx
import pyarrow.parquet as pq
import pytest

from tests.browser import Page, chromium, find_chromium
from tests.conftest import Database, clone_database, serving, stop_process
from tests.proxy import CuttingProxy

FOREIGN = "Order Items"
FOREIGN_SQL = """
CREATE TABLE "Order Items" (
    "Order ID" INTEGER NOT NULL,
    line INTEGER NOT NULL,
    sku TEXT NOT NULL,
    shipped_on DATE,
    quantity INTEGER NOT NULL,
    gift BOOLEAN,
    notes JSON,
    PRIMARY KEY ("Order ID", line)
)
"""
FOREIGN_ROWS = [
    (order, line, f"SKU-{(order * line) % 7}",
     None if order % 10 == 0 else (date(2024, 1, 1) + timedelta(days=order)).isoformat(),
     (order + line) % 5 + 1, (order + line) % 2, json.dumps({"n": order}) if line == 1 else None)
    for order in range(1, 101) for line in range(1, 4)
]
ODD = "Odd/Name #1?"  # every character here needs encoding in a URL's path
ODD_SQL = 'CREATE TABLE "Odd/Name #1?" (id INTEGER PRIMARY KEY, "Note" TEXT)'
# Quick jobs, whose progress the page can still show.
FAST_JOBS = {
    "EXPORTER_BATCH_ROWS": "50",
    "EXPORTER_JOB_PROGRESS_SECONDS": "0.1",
    "EXPORTER_EVENTS_POLL_SECONDS": "0.1",
    "EXPORTER_WORKER_POLL_SECONDS": "0.2",
}


@pytest.fixture(scope="module")
def browser_path() -> str:
    path = find_chromium()
    if path is None:
        pytest.skip("the start page's tests need Chromium: apt-get install chromium, or set "
                    "EXPORTER_TEST_CHROMIUM to a Chrome or Chromium binary")
    return path


@pytest.fixture(scope="module")
async def page_database(
    browser_path: str, sqlite_database: Database, tmp_path_factory: pytest.TempPathFactory
) -> Database:
    database = await clone_database(sqlite_database, tmp_path_factory.mktemp("page"), "page")
    with sqlite3.connect(database.data_dir / "exporter.db") as conn:  # plain SQL, no models
        conn.execute(FOREIGN_SQL)
        conn.executemany(f'INSERT INTO "{FOREIGN}" VALUES (?, ?, ?, ?, ?, ?, ?)', FOREIGN_ROWS)
        conn.execute(ODD_SQL)
        conn.executemany(f'INSERT INTO "{ODD}" VALUES (?, ?)', [(1, "a, b"), (2, None)])
    conn.close()
    return database


@pytest.fixture(scope="module")
def server(page_database: Database) -> Iterator[str]:
    with serving(page_database.env(**FAST_JOBS)) as running:
        yield running.url


@pytest.fixture(scope="module")
def browser(browser_path: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Page]:
    with chromium(browser_path, tmp_path_factory.mktemp("chromium")) as page:
        yield page


@pytest.fixture
def page(browser: Page, server: str) -> Iterator[Page]:
    """The start page, freshly loaded, with the foreign table chosen."""
    browser.errors.clear()
    browser.goto(f"{server}/")
    browser.wait_for("document.querySelectorAll('#table option').length > 0")
    browser.pick("#table", FOREIGN)
    yield browser
    assert browser.errors == [], "the page's scripts failed"


def column_cells(page: Page) -> list[list[str]]:
    return list(page.evaluate(
        "[...document.querySelectorAll('#columns tr')].map((row) =>"
        " [...row.cells].slice(1).map((cell) => cell.textContent))"
    ))


def operators(page: Page, column: str) -> list[str]:
    page.pick("#filters .filter:last-child select.column", column)
    return list(page.evaluate(
        "[...document.querySelectorAll('#filters .filter:last-child select.op option')]"
        ".map((option) => option.value)"
    ))


def compose(page: Page) -> None:
    """quantity, then Order ID, then shipped_on; shipped on from February on; 20 rows."""
    for name in ("quantity", "Order ID", "shipped_on"):
        page.click(f'#columns input[value="{name}"]')
    page.click("#filter-add")
    page.pick("#filters select.column", "shipped_on")
    page.pick("#filters select.op", "gte")
    page.type("#filters input.value", "2024-02-01")
    page.type("#limit", "20")


def download_href(page: Page) -> str:
    return str(page.evaluate("document.getElementById('download').href"))


def test_the_page_lists_the_tables_and_shows_the_chosen_ones_columns(page: Page) -> None:
    listed = page.evaluate("[...document.querySelectorAll('#table option')].map((o) => o.value)")
    assert FOREIGN in listed and "users" in listed
    assert page.evaluate("location.hash") == "#table=Order+Items"  # a reload keeps it
    assert column_cells(page) == [
        ["Order ID", "INTEGER", "integer", "no", "1"],
        ["line", "INTEGER", "integer", "no", "2"],
        ["sku", "TEXT", "text", "no", ""],
        ["shipped_on", "DATE", "date", "yes", ""],
        ["quantity", "INTEGER", "integer", "no", ""],
        ["gift", "BOOLEAN", "boolean", "yes", ""],
        ["notes", "JSON", "json", "yes", ""],
    ]
    assert "key (Order ID, line)" in page.text("#table-info")
    page.click("#filter-add")
    assert operators(page, "shipped_on") == ["", "exact", "gt", "gte", "lt", "lte", "isnull"]
    assert operators(page, "gift") == ["", "exact", "isnull"]
    assert operators(page, "notes") == ["isnull"]
    assert page.evaluate("[...document.querySelectorAll('#formats input')].map((i) => i.value)"
                         ) == ["csv", "tsv", "ndjson", "json", "parquet"]


def test_the_download_link_exports_what_the_api_gives_for_the_same_choices(
    page: Page, server: str
) -> None:
    compose(page)
    page.click('#formats input[value="ndjson"]')
    assert page.evaluate("[...document.querySelectorAll('#columns .order')].map((o) =>"
                         " o.textContent)") == ["2", "", "", "3", "1", "", ""]
    href = download_href(page)
    url = urlsplit(href)
    assert url.path == "/exports/Order%20Items.ndjson"
    params = parse_qsl(url.query, keep_blank_values=True)
    assert params == [("fields", "quantity,Order ID,shipped_on"),
                      ("shipped_on__gte", "2024-02-01"), ("limit", "20")]
    assert "curl" in page.text("#curl") and href in page.text("#curl")

    from_link = httpx.get(href)
    from_api = httpx.get(f"{server}/exports/{FOREIGN}.ndjson", params=params)
    assert from_link.status_code == from_api.status_code == 200
    assert from_link.content == from_api.content
    rows = [json.loads(line) for line in from_api.text.splitlines()]
    assert len(rows) == 20 and list(rows[0]) == ["quantity", "Order ID", "shipped_on"]
    assert all(row["shipped_on"] >= "2024-02-01" for row in rows)

    mark = len(page.events)
    page.click("#download")  # the browser saves it, offering the service's file name
    begun = page.wait_for_event("Browser.downloadWillBegin", lambda _params: True, mark)
    assert begun["suggestedFilename"].startswith(f"{FOREIGN}-")
    assert begun["suggestedFilename"].endswith(".ndjson")
    page.wait_for_event("Browser.downloadProgress", lambda params: (
        params["guid"] == begun["guid"] and params["state"] == "completed"), mark)
    assert (page.downloads / begun["guid"]).read_bytes() == from_api.content


def test_a_parquet_download_is_saved_whole_with_its_row_count(page: Page, server: str) -> None:
    compose(page)
    page.click('#formats input[value="parquet"]')
    href = download_href(page)
    assert urlsplit(href).path == "/exports/Order%20Items.parquet"
    from_api = httpx.get(href)
    rows = pq.read_table(io.BytesIO(from_api.content)).num_rows
    mark = len(page.events)
    page.click("#download")
    begun = page.wait_for_event("Browser.downloadWillBegin", lambda _params: True, mark)
    assert begun["suggestedFilename"].endswith(".parquet")
    page.wait_for_event("Browser.downloadProgress", lambda params: (
        params["guid"] == begun["guid"] and params["state"] == "completed"), mark)
    assert (page.downloads / begun["guid"]).read_bytes() == from_api.content
    assert f": {rows} rows," in page.text("#status")


def test_a_direct_download_shows_a_real_progress_bar_then_saves_the_whole_export(
    browser: Page, server: str
) -> None:
    expected = httpx.get(f"{server}/exports/users.csv")
    rows = len(list(csv.reader(io.StringIO(expected.text, newline="")))) - 1
    # Slowed to about 3 s, so that the bar is seen on its way.
    with CuttingProxy(server, rate=len(expected.content) / 3) as proxy:
        browser.errors.clear()
        browser.goto(f"{proxy.url}/")
        browser.wait_for("document.querySelectorAll('#table option').length > 0")
        browser.pick("#table", "users")
        browser.click('#formats input[value="csv"]')
        mark = len(browser.events)
        browser.click("#download")
        seen: list[tuple[float, float]] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            # One evaluation reads the bar and the status together: read apart, the page
            # could finish between the two and the last reading would predate "Saved".
            value, maximum, status = browser.evaluate(
                "[document.getElementById('download-progress').value,"
                " document.getElementById('download-progress').max,"
                " document.getElementById('status').innerText]")
            seen.append((value, maximum))
            if "Saved" in status:
                break
            time.sleep(0.05)
        begun = browser.wait_for_event("Browser.downloadWillBegin", lambda _params: True, mark)
        browser.wait_for_event("Browser.downloadProgress", lambda params: (
            params["guid"] == begun["guid"] and params["state"] == "completed"), mark)
    assert browser.errors == []
    assert (browser.downloads / begun["guid"]).read_bytes() == expected.content
    assert begun["suggestedFilename"].startswith("users-")
    assert seen[-1] == (rows, rows)  # the bar's end is the count the export announced
    between = [value for value, maximum in seen if 0 < value < maximum]
    assert between, f"the bar was never seen between empty and full: {seen[:5]}..."
    assert [value for value, _ in seen] == sorted(value for value, _ in seen)
    assert f"{rows:,} rows" in browser.text("#status")


def test_a_bad_filter_value_shows_the_services_message(page: Page, server: str) -> None:
    page.click("#filter-add")
    page.pick("#filters select.column", "quantity")
    page.pick("#filters select.op", "gt")
    page.type("#filters input.value", "many")
    href = download_href(page)
    mark = len(page.events)
    page.click("#download")
    shown = page.wait_for("document.querySelector('#status.error')?.innerText")
    assert shown == httpx.get(href).json()["message"]
    assert "quantity__gt" in shown and "many" in shown
    assert not [event for event in page.events[mark:]
                if event["method"].startswith("Browser.download")], "an error was saved"

    page.click("#start")
    shown = page.wait_for("document.querySelector('#job-status.error')?.innerText")
    body = {"table": FOREIGN, "format": "csv", "compression": "none",
            "filters": {"quantity__gt": "many"}}
    answer = httpx.post(f"{server}/jobs", json=body)
    assert answer.status_code == 422 and shown == answer.json()["message"]


def test_a_job_shows_its_progress_until_done_and_a_working_download(
    page: Page, server: str
) -> None:
    compose(page)
    page.click("#start")
    page.wait_for("document.getElementById('job-status').innerText.includes('succeeded')")
    assert page.evaluate("document.getElementById('progress').value") == 100
    file_url = page.evaluate("document.querySelector('#job-status a.job-file').href")
    job_file = httpx.get(file_url)
    export = httpx.get(download_href(page))
    assert job_file.status_code == export.status_code == 200
    assert job_file.content == export.content
    assert export.text.startswith("quantity,Order ID,shipped_on\r\n")
    page.wait_for("!!document.querySelector('#jobs a.job-file')")
    assert FOREIGN in page.text("#jobs")


def test_a_table_name_that_needs_encoding_gives_a_link_that_works(page: Page) -> None:
    page.pick("#table", ODD)
    page.click('#columns input[value="Note"]')
    page.click('#columns input[value="id"]')
    href = download_href(page)
    assert urlsplit(href).path == "/exports/Odd%2FName%20%231%3F.csv"
    response = httpx.get(href)
    assert response.status_code == 200, response.text
    assert response.text == 'Note,id\r\n"a, b",1\r\n,2\r\n'
    assert httpx.get(href.replace("/exports/", "/tables/").split(".csv")[0]).json()["name"] == ODD


@pytest.mark.parametrize(("path", "operations"), [
    ("/docs", "document.querySelectorAll('.opblock').length"),
    ("/redoc", "document.querySelectorAll('[data-section-id*=\"operation/\"]').length"),
])
def test_the_api_reference_renders_every_operation_from_the_service_alone(
    browser: Page, server: str, path: str, operations: str
) -> None:
    """No CDN: every request the page makes goes to the service (the CI machine reaches no
    CDN, so a page that needed one would stay blank here)."""
    document = httpx.get(f"{server}/openapi.json").json()
    expected = sum(len(set(methods) - {"head"}) for methods in document["paths"].values())
    browser.send("Network.enable")
    mark = len(browser.events)
    browser.errors.clear()
    browser.goto(f"{server}{path}")
    shown = browser.wait_for(f"{operations} >= {expected} && {operations}", timeout=30)
    assert shown >= expected
    requested = [event["params"]["request"]["url"] for event in browser.events[mark:]
                 if event["method"] == "Network.requestWillBeSent"]
    local = (server, "data:", f"blob:{server}")  # inline images, and what the page made
    # ReDoc's "API docs by Redocly" footer image is the one thing it fetches from elsewhere;
    # without it (offline) the page renders all the same, as this machine shows.
    decorative = "https://cdn.redoc.ly/redoc/logo-mini.svg"
    elsewhere = [url[:100] for url in requested
                 if not url.startswith(local) and url != decorative]
    assert requested and not elsewhere, elsewhere
    browser.send("Network.disable")


def test_a_listed_job_follows_its_events_until_done_with_readable_counts(
    browser: Page, page_database: Database, tmp_path: Path
) -> None:
    """A job queued on an API process without a worker is listed as queued; a separate
    `exporter worker` then runs it, and its row follows without a reload. On a database of
    its own: the module's server runs a worker, which would claim the job first."""
    database = asyncio.run(clone_database(page_database, tmp_path / "data", "page_jobs"))
    env = database.env(**FAST_JOBS, EXPORTER_RUN_WORKER="false")
    with serving(env) as api:
        job = httpx.post(f"{api.url}/jobs", json={"table": "users", "format": "csv"}).json()
        browser.errors.clear()
        browser.goto(f"{api.url}/")
        row = f"document.querySelector('#jobs tr[data-job=\"{job['id']}\"]')"
        assert browser.wait_for(f"{row}?.cells[3].textContent") == "queued"
        worker = subprocess.Popen([sys.executable, "-m", "exporter", "worker"], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            browser.wait_for(f"{row}?.cells[3].textContent === 'succeeded'", timeout=30)
        finally:
            stop_process(worker)
        done = httpx.get(f"{api.url}/jobs/{job['id']}").json()
        shown = browser.evaluate(f"{row}.cells[4].textContent")
        assert shown == browser.evaluate(f"({done['rows_written']}).toLocaleString()")
        assert shown != str(done["rows_written"])  # 3,004: grouped, as people read numbers
        assert browser.evaluate(f"{row}.querySelector('a.job-file').href").endswith(
            f"/jobs/{job['id']}/download")
    assert browser.errors == []


def test_the_curl_line_keeps_commas_and_a_download_is_one_request(
    page: Page, server: str
) -> None:
    compose(page)
    curl_line = page.text("#curl")
    assert "%2C" not in curl_line and "fields=quantity,Order+ID,shipped_on" in curl_line
    page.send("Network.enable")
    mark = len(page.events)
    page.click("#download")
    page.wait_for("document.getElementById('status').innerText.startsWith('Saved')")
    exports = [event for event in page.events[mark:]
               if event["method"] == "Network.requestWillBeSent"
               and "/exports/" in event["params"]["request"]["url"]]
    page.send("Network.disable")
    assert len(exports) == 1, "the export is fetched once, not checked and then fetched again"


def test_two_bad_filters_are_both_named(page: Page) -> None:
    for column, value in (("quantity", "many"), ("shipped_on", "soon")):
        page.click("#filter-add")
        page.pick("#filters .filter:last-child select.column", column)
        page.pick("#filters .filter:last-child select.op", "gt")
        page.type("#filters .filter:last-child input.value", value)
    page.click("#download")
    shown = page.wait_for("document.querySelector('#status.error')?.innerText")
    assert "quantity__gt='many'" in shown and "shipped_on__gt='soon'" in shown


def test_schedules_are_listed_made_and_deleted_on_the_page(page: Page, server: str) -> None:
    page.type("#cron", "30 4 * * 1")
    page.type("#timezone", "Europe/Berlin")
    page.click("#schedule")
    said = page.wait_for("(text => text.startsWith('Scheduled') && text)"
                         "(document.getElementById('schedule-status').innerText)")
    assert said.startswith("Scheduled: 30 4 * * 1 (Europe/Berlin)"), said
    made = [s for s in httpx.get(f"{server}/schedules").json() if s["cron"] == "30 4 * * 1"]
    assert len(made) == 1 and made[0]["job"]["table"] == FOREIGN
    row = f"document.querySelector('#schedules tr[data-schedule=\"{made[0]['id']}\"]')"
    cells = page.wait_for(f"{row} && [...{row}.cells].map((cell) => cell.textContent)")
    assert cells[:4] == ["30 4 * * 1", "Europe/Berlin", FOREIGN, "csv"]
    assert cells[4] == made[0]["next_run_at"].replace("T", " ")[:19]
    page.click(f'#schedules tr[data-schedule="{made[0]["id"]}"] button.delete')
    page.wait_for(f"!{row}")
    assert httpx.get(f"{server}/schedules/{made[0]['id']}").status_code == 404

    page.type("#cron", "0 0 30 2 *")
    page.click("#schedule")
    refused = page.wait_for("document.querySelector('#schedule-status.error')?.innerText")
    assert refused.startswith("cron: ") and "never comes" in refused


def test_following_a_table_shows_new_rows_as_they_are_committed(
    page: Page, page_database: Database
) -> None:
    assert page.evaluate("document.getElementById('follow').disabled"), \
        "a table with a two-column key cannot be followed"
    page.pick("#table", "users")
    assert not page.evaluate("document.getElementById('follow').disabled")
    database = page_database.data_dir / "exporter.db"
    with sqlite3.connect(database) as conn:
        last = conn.execute("SELECT max(id) FROM users").fetchone()[0]
    page.click('#columns input[value="id"]')
    page.click('#columns input[value="email"]')
    page.type("#after", str(last - 3))
    page.click("#follow")
    cells = "[...document.querySelectorAll('#follow-rows tr')].map((r) => r.cells[0].textContent)"
    assert page.wait_for(f"{cells}.length === 3 && {cells}")
    assert page.evaluate(cells) == [str(last), str(last - 1), str(last - 2)], "newest first"
    with sqlite3.connect(database) as conn:  # another program commits a row
        columns = [row[1] for row in conn.execute("PRAGMA table_info(users)")]
        chosen = ", ".join("max(id) + 1" if name == "id" else "'live@example.com'"
                           if name == "email" else f'"{name}"' for name in columns)
        conn.execute(f"INSERT INTO users SELECT {chosen} FROM users WHERE id = ?", (last,))
    page.wait_for(f"{cells}[0] === '{last + 1}'")
    assert page.evaluate("document.querySelector('#follow-rows tr').cells[1].textContent") \
        == "live@example.com"
    assert page.evaluate("[...document.querySelectorAll('#follow-head th')]"
                         ".map((h) => h.textContent)") == ["id", "email"]
    status = page.wait_for("document.getElementById('follow-status').textContent.startsWith"
                           "('4 rows') && document.getElementById('follow-status').textContent")
    assert status == f"4 rows, the last with key {last + 1}"
    assert not page.evaluate("document.getElementById('follow-rate').hidden")
    page.click("#unfollow")
    assert page.evaluate("document.getElementById('follow-status').textContent").endswith(
        "Stopped.")


def test_a_refused_live_stream_shows_the_services_message(page: Page) -> None:
    page.pick("#table", "users")
    page.click("#filter-add")
    page.pick("#filters select.column", "id")
    page.type("#filters input.value", "abc")
    page.click("#follow")
    message = page.wait_for("document.getElementById('follow-status').className === 'error'"
                            " && document.getElementById('follow-status').textContent")
    assert "column 'id' is integer" in message
    assert page.evaluate("document.getElementById('follow-table').hidden")

"""A headless Chromium driven over the Chrome DevTools Protocol, for the page's tests.

No driver package: Chromium speaks the protocol on a websocket, and ``websockets`` is
here already (uvicorn[standard] brings it). Playwright would want its own browser
builds, which cannot be downloaded everywhere, and Selenium a chromedriver matching the
browser; this needs only Debian's ``chromium``. Clicks and typing are real input events
at the element's place on the page; only a ``<select>`` is set from script (a headless
browser draws no drop-down to click in), with the events a person's pick fires.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from websockets.sync.client import ClientConnection, connect

from tests.conftest import stop_process

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHROMIUM_VARIABLE = "EXPORTER_TEST_CHROMIUM"  # a browser elsewhere than on PATH
START_SECONDS = 20
WAIT_SECONDS = 10
POLL_SECONDS = 0.05


def find_chromium() -> str | None:
    named = os.environ.get(CHROMIUM_VARIABLE)
    if named:
        return named
    return next(filter(None, (shutil.which(name) for name in CHROMIUM_NAMES)), None)


@dataclass
class Page:
    """One tab, and the browser-wide events (downloads) that came with its commands."""

    socket: ClientConnection
    downloads: Path  # where the browser saves them, each named by its download's guid
    session: str = ""
    events: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # uncaught script errors, as shown
    _ids: Iterator[int] = field(default_factory=lambda: iter(range(1, 1 << 62)))

    def send(self, method: str, browser: bool = False, **params: Any) -> dict[str, Any]:
        """A command to the tab (or the browser) and its result."""
        number = next(self._ids)
        message: dict[str, Any] = {"id": number, "method": method, "params": params}
        if not browser:
            message["sessionId"] = self.session
        self.socket.send(json.dumps(message))
        deadline = time.monotonic() + WAIT_SECONDS
        while True:
            reply = self._receive(deadline - time.monotonic())
            if reply is not None and reply.get("id") == number:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                result: dict[str, Any] = reply.get("result", {})
                return result

    def _receive(self, timeout: float) -> dict[str, Any] | None:
        if timeout <= 0:
            raise TimeoutError("the browser did not answer")
        try:
            message: dict[str, Any] = json.loads(self.socket.recv(timeout=timeout))
        except TimeoutError:
            return None
        if "id" not in message:
            self.events.append(message)
            if message.get("method") == "Runtime.exceptionThrown":
                details = message["params"]["exceptionDetails"]
                self.errors.append(details.get("exception", {}).get("description")
                                   or details.get("text", "an error"))
        return message

    def evaluate(self, expression: str) -> Any:
        """A script's value in the page (a promise awaited)."""
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True,
                           awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def goto(self, url: str) -> None:
        self.send("Page.navigate", url=url)
        self.wait_for("document.readyState === 'complete'")

    def wait_for(self, expression: str, timeout: float = WAIT_SECONDS) -> Any:
        """The script's value once it is truthy."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"still false after {timeout}s: {expression}\n"
                                     f"the page says:\n{self.text('body')}")
            time.sleep(POLL_SECONDS)

    def wait_for_event(self, method: str, match: Callable[[dict[str, Any]], bool],
                       since: int = 0, timeout: float = WAIT_SECONDS) -> dict[str, Any]:
        """The params of the first event ``method`` that ``match`` accepts, among those
        from ``since`` on (``len(page.events)`` before the action that causes it)."""
        deadline = time.monotonic() + timeout
        seen = since
        while True:
            for event in self.events[seen:]:
                if event.get("method") == method and match(event["params"]):
                    return dict(event["params"])
            seen = len(self.events)
            self._receive(deadline - time.monotonic())

    def text(self, selector: str) -> str:
        return str(self.evaluate(f"document.querySelector({json.dumps(selector)}).innerText"))

    def click(self, selector: str) -> None:
        """A left click in the middle of the element, as the mouse gives it."""
        x, y = self.evaluate(f"""(() => {{
            const element = document.querySelector({json.dumps(selector)});
            element.scrollIntoView({{block: "center"}});
            const box = element.getBoundingClientRect();
            return [box.x + box.width / 2, box.y + box.height / 2];
        }})()""")
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left",
                      clickCount=1)

    def type(self, selector: str, text: str) -> None:
        """Replaces the field's text, as if typed."""
        self.evaluate(f"""(() => {{
            const field = document.querySelector({json.dumps(selector)});
            field.focus();
            field.select();
        }})()""")
        self.send("Input.insertText", text=text)

    def pick(self, selector: str, value: str) -> None:
        """Chooses an option of a ``<select>`` by its value."""
        found = self.evaluate(f"""(() => {{
            const select = document.querySelector({json.dumps(selector)});
            if (![...select.options].some((option) => option.value === {json.dumps(value)}))
                return false;
            select.value = {json.dumps(value)};
            select.dispatchEvent(new Event("input", {{bubbles: true}}));
            select.dispatchEvent(new Event("change", {{bubbles: true}}));
            return true;
        }})()""")
        if not found:
            raise AssertionError(f"{selector} offers no {value!r}")


@contextmanager
def chromium(executable: str, workdir: Path) -> Iterator[Page]:
    """A headless Chromium with one blank tab; its downloads go to ``workdir/downloads``."""
    profile = workdir / "profile"
    profile.mkdir(parents=True)
    (workdir / "downloads").mkdir()
    arguments = [executable, "--headless", "--disable-gpu", "--no-first-run",
                 "--no-default-browser-check", "--remote-debugging-port=0",
                 f"--user-data-dir={profile}", "about:blank"]
    if os.geteuid() == 0:  # Chromium refuses to run as root inside its sandbox
        arguments.insert(1, "--no-sandbox")
    with open(workdir / "chromium.log", "wb") as log:
        process = subprocess.Popen(arguments, stdout=log, stderr=subprocess.STDOUT)
    try:
        socket = connect(_devtools_url(process, profile, workdir), max_size=None)
        with socket:
            page = Page(socket, workdir / "downloads")
            target = page.send("Target.createTarget", browser=True, url="about:blank")
            page.session = page.send("Target.attachToTarget", browser=True, flatten=True,
                                     targetId=target["targetId"])["sessionId"]
            page.send("Browser.setDownloadBehavior", browser=True, behavior="allowAndName",
                      downloadPath=str(workdir / "downloads"), eventsEnabled=True)
            page.send("Runtime.enable")
            page.send("Page.enable")
            yield page
    finally:
        stop_process(process)


def _devtools_url(process: subprocess.Popen[bytes], profile: Path, workdir: Path) -> str:
    """Chromium writes its port and path to this file once it listens."""
    announced = profile / "DevToolsActivePort"
    deadline = time.monotonic() + START_SECONDS
    while True:
        lines = announced.read_text().split() if announced.exists() else []
        if len(lines) >= 2:
            return f"ws://127.0.0.1:{lines[0]}{lines[1]}"
        if process.poll() is not None or time.monotonic() > deadline:
            log = (workdir / "chromium.log").read_text(errors="replace")
            raise RuntimeError(f"chromium did not start:\n{log}")
        time.sleep(POLL_SECONDS)

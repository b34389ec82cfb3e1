"""``exporter serve``'s uvicorn server, which says at shutdown what it waits for and cuts.

On SIGTERM uvicorn stops accepting, lets running responses finish for
``timeout_graceful_shutdown`` (``EXPORTER_SHUTDOWN_GRACE_SECONDS``), then cancels them: a
streamed body is cut without its last chunk, which its client sees as incomplete (curl
exits 18, httpx raises), never as complete; uvicorn logs how many it cut. Without a grace,
one slow client would hold the process for as long as its download takes. A SIGTERM
ends with exit status 0 once everything is down.
"""

from __future__ import annotations

import logging
import signal
import socket
from types import FrameType

import uvicorn

from exporter.changes import stop_followers

log = logging.getLogger("exporter.server")
LISTED = 20  # running requests named in the shutdown log line


class GracefulServer(uvicorn.Server):
    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        stop_followers()  # live streams have no end of their own: they end now, cleanly
        running = [
            f"{cycle.scope['method']} {cycle.scope['path']}"
            for connection in self.server_state.connections
            if (cycle := getattr(connection, "cycle", None)) is not None
            and not cycle.response_complete
        ]
        if running:
            log.warning(
                "shutting down: %d response(s) still running get %s s to finish, then are "
                "cut: %s", len(running), self.config.timeout_graceful_shutdown,
                ", ".join(running[:LISTED]),
            )
        await super().shutdown(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """As uvicorn's, but a SIGTERM that was shut down gracefully ends with exit status 0,
        as an orchestrator expects of a clean stop, rather than being raised again once
        the server is down (uvicorn's choice, which reads as a kill: status 143)."""
        super().handle_exit(sig, frame)
        captured = getattr(self, "_captured_signals", None)
        if sig == signal.SIGTERM and isinstance(captured, list) and sig in captured:
            captured.remove(sig)


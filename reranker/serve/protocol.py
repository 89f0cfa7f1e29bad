"""uvicorn's HTTP protocol with a deadline for request headers (slow-header clients).

uvicorn 0.55's httptools protocol sets no timer while it waits for a request's headers: the
keep-alive timer runs only after a response and is cancelled by the first byte received, so a
client that sends headers a byte at a time (slowloris), or connects and sends nothing, holds
its connection and file descriptor for as long as it likes. Here every wait for headers (a new
connection, or a kept-alive one after its response) has ``header_timeout`` seconds to end; the
connection is closed otherwise. The body's own bound is the guard's ``body_timeout`` (408).
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


def with_header_deadline(header_timeout: float) -> type[HttpToolsProtocol]:
    """The protocol class for ``uvicorn.Config(http=...)``."""

    class HeaderDeadline(HttpToolsProtocol):
        _deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and self.timeout_keep_alive_task is not None:
                self._arm()  # idle, waiting for the next request's headers

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(header_timeout, self._expired)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expired(self) -> None:
            self._deadline = None
            if not self.transport.is_closing():
                self.transport.close()

    return HeaderDeadline

"""uvicorn's httptools protocol with the two bounds it lacks: the size of a
request's line and headers (431 beyond `max_header_bytes`) and the time a
client may take to send them (408 after `header_timeout`). Without them one
client can hold a connection, and as much memory as it likes, for ever. The
body's size and time are bounded by the app (services/edge/http.py) while the
app reads it; a body still arriving once the answer is sent (a 413, a 404, a
GET /healthz that never reads it) ends the connection (RFC 9112 §9.6), since
each of its bytes would otherwise hold the connection open."""
from __future__ import annotations

import asyncio
import logging

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from services.edge.settings import EdgeSettings

log = logging.getLogger("services.edge")

_REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}


class _Refused(Exception):
    """Stops the parser once a request was refused."""


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    max_header_bytes = EdgeSettings.max_header_bytes
    header_timeout = EdgeSettings.header_timeout
    # How long the rest of an unread body is drained, at most, after the answer.
    linger_timeout = EdgeSettings.body_timeout

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._header_bytes = 0
        self._in_headers = True  # from the connection (or the previous response) to a complete header block
        self._header_timer: asyncio.TimerHandle | None = None
        self._refused = False
        self._parsed_header_bytes = 0
        self._body_done = True
        self._lingering = False
        self._linger_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._start_header_clock()  # a connection that never sends a request is closed too

    def connection_lost(self, exc) -> None:
        self._stop_header_clock()
        if self._linger_timer is not None:
            self._linger_timer.cancel()
            self._linger_timer = None
        super().connection_lost(exc)

    def _start_header_clock(self) -> None:
        if self._header_timer is None:
            self._header_timer = asyncio.get_running_loop().call_later(self.header_timeout, self._headers_too_slow)

    def _stop_header_clock(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if not self._in_headers:
            return
        if self._header_bytes:
            self._refuse(408, "The request headers were not received in time.")
        else:
            self.transport.close()

    def _refuse(self, status: int, message: str) -> None:
        if self._refused:
            return
        self._refused = True
        self._stop_header_clock()
        log.info("http request refused", extra={"status": status, "client": self.client and self.client[0]})
        body = message.encode()
        # uvicorn's default headers (Date, and Strict-Transport-Security over HTTPS), as on every answer.
        defaults = b"".join(b"%s: %s\r\n" % header for header in self.server_state.default_headers)
        self.transport.write(b"HTTP/1.1 %d %s\r\n%scontent-type: text/plain; charset=utf-8\r\n"
                             b"content-length: %d\r\nconnection: close\r\n\r\n%s"
                             % (status, _REASONS[status], defaults, len(body), body))
        self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self._refused or self._lingering:
            return  # (lingering: the rest of a body nobody reads, dropped unparsed)
        if self._in_headers:
            # The first bytes of a request start its header clock (an idle keep-alive
            # connection is uvicorn's keep-alive timeout's business).
            self._start_header_clock()
            self._header_bytes += len(data)
        super().data_received(data)
        # Still no complete header block, and already past the bound. (Body bytes in the
        # chunk that completed the headers do not count: by then _in_headers is off.)
        if self._in_headers and self._header_bytes > self.max_header_bytes:
            self._refuse(431, "The request headers are too large.")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._parsed_header_bytes = 0

    def on_url(self, url: bytes) -> None:
        self._parsed_header_bytes += len(url)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        # A whole header block can arrive in one read: count what the parser saw too.
        self._parsed_header_bytes += len(name) + len(value) + 4
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_headers = False
        self._body_done = False
        self._header_bytes = 0
        self._stop_header_clock()
        if self._parsed_header_bytes > self.max_header_bytes:
            self._refuse(431, "The request headers are too large.")
            raise _Refused()  # the parser stops here; the app never sees the request
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._body_done = True
        self._await_next_request()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self._body_done and not self.transport.is_closing():
            self._close_after_unread_body()
        else:
            self._await_next_request()

    def _close_after_unread_body(self) -> None:
        """The answer is sent but the request's body is not all in: its end may never
        come (a Content-Length of a gigabyte, dripped a byte at a time), and every
        byte of it would stop uvicorn's keep-alive clock. So the connection ends.
        RFC 9112 §9.6: close our side first (the client reads the answer, then EOF)
        and drop what still comes, for `linger_timeout` at most; closing at once
        with unread bytes would reset the connection and could lose the answer."""
        self._lingering = True
        self._stop_header_clock()
        self._unset_keepalive_if_required()
        log.debug("connection closed after an answer to an unread body",
                  extra={"client": self.client and self.client[0]})
        if self.transport.can_write_eof():
            self._linger_timer = asyncio.get_running_loop().call_later(self.linger_timeout, self.transport.close)
            self.transport.write_eof()
        else:  # TLS: no half-close
            self.transport.close()

    def _await_next_request(self) -> None:
        """Once the request is read to its end and answered (an answer may come first,
        a 413 say, while the rest of the body still arrives: those bytes are no
        headers), the next bytes are the next request's; unless a pipelined request
        (its headers in) is already running."""
        if self._body_done and (self.cycle is None or self.cycle.response_complete):
            self._in_headers = True
            self._header_bytes = 0

    def send_400_response(self, msg: str) -> None:
        if not self._refused:
            super().send_400_response(msg)


def bounded_protocol(settings: EdgeSettings) -> type[BoundedHttpToolsProtocol]:
    """The protocol class for uvicorn's `http=` with these settings' bounds."""
    return type("EdgeHttpProtocol", (BoundedHttpToolsProtocol,), {
        "max_header_bytes": settings.max_header_bytes, "header_timeout": settings.header_timeout,
        "linger_timeout": settings.body_timeout})

"""HTTP/1.1 keep-alive for the emulator's werkzeug server: one connection, many AWS calls.

Why: every task crosses four SQS calls, and werkzeug's development server answers each with
``Connection: close``, so each call paid a TCP connect on the client and a new thread in the
server (about a third of an SQS call's time on the emulator). botocore pools connections; it
only needs a server that keeps them.

Why werkzeug's server and not a pooled production server (waitress, cheroot): SQS long polls
hold their request for up to 20 s, and a benchmark runs 64 workers that each long-poll, so a
fixed pool of request threads would starve the calls that would end those polls. A
thread per connection (socketserver.ThreadingMixIn, as werkzeug's threaded server does)
cannot starve: a long poll holds only its own connection's thread.

What werkzeug's handler lacks, and this one adds (it replaces only ``run_wsgi``):

- the request body is bounded by its Content-Length (or its chunked framing) and whatever
  the application left unread is drained afterwards, so the next request line starts where
  the socket is. werkzeug instead reads "whatever is left" until the socket falls quiet,
  which on a kept-alive socket swallows, or blocks on, the client's next request;
- no ``Connection: close`` unless the client asked for it, the request was HTTP/1.0 without
  keep-alive, or the response cannot be framed (then closing is the framing);
- headers and the first body chunk leave in one write, and TCP_NODELAY is set on accepted
  sockets: with Nagle's algorithm a kept-alive socket waits for the client's delayed ACK
  (40 ms on Linux) before sending a response's second segment.
"""

from __future__ import annotations

import io
from typing import Any

from moto.moto_server.werkzeug_app import MotoRequestHandler
from werkzeug.exceptions import InternalServerError
from werkzeug.serving import connection_dropped_errors
from werkzeug.wsgi import LimitedStream

#: Bytes read at a time when draining a body the application did not read.
_DRAIN_CHUNK = 64 * 1024

#: Seconds a kept-alive connection may sit idle between requests before the server closes
#: it (its thread then ends). botocore notices a closed pooled connection before reusing it
#: and opens a new one. Long, because an idle thread costs little and a close racing a
#: client's next request costs a retry; the limit only reaps connections of clients that
#: vanished without closing them.
IDLE_TIMEOUT_SECONDS = 300.0


class KeepAliveRequestHandler(MotoRequestHandler):
    """moto's request handler (its header fixes) with HTTP/1.1 persistent connections."""

    protocol_version = "HTTP/1.1"
    #: StreamRequestHandler.setup sets TCP_NODELAY on the accepted socket.
    disable_nagle_algorithm = True
    #: StreamRequestHandler.setup applies it to the socket: bounds the wait for the next
    #: request line (and any single read or write), see IDLE_TIMEOUT_SECONDS.
    timeout = IDLE_TIMEOUT_SECONDS
    #: Set by the server: log every request (`batchexec local --log-requests`).
    log_requests = False

    def log_request(self, *args: Any, **kwargs: Any) -> None:
        if self.log_requests:
            super().log_request(*args, **kwargs)

    def log_error(self, format: str, *args: Any) -> None:  # noqa: A002  (stdlib's name)
        # http.server logs an idle connection reaching its timeout as an error; it is not.
        if not (format.startswith("Request timed out") and not self.log_requests):
            super().log_error(format, *args)

    def run_wsgi(self) -> None:
        if self.headers.get("Expect", "").lower().strip(" \t") == "100-continue":
            self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        self.environ = environ = self.make_environ()
        body = _bounded_body(environ)
        if body is None:  # no length, no chunking: HTTP/1.0-style body up to the close
            self.close_connection = True
        else:
            environ["wsgi.input"] = body
        response = _Response(self, environ)
        try:
            response.run(self.server.app)
        except connection_dropped_errors as e:
            self.close_connection = True
            self.connection_dropped(e, environ)
            return
        except Exception as e:
            self.close_connection = True
            if self.server.passthrough_errors:
                raise
            if not response.headers_sent:
                try:
                    _Response(self, environ).run(InternalServerError())
                except Exception:
                    pass
            from werkzeug.debug.tbtools import DebugTraceback

            trace = DebugTraceback(e).render_traceback_text()
            self.server.log("error", f"Error on request:\n{trace}")
            return
        if body is not None and not self.close_connection:
            try:
                while body.read(_DRAIN_CHUNK):
                    pass
            except Exception:  # a client that went away mid-body: nothing to keep alive
                self.close_connection = True


def _bounded_body(environ: dict) -> io.RawIOBase | None:
    """The request body as a stream that ends where the request does, or None when the
    request does not say where its body ends."""
    if environ.get("wsgi.input_terminated"):  # werkzeug's DechunkedInput: ends at chunk 0
        return environ["wsgi.input"]
    length = environ.get("CONTENT_LENGTH", "")
    if length:
        try:
            limit = int(length)
        except ValueError:
            return None
        if limit < 0:
            return None
        return LimitedStream(environ["wsgi.input"], limit)
    if environ.get("HTTP_TRANSFER_ENCODING"):  # an encoding we do not frame
        return None
    return LimitedStream(environ["wsgi.input"], 0)  # HTTP/1.1: no length, no body


class _Response:
    """One response on a persistent connection: status and headers are sent with the first
    body chunk in one write; without a Content-Length the body is chunked."""

    def __init__(self, handler: KeepAliveRequestHandler, environ: dict):
        self.handler = handler
        self.environ = environ
        self.status: str | None = None
        self.headers: list[tuple[str, str]] | None = None
        self.headers_sent = False
        self.chunked = False

    def start_response(self, status: str, headers: list, exc_info: Any = None):
        if exc_info:
            try:
                if self.headers_sent:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        elif self.headers is not None:
            raise AssertionError("Headers already set")
        self.status, self.headers = status, headers
        return self.write

    def run(self, app: Any) -> None:
        chunks = app(self.environ, self.start_response)
        try:
            for data in chunks:
                self.write(data)
            if not self.headers_sent:
                self.write(b"")
            if self.chunked:
                self.handler.wfile.write(b"0\r\n\r\n")
        finally:
            if hasattr(chunks, "close"):
                chunks.close()

    def write(self, data: bytes) -> None:
        assert self.status is not None and self.headers is not None, "write() before start_response"
        assert isinstance(data, bytes), "applications must write bytes"
        handler = self.handler
        if self.chunked and data:
            data = b"%x\r\n%s\r\n" % (len(data), data)
        if not self.headers_sent:
            self.headers_sent = True
            data = self._head() + data
        if data:
            handler.wfile.write(data)

    def _head(self) -> bytes:
        handler = self.handler
        code_str, _, msg = self.status.partition(" ")
        code = int(code_str)
        handler.log_request(code)
        lines = [f"{handler.protocol_version} {code} {msg}".rstrip()]
        names = set()
        for key, value in self.headers:
            lines.append(f"{key}: {value}")
            names.add(key.lower())
        if "server" not in names:
            lines.append(f"Server: {handler.version_string()}")
        if "date" not in names:
            lines.append(f"Date: {handler.date_time_string()}")
        framed = (
            "content-length" in names
            or self.environ["REQUEST_METHOD"] == "HEAD"
            or 100 <= code < 200
            or code in (204, 304)
        )
        if not framed:
            if handler.request_version >= "HTTP/1.1":
                self.chunked = True
                lines.append("Transfer-Encoding: chunked")
            else:
                handler.close_connection = True  # the close marks the end of the body
        if "connection" in names:
            for key, value in self.headers:
                if key.lower() == "connection" and value.lower() == "close":
                    handler.close_connection = True
        elif handler.close_connection:
            lines.append("Connection: close")
        elif handler.request_version < "HTTP/1.1":
            lines.append("Connection: keep-alive")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

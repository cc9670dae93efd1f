"""The gunicorn worker ``advbias serve --workers N`` runs: gthread that reads requests before giving them a thread.

gunicorn's threaded worker hands a connection to a thread as soon as its first byte
arrives, and the thread then reads the rest with blocking calls. A client that sends its
headers one line every few seconds therefore holds a thread as long as it likes: measured,
8 such connections against 2 workers x 4 threads left 7 of 8 health checks and answers of
other participants unanswered after 2 s. This worker instead reads each request, headers
and body, in the worker's event loop (non-blocking, next to kept-alive connections) and
gives it to a thread only once it is complete, so a thread only ever runs a request it can
answer at once. Deadlines bound the reading: :data:`HEADER_TIMEOUT_S` for the head (from
the connection, or from the first byte of the next request on a kept-alive one) and
:data:`BODY_TIMEOUT_S` for the body; a client that misses one gets 408 and is closed.
Bodies are buffered up to the app's limit (64 KiB) only: a longer declared body is handed
over at once and refused (413, connection closed) without being read.

gunicorn also refuses some requests itself, before the app sees them (a request line over
4,094 bytes, too many or too large headers, a malformed request line or header), with a
small HTML page. Every other refusal advbias makes is JSON ``{"error": "..."}``, and the
study page and the participant client read JSON: so this worker answers those refusals
in JSON too, with the same status and reason.
"""
from __future__ import annotations

import errno
import json
import re
import selectors
import time
from functools import partial
from typing import Any

from gunicorn import util
from gunicorn.workers.gthread import _DEFER, STOP_KEEPALIVE_LINGER, TConn, ThreadWorker

#: Seconds a client has to send a request's head (request line and headers).
HEADER_TIMEOUT_S = 10.0
#: Seconds a client has, after the head, to send the body.
BODY_TIMEOUT_S = 10.0
#: A head longer than this is refused (431) without waiting for its end.
MAX_HEAD_BYTES = 64 * 1024
#: Body bytes buffered before the request is handed over (the app refuses anything longer).
MAX_BODY_BYTES = 64 * 1024


def write_json_error(sock: Any, status_int: int, reason: str, mesg: str) -> None:
    """gunicorn's ``util.write_error``, answering ``{"error": ...}`` instead of an HTML page."""
    util.write_nonblock(sock, _json_error(status_int, reason, mesg))


def _json_error(status_int: int, reason: str, mesg: str = "") -> bytes:
    text = f"{reason.lower()}: {mesg}" if mesg else reason.lower()
    body = json.dumps({"error": text[:500]}).encode("ascii")
    head = (
        f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nX-Content-Type-Options: nosniff\r\nCache-Control: no-store\r\n\r\n"
    )
    return head.encode("latin-1") + body


_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,16})[^\r\n]*\r\n")


def _chunked_end(body: bytes, limit: int) -> bool:
    """Whether a chunked body is complete in ``body`` (or already carries more than ``limit`` bytes of data)."""
    pos = size = 0
    while True:
        match = _CHUNK_SIZE.match(body, pos)
        if match is None:
            return len(body) - pos > 64  # a malformed chunk line: let the parser refuse it
        n = int(match.group(1), 16)
        size += n
        if size > limit:
            return True
        pos = match.end()
        if n == 0:
            return body.find(b"\r\n\r\n", pos - 2) >= 0 or body[pos:pos + 2] == b"\r\n"
        pos += n + 2
        if pos > len(body):
            return False


class _Reading:
    """A request being read in the event loop: its bytes so far and its deadline."""

    __slots__ = ("buf", "deadline", "idle_until", "continued")

    def __init__(self, buf: bytes, deadline: float, idle_until: float | None = None) -> None:
        self.buf = bytearray(buf)
        self.deadline = deadline
        self.idle_until = idle_until  # a kept-alive connection waits this long for a next request
        self.continued = False

    def ready(self) -> tuple[bool, str | None]:
        """(complete, refusal): whether the request can go to a thread, or why it is refused."""
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return False, "431" if len(self.buf) > MAX_HEAD_BYTES else None
        length, chunked, expect = None, False, False
        for line in bytes(self.buf[:end]).split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            name, value = name.strip().lower(), value.strip().lower()
            if name == b"content-length":
                length = value
            elif name == b"transfer-encoding":
                chunked = chunked or b"chunked" in value
            elif name == b"expect":
                expect = value == b"100-continue"
        body = bytes(self.buf[end + 4:])
        if chunked:
            done = _chunked_end(body, MAX_BODY_BYTES)
        elif length is not None and length.isdigit() and int(length) <= MAX_BODY_BYTES:
            done = len(body) >= int(length)
        else:  # no body, an over-limit one (refused unread) or a malformed length (the parser refuses it)
            done = True
        return done, ("continue" if expect and not done and not body else None)


class JsonErrorThreadWorker(ThreadWorker):
    """gunicorn's threaded worker that reads whole requests before they get a thread (module docstring)."""

    def init_process(self) -> None:
        util.write_error = write_json_error  # the worker calls it through the module: one process-local switch
        self._reading: dict[TConn, _Reading] = {}
        super().init_process()

    # ------------------------------------------------------------------ reading in the event loop

    def accept(self, listener: Any) -> None:
        if self.cfg.is_ssl:  # TLS in gunicorn itself (advbias leaves it to the proxy): gunicorn's own path
            return super().accept(listener)
        try:
            client_sock, client_addr = listener.accept()
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        conn = TConn(self.cfg, client_sock, client_addr, listener.getsockname())  # non-blocking
        self._read(conn, _Reading(b"", time.monotonic() + HEADER_TIMEOUT_S))

    def _read(self, conn: TConn, state: _Reading) -> None:
        """Wait for (the rest of) a request on ``conn`` in the event loop, without a thread."""
        if state.buf and self._dispatch(conn, state):
            return
        self._reading[conn] = state
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_readable, conn))

    def _on_readable(self, conn: TConn, _sock: Any) -> None:
        state = self._reading.pop(conn)
        self.poller.unregister(conn.sock)
        try:
            data = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            self._read(conn, state)
            return
        except OSError:
            data = b""
        if not data:
            self.nr_conns -= 1
            conn.close()
            return
        if state.idle_until is not None:  # the next request on a kept-alive connection begins now
            state.idle_until = None
            state.deadline = time.monotonic() + HEADER_TIMEOUT_S
        had_head = b"\r\n\r\n" in state.buf
        state.buf += data
        if not had_head and b"\r\n\r\n" in state.buf:
            state.deadline = time.monotonic() + BODY_TIMEOUT_S
        self._read(conn, state)

    def _dispatch(self, conn: TConn, state: _Reading) -> bool:
        """Hand a complete request to a thread (True), refuse a bad one (True), or keep waiting (False)."""
        done, note = state.ready()
        if note == "431":
            self._refuse(conn, 431, "Request Header Fields Too Large", "the request head is too long")
            return True
        if note == "continue" and not state.continued:
            state.continued = True
            util.write_nonblock(conn.sock, b"HTTP/1.1 100 Continue\r\n\r\n")
        if not done:
            return False
        conn.advbias_buffer = bytes(state.buf)
        conn.data_ready = True
        self.enqueue_req(conn)
        return True

    def _refuse(self, conn: TConn, status: int, reason: str, message: str) -> None:
        try:
            conn.sock.send(_json_error(status, reason, message))
        except OSError:
            pass
        self.nr_conns -= 1
        conn.close()

    def _drop(self, conn: TConn) -> None:
        try:
            self.poller.unregister(conn.sock)
        except (KeyError, ValueError, OSError):
            pass
        self._reading.pop(conn, None)
        self.nr_conns -= 1
        conn.close()

    def murder_pending(self) -> None:
        """gunicorn's sweep of waiting connections, plus the deadlines of requests being read here."""
        super().murder_pending()
        now = time.monotonic()
        for conn, state in list(self._reading.items()):
            if state.idle_until is not None:
                limit = state.idle_until if self.alive else min(state.idle_until, now + STOP_KEEPALIVE_LINGER)
                if now >= limit:
                    self._drop(conn)
                elif not self.alive:
                    state.idle_until = limit
            elif now >= state.deadline:
                self.poller.unregister(conn.sock)
                del self._reading[conn]
                self._refuse(conn, 408, "Request Timeout", "the request was not sent in time")

    def murder_keepalived(self, force: bool = False) -> None:
        super().murder_keepalived(force)
        if force:
            for conn in list(self._reading):
                self._drop(conn)

    # ------------------------------------------------------------------ the thread's side

    def handle(self, conn: TConn) -> Any:
        buffered = getattr(conn, "advbias_buffer", None)
        if buffered is not None:  # the whole request is here: the parser reads it from memory
            conn.advbias_buffer = None
            conn.sock.setblocking(True)
            conn.init()
            conn.parser.unreader.unread(buffered)
        return super().handle(conn)

    def finish_request(self, conn: TConn, fs: Any) -> None:
        """A kept-alive connection goes back to reading in the event loop (what it already sent included)."""
        try:
            result = fs.result() if not fs.cancelled() else False
        except Exception:  # noqa: BLE001 - gunicorn's own handling closes the connection
            result = False
        if not result or result is _DEFER or self.cfg.is_ssl:
            return super().finish_request(conn, fs)
        try:
            leftover = conn.parser.unreader.take_buffered()
            conn.sock.setblocking(False)
        except OSError:
            self.nr_conns -= 1
            conn.close()
            return
        now = time.monotonic()
        idle = now + self.cfg.keepalive if self.alive else now + STOP_KEEPALIVE_LINGER
        state = _Reading(leftover, now + HEADER_TIMEOUT_S, idle_until=None if leftover else idle)
        self._read(conn, state)

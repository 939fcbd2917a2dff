"""One bounded HTTP POST: the LLM judge's transport (:func:`bounded_post`).

What it guarantees, for one attempt whose deadline is ``min(start + timeout, until)``:

- **Nothing waits past the deadline once connected.** A socket timeout alone restarts with every
  byte, so a server trickling a byte every few seconds would never be cut off. Here a watchdog
  timer shuts the attempt's socket when the deadline passes, whatever the attempt is blocked in
  (sending, waiting for the status line, reading headers or body), and the body is read in chunks
  with the deadline checked between them. An attempt cut so raises ``timeout``, or ``overall
  deadline`` when ``until`` came first.
- **At most ``max_bytes`` of body are read.** A ``Content-Length`` above it is refused before
  reading; without one, reading stops at ``max_bytes + 1`` bytes; a body is never read past its
  ``Content-Length``. Either way it raises ``reply too large``, not to be retried (the same request
  would bring the same reply).
- **Error statuses are judged by their status line**; their bodies are never read.
- **Every failure is one** :class:`Failed` with a short word for the summary: ``HTTP <code>``,
  ``timeout``, ``reply too large``, ``truncated reply`` (the body ended before its length),
  ``connection error``, ``overall deadline``; ``retry`` says whether another attempt may help and
  ``wait`` carries the server's ``Retry-After``.

Known limit: the watchdog can only cut a socket it holds, and it holds one once ``connect``
returns. Connecting (through a proxy, its ``CONNECT`` exchange too) and a TLS handshake are bounded
by a socket timeout of the time left when the attempt starts, which restarts with every byte, not by
the watchdog: a server trickling bytes during the handshake could outlast the deadline. Looking up
the host's name is bounded only by the system resolver's own limits.

urllib does the HTTP: it keeps the proxy settings from the environment, TLS and redirects.
"""

from __future__ import annotations

import http.client
import socket
import threading
import time
import urllib.error
import urllib.request
from email.utils import parsedate_to_datetime
from time import monotonic

__all__ = [
    "CONNECTION_ERROR",
    "OVERALL_DEADLINE",
    "RETRY_STATUS",
    "TIMEOUT",
    "TOO_LARGE",
    "TRUNCATED",
    "Failed",
    "bounded_post",
    "retry_after",
]

RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}
CHUNK = 1 << 16

TIMEOUT = "timeout"
TOO_LARGE = "reply too large"
TRUNCATED = "truncated reply"
CONNECTION_ERROR = "connection error"
OVERALL_DEADLINE = "overall deadline"


class Failed(Exception):
    """One attempt failed: ``failure`` for the summary, ``detail`` for the verdict's reason,
    whether another attempt may help, and the server's ``Retry-After`` if it sent one."""

    def __init__(self, failure: str, detail: str, *, retry: bool = True, wait: float | None = None) -> None:
        super().__init__(detail)
        self.failure, self.detail, self.retry, self.wait = failure, detail, retry, wait


def bounded_post(
    url: str, body: bytes, headers: dict[str, str], *, timeout: float, until: float | None, max_bytes: int
) -> bytes:
    """POST ``body`` to ``url`` once and return the reply's body, or raise :class:`Failed`.

    Args:
        timeout: seconds the attempt may take in all: connecting, sending, waiting, reading.
        until: a ``time.monotonic()`` (the run's deadline) the attempt ends by as well; ``None``: none.
        max_bytes: the longest body read; a longer one raises ``reply too large``.
    """
    deadline = monotonic() + timeout if until is None else min(monotonic() + timeout, until)
    with _Watchdog(deadline) as watchdog:
        try:
            return _open_and_read(url, body, headers, watchdog=watchdog, max_bytes=max_bytes)
        except urllib.error.HTTPError as err:  # a status: its body is never read
            err.close()
            raise Failed(
                f"HTTP {err.code}", f"HTTP {err.code}", retry=err.code in RETRY_STATUS, wait=retry_after(err)
            ) from None
        except (OSError, http.client.HTTPException, ValueError) as err:  # URLError is an OSError
            if isinstance(err, ValueError) and not watchdog.expired:
                raise  # not the cut socket's doing: a bug to see
            raise _network_failure(err, watchdog, timeout=timeout, until=until) from None


def retry_after(error: urllib.error.HTTPError) -> float | None:
    """Seconds the server asks to wait (``Retry-After``: seconds or an HTTP date), if it says."""
    value = error.headers.get("Retry-After") if error.headers else None
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


def _open_and_read(url: str, body: bytes, headers: dict[str, str], *, watchdog: _Watchdog, max_bytes: int) -> bytes:
    opener = urllib.request.build_opener(_WatchedHTTP(watchdog), _WatchedHTTPS(watchdog))
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    # the socket timeout bounds what the watchdog cannot cut: connecting and the TLS handshake
    with opener.open(request, timeout=max(watchdog.remaining(), 1e-3)) as response:
        return _read_capped(response, watchdog, max_bytes)


def _network_failure(err: Exception, watchdog: _Watchdog, *, timeout: float, until: float | None) -> Failed:
    """What a failed connection or read means: the deadline's doing, a short body or a network error."""
    timed_out = isinstance(err, TimeoutError) or isinstance(getattr(err, "reason", None), TimeoutError)
    if watchdog.expired or timed_out or watchdog.remaining() <= 0:
        # whatever the cut socket raised (end of file, a reset, a TLS error) is the deadline's doing
        if until is not None and watchdog.deadline >= until:  # the run's deadline came first
            return Failed(OVERALL_DEADLINE, "cut at the overall deadline", retry=False)
        return Failed(TIMEOUT, f"timeout: no complete reply within {timeout:g} s")
    failure = TRUNCATED if isinstance(err, http.client.IncompleteRead) else CONNECTION_ERROR
    return Failed(failure, f"request failed: {type(err).__name__}: {err}")


def _read_capped(response: http.client.HTTPResponse, watchdog: _Watchdog, cap: int) -> bytes:
    """The reply's body, read in chunks until its end, the watchdog's deadline or ``cap`` bytes."""
    length = response.getheader("Content-Length", "")
    if length.isdigit() and int(length) > cap:
        raise Failed(
            TOO_LARGE, f"reply too large: Content-Length {length} bytes, more than max_reply_bytes {cap}", retry=False
        )
    chunks, size = [], 0
    while True:
        if watchdog.remaining() <= 0:
            raise TimeoutError("the reply did not end before the deadline")
        chunk = response.read1(min(CHUNK, cap + 1 - size))  # one read at most: the deadline is checked between
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
        if size > cap:
            raise Failed(
                TOO_LARGE,
                f"reply too large: more than max_reply_bytes {cap} (stopped reading after {size} bytes)",
                retry=False,
            )
    if response.length:  # read1 returns b"" at a premature end instead of raising
        raise http.client.IncompleteRead(b"".join(chunks), response.length)
    if watchdog.expired:  # a body without a length ends at the close: here the watchdog's, not the server's
        raise TimeoutError("the reply was cut at the deadline")
    return b"".join(chunks)


class _Watchdog:
    """Shuts the sockets of one attempt when its deadline passes, so that whatever the attempt is
    blocked in once connected returns then. One timer thread per attempt: a socket timeout cannot
    do it (it restarts with every byte), and resetting it before every read would mean replacing the
    file objects http.client reads through, for plain and TLS sockets alike."""

    def __init__(self, deadline: float) -> None:
        self.deadline, self.expired = deadline, False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(max(0.0, deadline - monotonic()), self._expire)
        self._timer.daemon = True

    def __enter__(self) -> _Watchdog:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()

    def remaining(self) -> float:
        return self.deadline - monotonic()

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)
            expired = self.expired
        if expired:  # connected just as the deadline passed
            _shut(sock)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            sockets = list(self._sockets)
        for sock in sockets:
            _shut(sock)


def _shut(sock: socket.socket) -> None:
    # The plain socket's shutdown wakes a blocked read with end-of-file; for TLS it bypasses
    # SSLSocket.shutdown, which would also drop the TLS state under the reading thread. A closed
    # socket has no descriptor left (-1), so a late timer cannot reach a descriptor reused since.
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass  # already closed: nothing left to cut


class _Watched:
    """urllib's HTTP(S) handler whose connections register their socket with a watchdog."""

    def __init__(self, watchdog: _Watchdog) -> None:
        super().__init__()
        self.watchdog = watchdog

    def do_open(self, http_class: type, req: urllib.request.Request, **kwargs: object) -> http.client.HTTPResponse:
        watchdog = self.watchdog

        class Connection(http_class):
            def connect(self) -> None:
                super().connect()  # for HTTPS, the TLS handshake too: see the known limit above
                watchdog.watch(self.sock)

        return super().do_open(Connection, req, **kwargs)


class _WatchedHTTP(_Watched, urllib.request.HTTPHandler):
    pass


class _WatchedHTTPS(_Watched, urllib.request.HTTPSHandler):
    pass

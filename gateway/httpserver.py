"""A small HTTP/1.1 server for the status page: h11 on ``asyncio`` streams.

Why not aiohttp: footprint on the Pi. Importing aiohttp loads its whole client (yarl,
multidict, attrs) and builds client SSL contexts at import, about 10 MB of the daemon's RSS for
a page of six routes. h11 only parses and frames HTTP/1.1; this module adds what a server on a
venue LAN needs around it:

- exact-path routes; HEAD answered by every GET route (no body); 404 for an unknown path, 405
  with ``Allow`` for a known path and another method;
- request bodies up to ``App.max_body`` (413 beyond), urlencoded forms, cookies;
- keep-alive, at most ``Limits.max_requests`` requests per connection and closed after
  ``Limits.keepalive_s`` idle;
- ``Limits.request_timeout_s`` to read a request once it has begun and to write its answer (a
  slow client is answered 408 and dropped, not waited for);
- at most ``Limits.max_connections`` connections at once (the next ones get 503);
- a malformed request is answered 400 and its connection closed; an exception in a handler is
  logged and answered 500, and the server goes on.

Handlers are ``async def handler(request: Request) -> Response``; one may also raise
:class:`HTTPError` to answer early.
"""

from __future__ import annotations

import asyncio
import http
import json
import logging
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from email.utils import formatdate
from http.cookies import CookieError, SimpleCookie
from typing import Any

import h11

log = logging.getLogger(__name__)

Handler = Callable[["Request"], Awaitable["Response"]]
FORM_TYPES = ("", "application/x-www-form-urlencoded")


@dataclass(frozen=True, slots=True)
class Limits:
    """What one client may take from the server (the defaults suit a venue LAN)."""

    max_connections: int = 32
    max_requests: int = 100  # per connection, then ``Connection: close``
    keepalive_s: float = 15.0  # idle between requests
    request_timeout_s: float = 10.0  # to read a begun request, and to write its answer
    max_head: int = 8192  # request line and headers, bytes


@dataclass(frozen=True, slots=True)
class Request:
    """One request, read whole (its body is at most ``App.max_body`` bytes)."""

    method: str
    path: str  # percent-decoded, without the query
    query: str
    headers: Mapping[str, str]  # lower-case names; repeated headers joined
    body: bytes
    remote: str | None  # the peer's address, as the socket reports it
    cookies: Mapping[str, str]

    def form(self) -> dict[str, str]:
        """The urlencoded form in the body (the first value of each name); other bodies: {}."""
        ctype = self.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype not in FORM_TYPES:
            return {}
        out: dict[str, str] = {}
        for k, v in urllib.parse.parse_qsl(self.body.decode("utf-8", "replace"),
                                           keep_blank_values=True):
            out.setdefault(k, v)
        return out


@dataclass(slots=True)
class Response:
    """An answer: status, headers, body; cookies set with :meth:`set_cookie`."""

    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    cookies: list[str] = field(default_factory=list)  # Set-Cookie values

    @classmethod
    def text(cls, text: str, *, status: int = 200, content_type: str = "text/plain",
             headers: Mapping[str, str] | None = None) -> Response:
        """A UTF-8 text body of ``content_type``."""
        return cls(status, text.encode(), {"Content-Type": f"{content_type}; charset=utf-8",
                                           **(headers or {})})

    @classmethod
    def json(cls, obj: Any, *, status: int = 200,
             dumps: Callable[[Any], str] = json.dumps) -> Response:
        """``obj`` as JSON."""
        return cls.text(dumps(obj), status=status, content_type="application/json")

    @classmethod
    def error(cls, status: int, text: str = "") -> Response:
        """A plain-text error answer (``"404: Not Found"`` without ``text``)."""
        return cls.text(text or f"{status}: {http.HTTPStatus(status).phrase}", status=status)

    @classmethod
    def redirect(cls, location: str, *, status: int = 303) -> Response:
        """A redirect (303 See Other by default: a form's answer, fetched with GET)."""
        return cls.text(f"{status}: {http.HTTPStatus(status).phrase}", status=status,
                        headers={"Location": location})

    def set_cookie(self, name: str, value: str, *, max_age: int, path: str = "/") -> None:
        """A cookie scripts cannot read and other sites cannot send (HttpOnly, SameSite)."""
        jar: SimpleCookie = SimpleCookie()
        jar[name] = value
        jar[name].update({"max-age": str(max_age), "path": path, "samesite": "Strict"})
        jar[name]["httponly"] = True
        self.cookies.append(jar[name].OutputString())

    def del_cookie(self, name: str, *, path: str = "/") -> None:
        """Tell the browser to forget cookie ``name``."""
        jar: SimpleCookie = SimpleCookie()
        jar[name] = ""
        jar[name].update({"max-age": "0", "path": path,
                          "expires": "Thu, 01 Jan 1970 00:00:00 GMT"})
        self.cookies.append(jar[name].OutputString())


class HTTPError(Exception):
    """Raised by a handler to answer with ``response`` at once."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status)
        self.response = response


class App:
    """Routes and what every answer carries.

    Args:
        headers: set on every answer (security headers, caching).
        max_body: the largest request body, bytes (413 beyond).
    """

    def __init__(self, *, headers: Mapping[str, str] | None = None,
                 max_body: int = 1 << 20) -> None:
        self.headers = dict(headers or {})
        self.max_body = max_body
        self._routes: dict[str, dict[str, Handler]] = {}

    def route(self, method: str, path: str, handler: Handler) -> None:
        """Serve ``method path`` with ``handler`` (a GET route answers HEAD too)."""
        methods = self._routes.setdefault(path, {})
        methods[method] = handler
        if method == "GET":
            methods.setdefault("HEAD", handler)

    def get(self, path: str, handler: Handler) -> None:
        """Serve ``GET path`` (and HEAD)."""
        self.route("GET", path, handler)

    def post(self, path: str, handler: Handler) -> None:
        """Serve ``POST path``."""
        self.route("POST", path, handler)

    async def handle(self, request: Request) -> Response:
        """The answer to ``request``; never raises (a failing handler is logged, 500)."""
        methods = self._routes.get(request.path)
        if methods is None:
            return Response.error(404)
        handler = methods.get(request.method)
        if handler is None:
            resp = Response.error(405)
            resp.headers["Allow"] = ", ".join(methods)
            return resp
        try:
            return await handler(request)
        except HTTPError as err:
            return err.response
        except Exception:
            log.exception("status page: %s %s failed", request.method, request.path)
            return Response.error(500)


class _Refusal(Exception):
    """The request cannot be served: answer ``status`` and close the connection."""

    def __init__(self, status: int, text: str = "") -> None:
        super().__init__(text)
        self.status = status
        self.text = text


BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 0\r\n"
        b"Retry-After: 1\r\n\r\n")


class Server:
    """A listening server (from :func:`serve`); ``await server.close()`` stops it.

    Attributes:
        port: the TCP port it listens on.
        refused: connections turned away because ``Limits.max_connections`` were open.
    """

    def __init__(self, app: App, limits: Limits) -> None:
        self.app = app
        self.limits = limits
        self.port = 0
        self.refused = 0
        self._server: asyncio.Server | None = None
        self._conns: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self._closing = False

    async def _start(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(self._connection, host, port)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def close(self, *, grace_s: float = 2.0) -> None:
        """Stop listening and close every connection; a request being served has ``grace_s``
        to finish, then it is cancelled."""
        self._closing = True
        if self._server is not None:
            self._server.close()
        for writer in self._conns.values():
            writer.close()  # an idle connection reads EOF and ends
        if self._conns:
            _, late = await asyncio.wait(list(self._conns), timeout=grace_s)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    cleanup = close  # the name aiohttp's runner used

    async def _connection(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        if len(self._conns) >= self.limits.max_connections:
            self.refused += 1
            log.debug("status page: %d connections open, one refused", len(self._conns))
            writer.write(BUSY)
            writer.close()
            return
        task = asyncio.current_task()
        assert task is not None
        self._conns[task] = writer
        try:
            await self._serve(reader, writer)
        except (ConnectionError, TimeoutError):
            pass  # the client went away or stopped reading its answer
        except asyncio.CancelledError:
            # cancelled by close(): end normally, as Python 3.11's stream protocol logs a
            # cancelled connection task as an error
            if not self._closing:
                raise
        except Exception:
            log.exception("status page: connection failed")
        finally:
            self._conns.pop(task, None)
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self.limits.max_head)
        peer = writer.get_extra_info("peername")
        remote = str(peer[0]) if isinstance(peer, tuple) and peer else None
        for n in range(1, self.limits.max_requests + 1):
            try:
                got = await self._read(conn, reader, writer)
            except h11.RemoteProtocolError as err:
                await self._refuse(conn, writer, err.error_status_hint, str(err))
                return
            except _Refusal as err:
                await self._refuse(conn, writer, err.status, err.text)
                return
            if got is None:
                return  # closed, or idle too long
            head, body = got
            target = urllib.parse.urlsplit(head.target.decode("ascii", "replace"))
            headers = _headers(head.headers)
            request = Request(method=head.method.decode("ascii", "replace"),
                              path=urllib.parse.unquote(target.path), query=target.query,
                              headers=headers, body=body, remote=remote,
                              cookies=parse_cookies(headers.get("cookie", "")))
            resp = await self.app.handle(request)
            last = n == self.limits.max_requests
            await self._send(conn, writer, resp, head=request.method == "HEAD", close=last)
            if last or conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()

    async def _read(self, conn: h11.Connection, reader: asyncio.StreamReader,
                    writer: asyncio.StreamWriter) -> tuple[h11.Request, bytes] | None:
        """The next request and its body; None when the client closed or stayed idle."""
        loop = asyncio.get_running_loop()
        begun = bool(conn.trailing_data[0])
        deadline = loop.time() + (self.limits.request_timeout_s if begun
                                  else self.limits.keepalive_s)
        head: h11.Request | None = None
        body = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                try:
                    async with asyncio.timeout_at(deadline):
                        data = await reader.read(65536)
                except TimeoutError:
                    if not begun:
                        return None
                    raise _Refusal(408, "the request took too long") from None
                if data and not begun:  # the request has begun: now it must come quickly
                    begun = True
                    deadline = loop.time() + self.limits.request_timeout_s
                conn.receive_data(data)
            elif isinstance(event, h11.Request):
                head = event
                size = dict(event.headers).get(b"content-length")
                if size is not None and int(size) > self.app.max_body:
                    raise _Refusal(413, f"the body is larger than {self.app.max_body} bytes")
                if conn.they_are_waiting_for_100_continue:
                    writer.write(conn.send(h11.InformationalResponse(status_code=100,
                                                                     headers=[])) or b"")
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > self.app.max_body:
                    raise _Refusal(413, f"the body is larger than {self.app.max_body} bytes")
            elif isinstance(event, h11.EndOfMessage):
                assert head is not None
                return head, bytes(body)
            elif isinstance(event, h11.ConnectionClosed):
                return None

    async def _send(self, conn: h11.Connection, writer: asyncio.StreamWriter, resp: Response,
                    *, head: bool, close: bool) -> None:
        fields = {**resp.headers, **self.app.headers}
        fields["Content-Length"] = str(len(resp.body))
        fields["Date"] = formatdate(usegmt=True)
        if close:
            fields["Connection"] = "close"
        headers = [*fields.items(), *(("Set-Cookie", c) for c in resp.cookies)]
        try:
            reason = http.HTTPStatus(resp.status).phrase
        except ValueError:
            reason = ""
        out = [conn.send(h11.Response(status_code=resp.status, headers=headers,
                                      reason=reason.encode()))]
        if resp.body and not head:
            out.append(conn.send(h11.Data(data=resp.body)))
        out.append(conn.send(h11.EndOfMessage()))
        writer.write(b"".join(o for o in out if o))
        async with asyncio.timeout(self.limits.request_timeout_s):
            await writer.drain()

    async def _refuse(self, conn: h11.Connection, writer: asyncio.StreamWriter, status: int,
                      text: str) -> None:
        """Answer a request that cannot be served, if the connection still allows an answer."""
        if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        log.debug("status page: refused a request (%d %s)", status, text)
        await self._send(conn, writer, Response.error(status, text), head=False, close=True)


def _headers(raw: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in raw:
        k, v = name.decode("ascii"), value.decode("latin-1")
        out[k] = f"{out[k]}{'; ' if k == 'cookie' else ', '}{v}" if k in out else v
    return out


def parse_cookies(header: str) -> dict[str, str]:
    """The cookies of a ``Cookie`` header; a malformed one is skipped, not fatal to the rest."""
    jar: SimpleCookie = SimpleCookie()
    for part in header.split(";"):
        try:
            jar.load(part)
        except CookieError:
            continue
    return {name: morsel.value for name, morsel in jar.items()}


async def serve(app: App, *, host: str, port: int, limits: Limits | None = None) -> Server:
    """Serve ``app`` on ``host:port`` (port 0: any free port).

    Raises:
        OSError: the address cannot be bound.
    """
    server = Server(app, limits or Limits())
    await server._start(host, port)
    return server

"""The status page's HTTP server (``gateway/httpserver.py``) over real sockets: routes, limits,
timeouts, hostile and broken requests."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from browser import LoopThread

from gateway.httpserver import App, Limits, Request, Response, Server, parse_cookies, serve

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


async def hello(request: Request) -> Response:
    return Response.text(f"hello {request.remote}")


async def echo(request: Request) -> Response:
    resp = Response.json({"size": len(request.body), "form": request.form(),
                          "cookies": dict(request.cookies)})
    resp.set_cookie("seen", "yes", max_age=60)
    resp.del_cookie("old")
    return resp


async def boom(request: Request) -> Response:
    raise RuntimeError("a bug in a handler")


async def stuck(request: Request) -> Response:
    await asyncio.sleep(60)
    return Response.text("late")


def make_app() -> App:
    app = App(headers={"Cache-Control": "no-store"}, max_body=64)
    app.get("/hello", hello)
    app.post("/echo", echo)
    app.get("/boom", boom)
    app.get("/stuck", stuck)
    return app


@contextlib.contextmanager
def served(limits: Limits | None = None, host: str = "127.0.0.1") -> Iterator[Server]:
    thread = LoopThread()
    server = thread.run(serve(make_app(), host=host, port=0, limits=limits))
    try:
        yield server
    finally:
        thread.run(server.close())
        thread.close()


@dataclass
class Reply:
    status: int
    headers: dict[str, list[str]]
    body: bytes

    def header(self, name: str) -> str | None:
        got = self.headers.get(name.lower())
        return got[0] if got else None


@dataclass
class Raw:
    """A client socket that sends bytes as given and reads answers by hand."""

    port: int
    host: str = "127.0.0.1"
    sock: socket.socket = field(init=False)
    buf: bytes = b""

    def __post_init__(self) -> None:
        self.sock = socket.create_connection((self.host, self.port), timeout=5)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _more(self) -> bytes:
        chunk = self.sock.recv(65536)
        self.buf += chunk
        return chunk

    def reply(self, *, head: bool = False) -> Reply:
        while b"\r\n\r\n" not in self.buf:
            if not self._more():
                raise EOFError(f"closed without an answer (had {self.buf!r})")
        top, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = top.decode("latin-1").split("\r\n")
        headers: dict[str, list[str]] = {}
        for line in lines[1:]:
            k, v = line.split(":", 1)
            headers.setdefault(k.strip().lower(), []).append(v.strip())
        n = 0 if head else int(headers.get("content-length", ["0"])[0])
        while len(self.buf) < n:
            if not self._more():
                raise EOFError("closed in the middle of a body")
        body, self.buf = self.buf[:n], self.buf[n:]
        return Reply(int(lines[0].split()[1]), headers, body)

    def closed(self) -> bool:
        """True when the server closed the connection (nothing more to read)."""
        try:
            return self.buf == b"" and self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()


def get(path: str, *extra: str) -> bytes:
    return "\r\n".join([f"GET {path} HTTP/1.1", "Host: t", *extra, "", ""]).encode()


def post(path: str, body: bytes, *extra: str) -> bytes:
    return "\r\n".join([f"POST {path} HTTP/1.1", "Host: t", f"Content-Length: {len(body)}",
                        "Content-Type: application/x-www-form-urlencoded", *extra, "",
                        ""]).encode() + body


def test_routes_head_unknown_paths_and_wrong_methods() -> None:
    with served() as srv:
        c = Raw(srv.port)
        c.send(get("/hello"))
        ok = c.reply()
        assert ok.status == 200 and ok.body == b"hello 127.0.0.1"
        assert ok.header("Content-Type") == "text/plain; charset=utf-8"
        assert ok.header("Cache-Control") == "no-store" and ok.header("Date")
        c.send(get("/hello").replace(b"GET", b"HEAD", 1))
        head = c.reply(head=True)
        assert head.status == 200 and head.header("Content-Length") == str(len(ok.body))
        c.send(get("/nothing"))  # no body came with HEAD: the next answer parses cleanly
        missing = c.reply()
        assert missing.status == 404 and missing.body == b"404: Not Found"
        assert missing.header("Cache-Control") == "no-store"  # errors carry the headers too
        c.send(post("/hello", b""))
        wrong = c.reply()
        assert wrong.status == 405 and wrong.header("Allow") == "GET, HEAD"
        c.send(get("/echo"))
        wrong = c.reply()
        assert wrong.status == 405 and wrong.header("Allow") == "POST"
        c.send(get("/hello?x=%2F"))
        assert c.reply().status == 200  # the query is not part of the route
        c.close()


def test_malformed_requests_are_answered_400_and_closed() -> None:
    with served() as srv:
        for junk in (b"NOT HTTP AT ALL\r\n\r\n", b"GET /hello HTTP/1.1\r\nHost t\r\n\r\n",
                     b"GET /hello HTTP/1.1\r\nContent-Length: x\r\n\r\n"):
            c = Raw(srv.port)
            c.send(junk)
            assert c.reply().status == 400, junk
            assert c.closed(), junk
            c.close()
        c = Raw(srv.port)  # and the server goes on
        c.send(get("/hello"))
        assert c.reply().status == 200


def test_bodies_forms_cookies_and_the_body_cap() -> None:
    with served() as srv:
        c = Raw(srv.port)
        c.send(post("/echo", b"pin=12+34&csrf=%C3%A0b&pin=x&empty=",
                    "Cookie: a=1; bad cookie=; b=\"q\"; a2=z"))
        got = c.reply()
        assert got.status == 200 and got.header("Content-Type") == (
            "application/json; charset=utf-8")
        doc = json.loads(got.body)
        assert doc["form"] == {"pin": "12 34", "csrf": "àb", "empty": ""}
        assert doc["cookies"] == {"a": "1", "b": "q", "a2": "z"}
        set_cookies = got.headers["set-cookie"]
        assert len(set_cookies) == 2
        seen = {p.strip() for p in set_cookies[0].split(";")}
        assert seen == {"seen=yes", "HttpOnly", "Max-Age=60", "Path=/", "SameSite=Strict"}
        assert set_cookies[1].startswith('old=""') and "Max-Age=0" in set_cookies[1]
        # exactly the cap is fine; one byte more is 413 and the connection is dropped
        c.send(post("/echo", b"x" * 64))
        assert json.loads(c.reply().body)["size"] == 64
        c.send(post("/echo", b"x" * 65))
        assert c.reply().status == 413 and c.closed()
        # a chunked body is counted as it comes
        c = Raw(srv.port)
        c.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"28\r\n" + b"y" * 40 + b"\r\n28\r\n" + b"y" * 40 + b"\r\n0\r\n\r\n")
        assert c.reply().status == 413 and c.closed()
        # a client that asks first is told to go on
        c = Raw(srv.port)
        c.send(post("/echo", b"", "Expect: 100-continue").replace(b"Content-Length: 0",
                                                                     b"Content-Length: 5"))
        assert c.reply().status == 100
        c.send(b"pin=1")
        assert json.loads(c.reply().body)["form"] == {"pin": "1"}


def test_slow_clients_are_timed_out() -> None:
    limits = Limits(request_timeout_s=0.3, keepalive_s=0.5)
    with served(limits) as srv:
        # a request head that never ends
        c = Raw(srv.port)
        c.send(b"GET /hello HTTP/1.1\r\nHost: t\r\n")
        got = c.reply()  # the socket's own timeout (5 s) would raise first without ours
        assert got.status == 408 and c.closed()
        # a body that never ends
        c = Raw(srv.port)
        c.send(post("/echo", b"pin").replace(b"Content-Length: 3", b"Content-Length: 30"))
        assert c.reply().status == 408 and c.closed()
        # a connection that says nothing, before or after a request, is closed quietly
        c = Raw(srv.port)
        assert c.closed()
        c = Raw(srv.port)
        c.send(get("/hello"))
        assert c.reply().status == 200
        assert c.closed()
        # trickling bytes does not restart the clock (the whole head takes ~1.7 s here)
        c = Raw(srv.port)
        with contextlib.suppress(OSError):
            for ch in get("/hello"):
                c.send(bytes([ch]))
                time.sleep(0.05)
        assert c.reply().status == 408


def test_keep_alive_serves_requests_on_one_connection_up_to_a_limit() -> None:
    with served(Limits(max_requests=3)) as srv:
        c = Raw(srv.port)
        for _ in range(2):
            c.send(get("/hello"))
            got = c.reply()
            assert got.status == 200 and got.header("Connection") is None
        c.send(get("/hello"))
        last = c.reply()
        assert last.status == 200 and last.header("Connection") == "close"
        assert c.closed()
        # a client that asks to close, or speaks HTTP/1.0, is closed after one answer
        for req in (get("/hello", "Connection: close"), b"GET /hello HTTP/1.0\r\n\r\n"):
            c = Raw(srv.port)
            c.send(req)
            assert c.reply().status == 200 and c.closed()


def test_connections_beyond_the_cap_are_turned_away() -> None:
    with served(Limits(max_connections=2)) as srv:
        first, second = Raw(srv.port), Raw(srv.port)
        for c in (first, second):  # both served: both are counted
            c.send(get("/hello"))
            assert c.reply().status == 200
        third = Raw(srv.port)
        busy = third.reply()
        assert busy.status == 503 and busy.header("Retry-After") == "1" and third.closed()
        assert srv.refused == 1
        first.close()
        deadline = time.monotonic() + 5
        while True:  # the server notices the close on its own time
            c = Raw(srv.port)
            c.send(get("/hello"))
            status = c.reply().status
            if status == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert status == 200
        second.send(get("/hello"))  # the kept connection still works
        assert second.reply().status == 200


def test_a_failing_handler_is_logged_and_answered_500(caplog: pytest.LogCaptureFixture
                                                      ) -> None:
    with served() as srv:
        c = Raw(srv.port)
        c.send(get("/boom"))
        got = c.reply()
        assert got.status == 500 and b"a bug" not in got.body  # no internals to the client
        c.send(get("/hello"))
        assert c.reply().status == 200
    assert any("GET /boom failed" in r.getMessage() and r.exc_info for r in caplog.records)


def test_close_stops_listening_and_drops_kept_connections() -> None:
    thread = LoopThread()
    try:
        server = thread.run(serve(make_app(), host="127.0.0.1", port=0))
        c = Raw(server.port)
        c.send(get("/hello"))
        assert c.reply().status == 200
        thread.run(server.close(), timeout=5)
        assert c.closed()
        with pytest.raises(ConnectionRefusedError):
            Raw(server.port)
    finally:
        thread.close()


def test_close_cancels_a_request_that_outlasts_the_grace(caplog: pytest.LogCaptureFixture
                                                         ) -> None:
    thread = LoopThread()
    try:
        server = thread.run(serve(make_app(), host="127.0.0.1", port=0))
        c = Raw(server.port)
        c.send(get("/stuck"))
        deadline = time.monotonic() + 5
        while not server._conns and time.monotonic() < deadline:
            time.sleep(0.01)
        thread.run(server.close(grace_s=0.2), timeout=5)  # not the handler's 60 s
        assert c.closed() and not server._conns
    finally:
        thread.close()
    # a cancelled connection is no error (Python 3.11's streams would log one)
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == []


def test_ipv6_clients_are_served_with_their_address() -> None:
    try:
        socket.socket(socket.AF_INET6).bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    with served(host="::1") as srv:
        c = Raw(srv.port, host="::1")
        c.send(get("/hello"))
        assert c.reply().body == b"hello ::1"


def test_parse_cookies_skips_what_it_cannot_read() -> None:
    assert parse_cookies("") == {}
    assert parse_cookies('x=1; y="a b"; ;=; z') == {"x": "1", "y": "a b"}


def test_importing_the_status_page_leaves_aiohttp_out() -> None:
    code = ("import sys\nimport gateway.status, gateway.httpserver, gateway.daemon\n"
            "print(sorted(m for m in sys.modules "
            "if m.split('.')[0] in ('aiohttp', 'yarl', 'multidict', 'aiosignal')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=REPO, check=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stdout

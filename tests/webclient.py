"""A small cookie-keeping HTTP client for the login tests (the standard library's urllib)."""

from __future__ import annotations

import http.cookiejar
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

from argon2 import PasswordHasher

# Argon2id with small parameters: the tests hash and verify many times on a shared machine;
# the production parameters are read from each hash, so verification code is the same.
FAST_HASHER = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1)


@dataclass
class Reply:
    """One HTTP answer."""

    status: int
    headers: dict[str, str]
    body: bytes
    url: str
    set_cookies: list[str]  # every Set-Cookie header (``headers`` keeps only one)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def field(self, name: str) -> str:
        """The value of the first hidden form field ``name`` in the page."""
        m = re.search(rf'name="{name}" value="([^"]*)"', self.text)
        assert m, f"no field {name} in {self.url}"
        return m.group(1)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kw: object) -> None:
        return None


class WebClient:
    """A browser stand-in: keeps cookies; follows redirects unless ``follow=False``."""

    def __init__(self, base: str, *, follow: bool = True) -> None:
        self.base = base
        self.jar = http.cookiejar.CookieJar()
        handlers: list[urllib.request.BaseHandler] = [
            urllib.request.HTTPCookieProcessor(self.jar)]
        if not follow:
            handlers.append(_NoRedirect())
        self.opener = urllib.request.build_opener(*handlers)

    def request(self, path: str, form: dict[str, str] | None = None, *,
                headers: dict[str, str] | None = None) -> Reply:
        data = urllib.parse.urlencode(form).encode() if form is not None else None
        req = urllib.request.Request(self.base + path.lstrip("/"), data=data,
                                     headers=headers or {})
        try:
            with self.opener.open(req, timeout=20) as r:
                return Reply(r.status, dict(r.headers), r.read(), r.url,
                             r.headers.get_all("Set-Cookie") or [])
        except urllib.error.HTTPError as err:
            return Reply(err.code, dict(err.headers), err.read(), err.url,
                         err.headers.get_all("Set-Cookie") or [])

    def get(self, path: str, **kw: dict[str, str]) -> Reply:
        return self.request(path, **kw)

    def post(self, path: str, form: dict[str, str], **kw: dict[str, str]) -> Reply:
        return self.request(path, form, **kw)

    def cookie(self, name: str) -> http.cookiejar.Cookie | None:
        return next((c for c in self.jar if c.name == name), None)

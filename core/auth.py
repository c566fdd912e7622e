"""What both web pages need to let people in: secret hashes, sessions, CSRF, throttles.

Shared by the matcher's dashboard (users and passwords) and the gateway's status page (the
staff PIN); no web framework here, each page sets its own cookies.

- Secrets (passwords, the staff PIN) are stored as Argon2id PHC strings from ``argon2-cffi``
  (RFC 9106 low-memory profile: 64 MiB, 3 passes), never in the clear, never logged.
- A session is a random token in an HttpOnly, SameSite=Strict cookie; the server keeps only
  its SHA-256 (a memory dump or a timing probe of the lookup gives nothing to replay) with
  its own CSRF token, an absolute expiry and an idle expiry.
- Failed attempts are throttled per key (a user name, an address, everyone): a few free
  tries, then an exponentially growing wait; the map is bounded, so a flood of addresses
  cannot grow it without end.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

DEFAULT_HASHER = PasswordHasher()  # argon2-cffi's default is RFC 9106's low-memory profile
# verified when a user does not exist, so an unknown name costs as long as a wrong password
_DUMMIES: dict[tuple[int, int, int], str] = {}


def _dummy(h: PasswordHasher) -> str:
    key = (h.time_cost, h.memory_cost, h.parallelism)
    if key not in _DUMMIES:
        _DUMMIES[key] = h.hash(new_token())
    return _DUMMIES[key]


def hash_secret(secret: str, hasher: PasswordHasher | None = None) -> str:
    """The Argon2id PHC string of a password or PIN (salted; ``$argon2id$v=19$...``)."""
    return (hasher or DEFAULT_HASHER).hash(secret)


def is_secret_hash(text: str) -> bool:
    """Whether ``text`` looks like what :func:`hash_secret` makes (for config checks)."""
    return text.startswith("$argon2id$") and text.count("$") == 5


def verify_secret(encoded: str | None, secret: str,
                  hasher: PasswordHasher | None = None) -> bool:
    """Whether ``secret`` matches ``encoded``; ``None`` costs the same time and is False."""
    h = hasher or DEFAULT_HASHER
    try:
        return h.verify(encoded or _dummy(h), secret) and encoded is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def needs_rehash(encoded: str, hasher: PasswordHasher | None = None) -> bool:
    """Whether a verified hash was made with other parameters than today's."""
    try:
        return (hasher or DEFAULT_HASHER).check_needs_rehash(encoded)
    except InvalidHashError:
        return True


def token_digest(token: str) -> str:
    """What the server keeps of a session token."""
    return hashlib.sha256(token.encode()).hexdigest()


def same_token(a: str | None, b: str | None) -> bool:
    """Constant-time comparison of two tokens; missing or empty ones never match."""
    return bool(a) and bool(b) and hmac.compare_digest(str(a).encode(), str(b).encode())


def new_token() -> str:
    """A fresh random token (256 bits, URL-safe)."""
    return secrets.token_urlsafe(32)


@dataclass
class Session:
    """One logged-in browser.

    Attributes:
        user: who (the user name, or ``"staff"`` for the status page's PIN).
        role: what they may see.
        csrf: the token every form of this session posts back.
        stamp: the user's credential stamp when they logged in (a password change or a
            disabled account changes it, which ends the session).
        created, seen: wall times, for the absolute and idle expiry.
    """

    user: str
    role: str
    csrf: str
    stamp: str
    created: float
    seen: float


class Sessions:
    """In-memory sessions of one server process (a restart logs everyone out).

    Args:
        ttl_s: absolute lifetime of a session.
        idle_s: a session unused this long ends.
        max_sessions: oldest sessions are dropped beyond this.
        clock: wall time (tests move it).
    """

    def __init__(self, *, ttl_s: float, idle_s: float | None = None,
                 max_sessions: int = 10000, clock: Callable[[], float] = time.time) -> None:
        self.ttl_s = ttl_s
        self.idle_s = idle_s if idle_s is not None else ttl_s
        self.max_sessions = max_sessions
        self.clock = clock
        self._by_digest: OrderedDict[str, Session] = OrderedDict()

    def create(self, user: str, role: str, stamp: str = "") -> tuple[str, Session]:
        """A new session; returns the token for the cookie (kept here only as a digest)."""
        token, now = new_token(), self.clock()
        s = Session(user=user, role=role, csrf=new_token(), stamp=stamp, created=now, seen=now)
        self._by_digest[token_digest(token)] = s
        while len(self._by_digest) > self.max_sessions:
            self._by_digest.popitem(last=False)
        return token, s

    def get(self, token: str | None) -> Session | None:
        """The live session of a cookie value, touched; ``None`` when unknown or expired."""
        if not token:
            return None
        key = token_digest(token)
        s = self._by_digest.get(key)
        if s is None:
            return None
        now = self.clock()
        if now - s.created >= self.ttl_s or now - s.seen >= self.idle_s:
            del self._by_digest[key]
            return None
        s.seen = now
        return s

    def drop(self, token: str | None) -> Session | None:
        """End one session (logout); returns it when it existed."""
        return self._by_digest.pop(token_digest(token), None) if token else None

    def drop_user(self, user: str) -> int:
        """End every session of a user; returns how many."""
        gone = [k for k, s in self._by_digest.items() if s.user == user]
        for k in gone:
            del self._by_digest[k]
        return len(gone)

    def __len__(self) -> int:
        return len(self._by_digest)


@dataclass
class _Failures:
    n: int = 0
    last: float = 0.0
    until: float = 0.0


@dataclass
class Throttle:
    """Failed attempts per key: ``free`` tries, then a wait of ``base_s · 2^k`` (at most
    ``max_s``) before the next try is even checked. A key forgets its failures after
    ``forget_s`` without one; success clears it.
    """

    free: int = 5
    base_s: float = 2.0
    max_s: float = 900.0
    forget_s: float = 3600.0
    max_keys: int = 10000
    clock: Callable[[], float] = time.time
    _keys: OrderedDict[str, _Failures] = field(default_factory=OrderedDict, repr=False)

    def _get(self, key: str) -> _Failures | None:
        f = self._keys.get(key)
        if f is not None and self.clock() - f.last >= self.forget_s:
            del self._keys[key]
            return None
        return f

    def wait_s(self, key: str) -> float:
        """Seconds until ``key`` may try again (0: now)."""
        f = self._get(key)
        return max(0.0, f.until - self.clock()) if f else 0.0

    def fail(self, key: str) -> float:
        """Count a failure; returns the wait it starts (0 while tries are free)."""
        now = self.clock()
        f = self._get(key) or _Failures()
        f.n += 1
        f.last = now
        over = f.n - self.free
        wait = min(self.base_s * 2 ** (over - 1), self.max_s) if over > 0 else 0.0
        f.until = now + wait
        self._keys[key] = f
        self._keys.move_to_end(key)
        while len(self._keys) > self.max_keys:
            self._keys.popitem(last=False)
        return wait

    def failures(self, key: str) -> int:
        """Failures counted for ``key`` now."""
        f = self._get(key)
        return f.n if f else 0

    def clear(self, key: str) -> None:
        """Forget a key's failures (after a success)."""
        self._keys.pop(key, None)

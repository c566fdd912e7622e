"""Dashboard users: names, roles, Argon2id password hashes, in a SQLite file of their own.

The file (``matcher.users_db``, default beside the audit log) is separate from the matcher's
database on purpose: credentials stay out of the sightings store, its backups and its
PostgreSQL administrators; it is the same file whether the store is SQLite or PostgreSQL; a
login never queues behind an ingest transaction; and it is made 0600 for the matcher's user.
``bzgw matcher user add|disable|passwd`` change it while the matcher runs: every dashboard
request re-reads its user, so a disabled account or a new password ends old sessions at once.

Roles, each including the ones before it: ``viewer`` (the dashboards), ``health_officer``
(match reports, which name venues and times of cases), ``admin`` (users).
"""

from __future__ import annotations

import os
import re
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from argon2 import PasswordHasher

from core.auth import hash_secret, needs_rehash, new_token, verify_secret
from core.errors import BzgwError

ROLES = ("viewer", "health_officer", "admin")
NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{1,62}$")
MIN_PASSWORD = 12
MAX_PASSWORD = 1024  # Argon2 takes any length; this bounds the work per login attempt


class UserError(BzgwError):
    """A user change that cannot be made (bad name, weak password, unknown user...)."""


def role_at_least(role: str, needed: str) -> bool:
    """Whether ``role`` includes ``needed``."""
    return role in ROLES and ROLES.index(role) >= ROLES.index(needed)


def check_name(name: str) -> str:
    """A valid user name, or :class:`UserError` saying what is allowed."""
    if not NAME.match(name):
        raise UserError(f"user name {name!r}: 2-63 characters, lower-case letters, digits, "
                        "'.', '_' or '-', starting with a letter or digit")
    return name


def check_password(password: str, name: str = "") -> str:
    """A password strong enough to set, or :class:`UserError` saying why not."""
    if len(password) < MIN_PASSWORD:
        raise UserError(f"password: at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise UserError(f"password: at most {MAX_PASSWORD} characters")
    if name and name.lower() in password.lower():
        raise UserError("password: must not contain the user name")
    if len(set(password)) < 5:
        raise UserError("password: too repetitive")
    return password


@dataclass(frozen=True, slots=True)
class User:
    """One account (the hash never leaves this module but for verification).

    Attributes:
        stamp: changes with the password, the role and when disabled; sessions made under
            another stamp are over.
    """

    name: str
    role: str
    disabled: bool
    created_at: float
    changed_at: float
    stamp: str


_SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY,
    role TEXT NOT NULL CHECK (role IN ('viewer', 'health_officer', 'admin')),
    hash TEXT NOT NULL,
    disabled INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    changed_at REAL NOT NULL,
    stamp TEXT NOT NULL
)
"""


class UserStore:
    """The users file.

    Args:
        path: the SQLite file (created 0600 with its folder when missing).
        hasher: Argon2 parameters for new hashes (default: RFC 9106 low-memory profile).
    """

    def __init__(self, path: Path, *, hasher: PasswordHasher | None = None) -> None:
        self.path = Path(path)
        self.hasher = hasher
        self._lock = threading.Lock()  # the loop's thread and login threads share it
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():
            os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
        try:
            # one short transaction per call; the serving process and the CLI share the file
            self._db = sqlite3.connect(self.path, timeout=10, isolation_level=None,
                                       check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(_SCHEMA)
        except sqlite3.DatabaseError as err:
            raise UserError(f"{self.path}: not a users database ({err})") from err

    def close(self) -> None:
        """Close the file."""
        with self._lock:
            self._db.close()

    def _q(self, sql: str, args: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def _x(self, sql: str, args: tuple[object, ...] = ()) -> int:
        with self._lock:
            return self._db.execute(sql, args).rowcount

    def __enter__(self) -> UserStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reads ------------------------------------------------------------------------------
    def get(self, name: str) -> User | None:
        """The user called ``name``, disabled or not."""
        rows = self._q("SELECT name, role, disabled, created_at, changed_at, stamp "
                       "FROM users WHERE name = ?", (name,))
        return User(rows[0][0], rows[0][1], bool(rows[0][2]), *rows[0][3:]) if rows else None

    def list(self) -> list[User]:
        """Every user, by name."""
        return [User(r[0], r[1], bool(r[2]), *r[3:]) for r in self._q(
            "SELECT name, role, disabled, created_at, changed_at, stamp FROM users "
            "ORDER BY name")]

    def authenticate(self, name: str, password: str) -> tuple[User | None, str]:
        """Check a login; returns ``(user, "")`` or ``(None, reason)``.

        Reasons: ``unknown_user``, ``disabled``, ``password``. Takes as long for an unknown
        name as for a wrong password (a hash is verified either way). Slow on purpose (about
        0.1-0.3 s of one core): callers run it in a thread.
        """
        rows = self._q("SELECT hash FROM users WHERE name = ?", (name,))
        encoded = rows[0][0] if rows else None
        ok = verify_secret(encoded, password[:MAX_PASSWORD], self.hasher)
        user = self.get(name) if rows else None
        if user is None:
            return None, "unknown_user"
        if not ok:
            return None, "password"
        if user.disabled:
            return None, "disabled"
        if encoded and needs_rehash(encoded, self.hasher):  # parameters raised since
            self._x("UPDATE users SET hash = ? WHERE name = ?",
                    (hash_secret(password, self.hasher), name))
        return user, ""

    # -- changes ----------------------------------------------------------------------------
    def add(self, name: str, role: str, password: str) -> User:
        """A new, enabled user.

        Raises:
            UserError: bad name, unknown role, weak password, or the name is taken.
        """
        check_name(name)
        if role not in ROLES:
            raise UserError(f"role {role!r}: one of {', '.join(ROLES)}")
        check_password(password, name)
        now = time.time()
        try:
            self._x("INSERT INTO users (name, role, hash, disabled, created_at, changed_at, "
                    "stamp) VALUES (?, ?, ?, 0, ?, ?, ?)",
                    (name, role, hash_secret(password, self.hasher), now, now, new_token()))
        except sqlite3.IntegrityError as err:
            raise UserError(f"user {name!r} exists already (bzgw matcher user passwd "
                            "changes a password)") from err
        user = self.get(name)
        assert user is not None
        return user

    def disable(self, name: str) -> User:
        """Disable an account: it cannot log in and its sessions end.

        Raises:
            UserError: no such user.
        """
        return self._change(name, "disabled = 1")

    def set_password(self, name: str, password: str, *, enable: bool = False) -> User:
        """Set a new password (ends the user's sessions); ``enable`` re-enables the account.

        Raises:
            UserError: no such user, or a weak password.
        """
        check_password(password, name)
        return self._change(name, "hash = ?" + (", disabled = 0" if enable else ""),
                            hash_secret(password, self.hasher))

    def _change(self, name: str, assignments: str, *args: object) -> User:
        n = self._x(f"UPDATE users SET {assignments}, changed_at = ?, stamp = ? WHERE name = ?",
                    (*args, time.time(), new_token(), name))
        if n == 0:
            raise UserError(f"no user {name!r} (bzgw matcher user add creates one)")
        user = self.get(name)
        assert user is not None
        return user

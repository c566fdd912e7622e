"""Builders for matcher tests, the demo and benchmarks: registry entries, records, stores.

Nothing here is used by the running matcher. Keys are generated when called; no secret is
stored in the repository.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from contract.custody import IdentitySealer, SealedIdentity, day_of, seal_for_day
from contract.records import CheckIn, CheckInKind, IdKind, Proximity, Sighting
from contract.registry import GatewayEntry
from core.clock import ClockEpoch, ClockSource
from matcher.custody import Opening, Request, Window
from matcher.store import Store, open_store

SYNCED = ClockEpoch(boot_id="boot-synced", offset=1_000_000.0, synced=True,
                    source=ClockSource.NTP, uncertainty=0.0)


@dataclass(frozen=True)
class Header:
    """A batch header for store tests that do not exercise sealing."""

    gateway_id: str
    seq: int
    created_at: float


def entry(gateway_id: str, province: str = "hn", venue: str = "cho-a", venue_name: str = "",
          district: str = "") -> GatewayEntry:
    """A registry entry with a fresh Ed25519 public key."""
    pub = Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    return GatewayEntry(id=gateway_id, province=province, venue=venue, venue_name=venue_name,
                        district=district, signing_key=pub.hex())


def sighting(ident: bytes, first_seen: float, dwell: float = 60.0, *,
             kind: IdKind | None = None, clock: ClockEpoch = SYNCED, rssi: int | None = -60,
             proximity: Proximity = Proximity.NEAR, count: int = 10) -> Sighting:
    """One sighting; kind follows the ID length (12 Bluezone, 16 EN) unless given."""
    k = kind or (IdKind.GAEN if len(ident) == 16 else IdKind.BLUEZONE)
    slot = 600 if k is IdKind.GAEN else 900
    return Sighting(kind=k, ident=ident, slot_start=int(first_seen // slot * slot),
                    first_seen=first_seen, last_seen=first_seen + dwell, count=count,
                    rssi_max=rssi, rssi_median=None if rssi is None else rssi - 5, clock=clock,
                    proximity=proximity)


class LabCustody:
    """Day keys made on demand, in memory, standing in for custodians in tests and benches.

    ``seal`` does what a gateway does with a check-in's identity; ``opening`` hands the
    matcher the day secrets as k approvals would (without the approval files).
    """

    def __init__(self) -> None:
        self._days: dict[int, tuple[x25519.X25519PrivateKey, bytes]] = {}

    def day(self, d: int) -> tuple[x25519.X25519PrivateKey, bytes]:
        """The identity key and blind key of one day."""
        if d not in self._days:
            self._days[d] = (x25519.X25519PrivateKey.generate(), os.urandom(32))
        return self._days[d]

    def seal(self, ts: float, subject: str, fields: dict[str, str]) -> SealedIdentity:
        """Seal and tag one identity for its day."""
        d = day_of(ts)
        sk, bk = self.day(d)
        return seal_for_day(sk.public_key(), bk, d, subject, fields)

    def opening(self, scope: tuple[Window, ...] = (Window("*", 0.0, 4e9),), *,
                lookup: bool = True) -> Opening:
        """An approved opening of every day made so far, limited to ``scope``."""
        request = Request(case="lab", f0="0" * 64, scope=scope, lookup=lookup, created=0.0,
                          expires=4e9, nonce="lab")
        return Opening(request=request, custodians=["lab"],
                       identity={d: k for d, (k, _) in self._days.items()},
                       blind={d: b for d, (_, b) in self._days.items()})


LAB = LabCustody()


def checkin(subject: str, ts: float, *, kind: CheckInKind = CheckInKind.CCCD,
            clock: ClockEpoch = SYNCED, fields: dict[str, str] | None = None,
            custody: LabCustody | IdentitySealer = LAB) -> CheckIn:
    """One check-in, its identity sealed to the lab's day key (or by a gateway's
    :class:`IdentitySealer`), masked to the last three characters."""
    sealed = custody.seal(ts, subject, dict(fields or {}))
    return CheckIn(ts=ts, clock=clock, kind=kind, masked="***" + subject[-3:],
                   key_day=sealed.key_day, tags=sealed.tags, sealed=sealed.sealed)


def unique_schema() -> str:
    """A PostgreSQL schema name no other test run uses."""
    return f"bzgw_t_{os.getpid()}_{uuid.uuid4().hex[:10]}"


@contextlib.contextmanager
def temp_store(kind: str, tmp_path: Path, pg_url: str | None = None) -> Iterator[Store]:
    """A fresh store: a SQLite file under ``tmp_path``, or a PostgreSQL schema dropped after."""
    if kind == "sqlite":
        with open_store(f"sqlite:///{tmp_path / 'matcher.db'}") as store:
            yield store
        return
    if pg_url is None:
        raise ValueError("postgres store needs a URL")
    name = unique_schema()
    store = open_store(pg_url, schema_name=name)
    try:
        yield store
    finally:
        store.close()
        drop_schema(pg_url, name)


def drop_schema(pg_url: str, name: str) -> None:
    """``DROP SCHEMA ... CASCADE`` on its own connection."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))

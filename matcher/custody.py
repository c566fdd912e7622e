"""Custodians: k of n must approve before anyone reads who checked in.

- ``bzgw custodian init`` (once, on an offline machine with the custodians present) makes, for
  every day of a period, an identity key pair and a blind key (a one-way chain), splits each
  day's 64-byte secret (identity private key ‖ blind key) into n Shamir shares, k needed
  (pycryptodome's ``Shamir``, GF(2^128), in four 16-byte blocks), gives each custodian their
  shares and an approval-signing key (Ed25519), and writes the public ``identity-keys.json``
  (gateways, matcher) and the gateways' first ``blind.key``. Nothing of it stays on the
  matcher.
- ``bzgw match`` without approvals reports counts and masked hints, and writes an **opening
  request**: the case, the F0 file's digest, the scope (venue, start, end windows; ``*`` for
  an identity lookup over the case's period), a nonce and an expiry.
- ``bzgw custodian approve`` signs one request and adds the custodian's shares for the request's
  days only.
- ``bzgw match --request R --approvals A...`` checks k distinct custodians' signatures over
  the very request (an altered request changes its id; a forged approval fails its
  signature; a request already opened is refused by the audit log, so approvals cannot be
  replayed), rebuilds each approved day's secret **in memory**, checks it against the day's
  public key, and opens only the records inside the approved windows.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from Crypto.Protocol.SecretSharing import Shamir
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from contract.custody import (
    DAY,
    Custodian,
    IdentityKeys,
    day_of,
    next_blind,
)
from core.canonical import canonical_json
from core.errors import BzgwError
from core.keyfile import write_private

REQUEST_FORMAT = 1
DEFAULT_DAYS = 731  # two years of keys; `init` again before they run out
REQUEST_TTL_S = 7 * DAY  # an approval is for a case in hand, not for later
_BLOCK = 16
_SECRET = 64  # identity private key (32) ‖ blind key (32)


class CustodyError(BzgwError):
    """A custody file, request or approval is unusable, or an opening is refused."""


def _split(secret: bytes, k: int, n: int) -> list[bytes]:
    """n shares (64 bytes each, index i+1) of a 64-byte secret, any k rebuild it."""
    shares = [bytearray() for _ in range(n)]
    for b in range(0, len(secret), _BLOCK):
        for idx, part in Shamir.split(k, n, secret[b:b + _BLOCK]):
            shares[idx - 1] += part
    return [bytes(s) for s in shares]


def _combine(parts: Sequence[tuple[int, bytes]]) -> bytes:
    out = bytearray()
    for b in range(0, _SECRET, _BLOCK):
        out += Shamir.combine([(i, p[b:b + _BLOCK]) for i, p in parts])
    return bytes(out)


# -- init ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class InitResult:
    """What ``init`` wrote."""

    identity_keys: Path
    blind_key: Path
    custodians: dict[str, Path]
    keys: IdentityKeys


def init_custody(names: Sequence[str], k: int, out: Path, *, first_day: int | None = None,
                 days: int = DEFAULT_DAYS) -> InitResult:
    """Make the keys of a period and split them among the named custodians.

    Args:
        names: the custodians, in Shamir index order (at least 2, distinct).
        k: approvals needed (2 ≤ k ≤ n).
        out: folder for ``identity-keys.json``, ``blind.key`` and ``custodian-NAME.json``.
        first_day: the first UTC day (default: today).
        days: how many days of keys.

    Raises:
        CustodyError: bad k/n, names, or a folder that already holds keys.
    """
    n = len(names)
    if len(set(names)) != n or not all(names):
        raise CustodyError("custodian names must be distinct and non-empty")
    if not 2 <= k <= n <= 32:
        raise CustodyError(f"need 2 <= k <= n <= 32 (got k={k}, n={n}): one custodian alone "
                           f"must never be able to open")
    if not 1 <= days <= 3660:
        raise CustodyError("days must be 1..3660")
    out.mkdir(parents=True, exist_ok=True)
    ik = out / "identity-keys.json"
    if ik.exists():
        raise CustodyError(f"{ik} exists: refusing to replace the keys of a running province")
    d0 = day_of(time.time()) if first_day is None else first_day
    blind0 = blind = os.urandom(32)
    publics: list[bytes] = []
    per: list[list[str]] = [[] for _ in names]
    for _ in range(days):
        sk = x25519.X25519PrivateKey.generate()
        publics.append(sk.public_key().public_bytes_raw())
        for i, share in enumerate(_split(sk.private_bytes_raw() + blind, k, n)):
            per[i].append(share.hex())
        blind = next_blind(blind)
    signers = [Ed25519PrivateKey.generate() for _ in names]
    custodians = tuple(Custodian(name, i + 1, s.public_key().public_bytes_raw().hex())
                       for i, (name, s) in enumerate(zip(names, signers, strict=True)))
    keys = IdentityKeys(k=k, n=n, first_day=d0, public=tuple(publics), custodians=custodians)
    files: dict[str, Path] = {}
    for i, c in enumerate(custodians):
        f = out / f"custodian-{c.name}.json"
        write_private(f, canonical_json({
            "v": REQUEST_FORMAT, "name": c.name, "index": c.index, "k": k, "n": n,
            "first_day": d0, "signing_key": signers[i].private_bytes_raw().hex(),
            "shares": per[i]}))
        files[c.name] = f
    write_private(out / "blind.key", json.dumps({"day": d0, "key": blind0.hex()}).encode())
    ik.write_text(json.dumps(keys.to_json(), indent=1) + "\n")
    return InitResult(identity_keys=ik, blind_key=out / "blind.key", custodians=files,
                      keys=keys)


@dataclass(frozen=True)
class ShareFile:
    """One custodian's file: who, which index, the signing key and a share per day."""

    name: str
    index: int
    k: int
    n: int
    first_day: int
    signing_key: Ed25519PrivateKey
    shares: tuple[bytes, ...]

    def share(self, day: int) -> bytes:
        """This custodian's share of one day.

        Raises:
            CustodyError: a day outside the file.
        """
        i = day - self.first_day
        if not 0 <= i < len(self.shares):
            raise CustodyError(f"day {day} is outside {self.name}'s shares "
                               f"({self.first_day}..{self.first_day + len(self.shares) - 1})")
        return self.shares[i]


def load_share_file(path: Path) -> ShareFile:
    """Read a custodian's file.

    Raises:
        CustodyError: unreadable or malformed.
    """
    try:
        doc = json.loads(Path(path).read_text())
        shares = tuple(bytes.fromhex(s) for s in doc["shares"])
        if not shares or any(len(s) != _SECRET for s in shares):
            raise ValueError("shares must be 64 bytes each")
        return ShareFile(name=str(doc["name"]), index=int(doc["index"]), k=int(doc["k"]),
                         n=int(doc["n"]), first_day=int(doc["first_day"]),
                         signing_key=Ed25519PrivateKey.from_private_bytes(
                             bytes.fromhex(doc["signing_key"])),
                         shares=shares)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CustodyError(f"{path}: not a custodian share file ({err})") from err


# -- requests --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Window:
    """Part of a request's scope: a venue code (``*``: any) and a time range."""

    venue: str
    start: float
    end: float


@dataclass(frozen=True)
class Request:
    """What custodians are asked to approve: one case, one F0 input, these windows."""

    case: str
    f0: str  # SHA-256 of the F0 file, hex
    scope: tuple[Window, ...]
    lookup: bool  # an identity F0: find its check-ins by blind tag in the scope
    created: float
    expires: float
    nonce: str

    def to_json(self) -> dict[str, Any]:
        """The file form (its canonical bytes are what approvals sign)."""
        return {"v": REQUEST_FORMAT, "case": self.case, "f0": self.f0, "lookup": self.lookup,
                "scope": [{"venue": w.venue, "start": w.start, "end": w.end}
                          for w in self.scope],
                "created": self.created, "expires": self.expires, "nonce": self.nonce}

    @property
    def id(self) -> str:
        """SHA-256 of the canonical request: any change makes another request."""
        return hashlib.sha256(canonical_json(self.to_json())).hexdigest()

    @property
    def days(self) -> list[int]:
        """Every UTC day the scope touches: the keys an opening needs."""
        out: set[int] = set()
        for w in self.scope:
            out.update(range(day_of(w.start), day_of(w.end) + 1))
        return sorted(out)

    def covers(self, venue: str, ts: float) -> bool:
        """Whether a record at ``venue`` and ``ts`` is inside the approved scope."""
        return any((w.venue in ("*", venue)) and w.start <= ts <= w.end for w in self.scope)

    def summary(self) -> str:
        """What a custodian reads before approving."""
        lines = [f"request {self.id[:16]} for case {self.case!r}",
                 f"  F0 input sha256 {self.f0[:16]}…, "
                 f"{'identity lookup and ' if self.lookup else ''}opening of check-ins in:"]
        for w in self.scope:
            a = time.strftime("%Y-%m-%d %H:%M", time.gmtime(w.start))
            b = time.strftime("%Y-%m-%d %H:%M", time.gmtime(w.end))
            lines.append(f"  - {'every venue' if w.venue == '*' else w.venue}: {a} - {b} UTC")
        lines.append(f"  days {', '.join(str(d) for d in self.days)}; expires "
                     f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime(self.expires))} UTC")
        return "\n".join(lines)


def make_request(case: str, f0_file: Path, scope: Iterable[Window], *, lookup: bool,
                 now: float | None = None, ttl_s: float = REQUEST_TTL_S) -> Request:
    """A new request (fresh nonce) for an F0 file and windows."""
    t = time.time() if now is None else now
    return Request(case=case, f0=hashlib.sha256(Path(f0_file).read_bytes()).hexdigest(),
                   scope=tuple(scope), lookup=lookup, created=round(t, 3),
                   expires=round(t + ttl_s, 3), nonce=secrets.token_hex(16))


def load_request(path: Path) -> Request:
    """Read a request file.

    Raises:
        CustodyError: unreadable or malformed.
    """
    try:
        doc = json.loads(Path(path).read_text())
        if doc.get("v") != REQUEST_FORMAT:
            raise ValueError(f"version {doc.get('v')!r}")
        scope = tuple(Window(str(w["venue"]), float(w["start"]), float(w["end"]))
                      for w in doc["scope"])
        if not scope or any(w.end < w.start for w in scope):
            raise ValueError("empty scope or a window that ends before it starts")
        return Request(case=str(doc["case"]), f0=str(doc["f0"]), scope=scope,
                       lookup=bool(doc["lookup"]), created=float(doc["created"]),
                       expires=float(doc["expires"]), nonce=str(doc["nonce"]))
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CustodyError(f"{path}: not an opening request ({err})") from err


def save_request(request: Request, path: Path) -> None:
    """Write a request (no secret in it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(request.to_json(), indent=1, ensure_ascii=False) + "\n")


# -- approvals -------------------------------------------------------------------------------

def approve(request: Request, share_file: ShareFile, *, now: float | None = None) -> dict[
        str, Any]:
    """One custodian's signed approval of one request, with their shares of its days only.

    Raises:
        CustodyError: the request has expired, or a day is outside the share file.
    """
    t = time.time() if now is None else now
    if t > request.expires:
        raise CustodyError(f"request {request.id[:16]} expired")
    doc: dict[str, Any] = {
        "v": REQUEST_FORMAT, "request": request.id, "custodian": share_file.name,
        "index": share_file.index, "approved_at": round(t, 3),
        "shares": {str(d): share_file.share(d).hex() for d in request.days}}
    doc["sig"] = share_file.signing_key.sign(canonical_json(doc)).hex()
    return doc


def load_approval(path: Path) -> dict[str, Any]:
    """Read an approval file (checked when an opening uses it).

    Raises:
        CustodyError: not JSON or not an object.
    """
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise CustodyError(f"{path}: not an approval ({err})") from err
    if not isinstance(doc, dict):
        raise CustodyError(f"{path}: not an approval")
    return doc


@dataclass
class Opening:
    """Approved day secrets, in memory only, and the scope they may open."""

    request: Request
    custodians: list[str]
    identity: dict[int, x25519.X25519PrivateKey] = field(repr=False)
    blind: dict[int, bytes] = field(repr=False)
    opened: int = 0

    def private(self, day: int) -> x25519.X25519PrivateKey | None:
        """The identity key of an approved day."""
        return self.identity.get(day)

    def forget(self) -> None:
        """Drop the rebuilt secrets (Python cannot wipe memory; this drops references)."""
        self.identity.clear()
        self.blind.clear()


def _check_approval(keys: IdentityKeys, request: Request, doc: Mapping[str, Any]) -> tuple[
        Custodian, dict[int, bytes]]:
    if doc.get("v") != REQUEST_FORMAT:
        raise CustodyError("approval of an unknown version")
    if doc.get("request") != request.id:
        raise CustodyError("approval is for another request (or the request was altered)")
    c = keys.custodian(str(doc.get("custodian")))
    if c is None or c.index != doc.get("index"):
        raise CustodyError(f"approval by {doc.get('custodian')!r}, who is not a custodian")
    body = {k: v for k, v in doc.items() if k != "sig"}
    try:
        Ed25519PublicKey.from_public_bytes(bytes.fromhex(c.key)).verify(
            bytes.fromhex(str(doc.get("sig"))), canonical_json(body))
    except (InvalidSignature, ValueError) as err:
        raise CustodyError(f"approval by {c.name}: signature does not verify") from err
    shares = doc.get("shares")
    if not isinstance(shares, dict) or sorted(int(d) for d in shares) != request.days:
        raise CustodyError(f"approval by {c.name}: shares are not for the request's days")
    return c, {int(d): bytes.fromhex(v) for d, v in shares.items()}


def open_request(keys: IdentityKeys, request: Request, approvals: Sequence[Mapping[str, Any]],
                 *, now: float | None = None, used: Iterable[str] = ()) -> Opening:
    """Rebuild the approved days' secrets in memory.

    Args:
        keys: the custodians and public keys (from the matcher's config).
        request: the request the approvals sign.
        approvals: approval documents (at least k, from distinct custodians).
        now: the time (expiry check).
        used: request ids already opened (the audit log): an approval is used once.

    Raises:
        CustodyError: expired, replayed, too few distinct custodians, a forged or altered
            approval, or shares that do not rebuild a day's key. Nothing is opened then.
    """
    t = time.time() if now is None else now
    if t > request.expires:
        raise CustodyError(f"request {request.id[:16]} expired: ask for a new one")
    if request.id in set(used):
        raise CustodyError(f"request {request.id[:16]} was already opened: approvals are "
                           f"used once (replay refused)")
    got: dict[str, tuple[Custodian, dict[int, bytes]]] = {}
    for doc in approvals:
        c, shares = _check_approval(keys, request, doc)
        got.setdefault(c.name, (c, shares))
    if len(got) < keys.k:
        raise CustodyError(f"{len(got)} distinct custodian approval(s), {keys.k} needed: "
                           f"nothing opened")
    chosen = list(got.values())[:keys.k]
    identity: dict[int, x25519.X25519PrivateKey] = {}
    blind: dict[int, bytes] = {}
    for day in request.days:
        secret = _combine([(c.index, shares[day]) for c, shares in chosen])
        sk = x25519.X25519PrivateKey.from_private_bytes(secret[:32])
        try:
            expected = keys.public_key(day).public_bytes_raw()
        except BzgwError as err:
            raise CustodyError(str(err)) from err
        if sk.public_key().public_bytes_raw() != expected:
            raise CustodyError(f"the approvals do not rebuild day {day}'s key (a wrong "
                               f"share): nothing opened")
        identity[day], blind[day] = sk, secret[32:]
    return Opening(request=request, custodians=sorted(got), identity=identity, blind=blind)

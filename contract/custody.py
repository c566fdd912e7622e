"""Identities sealed for custodians: what a gateway does with a person's check-in, and what
only k custodians together can undo.

Every field of a check-in that names a person (the subject: CCCD, BHYT or certificate number,
token; and the fields: name, birth date, phone) is sealed a second time, inside the batch, to
the **identity key of the check-in's UTC day** (HPKE, X25519 + HKDF-SHA256 +
ChaCha20-Poly1305). The matcher never holds those private keys: each day's secret is split
among n custodians (Shamir, k of n) and rebuilt in the matcher's memory only for the days of
an approved request (:mod:`matcher.custody`).

So that an F0 given by identity can still find its check-ins, the gateway adds **blind tags**:
HMAC-SHA256 of the normalised subject and phone under the **day's blind key**. CCCD numbers and
phones are too few to hash plainly (a million candidates per birth year and province); the
blind keys are not on the matcher, so its database cannot be searched by guessing. The day's
blind keys form a one-way chain, ``B(d+1) = SHA-256("bzgw/blind/v1" ‖ B(d))``: a gateway keeps
only the current day's key and moves it forward, so a stolen gateway cannot tag past days.

Files:

- ``identity-keys.json`` (public, to gateways and the matcher): k, n, the custodians' names
  and approval-signing keys, and one identity public key per day.
- ``blind.key`` (secret, gateways only): ``{"day": d, "key": hex}``, ratcheted forward.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cbor2
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import x25519

from contract.identity import checkin_phone, normalize_cccd
from core.errors import BzgwError, ConfigError
from core.keyfile import write_private

log = logging.getLogger(__name__)

DAY = 86400
FORMAT = 1
TAG_LEN = 16  # 128-bit tags: no collisions among a province's check-ins
_INFO = b"bzgw/identity/v1\x00"
_BLIND_STEP = b"bzgw/blind/v1"
_SUITE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.CHACHA20_POLY1305)
MAX_SEALED = 4096  # a sealed identity is ~150 bytes; larger is not one of ours


class IdentityKeyError(BzgwError):
    """No identity key for a check-in's day, or a sealed identity that does not open."""


def day_of(ts: float) -> int:
    """The UTC day number (days since 1970-01-01) of a wall time."""
    return int(ts // DAY)


def next_blind(key: bytes) -> bytes:
    """The next day's blind key."""
    return hashlib.sha256(_BLIND_STEP + key).digest()


def blind_tag(key: bytes, what: str, value: str) -> bytes:
    """The blind tag of one normalised identity (``what``: ``s`` subject, ``p`` phone)."""
    return hmac.new(key, f"{what}\x00{value}".encode(), hashlib.sha256).digest()[:TAG_LEN]


def subject_key(subject: str) -> str:
    """The form a subject is tagged in: ID numbers without spaces, anything else as is."""
    return normalize_cccd(subject) or subject.strip()


def identity_tags(key: bytes, subject: str, fields: Mapping[str, str]) -> tuple[bytes, ...]:
    """Tags of a check-in: its subject, and its phone when it has one."""
    tags = [blind_tag(key, "s", subject_key(subject))]
    phone = checkin_phone(subject, dict(fields))
    if phone:
        tags.append(blind_tag(key, "p", phone))
    return tuple(tags)


def _info(day: int) -> bytes:
    return _INFO + day.to_bytes(4, "big")


def seal_identity(public: x25519.X25519PublicKey, day: int, subject: str,
                  fields: Mapping[str, str]) -> bytes:
    """Seal one check-in's identity to the day's identity key (bound to the day)."""
    plain = cbor2.dumps({"s": subject, "f": dict(fields)})
    return _SUITE.encrypt(plain, public, info=_info(day))


def open_identity(private: x25519.X25519PrivateKey, day: int,
                  sealed: bytes) -> tuple[str, dict[str, str]]:
    """Open a sealed identity with the day's private key (in memory, after approval).

    Raises:
        IdentityKeyError: wrong key or day, altered or malformed bytes.
    """
    if not 32 < len(sealed) <= MAX_SEALED:
        raise IdentityKeyError("sealed identity has an impossible size")
    try:
        doc = cbor2.loads(_SUITE.decrypt(sealed, private, info=_info(day)))
    except (InvalidTag, ValueError) as err:
        raise IdentityKeyError(f"sealed identity does not open with day {day}'s key") from err
    if not (isinstance(doc, dict) and isinstance(doc.get("s"), str)
            and isinstance(doc.get("f"), dict)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in doc["f"].items())):
        raise IdentityKeyError("sealed identity is not a subject and fields")
    return doc["s"], dict(doc["f"])


@dataclass(frozen=True, slots=True)
class Custodian:
    """One holder of a share: its name, Shamir index and approval-signing key (hex)."""

    name: str
    index: int
    key: str


@dataclass(frozen=True)
class IdentityKeys:
    """The public half: who the custodians are and each day's identity public key."""

    k: int
    n: int
    first_day: int
    public: tuple[bytes, ...]
    custodians: tuple[Custodian, ...]

    @property
    def last_day(self) -> int:
        """The last day with a key."""
        return self.first_day + len(self.public) - 1

    def public_key(self, day: int) -> x25519.X25519PublicKey:
        """The day's identity public key.

        Raises:
            IdentityKeyError: the day is outside the keys' period.
        """
        i = day - self.first_day
        if not 0 <= i < len(self.public):
            raise IdentityKeyError(f"no identity key for day {day} (keys cover "
                                   f"{self.first_day}..{self.last_day}): custodians must "
                                   f"extend the period")
        return x25519.X25519PublicKey.from_public_bytes(self.public[i])

    def custodian(self, name: str) -> Custodian | None:
        """A custodian by name."""
        return next((c for c in self.custodians if c.name == name), None)

    def to_json(self) -> dict[str, Any]:
        """The file form."""
        return {"v": FORMAT, "suite": "x25519-hkdf-sha256-chacha20", "k": self.k, "n": self.n,
                "first_day": self.first_day, "public": [p.hex() for p in self.public],
                "custodians": [{"name": c.name, "index": c.index, "key": c.key}
                               for c in self.custodians]}

    @classmethod
    def from_json(cls, doc: object, where: str = "identity keys") -> IdentityKeys:
        """Parse the file form.

        Raises:
            ConfigError: naming what is wrong.
        """
        def need(ok: bool, what: str) -> None:
            if not ok:
                raise ValueError(what)

        try:
            need(isinstance(doc, dict) and doc.get("v") == FORMAT, "not version 1")
            assert isinstance(doc, dict)  # for the type checker; checked just above
            k, n, first = int(doc["k"]), int(doc["n"]), int(doc["first_day"])
            need(1 <= k <= n <= 255, f"k={k}, n={n}")
            public = tuple(bytes.fromhex(p) for p in doc["public"])
            need(bool(public) and all(len(p) == 32 for p in public), "public keys of 32 bytes")
            custodians = tuple(Custodian(str(c["name"]), int(c["index"]), str(c["key"]))
                               for c in doc["custodians"])
            need(len(custodians) == n, f"{len(custodians)} custodians for n={n}")
            need(len({c.index for c in custodians}) == n, "custodian indexes repeat")
            need(len({c.name for c in custodians}) == n, "custodian names repeat")
            for c in custodians:
                need(len(bytes.fromhex(c.key)) == 32, f"{c.name}: signing key of 32 bytes")
        except (KeyError, TypeError, ValueError) as err:
            raise ConfigError([(where, f"not an identity key file: {err}")]) from err
        return cls(k=k, n=n, first_day=first, public=public, custodians=custodians)


def load_identity_keys(path: Path) -> IdentityKeys:
    """Read ``identity-keys.json``.

    Raises:
        ConfigError: unreadable or malformed.
    """
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise ConfigError([(str(path), f"cannot read identity keys: {err}")]) from err
    return IdentityKeys.from_json(doc, str(path))


class BlindRatchet:
    """The gateway's blind key: one day's key, moved forward as days pass.

    The file holds ``{"day": d, "key": hex}``. ``key_for(day)`` moves the file forward to
    ``day - 1`` (one day of slack for a clock that is being corrected), never back; a
    check-in of a day before the file's day gets no tags (it can still be opened for
    co-presence, but not found by identity).

    Raises:
        ConfigError: unreadable or malformed file.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            doc = json.loads(self.path.read_text())
            self._day = int(doc["day"])
            self._key = bytes.fromhex(doc["key"])
            if len(self._key) != 32:
                raise ValueError("key must be 32 bytes")
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ConfigError([(str(path), f"cannot read the blind key: {err}")]) from err

    @property
    def day(self) -> int:
        """The earliest day this gateway can still tag."""
        return self._day

    def key_for(self, day: int) -> bytes | None:
        """The day's blind key, or ``None`` for a day already forgotten."""
        if day < self._day:
            return None
        keep = day - 1
        if keep > self._day:  # forget days before yesterday: a stolen unit cannot tag them
            key = self._key
            for _ in range(keep - self._day):
                key = next_blind(key)
            write_private(self.path, json.dumps({"day": keep, "key": key.hex()}).encode())
            self._day, self._key = keep, key
        key = self._key
        for _ in range(day - self._day):
            key = next_blind(key)
        return key


@dataclass(frozen=True, slots=True)
class SealedIdentity:
    """What replaces a person's identity in a sealed batch."""

    key_day: int
    tags: tuple[bytes, ...]
    sealed: bytes


def seal_for_day(public: x25519.X25519PublicKey, blind: bytes | None, day: int, subject: str,
                 fields: Mapping[str, str]) -> SealedIdentity:
    """One identity sealed to the day's public key and tagged with its blind key (no tags
    without one)."""
    tags = () if blind is None else identity_tags(blind, subject, fields)
    return SealedIdentity(key_day=day, tags=tags,
                          sealed=seal_identity(public, day, subject, fields))


class IdentitySealer:
    """The gateway side: seal a check-in's identity and tag it, in memory.

    Args:
        keys: the custodians' public identity keys.
        blind: this gateway's blind-key ratchet.
    """

    def __init__(self, keys: IdentityKeys, blind: BlindRatchet) -> None:
        self.keys = keys
        self.blind = blind
        self.untagged = 0  # check-ins of a day the ratchet had passed (clock set back)

    @classmethod
    def from_files(cls, identity_keys: Path, blind_key: Path) -> IdentitySealer:
        """Load both files (config ``sealing.identity_keys`` and ``sealing.blind_key``)."""
        return cls(load_identity_keys(identity_keys), BlindRatchet(blind_key))

    def seal(self, ts: float, subject: str, fields: Mapping[str, str]) -> SealedIdentity:
        """Seal and tag one identity.

        Raises:
            IdentityKeyError: no identity key for the check-in's day.
        """
        day = day_of(ts)
        public = self.keys.public_key(day)
        key = self.blind.key_for(day)
        if key is None:
            self.untagged += 1
        return seal_for_day(public, key, day, subject, fields)


def lookup_tags(blind_keys: Mapping[int, bytes], subjects: Sequence[str],
                phones: Sequence[str]) -> dict[bytes, int]:
    """Every tag an F0's identities have on the given days → the day (matcher, approved)."""
    out: dict[bytes, int] = {}
    for day, key in blind_keys.items():
        for s in subjects:
            out[blind_tag(key, "s", subject_key(s))] = day
        for p in phones:
            out[blind_tag(key, "p", p)] = day
    return out

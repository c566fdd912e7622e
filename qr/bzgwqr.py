"""This product's own signed check-in QR code (``BZ1:``), for venues and for people.

Wire form: ``BZ1:`` + base45 of the CBOR array ``[kid, payload, signature]`` where

- ``kid`` is 4 bytes, the start of the SHA-256 of the signer's raw Ed25519 public key, so
  keys can rotate (a gateway may trust several);
- ``payload`` is CBOR bytes of a map with small integer keys: ``1`` version (1), ``2`` kind
  (1 venue, 2 person), ``3`` id, ``4`` name (optional), ``5`` phone (optional), ``6`` issued
  at and ``7`` expires (epoch seconds);
- ``signature`` is Ed25519 over ``b"BZ1\\0" + kid + payload``.

Base45 keeps the whole text in the QR alphanumeric alphabet, so the symbol stays small: a
person code with a name and a phone fits a version 7 symbol at level M.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from contract.records import CheckInKind
from core.errors import ConfigError
from qr.base45 import Base45Error, b45decode, b45encode
from qr.mask import mask_id, mask_person
from qr.payload import PayloadRejected, Recognition, strict_cbor

PREFIX = "BZ1:"
VERSION = 1
_DOMAIN = b"BZ1\0"
_KINDS = {1: "venue", 2: "person"}
_K = CheckInKind.BZGW
_NAME = "bzgw QR"
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:\-]{0,63}")
_PHONE = re.compile(r"\+?[0-9]{8,15}")

Keys = Mapping[bytes, Ed25519PublicKey]


def _bad(reason: str) -> PayloadRejected:
    return PayloadRejected(_K, f"{_NAME}: {reason}")


def key_id(public: Ed25519PublicKey) -> bytes:
    """The 4-byte key identifier carried in every code."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).digest()[:4]


def keys_from(publics: list[Ed25519PublicKey]) -> dict[bytes, Ed25519PublicKey]:
    """Verification keys by key id."""
    return {key_id(k): k for k in publics}


def load_checkin_keys(path: Path) -> dict[bytes, Ed25519PublicKey]:
    """Read the check-in verification keys: PEM public keys, or raw keys as 64 hex digits a line.

    Raises:
        ConfigError: unreadable file, a private key, a non-Ed25519 key, or no key at all.
    """
    where = str(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError([(where, f"cannot read the check-in key: {err}")]) from err
    if "PRIVATE KEY" in text:
        raise ConfigError([(where, "checkin_key must hold public keys, not a private key")])
    publics: list[Ed25519PublicKey] = []
    try:
        for block in re.findall(r"-----BEGIN PUBLIC KEY-----.+?-----END PUBLIC KEY-----", text,
                                flags=re.S):
            key = serialization.load_pem_public_key(block.encode())
            if not isinstance(key, Ed25519PublicKey):
                raise ValueError("not an Ed25519 public key")
            publics.append(key)
        if not publics:
            for line in text.split():
                publics.append(Ed25519PublicKey.from_public_bytes(bytes.fromhex(line)))
    except ValueError as err:
        raise ConfigError([(where, f"malformed check-in key: {err}")]) from err
    if not publics:
        raise ConfigError([(where, "no check-in key in the file")])
    return keys_from(publics)


def make_checkin_qr(key: Ed25519PrivateKey, *, kind: Literal["venue", "person"], ident: str,
                    iat: int, exp: int, name: str | None = None,
                    phone: str | None = None) -> str:
    """Issue a signed check-in code (the text to render as a QR symbol).

    Args:
        key: the issuer's Ed25519 signing key.
        kind: ``venue`` (a venue's printed code) or ``person`` (a visitor's code).
        ident: venue code or person id (1–64 of ``A-Za-z0-9._:-``).
        iat: issued at, epoch seconds.
        exp: expires, epoch seconds.
        name: person's or venue's name.
        phone: person's phone number, digits with an optional leading ``+``.

    Raises:
        ValueError: a field is out of range.
    """
    if not _ID.fullmatch(ident):
        raise ValueError("ident must be 1-64 characters of A-Za-z0-9._:-")
    if phone is not None and not _PHONE.fullmatch(phone):
        raise ValueError("phone must be 8-15 digits with an optional leading +")
    if name is not None and not 0 < len(name) <= 100:
        raise ValueError("name must be 1-100 characters")
    if exp < iat:
        raise ValueError("exp is before iat")
    body: dict[int, object] = {1: VERSION, 2: 1 if kind == "venue" else 2, 3: ident}
    if name is not None:
        body[4] = name
    if phone is not None:
        body[5] = phone
    body[6], body[7] = int(iat), int(exp)
    payload = cbor2.dumps(body)
    kid = key_id(key.public_key())
    sig = key.sign(_DOMAIN + kid + payload)
    return PREFIX + b45encode(cbor2.dumps([kid, payload, sig]))


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def parse_bzgw(text: str, *, ts: float, keys: Keys | None) -> Recognition | None:
    """Recognise and verify a bzgw check-in code.

    Returns:
        ``None`` when the text is not ``BZ1:``.

    Raises:
        PayloadRejected: malformed, unverifiable (no key configured, unknown key, bad
            signature) or expired.
    """
    if not text.startswith(PREFIX):
        return None
    try:
        packed = b45decode(text[len(PREFIX):].rstrip("\r\n"))
    except Base45Error as err:
        raise _bad("malformed base45") from err
    outer = strict_cbor(packed, _K, "code", prefix=_NAME)
    if not (isinstance(outer, list | tuple) and len(outer) == 3
            and all(isinstance(x, bytes) for x in outer)):
        raise _bad("malformed code")
    kid, payload, sig = outer
    if not keys:
        raise _bad("cannot be verified: no checkin_key configured")
    public = keys.get(kid)
    if public is None:
        raise _bad("signed by an unknown key")
    try:
        public.verify(sig, _DOMAIN + kid + payload)
    except InvalidSignature as err:
        raise _bad("bad signature") from err
    body = strict_cbor(payload, _K, "payload", prefix=_NAME)
    if not isinstance(body, Mapping) or body.get(1) != VERSION:
        raise _bad("unsupported version")
    kind, ident = _KINDS.get(_int(body.get(2)) or 0), body.get(3)
    iat, exp = _int(body.get(6)), _int(body.get(7))
    name, phone = body.get(4), body.get(5)
    if kind is None or not isinstance(ident, str) or not _ID.fullmatch(ident):
        raise _bad("malformed kind or id")
    if iat is None or exp is None or exp < iat:
        raise _bad("malformed validity dates")
    if name is not None and not (isinstance(name, str) and 0 < len(name) <= 100):
        raise _bad("malformed name")
    if phone is not None and not (isinstance(phone, str) and _PHONE.fullmatch(phone)):
        raise _bad("malformed phone")
    if ts > exp:
        raise _bad("expired")
    fields = {"kind": kind}
    if name is not None:
        fields["name"] = name
    if phone is not None:
        fields["phone"] = phone
    if kind == "venue":
        return Recognition(kind=_K, subject=f"venue:{ident}", masked=f"venue {ident}",
                           fields=fields)
    masked = mask_person(name, phone or ident) if name else mask_id(phone or ident)
    return Recognition(kind=_K, subject=ident, masked=masked, fields=fields)

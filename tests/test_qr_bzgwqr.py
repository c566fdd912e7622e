"""The bzgw check-in QR: issue, render, decode, verify; every way it can be wrong."""

from __future__ import annotations

from pathlib import Path

import cbor2
import numpy as np
import pytest
import segno
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from contract.records import CheckInKind
from core.errors import ConfigError
from qr.base45 import b45decode, b45encode
from qr.bzgwqr import PREFIX, key_id, keys_from, load_checkin_keys, make_checkin_qr, parse_bzgw
from qr.decoder import Decoder
from qr.recognizers import Recognizer
from qr.records import Rejected

NOW = 1_700_000_000


@pytest.fixture(scope="module")
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def person(key: Ed25519PrivateKey, **kw: object) -> str:
    args: dict = {"kind": "person", "ident": "p-000123", "name": "Lê Thị Cúc",
                  "phone": "+84901234567", "iat": NOW, "exp": NOW + 86400}
    args.update(kw)
    return make_checkin_qr(key, **args)


def rejected(text: str, keys: object) -> str:
    got = Recognizer(checkin_keys=keys).classify(text, ts=NOW + 10)  # type: ignore[arg-type]
    assert isinstance(got, Rejected), got
    assert got.kind is CheckInKind.BZGW
    return got.reason


def test_person_code_round_trip_through_an_image(key: Ed25519PrivateKey) -> None:
    text = person(key)
    assert text.startswith(PREFIX)
    # Base45 keeps it in the alphanumeric alphabet: a compact symbol.
    qr = segno.make(text, error="m", micro=False)
    assert qr.mode == "alphanumeric"
    assert qr.version <= 8
    frame = np.where(np.array(list(qr.matrix_iter(scale=4, border=4)), bool), 0, 255)
    codes = Decoder().decode(frame.astype(np.uint8)).codes
    got = Recognizer(checkin_keys=keys_from([key.public_key()])).classify(codes[0], ts=NOW + 5)
    assert not isinstance(got, Rejected), got
    assert got.kind is CheckInKind.BZGW
    assert got.subject == "p-000123"
    assert got.fields == {"kind": "person", "name": "Lê Thị Cúc", "phone": "+84901234567"}
    assert got.masked == "L*** T** C**, ***567"


def test_venue_code(key: Ed25519PrivateKey) -> None:
    text = make_checkin_qr(key, kind="venue", ident="hn-cho-dong-xuan", name="Chợ Đồng Xuân",
                           iat=NOW, exp=NOW + 365 * 86400)
    got = parse_bzgw(text, ts=NOW, keys=keys_from([key.public_key()]))
    assert got is not None
    assert got.subject == "venue:hn-cho-dong-xuan"
    assert got.masked == "venue hn-cho-dong-xuan"


def test_key_rotation_picks_the_key_by_id(key: Ed25519PrivateKey) -> None:
    old = Ed25519PrivateKey.generate()
    keys = keys_from([old.public_key(), key.public_key()])
    assert parse_bzgw(person(old), ts=NOW, keys=keys) is not None
    assert parse_bzgw(person(key), ts=NOW, keys=keys) is not None


def test_no_key_configured(key: Ed25519PrivateKey) -> None:
    assert rejected(person(key), None) == "bzgw QR: cannot be verified: no checkin_key configured"


def test_unknown_key(key: Ed25519PrivateKey) -> None:
    stranger = Ed25519PrivateKey.generate()
    assert rejected(person(stranger), keys_from([key.public_key()])) == (
        "bzgw QR: signed by an unknown key")


def test_tampered_payload(key: Ed25519PrivateKey) -> None:
    kid, payload, sig = cbor2.loads(b45decode(person(key)[len(PREFIX):]))
    body = cbor2.loads(payload)
    body[3] = "p-999999"
    forged = PREFIX + b45encode(cbor2.dumps([kid, cbor2.dumps(body), sig]))
    assert rejected(forged, keys_from([key.public_key()])) == "bzgw QR: bad signature"


def test_expired(key: Ed25519PrivateKey) -> None:
    assert rejected(person(key, exp=NOW), keys_from([key.public_key()])) == "bzgw QR: expired"


def _signed(key: Ed25519PrivateKey, body: object) -> str:
    payload = cbor2.dumps(body)
    kid = key_id(key.public_key())
    return PREFIX + b45encode(cbor2.dumps([kid, payload, key.sign(b"BZ1\0" + kid + payload)]))


@pytest.mark.parametrize(("body", "expected"), [
    ({1: 2, 2: 2, 3: "p", 6: NOW, 7: NOW + 99}, "unsupported version"),
    ([1, 2, 3], "unsupported version"),
    ({1: 1, 2: 7, 3: "p", 6: NOW, 7: NOW + 99}, "malformed kind or id"),
    ({1: 1, 2: 2, 3: "bad id with spaces", 6: NOW, 7: NOW + 99}, "malformed kind or id"),
    ({1: 1, 2: 2, 3: "p", 6: NOW, 7: NOW - 99}, "malformed validity dates"),
    ({1: 1, 2: 2, 3: "p", 6: "today", 7: NOW + 99}, "malformed validity dates"),
    ({1: 1, 2: 2, 3: "p", 4: "", 6: NOW, 7: NOW + 99}, "malformed name"),
    ({1: 1, 2: 2, 3: "p", 5: "call me", 6: NOW, 7: NOW + 99}, "malformed phone"),
])
def test_signed_but_malformed(key: Ed25519PrivateKey, body: object, expected: str) -> None:
    assert rejected(_signed(key, body), keys_from([key.public_key()])) == f"bzgw QR: {expected}"


@pytest.mark.parametrize(("text", "expected"), [
    (PREFIX + "lowercase is not base45", "malformed base45"),
    (PREFIX + b45encode(b"\xff\xff\xff"), "malformed code"),
    (PREFIX + b45encode(cbor2.dumps([b"k", b"p"])), "malformed code"),
    (PREFIX + b45encode(cbor2.dumps(["k", b"p", b"s"])), "malformed code"),
])
def test_malformed_code(key: Ed25519PrivateKey, text: str, expected: str) -> None:
    assert rejected(text, keys_from([key.public_key()])) == f"bzgw QR: {expected}"


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"ident": "has space"}, "ident"),
    ({"phone": "0901"}, "phone"),
    ({"name": ""}, "name"),
    ({"exp": NOW - 1}, "exp is before iat"),
])
def test_make_checkin_qr_validates(key: Ed25519PrivateKey, kwargs: dict,
                                   message: str) -> None:
    with pytest.raises(ValueError, match=message):
        person(key, **kwargs)


def test_load_checkin_keys(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    second = Ed25519PrivateKey.generate()
    pem = tmp_path / "keys.pem"
    pem.write_bytes(b"".join(k.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        for k in (key, second)))
    assert set(load_checkin_keys(pem)) == {key_id(key.public_key()), key_id(second.public_key())}
    raw = tmp_path / "keys.hex"
    raw.write_text(key.public_key().public_bytes(serialization.Encoding.Raw,
                                                 serialization.PublicFormat.Raw).hex() + "\n")
    assert list(load_checkin_keys(raw)) == [key_id(key.public_key())]

    private = tmp_path / "private.pem"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    with pytest.raises(ConfigError, match="not a private key"):
        load_checkin_keys(private)
    bad = tmp_path / "bad.hex"
    bad.write_text("zz11\n")
    with pytest.raises(ConfigError, match="malformed check-in key"):
        load_checkin_keys(bad)
    empty = tmp_path / "empty"
    empty.write_text("")
    with pytest.raises(ConfigError, match="no check-in key"):
        load_checkin_keys(empty)

"""Hostile payloads: every input ends as a check-in or a rejection, never an exception.

The mutation fuzzer prints its seed; replay a failure with ``FUZZ_SEED=<seed> pytest ...``.
"""

from __future__ import annotations

import os
import random
import zlib

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from contract.records import CheckInKind
from qr.base45 import ALPHABET, Base45Error, b45decode, b45encode
from qr.bzgwqr import keys_from, make_checkin_qr
from qr.dcc import PREFIX as HC1
from qr.dcc import TrustedSigner, TrustList, encode_dcc
from qr.payload import PayloadRejected, strict_cbor
from qr.recognizers import Recognizer
from qr.records import Rejected
from qr.zbar import guess_text

NOW = 1_700_000_000
SEED = int(os.environ.get("FUZZ_SEED", random.randrange(2**32)))

_EC = ec.generate_private_key(ec.SECP256R1())
_ED = Ed25519PrivateKey.generate()
_TRUST = TrustList({b"fuzz-kid": TrustedSigner(_EC.public_key(), 0, 2e9)})
RECOGNIZERS = [
    Recognizer(),
    Recognizer(trust_list=_TRUST, checkin_keys=keys_from([_ED.public_key()])),
]
SEEDS = [
    encode_dcc({"ver": "1.3.0", "nam": {"fn": "Nguyễn", "gn": "An"}, "dob": "1990-01-01",
                "v": [{"ci": "URN:UVCI:01:VN:X1#Y"}]}, key=_EC, kid=b"fuzz-kid",
               iat=NOW - 9, exp=NOW + 99999),
    make_checkin_qr(_ED, kind="person", ident="p-1", name="Lê Cúc", phone="+84901234567",
                    iat=NOW - 9, exp=NOW + 99999),
    "001099012345|123456789|Nguyễn Văn An|01011999|Nam|Số 1, Hà Nội|15082021",
    "DN4010123456789|" + "Nguyễn Văn An".encode().hex() + "|01/01/1990|1|x",
    "https://qr.example.vn/c/8f3a9b2c",
]


def _check(payload: str | bytes) -> None:
    for rec in RECOGNIZERS:
        got = rec.classify(payload, ts=NOW)
        if isinstance(got, Rejected):
            assert got.reason and isinstance(got.reason, str)
        else:
            assert got.subject and got.masked is not None


def _mutate(rng: random.Random, text: str) -> str | bytes:
    data = bytearray(text.encode())
    op = rng.randrange(6)
    if op == 0 and data:  # flip bytes
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
    elif op == 1 and data:  # truncate
        del data[rng.randrange(len(data)):]
    elif op == 2:  # insert random bytes
        pos = rng.randrange(len(data) + 1)
        data[pos:pos] = rng.randbytes(rng.randint(1, 16))
    elif op == 3 and data:  # duplicate a slice
        a = rng.randrange(len(data))
        data[a:a] = data[a:a + rng.randint(1, 64)]
    elif op == 4:  # change one base45 character (keeps the text in the alphabet)
        chars = list(text)
        if len(chars) > 5:
            chars[rng.randrange(4, len(chars))] = rng.choice(ALPHABET)
        return "".join(chars)
    else:  # swap a pipe-separated field
        parts = text.split("|")
        parts[rng.randrange(len(parts))] = rng.choice(["", "x" * 300, "31129999", "Nữ", "\x00"])
        return "|".join(parts)
    return bytes(data) if rng.random() < 0.5 else bytes(data).decode("utf-8", "replace")


def test_mutation_fuzz() -> None:
    print(f"FUZZ_SEED={SEED}")
    rng = random.Random(SEED)
    for _ in range(3000):
        _check(_mutate(rng, rng.choice(SEEDS)))


def test_structured_hostile_payloads() -> None:
    """Valid outer layers around hostile inner ones: bombs, deep nesting, wrong types."""
    deep = b"\x81" * 5000 + b"\x00"
    hostile_cose = [
        zlib.compress(b"\x00" * 2_000_000, 9),  # zip bomb: ~2 KiB, fits a QR code
        zlib.compress(deep),  # nesting far past the depth limit
        zlib.compress(cbor2.dumps(cbor2.CBORTag(18, [b"\xff", {}, b"", b""]))),
        zlib.compress(cbor2.dumps(cbor2.CBORTag(18, [b"", [], b"", b""]))),
        zlib.compress(cbor2.dumps(cbor2.CBORTag(18, [b"", {}, cbor2.dumps({4: True}), b""]))),
        zlib.compress(cbor2.dumps(cbor2.CBORTag(18, [b"", {}, cbor2.dumps({4: 2**80}), b""]))),
        zlib.compress(cbor2.dumps(cbor2.CBORTag(18, [b"", {}, cbor2.dumps(
            {4: NOW + 9, -260: {1: {"nam": {"fn": ["x"]}, "dob": 5, "v": "ci"}}}), b""]))),
        zlib.compress(b"\xd8\x23\x63a+$"),  # a regex tag
        zlib.compress(b"\xd8\x1c\x81\xd8\x1d\x00"),  # shared reference cycle
        b"\x78\x9c",  # truncated zlib stream
    ]
    for blob in hostile_cose:
        got = RECOGNIZERS[1].classify(HC1 + b45encode(blob), ts=NOW)
        assert isinstance(got, Rejected) and got.kind is CheckInKind.DCC, got
    got = RECOGNIZERS[1].classify(HC1 + b45encode(hostile_cose[0]), ts=NOW)
    assert got.reason == "DCC: decompresses to more than 64 KiB"  # type: ignore[union-attr]


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=600))
def test_any_text(text: str) -> None:
    _check(text)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_any_bytes(data: bytes) -> None:
    _check(data)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["HC1:", "BZ1:"]),
       st.text(alphabet=ALPHABET, max_size=400))
def test_any_base45_behind_a_prefix(prefix: str, body: str) -> None:
    _check(prefix + body)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_any_compressed_bytes_behind_hc1(data: bytes) -> None:
    _check(HC1 + b45encode(zlib.compress(data)))
    _check("BZ1:" + b45encode(data))


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_base45_decoder_raises_only_its_error(text: str) -> None:
    try:
        out = b45decode(text)
    except Base45Error:
        return
    assert b45encode(out) == text or len(text) % 3 != 1


@given(st.binary(max_size=200))
def test_base45_round_trip(data: bytes) -> None:
    assert b45decode(b45encode(data)) == data


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_strict_cbor_raises_only_rejections(data: bytes) -> None:
    try:
        strict_cbor(data, CheckInKind.DCC, "blob")
    except PayloadRejected as rej:
        assert rej.reason == "DCC: malformed blob"


@given(st.binary(max_size=200))
def test_guess_text_never_fails(data: bytes) -> None:
    text, content = guess_text(data)
    assert content in ("text", "binary") and isinstance(text, str)


@pytest.mark.parametrize("size", [4097, 20_000])
def test_oversized_payload(size: int) -> None:
    got = RECOGNIZERS[0].classify(b"A" * size, ts=NOW)
    assert isinstance(got, Rejected) and "too large" in got.reason

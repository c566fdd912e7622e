"""EU DCC (``HC1:``): certificates issued and signed here, checked against a trust list."""

from __future__ import annotations

import base64
import datetime as dt
import json
import zlib
from pathlib import Path

import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from contract.records import CheckInKind
from core.errors import ConfigError
from qr.base45 import b45decode, b45encode
from qr.dcc import PREFIX, TrustList, encode_dcc, load_trust_list, parse_dcc
from qr.recognizers import Recognizer
from qr.records import Rejected

NOW = 1_640_000_000  # 2021-12-20
HCERT = {
    "ver": "1.3.0",
    "nam": {"fn": "Nguyễn", "fnt": "NGUYEN", "gn": "Văn An", "gnt": "VAN<AN"},
    "dob": "1990-01-01",
    "v": [{"tg": "840539006", "vp": "1119349007", "mp": "EU/1/20/1528", "dn": 2, "sd": 2,
           "dt": "2021-09-01", "co": "VN", "is": "Bộ Y tế", "ci": "URN:UVCI:01:VN:8F3A9B2C1D#Q"}],
}


def make_cert(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, *, days: int = 3650,
              start: int = NOW - 86400) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "DSC test"),
                      x509.NameAttribute(NameOID.COUNTRY_NAME, "VN")])
    begin = dt.datetime.fromtimestamp(start, dt.UTC)
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(begin).not_valid_after(begin + dt.timedelta(days=days))
            .sign(key, hashes.SHA256()))


@pytest.fixture(scope="module")
def ec_signer() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    return key, make_cert(key)


@pytest.fixture(scope="module")
def rsa_signer() -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key, make_cert(key)


@pytest.fixture(scope="module")
def trust(ec_signer: tuple, rsa_signer: tuple) -> TrustList:
    return TrustList.from_certificates([ec_signer[1], rsa_signer[1]])


def issue(signer: tuple, **kwargs: object) -> str:
    key, cert = signer
    args: dict = {"kid": TrustList.kid_of(cert), "iat": NOW - 3600, "exp": NOW + 86400 * 365}
    args.update(kwargs)
    return encode_dcc(dict(HCERT), key=key, **args)


def reason(text: str, trust: TrustList | None, ts: float = NOW) -> str:
    got = Recognizer(trust_list=trust).classify(text, ts=ts)
    assert isinstance(got, Rejected), got
    assert got.kind is CheckInKind.DCC
    return got.reason


def test_valid_es256_certificate(ec_signer: tuple, trust: TrustList) -> None:
    got = parse_dcc(issue(ec_signer), ts=NOW, trust=trust)
    assert got is not None
    assert got.kind is CheckInKind.DCC
    assert got.subject == "URN:UVCI:01:VN:8F3A9B2C1D#Q"
    assert got.fields == {"name": "Nguyễn Văn An", "birth_date": "1990-01-01"}
    assert got.masked == "NGUY*** V** A**, ***C1DQ"
    assert "8F3A9B2C" not in got.masked


def test_valid_ps256_certificate_with_kid_unprotected(rsa_signer: tuple,
                                                      trust: TrustList) -> None:
    got = parse_dcc(issue(rsa_signer, kid_in_protected=False), ts=NOW, trust=trust)
    assert got is not None and got.subject == "URN:UVCI:01:VN:8F3A9B2C1D#Q"


def test_without_trust_list_the_certificate_is_read_unverified(ec_signer: tuple) -> None:
    other = ec.generate_private_key(ec.SECP256R1())
    text = issue((other, ec_signer[1]))  # signed by a key no one trusts
    assert parse_dcc(text, ts=NOW, trust=None) is not None
    assert reason(text, TrustList.from_certificates([ec_signer[1]])) == "DCC: bad signature"


def test_bad_signature(ec_signer: tuple, trust: TrustList) -> None:
    text = issue(ec_signer)
    cose = cbor2.loads(zlib.decompress(b45decode(text[len(PREFIX):])))
    prot, unprot, payload, sig = cose.value
    forged = cbor2.loads(payload)
    forged[-260][1]["nam"]["fn"] = "Trần"  # change the name, keep the signature
    forged_cose = cbor2.CBORTag(18, [prot, unprot, cbor2.dumps(forged), sig])
    tampered = PREFIX + b45encode(zlib.compress(cbor2.dumps(forged_cose)))
    assert reason(tampered, trust) == "DCC: bad signature"


def test_unknown_kid(ec_signer: tuple, trust: TrustList) -> None:
    assert reason(issue(ec_signer, kid=b"\x00" * 8), trust) == "DCC: signed by an unknown signer"


def test_expired_certificate(ec_signer: tuple, trust: TrustList) -> None:
    text = issue(ec_signer, exp=NOW - 1)
    assert reason(text, trust) == "DCC: expired"
    assert reason(text, None) == "DCC: expired"


def test_signer_certificate_outside_its_validity(trust: TrustList) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    old = make_cert(key, days=30, start=NOW - 86400 * 400)  # expired a year ago
    text = issue((key, old))
    assert reason(text, TrustList.from_certificates([old])) == (
        "DCC: signer certificate not valid at check-in time")


def _wrap(cose: bytes) -> str:
    return PREFIX + b45encode(zlib.compress(cose))


@pytest.mark.parametrize(("text", "expected"), [
    (PREFIX + "NOT BASE45 ~~~", "DCC: malformed base45"),
    (PREFIX + "A", "DCC: malformed base45"),
    (PREFIX + b45encode(b"\x78\x9c garbage that is not deflate"), "DCC: malformed zlib data"),
    (PREFIX + b45encode(zlib.compress(b"\x00" * 1_000_000, 9)),
     "DCC: decompresses to more than 64 KiB"),
    (_wrap(b"\xff\xff"), "DCC: malformed COSE message"),
    (_wrap(cbor2.dumps([1, 2, 3])), "DCC: not a COSE_Sign1 message"),
    (_wrap(cbor2.dumps(cbor2.CBORTag(98, [b"", {}, b"", b""]))), "DCC: not a COSE_Sign1 message"),
    (_wrap(cbor2.dumps(cbor2.CBORTag(18, [b"", {}, b"\xa0", b""]))), "DCC: no expiry date"),
    (_wrap(cbor2.dumps(cbor2.CBORTag(18, [b"", {}, cbor2.dumps({4: NOW + 9, 6: NOW + 99}),
                                          b""]))), "DCC: issued after it expires"),
    (_wrap(cbor2.dumps(cbor2.CBORTag(18, [b"", {}, cbor2.dumps({4: NOW + 9}), b""]))),
     "DCC: no health certificate in the payload"),
    (_wrap(cbor2.dumps(cbor2.CBORTag(18, [b"", {}, cbor2.dumps(
        {4: NOW + 9, -260: {1: {"nam": {"fn": "X"}, "dob": "1990"}}}), b""]))),
     "DCC: no certificate identifier"),
    (_wrap(cbor2.dumps(cbor2.CBORTag(18, [b"", {}, cbor2.dumps(
        {4: NOW + 9, -260: {1: {"nam": {}, "dob": "1990", "v": [{"ci": "X"}]}}}), b""]))),
     "DCC: family name missing"),
    (_wrap(cbor2.dumps(cbor2.CBORTag(18, [b"", {}, b"\xc2\x41\x01", b""]))),
     "DCC: malformed certificate payload"),  # a bignum tag: semantic tags are refused
])
def test_malformed_certificates_are_rejected(text: str, expected: str) -> None:
    assert reason(text, None) == expected


def test_trust_list_files(tmp_path: Path, ec_signer: tuple, rsa_signer: tuple) -> None:
    pem = tmp_path / "dsc.pem"
    pem.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM)
                             for c in (ec_signer[1], rsa_signer[1])))
    as_obj = tmp_path / "trust.json"
    kid = base64.b64encode(TrustList.kid_of(ec_signer[1])).decode()
    der = base64.b64encode(ec_signer[1].public_bytes(serialization.Encoding.DER)).decode()
    as_obj.write_text(json.dumps({kid: der}))
    as_list = tmp_path / "trust-list.json"
    as_list.write_text(json.dumps([{"kid": kid, "certificate": ec_signer[1].public_bytes(
        serialization.Encoding.PEM).decode()}]))
    assert len(load_trust_list(pem)) == 2
    for path in (as_obj, as_list):
        t = load_trust_list(path)
        assert list(t.signers) == [TrustList.kid_of(ec_signer[1])]
        assert parse_dcc(issue(ec_signer), ts=NOW, trust=t) is not None


@pytest.mark.parametrize("content", ["{not json", '{"a": "b"}', "[1, 2]", "42"])
def test_malformed_trust_list_is_a_config_error(tmp_path: Path, content: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match="malformed DCC trust list"):
        load_trust_list(path)
    with pytest.raises(ConfigError, match="cannot read"):
        load_trust_list(tmp_path / "missing.json")

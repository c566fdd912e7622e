"""EU Digital COVID Certificate (``HC1:``): base45 → zlib → COSE_Sign1 → CBOR Web Token.

The signature (ES256 or PS256) is checked against a trust list of signer certificates when one
is configured; without one the certificate is read unverified, like a card QR. Every step is
bounded (text length, decompressed size, CBOR size and depth) and every failure is a
:class:`~qr.payload.PayloadRejected` with a short reason.
"""

from __future__ import annotations

import base64
import hashlib
import json
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from contract.records import CheckInKind
from core.errors import ConfigError
from qr.base45 import Base45Error, b45decode, b45encode
from qr.mask import mask_person
from qr.payload import PayloadRejected, Recognition, strict_cbor

PREFIX = "HC1:"
MAX_INFLATED = 64 * 1024  # real DCCs inflate to < 2 KiB; anything near this is a bomb
ES256, PS256 = -7, -37
_K = CheckInKind.DCC


def _bad(reason: str) -> PayloadRejected:
    return PayloadRejected(_K, f"DCC: {reason}")


@dataclass(frozen=True, slots=True)
class TrustedSigner:
    """A document signer's public key and the validity of its certificate."""

    key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey
    not_before: float
    not_after: float


class TrustList:
    """Signer keys by ``kid`` (first 8 bytes of the SHA-256 of the certificate's DER)."""

    def __init__(self, signers: Mapping[bytes, TrustedSigner]) -> None:
        self.signers = dict(signers)

    def __len__(self) -> int:
        return len(self.signers)

    @staticmethod
    def kid_of(cert: x509.Certificate) -> bytes:
        """The DCC key identifier of a certificate."""
        from cryptography.hazmat.primitives.serialization import Encoding

        return hashlib.sha256(cert.public_bytes(Encoding.DER)).digest()[:8]

    @classmethod
    def from_certificates(cls, certs: list[x509.Certificate]) -> TrustList:
        """Trust list keyed by each certificate's computed ``kid``."""
        return cls({cls.kid_of(c): _signer(c) for c in certs})


def _signer(cert: x509.Certificate) -> TrustedSigner:
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        raise ValueError("signer key is neither EC nor RSA")
    return TrustedSigner(key=key, not_before=cert.not_valid_before_utc.timestamp(),
                         not_after=cert.not_valid_after_utc.timestamp())


def _cert_from_text(value: str) -> x509.Certificate:
    value = value.strip()
    if value.startswith("-----BEGIN"):
        return x509.load_pem_x509_certificate(value.encode())
    return x509.load_der_x509_certificate(base64.b64decode(value, validate=True))


def load_trust_list(path: Path) -> TrustList:
    """Read a trust list file.

    Accepted forms: a PEM bundle of signer certificates (``kid`` computed from each); a JSON
    object ``{kid_base64: certificate}``; or a JSON list of ``{"kid": …, "certificate": …}``,
    where a certificate is PEM text or base64 DER.

    Raises:
        ConfigError: the file is missing or malformed (names the file and the entry).
    """
    where = str(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError([(where, f"cannot read the DCC trust list: {err}")]) from err
    try:
        if text.lstrip().startswith("-----BEGIN"):
            return TrustList.from_certificates(x509.load_pem_x509_certificates(text.encode()))
        data = json.loads(text)
        pairs: list[tuple[str, str]]
        if isinstance(data, dict):
            pairs = [(str(k), str(v)) for k, v in data.items()]
        elif isinstance(data, list):
            pairs = [(str(e["kid"]), str(e["certificate"])) for e in data]
        else:
            raise ValueError("expected a JSON object or list")
        signers = {}
        for i, (kid, cert) in enumerate(pairs):
            try:
                signers[base64.b64decode(kid, validate=True)] = _signer(_cert_from_text(cert))
            except ValueError as err:
                raise ValueError(f"entry {i + 1}: {err}") from err
        return TrustList(signers)
    except (ValueError, KeyError, TypeError) as err:
        raise ConfigError([(where, f"malformed DCC trust list: {err}")]) from err


def _inflate(data: bytes) -> bytes:
    if not data or data[0] != 0x78:  # zlib header; DCCs may be sent uncompressed
        return data
    d = zlib.decompressobj()
    try:
        out = d.decompress(data, MAX_INFLATED)
    except zlib.error as err:
        raise _bad("malformed zlib data") from err
    if d.unconsumed_tail:
        raise _bad("decompresses to more than 64 KiB")
    return out


def _verify(alg: object, key: TrustedSigner, to_sign: bytes, sig: bytes) -> None:
    pub = key.key
    try:
        if alg == ES256 and isinstance(pub, ec.EllipticCurvePublicKey):
            if len(sig) != 64:
                raise _bad("bad signature")
            der = encode_dss_signature(int.from_bytes(sig[:32]), int.from_bytes(sig[32:]))
            pub.verify(der, to_sign, ec.ECDSA(hashes.SHA256()))
        elif alg == PS256 and isinstance(pub, rsa.RSAPublicKey):
            pub.verify(sig, to_sign, padding.PSS(mgf=padding.MGF1(hashes.SHA256()),
                                                 salt_length=padding.PSS.DIGEST_LENGTH),
                       hashes.SHA256())
        else:
            raise _bad("signature algorithm does not match the signer's key")
    except InvalidSignature as err:
        raise _bad("bad signature") from err


def _text(value: object, limit: int = 200) -> str | None:
    return value.strip() if isinstance(value, str) and 0 < len(value.strip()) <= limit else None


def parse_dcc(text: str, *, ts: float, trust: TrustList | None = None) -> Recognition | None:
    """Recognise an EU DCC.

    Args:
        text: the QR payload.
        ts: the check-in time, for expiry checks.
        trust: signer keys; when given, the signature must verify against them.

    Returns:
        ``None`` when the payload is not ``HC1:``.

    Raises:
        PayloadRejected: malformed, expired, unknown signer or bad signature.
    """
    if not text.startswith(PREFIX):
        return None
    try:
        packed = b45decode(text[len(PREFIX):].rstrip("\r\n"))
    except Base45Error as err:
        raise _bad("malformed base45") from err
    cose = strict_cbor(_inflate(packed), _K, "COSE message")
    if hasattr(cose, "tag") and hasattr(cose, "value"):  # CBORTag
        if cose.tag != 18:
            raise _bad("not a COSE_Sign1 message")
        cose = cose.value
    if not (isinstance(cose, list | tuple) and len(cose) == 4):
        raise _bad("not a COSE_Sign1 message")
    prot_raw, unprot, payload_raw, sig = cose
    if not (isinstance(prot_raw, bytes) and isinstance(payload_raw, bytes)
            and isinstance(sig, bytes) and isinstance(unprot, Mapping)):
        raise _bad("not a COSE_Sign1 message")
    prot = strict_cbor(prot_raw, _K, "COSE header") if prot_raw else {}
    if not isinstance(prot, Mapping):
        raise _bad("malformed COSE header")
    alg = prot.get(1, unprot.get(1))
    kid = prot.get(4, unprot.get(4))
    claims = strict_cbor(payload_raw, _K, "certificate payload")
    if not isinstance(claims, Mapping):
        raise _bad("malformed certificate payload")
    exp, iat = claims.get(4), claims.get(6)
    if not (isinstance(exp, int | float) and not isinstance(exp, bool)):
        raise _bad("no expiry date")
    if isinstance(iat, int | float) and not isinstance(iat, bool) and iat > exp:
        raise _bad("issued after it expires")

    if trust is not None:
        if not isinstance(kid, bytes) or kid not in trust.signers:
            raise _bad("signed by an unknown signer")
        signer = trust.signers[kid]
        to_sign = sig_structure(prot_raw, payload_raw)
        _verify(alg, signer, to_sign, sig)
        if not signer.not_before <= ts <= signer.not_after:
            raise _bad("signer certificate not valid at check-in time")
    if ts > exp:
        raise _bad("expired")

    hcert_wrap = claims.get(-260)
    hcert = hcert_wrap.get(1) if isinstance(hcert_wrap, Mapping) else None
    if not isinstance(hcert, Mapping):
        raise _bad("no health certificate in the payload")
    nam, dob = hcert.get("nam"), _text(hcert.get("dob"), 10)
    if not isinstance(nam, Mapping) or dob is None:
        raise _bad("name or birth date missing")
    family = _text(nam.get("fn"), 80) or _text(nam.get("fnt"), 80)
    given = _text(nam.get("gn"), 80) or _text(nam.get("gnt"), 80)
    if family is None:
        raise _bad("family name missing")
    ci = None
    for group in ("v", "t", "r"):
        entries = hcert.get(group)
        if isinstance(entries, list | tuple) and entries and isinstance(entries[0], Mapping):
            ci = _text(entries[0].get("ci"), 80)
            break
    if ci is None:
        raise _bad("no certificate identifier")
    name = f"{family} {given}" if given else family
    return Recognition(kind=_K, subject=ci, masked=mask_person(name, ci),
                       fields={"name": name.replace("<", " "), "birth_date": dob})


def sig_structure(protected: bytes, payload: bytes) -> bytes:
    """The COSE ``Sig_structure`` that was signed: ``["Signature1", prot, b"", payload]``."""
    import cbor2

    return cbor2.dumps(["Signature1", protected, b"", payload])


def encode_dcc(hcert: dict[str, Any], *, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey,
               kid: bytes, iat: int, exp: int, issuer: str = "VN",
               kid_in_protected: bool = True) -> str:
    """Issue a DCC (the issuer's side): used by tests, samples and demos.

    Args:
        hcert: the health certificate (``ver``, ``nam``, ``dob``, ``v``/``t``/``r``).
        key: the document signer's private key (EC P-256 → ES256, RSA → PS256).
        kid: the key identifier to put in the header.
        iat: issued-at, epoch seconds.
        exp: expiry, epoch seconds.
        issuer: the ``iss`` claim.
        kid_in_protected: put ``kid`` in the protected header (else the unprotected one).
    """
    import cbor2

    alg = ES256 if isinstance(key, ec.EllipticCurvePrivateKey) else PS256
    prot_map: dict[int, Any] = {1: alg}
    unprot: dict[int, Any] = {}
    (prot_map if kid_in_protected else unprot)[4] = kid
    prot = cbor2.dumps(prot_map)
    payload = cbor2.dumps({1: issuer, 4: exp, 6: iat, -260: {1: hcert}})
    to_sign = sig_structure(prot, payload)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

        r, s = decode_dss_signature(key.sign(to_sign, ec.ECDSA(hashes.SHA256())))
        sig = r.to_bytes(32) + s.to_bytes(32)
    else:
        sig = key.sign(to_sign, padding.PSS(mgf=padding.MGF1(hashes.SHA256()),
                                            salt_length=padding.PSS.DIGEST_LENGTH),
                       hashes.SHA256())
    cose = cbor2.dumps(cbor2.CBORTag(18, [prot, unprot, payload, sig]))
    return PREFIX + b45encode(zlib.compress(cose, 9))


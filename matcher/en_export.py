"""Exposure Notification key exports: ``export.bin`` + ``export.sig`` in a zip, as published.

``export.bin`` is the 16-byte header ``EK Export v1    `` followed by a protobuf
``TemporaryExposureKeyExport``; ``export.sig`` is a protobuf ``TEKSignatureList`` whose
signatures are ECDSA P-256 / SHA-256 (DER) over the whole ``export.bin``.

A protobuf library is not used: these two messages need only varints, fixed64 and
length-delimited fields, and a hand-written reader of ~60 lines is easier to bound against
hostile input (every length is checked against the buffer, unknown fields are skipped, nesting
is fixed) than a generated module plus a runtime dependency. Field numbers are those of
Google's ``export.proto``:

- ``TemporaryExposureKeyExport``: 1 start_timestamp (fixed64), 2 end_timestamp (fixed64),
  3 region, 4 batch_num, 5 batch_size, 6 signature_infos, 7 keys, 8 revised_keys.
- ``TemporaryExposureKey``: 1 key_data, 2 transmission_risk_level, 3
  rolling_start_interval_number, 4 rolling_period (default 144), 5 report_type,
  6 days_since_onset_of_symptoms (sint32).
- ``SignatureInfo``: 3 verification_key_version, 4 verification_key_id, 5 signature_algorithm.
- ``TEKSignatureList``: 1 signatures; ``TEKSignature``: 1 signature_info, 2 batch_num,
  3 batch_size, 4 signature.
"""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from core.errors import F0InputError

HEADER = b"EK Export v1    "
ECDSA_SHA256_OID = "1.2.840.10045.4.3.2"
MAX_MEMBER = 64 * 1024 * 1024  # export.bin of a whole country-day is a few MB
EN_DEFAULT_PERIOD = 144


class ProtobufError(ValueError):
    """Malformed protobuf wire data."""


# ---------------------------------------------------------------- wire format


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ProtobufError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ProtobufError("varint longer than 10 bytes")


def fields(buf: bytes) -> Iterator[tuple[int, int, int, bytes]]:
    """``(field number, wire type, integer value, bytes value)`` of each field.

    Integer wire types fill the integer (bytes empty), length-delimited ones the bytes (integer
    0). Groups, truncation and lengths beyond the buffer raise :class:`ProtobufError`.
    """
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        num, wt = key >> 3, key & 7
        if num == 0:
            raise ProtobufError("field number 0")
        if wt == 0:
            v, pos = _varint(buf, pos)
            yield num, wt, v, b""
        elif wt == 1:
            if pos + 8 > len(buf):
                raise ProtobufError("truncated fixed64")
            yield num, wt, struct.unpack_from("<Q", buf, pos)[0], b""
            pos += 8
        elif wt == 2:
            n, pos = _varint(buf, pos)
            if pos + n > len(buf):
                raise ProtobufError(f"length {n} beyond the message")
            yield num, wt, 0, buf[pos:pos + n]
            pos += n
        elif wt == 5:
            if pos + 4 > len(buf):
                raise ProtobufError("truncated fixed32")
            yield num, wt, struct.unpack_from("<I", buf, pos)[0], b""
            pos += 4
        else:
            raise ProtobufError(f"unsupported wire type {wt}")


def _enc_varint(v: int) -> bytes:
    out = bytearray()
    v &= (1 << 64) - 1  # negative int32 are sign-extended to 10 bytes, as protobuf does
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def enc_field(num: int, value: int | bytes | str, *, fixed64: bool = False) -> bytes:
    """One encoded field (varint, fixed64 or length-delimited)."""
    if isinstance(value, str):
        value = value.encode()
    if isinstance(value, bytes):
        return _enc_varint(num << 3 | 2) + _enc_varint(len(value)) + value
    if fixed64:
        return _enc_varint(num << 3 | 1) + struct.pack("<Q", value)
    return _enc_varint(num << 3) + _enc_varint(value)


def _zigzag(v: int) -> int:
    return (v >> 1) ^ -(v & 1)


# ---------------------------------------------------------------- messages


@dataclass(frozen=True, slots=True)
class Tek:
    """One Temporary Exposure Key."""

    key: bytes
    rolling_start: int
    rolling_period: int = EN_DEFAULT_PERIOD
    transmission_risk: int | None = None
    report_type: int | None = None
    days_since_onset: int | None = None


@dataclass
class TekExport:
    """A parsed ``export.bin``; keys that were unusable are counted in ``skipped``."""

    start_timestamp: int = 0
    end_timestamp: int = 0
    region: str = ""
    batch_num: int = 1
    batch_size: int = 1
    keys: list[Tek] = field(default_factory=list)
    revised_keys: list[Tek] = field(default_factory=list)
    skipped: int = 0


def _tek(buf: bytes) -> Tek | None:
    key, start, period = b"", None, EN_DEFAULT_PERIOD
    risk = report = onset = None
    for num, wt, v, b in fields(buf):
        if num == 1 and wt == 2:
            key = b
        elif num == 2 and wt == 0:
            risk = v
        elif num == 3 and wt == 0:
            start = v
        elif num == 4 and wt == 0:
            period = v
        elif num == 5 and wt == 0:
            report = v
        elif num == 6 and wt == 0:
            onset = _zigzag(v)
    if len(key) != 16 or start is None or not 0 <= start < 2**32 or not 1 <= period <= 144:
        return None
    return Tek(key, start, period, risk, report, onset)


def parse_export_bin(data: bytes) -> TekExport:
    """Parse ``export.bin`` (header + ``TemporaryExposureKeyExport``).

    Raises:
        F0InputError: wrong header or malformed protobuf.
    """
    if not data.startswith(HEADER):
        raise F0InputError(f"export.bin does not start with {HEADER!r}")
    out = TekExport()
    try:
        for num, wt, v, b in fields(data[len(HEADER):]):
            if num == 1 and wt == 1:
                out.start_timestamp = v
            elif num == 2 and wt == 1:
                out.end_timestamp = v
            elif num == 3 and wt == 2:
                out.region = b.decode("utf-8", "replace")
            elif num == 4 and wt == 0:
                out.batch_num = v
            elif num == 5 and wt == 0:
                out.batch_size = v
            elif num in (7, 8) and wt == 2:
                tek = _tek(b)
                if tek is None:
                    out.skipped += 1
                else:
                    (out.keys if num == 7 else out.revised_keys).append(tek)
    except ProtobufError as err:
        raise F0InputError(f"export.bin: {err}") from err
    return out


def parse_signature_list(data: bytes) -> list[tuple[str, bytes]]:
    """``(signature_algorithm, DER signature)`` of each ``TEKSignature`` in ``export.sig``.

    Raises:
        F0InputError: malformed protobuf.
    """
    out = []
    try:
        for num, wt, _v, b in fields(data):
            if num != 1 or wt != 2:
                continue
            algo, sig = "", b""
            for n2, w2, _, b2 in fields(b):
                if n2 == 1 and w2 == 2:
                    for n3, w3, _, b3 in fields(b2):
                        if n3 == 5 and w3 == 2:
                            algo = b3.decode("ascii", "replace")
                elif n2 == 4 and w2 == 2:
                    sig = b2
            out.append((algo, sig))
    except ProtobufError as err:
        raise F0InputError(f"export.sig: {err}") from err
    return out


def read_export_zip(data: bytes) -> tuple[bytes, bytes]:
    """``(export.bin, export.sig)`` from a published zip, sizes bounded.

    Raises:
        F0InputError: not a zip, a member missing, or a member too large.
    """
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            out = []
            for name in ("export.bin", "export.sig"):
                try:
                    info = z.getinfo(name)
                except KeyError as err:
                    raise F0InputError(f"key export zip has no {name}") from err
                if info.file_size > MAX_MEMBER:
                    raise F0InputError(f"{name} declares {info.file_size} bytes (limit "
                                       f"{MAX_MEMBER})")
                with z.open(info) as f:
                    blob = f.read(MAX_MEMBER + 1)
                if len(blob) > MAX_MEMBER:
                    raise F0InputError(f"{name} inflates beyond {MAX_MEMBER} bytes")
                out.append(blob)
    # zipfile reports damage in many ways: a corrupt deflate stream (zlib.error), a bad
    # offset (ValueError: negative seek), an encrypted member (RuntimeError)...
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError,
            ValueError, RuntimeError) as err:
        raise F0InputError(f"not a readable key export zip: {err}") from err
    return out[0], out[1]


def verify_export(export_bin: bytes, export_sig: bytes,
                  keys: Sequence[tuple[str, ec.EllipticCurvePublicKey]]) -> str:
    """The id of the configured P-256 key that signed ``export.bin``.

    Raises:
        F0InputError: no signature verifies under any configured key.
    """
    from cryptography.exceptions import InvalidSignature

    sigs = parse_signature_list(export_sig)
    if not sigs:
        raise F0InputError("export.sig holds no signature")
    for algo, sig in sigs:
        if algo and algo != ECDSA_SHA256_OID:
            continue
        for kid, pub in keys:
            try:
                pub.verify(sig, export_bin, ec.ECDSA(hashes.SHA256()))
            except (InvalidSignature, ValueError):
                continue
            return kid
    raise F0InputError("export.sig: no signature verifies under a configured F0 signer key")


# ---------------------------------------------------------------- writing (tests, demo)


def build_export_bin(keys: Sequence[Tek], *, region: str = "VN", start: int = 0,
                     end: int = 0, key_version: str = "v1", key_id: str = "452") -> bytes:
    """``export.bin`` for ``keys`` (one batch)."""
    sig_info = (enc_field(3, key_version) + enc_field(4, key_id)
                + enc_field(5, ECDSA_SHA256_OID))
    body = [enc_field(1, start, fixed64=True), enc_field(2, end, fixed64=True),
            enc_field(3, region), enc_field(4, 1), enc_field(5, 1), enc_field(6, sig_info)]
    for k in keys:
        tek = (enc_field(1, k.key) + enc_field(3, k.rolling_start)
               + enc_field(4, k.rolling_period))
        if k.transmission_risk is not None:
            tek += enc_field(2, k.transmission_risk)
        if k.report_type is not None:
            tek += enc_field(5, k.report_type)
        if k.days_since_onset is not None:
            d = k.days_since_onset
            tek += enc_field(6, (d << 1) ^ (d >> 31))
        body.append(enc_field(7, tek))
    return HEADER + b"".join(body)


def build_export_zip(keys: Sequence[Tek], signing_key: ec.EllipticCurvePrivateKey, *,
                     region: str = "VN", start: int = 0, end: int = 0) -> bytes:
    """A signed key export zip, the way a health authority's server publishes one."""
    export_bin = build_export_bin(keys, region=region, start=start, end=end)
    sig = signing_key.sign(export_bin, ec.ECDSA(hashes.SHA256()))
    info = enc_field(3, "v1") + enc_field(4, "452") + enc_field(5, ECDSA_SHA256_OID)
    export_sig = enc_field(1, enc_field(1, info) + enc_field(2, 1) + enc_field(3, 1)
                           + enc_field(4, sig))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("export.bin", export_bin)
        z.writestr("export.sig", export_sig)
    return buf.getvalue()

"""The health-insurance (BHYT) card QR code, recognised conservatively.

The card's QR starts with its 15-character code ``XXnPPNNNNNNNNNN`` (beneficiary group, two
letters; benefit level 1–5; province, two digits; the 10-digit social-insurance number), then
pipe-separated fields: name (often hex-encoded UTF-8), birth date, gender, address... The
layout is not published, so only the code is relied on: it must be followed by a name and a
birth date that parse, otherwise the payload is left to the opaque-token path.
"""

from __future__ import annotations

import re
import unicodedata
from datetime import date

from contract.records import CheckInKind
from qr.mask import mask_person
from qr.payload import Recognition

_CODE = re.compile(r"[A-Z]{2}[1-5][0-9]{2}([0-9]{10})")
_NAME = re.compile(r"[^\W\d_]+(?:[ '\-.][^\W\d_]+)*")


def _name(field: str) -> str | None:
    value = field.strip()
    if value and len(value) % 2 == 0 and re.fullmatch(r"[0-9a-fA-F]+", value):
        try:
            value = bytes.fromhex(value).decode("utf-8")
        except UnicodeDecodeError:
            return None
    value = unicodedata.normalize("NFC", " ".join(value.split()))
    return value if 0 < len(value) <= 100 and _NAME.fullmatch(value) else None


def _birth(field: str) -> str | None:
    m = re.fullmatch(r"(\d{2})/(\d{2})/(\d{4})", field.strip(), flags=re.ASCII)
    if m:
        try:
            return date(int(m[3]), int(m[2]), int(m[1])).isoformat()
        except ValueError:
            return None
    m = re.fullmatch(r"\d{4}", field.strip(), flags=re.ASCII)  # year only on some cards
    return m[0] if m and 1900 <= int(m[0]) <= 2100 else None


def parse_bhyt(text: str) -> Recognition | None:
    """Recognise a BHYT card QR, or ``None`` (never raises: unsure means opaque)."""
    parts = text.strip().split("|")
    if len(parts) < 3:
        return None
    m = _CODE.fullmatch(parts[0].strip())
    if not m:
        return None
    name, birth = _name(parts[1]), _birth(parts[2])
    if name is None or birth is None:
        return None
    number = m[1]
    return Recognition(kind=CheckInKind.BHYT, subject=number, masked=mask_person(name, number),
                       fields={"name": name, "birth_date": birth})

"""The chip ID card (CCCD) QR code.

``ID12|oldID9|Full Name|ddmmyyyy|Nam/Nữ|address|ddmmyyyy``: the 12-digit citizen number, the
old 9-digit ID (may be empty), name, birth date, gender, address, issue date. Newer cards add
fields after these seven. Only the number (the subject), the name and the birth date are kept.
"""

from __future__ import annotations

import re
import unicodedata
from datetime import date

from contract.records import CheckInKind
from qr.mask import mask_person
from qr.payload import PayloadRejected, Recognition

_LOOKS_LIKE = re.compile(r"[0-9]{12}\|")
_NAME = re.compile(r"[^\W\d_]+(?:[ '\-.][^\W\d_]+)*")
_GENDERS = {"NAM": 0, "NỮ": 1}  # 0 male, 1 female: the parity of the ID's century digit
_CENTURY = {0: 1900, 1: 2000, 2: 2100, 3: 2200, 4: 1800}  # century digit // 2 → century start


def parse_ddmmyyyy(value: str) -> date | None:
    """``ddmmyyyy`` as a date (1800 or later), or ``None``."""
    if len(value) != 8 or not value.isascii() or not value.isdigit():
        return None
    try:
        d = date(int(value[4:]), int(value[2:4]), int(value[:2]))
    except ValueError:
        return None
    return d if d.year >= 1800 else None


def parse_cccd(text: str) -> Recognition | None:
    """Recognise a CCCD card QR.

    Returns:
        ``None`` when the text does not start like a CCCD payload.

    Raises:
        PayloadRejected: it starts like one but a field is invalid.
    """
    text = text.strip()
    if not _LOOKS_LIKE.match(text):
        return None

    def bad(reason: str) -> PayloadRejected:
        return PayloadRejected(CheckInKind.CCCD, f"CCCD: {reason}")

    parts = text.split("|")
    if len(parts) < 7:
        raise bad(f"expected at least 7 fields, found {len(parts)}")
    number, old, name, born, gender, _address, issued = (p.strip() for p in parts[:7])
    if old and not (len(old) == 9 and old.isascii() and old.isdigit()):
        raise bad("old ID number is not 9 digits")
    name = unicodedata.normalize("NFC", " ".join(name.split()))
    if not name or len(name) > 100 or not _NAME.fullmatch(name):
        raise bad("name is missing or not a name")
    birth = parse_ddmmyyyy(born)
    if birth is None:
        raise bad("birth date is not a valid ddmmyyyy date")
    sex = _GENDERS.get(unicodedata.normalize("NFC", gender).upper())
    if sex is None:
        raise bad("gender is neither Nam nor Nữ")
    issue = parse_ddmmyyyy(issued)
    if issue is None:
        raise bad("issue date is not a valid ddmmyyyy date")
    if issue < birth:
        raise bad("issue date is before the birth date")
    # Digit 4 encodes century and gender (even male, odd female), digits 5-6 the birth year.
    century_digit = int(number[3])
    if (_CENTURY.get(century_digit // 2) != birth.year // 100 * 100
            or century_digit % 2 != sex or int(number[4:6]) != birth.year % 100):
        raise bad("ID number does not match the birth year or gender")
    return Recognition(kind=CheckInKind.CCCD, subject=number,
                       masked=mask_person(name, number),
                       fields={"name": name, "birth_date": birth.isoformat()})

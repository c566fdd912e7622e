"""Normal forms of the identities a check-in can be matched on (CCCD number, phone).

Ingest stores each check-in's phone (its subject when that is a phone, or its ``phone`` field)
in this normal form, so an identity F0 finds the person however the number was written.
"""

from __future__ import annotations

import re

_CCCD = re.compile(r"[0-9]{12}")
_OLD_ID = re.compile(r"[0-9]{9}")
_PHONE_CHARS = re.compile(r"[\s.\-()]")
_PHONE = re.compile(r"\+?[0-9]{8,15}")
# A subject is taken for a phone only in the Vietnamese forms (10 digits from 0, or +84/84):
# ID numbers are digit strings too (9-digit old IDs, 12-digit CCCD starting 00).
_VN_PHONE_SUBJECT = re.compile(r"(\+84|84|0)[1-9][0-9]{8}")


def normalize_phone(text: str) -> str | None:
    """A phone number in one form (Vietnamese numbers as ``0xxxxxxxxx``), or ``None``.

    ``+84 912 345 678``, ``84912345678`` and ``0912-345-678`` all become ``0912345678``;
    other countries keep their ``+`` prefix.
    """
    s = _PHONE_CHARS.sub("", text.strip())
    if not _PHONE.fullmatch(s):
        return None
    if s.startswith("+84"):
        return "0" + s[3:]
    if s.startswith("84") and len(s) == 11:
        return "0" + s[2:]
    return s


def normalize_cccd(text: str) -> str | None:
    """A 12-digit chip ID card number (or a 9-digit old ID) without spaces, or ``None``."""
    s = re.sub(r"\s", "", text)
    return s if _CCCD.fullmatch(s) or _OLD_ID.fullmatch(s) else None


def checkin_phone(subject: str, fields: dict[str, str]) -> str | None:
    """The normalised phone of a check-in: its ``phone`` field, or a subject that is one."""
    raw = fields.get("phone")
    if raw:
        got = normalize_phone(raw)
        if got:
            return got
    if _VN_PHONE_SUBJECT.fullmatch(subject):
        return normalize_phone(subject)
    return None

"""Base45 (RFC 9285), the QR-friendly text encoding of EU DCCs and bzgw check-in codes.

Written here rather than taken from PyPI: the ``base45`` package has had no release since
2022 and the encoding is a few lines; this version also bounds its input and raises this
product's own error on malformed text, which a parser of hostile input needs.
"""

from __future__ import annotations

from core.errors import BzgwError

ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:"
_VALUE = {c: i for i, c in enumerate(ALPHABET)}
MAX_TEXT = 8192  # far above a QR code's 4,296 alphanumeric characters


class Base45Error(BzgwError, ValueError):
    """Text is not valid base45 (bad character, dangling character, value out of range)."""


def b45encode(data: bytes) -> str:
    """Encode bytes as base45 text."""
    out: list[str] = []
    for i in range(0, len(data) - 1, 2):
        n = data[i] * 256 + data[i + 1]
        n, c = divmod(n, 45)
        e, d = divmod(n, 45)
        out += (ALPHABET[c], ALPHABET[d], ALPHABET[e])
    if len(data) % 2:
        d, c = divmod(data[-1], 45)
        out += (ALPHABET[c], ALPHABET[d])
    return "".join(out)


def b45decode(text: str) -> bytes:
    """Decode base45 text.

    Raises:
        Base45Error: on any malformed input (never another exception).
    """
    if len(text) > MAX_TEXT:
        raise Base45Error(f"base45 text too long ({len(text)} characters)")
    try:
        vals = [_VALUE[ch] for ch in text]
    except KeyError as err:
        raise Base45Error("character outside the base45 alphabet") from err
    if len(vals) % 3 == 1:
        raise Base45Error("base45 text length leaves a dangling character")
    out = bytearray()
    for i in range(0, len(vals) - 2, 3):
        n = vals[i] + vals[i + 1] * 45 + vals[i + 2] * 2025
        if n > 0xFFFF:
            raise Base45Error("base45 triple out of range")
        out += n.to_bytes(2, "big")
    if len(vals) % 3 == 2:
        n = vals[-2] + vals[-1] * 45
        if n > 0xFF:
            raise Base45Error("base45 pair out of range")
        out.append(n)
    return bytes(out)

"""Masked forms of identities: the only thing about a person ever logged or shown.

``NGUYỄN VĂN AN`` with card ``001099012345`` becomes ``NGUY*** V** A**, ***2345``: enough for
staff to tell two people apart at the door, not enough to identify anyone from a log.
"""

from __future__ import annotations

import unicodedata


def mask_name(name: str) -> str:
    """Family name cut to four letters, other names to their initial.

    Example: ``Nguyễn Văn An`` → ``NGUY*** V** A**``.
    """
    words = [w for w in unicodedata.normalize("NFC", name).upper().split() if w.isprintable()]
    if not words:
        return "***"
    first = words[0]
    keep = 4 if len(first) > 4 else 1
    return " ".join([first[:keep] + "***", *(w[0] + "**" for w in words[1:])])


def mask_id(value: str, keep: int = 4) -> str:
    """``***`` and the last ``keep`` characters (fewer for short values).

    Example: ``001099012345`` → ``***2345``.
    """
    v = "".join(ch for ch in value if ch.isalnum())
    keep = min(keep, max(0, len(v) // 3))
    return "***" + (v[-keep:] if keep else "")


def mask_person(name: str | None, ident: str) -> str:
    """``NGUY*** V** A**, ***2345`` (or only the id part without a name)."""
    return f"{mask_name(name)}, {mask_id(ident)}" if name else mask_id(ident)

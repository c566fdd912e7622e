"""What a payload parser returns: a recognised identity, or a reason to reject it.

Parsers (``qr.cccd``, ``qr.bhyt``, ``qr.dcc``, ``qr.bzgwqr``) return ``None`` for "not my
kind", a :class:`Recognition` for a valid payload, and raise :class:`PayloadRejected` for a
payload of their kind that is malformed, expired or badly signed. Reasons never quote the
payload.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field
from typing import Any

from contract.records import CheckInKind
from core.errors import BzgwError

# Public domain-separation key used when no token key is configured: opaque tokens are then
# hashed the same way on every gateway and at the matcher, which is what matching needs.
DEFAULT_TOKEN_KEY = b"bzgw/qr/opaque-token/v1"


@dataclass(frozen=True, slots=True)
class Recognition:
    """A valid payload, before it is stamped with a time and clock.

    Attributes:
        kind: what it is.
        subject: the identity tracing matches on.
        masked: the form safe to log and show.
        fields: the few other fields tracing needs.
    """

    kind: CheckInKind
    subject: str
    masked: str
    fields: dict[str, str] = field(default_factory=dict)


class PayloadRejected(BzgwError):
    """A payload was recognised as a kind but is not acceptable.

    Attributes:
        kind: the kind it claimed to be (``None`` when unknown).
        reason: a short human-readable reason that never quotes the payload.
    """

    def __init__(self, kind: CheckInKind | None, reason: str) -> None:
        self.kind = kind
        self.reason = reason
        super().__init__(reason)


def token_hash(key: bytes, token: bytes) -> str:
    """Keyed hash of an opaque token (HMAC-SHA-256, 128 bits as hex): never the token."""
    return hmac.new(key, token, hashlib.sha256).hexdigest()[:32]


# cbor2 decodes these semantic tags into Python objects (bignums, regexes, shared references
# that build cycles, sets, dates...). No payload we read uses them, and some are costly or
# unsafe on hostile input, so each is refused.
_SEMANTIC_TAGS = (0, 1, 2, 3, 4, 5, 25, 28, 29, 30, 35, 36, 37, 52, 54, 100, 256, 258, 260, 261,
                  1004, 55799)
MAX_CBOR = 64 * 1024


def _refuse(*_args: Any) -> Any:
    import cbor2

    raise cbor2.CBORDecodeError("semantic tag not allowed")


def strict_cbor(data: bytes, kind: CheckInKind, what: str, *, prefix: str = "") -> object:
    """Decode untrusted CBOR: bounded size and depth, definite lengths, no semantic tags.

    Raises:
        PayloadRejected: ``{prefix}: malformed {what}`` on anything wrong (prefix defaults to
            the kind in capitals).
    """
    import cbor2

    prefix = prefix or kind.value.upper()
    if len(data) > MAX_CBOR:
        raise PayloadRejected(kind, f"{prefix}: {what} too large")
    try:
        return cbor2.loads(data, semantic_decoders=dict.fromkeys(_SEMANTIC_TAGS, _refuse),
                           max_depth=16, allow_indefinite=False)
    except (cbor2.CBORDecodeError, ValueError, TypeError, OverflowError, RecursionError) as err:
        raise PayloadRejected(kind, f"{prefix}: malformed {what}") from err

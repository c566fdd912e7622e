"""The matcher's answer to one batch, published on the gateway's ``.../ack`` topic (QoS 1).

``{"seq", "status": stored|duplicate|rejected, "reason", "matcher_time"}``. A batch leaves the
gateway's outbox only on such an answer (a PUBACK only means the broker has it);
``matcher_time`` is also the gateway clock's hint of last resort.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass

ACK_STATUSES = ("stored", "duplicate", "rejected")
MAX_ACK_BYTES = 4096  # an ack is ~100 bytes; anything far larger is not one


@dataclass(frozen=True, slots=True)
class Ack:
    """One answer.

    Attributes:
        seq: the batch's sequence number.
        status: ``stored``, ``duplicate`` or ``rejected``.
        reason: why, for ``rejected`` (``bad_signature``...).
        matcher_time: the matcher's wall clock when it answered, if finite.
    """

    seq: int
    status: str
    reason: str | None = None
    matcher_time: float | None = None


def ack_payload(seq: int, status: str, *, matcher_time: float | None = None,
                reason: str | None = None) -> bytes:
    """Encode an ack; ``matcher_time`` defaults to this machine's clock now.

    Raises:
        ValueError: an unknown status or a negative sequence number.
    """
    if status not in ACK_STATUSES:
        raise ValueError(f"ack status must be one of {ACK_STATUSES}, got {status!r}")
    if type(seq) is not int or seq < 0:
        raise ValueError(f"ack seq must be a non-negative integer, got {seq!r}")
    return json.dumps({"seq": seq, "status": status, "reason": reason,
                       "matcher_time": time.time() if matcher_time is None
                       else matcher_time}).encode()


def parse_ack(payload: bytes | str) -> Ack | None:
    """Decode an ack from the network; ``None`` for anything that is not a valid one."""
    if len(payload) > MAX_ACK_BYTES:
        return None
    try:
        doc = json.loads(payload)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None
    if not isinstance(doc, dict):
        return None
    seq, status, reason, mt = (doc.get("seq"), doc.get("status"), doc.get("reason"),
                               doc.get("matcher_time"))
    if type(seq) is not int or seq < 0 or status not in ACK_STATUSES:
        return None
    if not (reason is None or isinstance(reason, str)):
        reason = str(reason)
    t = float(mt) if isinstance(mt, int | float) and not isinstance(mt, bool) else None
    return Ack(seq=seq, status=status, reason=reason,
               matcher_time=t if t is not None and math.isfinite(t) else None)

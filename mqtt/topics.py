"""MQTT topic layout (``v1``): one place, so gateway, matcher and broker ACLs agree."""

from __future__ import annotations

PREFIX = "bz/v1"
MATCHER_SHARE_GROUP = "matchers"


def base(province: str, venue: str, gateway: str) -> str:
    """``bz/v1/{p}/{v}/{g}``."""
    return f"{PREFIX}/{province}/{venue}/{gateway}"


def batch(province: str, venue: str, gateway: str) -> str:
    """Gateway → broker, QoS 1: sealed batches."""
    return f"{base(province, venue, gateway)}/batch"


def ack(province: str, venue: str, gateway: str) -> str:
    """Matcher → gateway, QoS 1: application-level acks."""
    return f"{base(province, venue, gateway)}/ack"


def status(province: str, venue: str, gateway: str) -> str:
    """Retained ``online``/``offline`` (last will)."""
    return f"{base(province, venue, gateway)}/status"


def health(province: str, venue: str, gateway: str) -> str:
    """Periodic health JSON."""
    return f"{base(province, venue, gateway)}/health"


def correction(province: str, venue: str, gateway: str) -> str:
    """Gateway → matcher: signed clock corrections (sent inside sealed batches too)."""
    return f"{base(province, venue, gateway)}/clock"


ALL_BATCHES = f"{PREFIX}/+/+/+/batch"
SHARED_BATCHES = f"$share/{MATCHER_SHARE_GROUP}/{ALL_BATCHES}"
ALL_STATUS = f"{PREFIX}/+/+/+/status"
ALL_HEALTH = f"{PREFIX}/+/+/+/health"


def parse(topic: str) -> tuple[str, str, str, str] | None:
    """``(province, venue, gateway, leaf)`` of a ``bz/v1`` topic, or ``None``."""
    parts = topic.split("/")
    if len(parts) != 6 or parts[0] != "bz" or parts[1] != "v1":
        return None
    return parts[2], parts[3], parts[4], parts[5]

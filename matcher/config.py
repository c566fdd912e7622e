"""Config section ``matcher``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from msgspec import Meta, field

from core.settings import Section
from mqtt.config import MqttConfig

Port = Annotated[int, Meta(ge=0, le=65535)]


class MatcherConfig(Section, kw_only=True):
    """The central matcher."""

    db: Annotated[str, Meta(description="sqlite:///path or postgresql://...")] = \
        "sqlite:///var/lib/bzgw-matcher/matcher.db"
    private_key: Annotated[Path, Meta(description="HPKE private key batches are sealed to")]
    registry: Annotated[Path, Meta(
        description="gateway registry (YAML: id, province, venue, key)")]
    f0_signers: Annotated[list[Path], Meta(
        description="health-authority public keys for F0 input (the only signers accepted)"
    )] = field(default_factory=list)
    identity_keys: Annotated[Path | None, Meta(
        description="custodians' identity-keys.json: who may approve opening check-in "
                    "identities, and each day's public key")] = None
    retention_days: Annotated[float, Meta(gt=0, le=60)] = 21
    mqtt: MqttConfig | None = None
    dashboard_enabled: Annotated[bool, Meta(
        description="serve the provincial dashboard from serve")] = True
    dashboard_listen: str = "127.0.0.1"
    dashboard_port: Port = 8090
    reports_dir: Annotated[Path | None, Meta(
        description="where `bzgw match` writes reports; the dashboard lists their exposure "
                    "venues")] = None
    client_id: Annotated[str, Meta(
        max_length=64, description="MQTT client id (default: matcher-<host>-<pid>); every "
                                   "process of a share group needs its own")] = ""
    purge_interval_s: Annotated[float, Meta(
        gt=0, le=86400, description="how often retention runs")] = 3600
    max_batch_bytes: Annotated[int, Meta(
        ge=1024, description="larger sealed batches are refused unread")] = 4 * 1024 * 1024
    max_plaintext_bytes: Annotated[int, Meta(
        ge=4096, description="decompressed batch limit (zip bombs)")] = 16 * 1024 * 1024
    audit_log: Annotated[Path, Meta(
        description="hash-chained, signed log of queries, approvals, openings, logins and "
                    "user changes")] = Path("/var/lib/bzgw-matcher/audit.log")
    audit_key: Annotated[Path, Meta(
        description="Ed25519 key signing the audit log (made on first start; its .pub "
                    "verifies the log)")] = Path("/var/lib/bzgw-matcher/audit.key")
    users_db: Annotated[Path, Meta(
        description="dashboard users (SQLite, 0600): names, roles, Argon2id password "
                    "hashes")] = Path("/var/lib/bzgw-matcher/users.db")
    dashboard_secure_cookies: Annotated[bool, Meta(
        description="mark session cookies Secure: browsers send them over HTTPS only (the "
                    "TLS reverse proxy in front); false only for plain http on a trusted "
                    "network")] = True
    dashboard_session_hours: Annotated[float, Meta(
        gt=0, le=24 * 7, description="a login lasts at most this long")] = 8
    dashboard_idle_minutes: Annotated[float, Meta(
        gt=0, le=24 * 60, description="a session unused this long ends")] = 30
    dashboard_trusted_proxies: Annotated[list[str], Meta(
        description="reverse proxies whose X-Forwarded-For names the client address (failed "
                    "logins are throttled per address)")] = field(
        default_factory=lambda: ["127.0.0.1", "::1"])

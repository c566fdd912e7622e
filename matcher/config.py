"""Config section ``matcher``."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from mqtt.config import MqttConfig


class MatcherConfig(BaseModel):
    """The central matcher."""

    model_config = ConfigDict(extra="forbid")
    db: str = Field(default="sqlite:///var/lib/bzgw-matcher/matcher.db",
                    description="sqlite:///path or postgresql://...")
    private_key: Path = Field(description="HPKE private key batches are sealed to")
    registry: Path = Field(description="gateway registry (YAML: id, province, venue, key)")
    f0_signers: list[Path] = Field(default_factory=list,
                                   description="health-authority public keys for F0 input "
                                               "(the only signers accepted)")
    identity_keys: Path | None = Field(
        default=None, description="custodians' identity-keys.json: who may approve opening "
                                  "check-in identities, and each day's public key")
    retention_days: float = Field(default=21, gt=0, le=60)
    mqtt: MqttConfig | None = None
    dashboard_enabled: bool = Field(default=True,
                                    description="serve the provincial dashboard from serve")
    dashboard_listen: str = "127.0.0.1"
    dashboard_port: int = Field(default=8090, ge=0, le=65535)
    reports_dir: Path | None = Field(default=None,
                                     description="where `bzgw match` writes reports; the "
                                                 "dashboard lists their exposure venues")
    client_id: str = Field(default="", max_length=64,
                           description="MQTT client id (default: matcher-<host>-<pid>); "
                                       "every process of a share group needs its own")
    purge_interval_s: float = Field(default=3600, gt=0, le=86400,
                                    description="how often retention runs")
    max_batch_bytes: int = Field(default=4 * 1024 * 1024, ge=1024,
                                 description="larger sealed batches are refused unread")
    max_plaintext_bytes: int = Field(default=16 * 1024 * 1024, ge=4096,
                                     description="decompressed batch limit (zip bombs)")
    audit_log: Path = Field(default=Path("/var/lib/bzgw-matcher/audit.log"),
                            description="hash-chained, signed log of queries, approvals, "
                                        "openings, logins and user changes")
    audit_key: Path = Field(default=Path("/var/lib/bzgw-matcher/audit.key"),
                            description="Ed25519 key signing the audit log (made on first "
                                        "start; its .pub verifies the log)")
    users_db: Path = Field(default=Path("/var/lib/bzgw-matcher/users.db"),
                           description="dashboard users (SQLite, 0600): names, roles, "
                                       "Argon2id password hashes")
    dashboard_secure_cookies: bool = Field(
        default=True, description="mark session cookies Secure: browsers send them over "
                                  "HTTPS only (the TLS reverse proxy in front); false only "
                                  "for plain http on a trusted network")
    dashboard_session_hours: float = Field(default=8, gt=0, le=24 * 7,
                                           description="a login lasts at most this long")
    dashboard_idle_minutes: float = Field(default=30, gt=0, le=24 * 60,
                                          description="a session unused this long ends")
    dashboard_trusted_proxies: list[str] = Field(
        default_factory=lambda: ["127.0.0.1", "::1"],
        description="reverse proxies whose X-Forwarded-For names the client address "
                    "(failed logins are throttled per address)")

"""A complete local MQTT site in one folder: CA, broker, device and matcher identities.

The demo and the tests use it to run a real Mosquitto with TLS, client certificates and the
generated ACLs on a free loopback port. Nothing here is used on a deployed gateway.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from contract.registry import GatewayEntry, Registry
from contract.sealing import signing_public_hex
from matcher.custody import Opening, Window
from mqtt.broker import MosquittoProcess, free_port
from mqtt.broker_config import TlsFiles, write_broker_config
from mqtt.config import MqttConfig
from mqtt.pki import CA, write_identity


@dataclass
class LabGateway:
    """A gateway identity made by the lab."""

    entry: GatewayEntry
    signing_key: Ed25519PrivateKey
    mqtt: MqttConfig


@dataclass
class Lab:
    """CA + registry + running broker under ``root``."""

    root: Path
    ca: CA
    registry: Registry
    broker: MosquittoProcess
    gateways: dict[str, LabGateway] = field(default_factory=dict)
    matcher_mqtt: dict[str, MqttConfig] = field(default_factory=dict)

    def client_config(self, name: str) -> MqttConfig:
        """Issue (once) a client certificate for ``name`` and return its connection config."""
        pki = self.root / "pki"
        crt, key = pki / f"{name}.crt", pki / f"{name}.key"
        if not crt.exists():
            k, c = self.ca.issue(name)
            write_identity(pki, name, k, c)
        return MqttConfig(host="127.0.0.1", port=self.broker.port, ca_file=pki / "ca.crt",
                          cert_file=crt, key_file=key, keepalive_s=10, backoff_min_s=0.05,
                          backoff_max_s=1)

    def restart_broker(self) -> None:
        """Start the broker again on the same port (after ``broker.kill()``)."""
        self.broker.stop()
        self.broker.proc = None
        self.broker.start()

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.broker.stop()


def make_lab(root: Path, gateways: list[dict[str, str]], matchers: tuple[str, ...] = (
        "matcher",), *, start: bool = True, persistence: bool = True) -> Lab:
    """Build a lab: ``gateways`` are dicts with id/province/venue (district, venue_name).

    Each gateway gets an Ed25519 signing key (registered) and a TLS client certificate.
    """
    root.mkdir(parents=True, exist_ok=True)
    pki = root / "pki"
    ca = CA.create("bzgw lab CA")
    ca.save(pki / "ca.crt", pki / "ca.key")
    skey, scert = ca.issue("localhost", server=True, hosts=("localhost", "127.0.0.1"))
    s_crt, s_key = write_identity(pki, "broker", skey, scert)
    keys = {g["id"]: Ed25519PrivateKey.generate() for g in gateways}
    entries = [GatewayEntry(signing_key=signing_public_hex(keys[g["id"]]), **g)
               for g in gateways]
    registry = Registry(gateways={e.id: e for e in entries}, matchers=list(matchers))
    port = free_port()
    conf, _ = write_broker_config(
        registry, root / "broker", port=port, bind="127.0.0.1",
        tls=TlsFiles(pki / "ca.crt", s_crt, s_key),
        persistence_dir=(root / "broker" / "data") if persistence else None,
        log_file=root / "broker" / "mosquitto.log", run_as_root=os.geteuid() == 0)
    if persistence:
        (root / "broker" / "data").mkdir(parents=True, exist_ok=True)
    broker = MosquittoProcess(conf=conf, port=port, log=root / "broker" / "mosquitto.log")
    lab = Lab(root=root, ca=ca, registry=registry, broker=broker)
    for e in entries:
        lab.gateways[e.id] = LabGateway(e, keys[e.id], lab.client_config(e.id))
    for m in matchers:
        lab.matcher_mqtt[m] = lab.client_config(m)
    registry.save(root / "registry.yaml")
    if start:
        broker.start()
    return lab


def matcher_keys(lab: Lab) -> tuple[Path, Path]:
    """The lab's matcher HPKE key files (made on first use): ``(private, public)``."""
    from contract.sealing import generate_matcher_keypair, save_matcher_keypair

    priv, pub = lab.root / "matcher" / "matcher.key", lab.root / "matcher" / "matcher.pub"
    if not priv.exists():
        save_matcher_keypair(*generate_matcher_keypair(), priv, pub)
    return priv, pub


LAB_CUSTODIANS = ("health-office", "police", "peoples-committee")
LAB_FIRST_DAY = 18262  # 2020-01-01: the lab's keys cover every date tests and captures use
LAB_DAYS = 3653
_custody_cache: dict[str, Path] = {}


def custody_files(root: Path) -> Path:
    """Custodian keys for a lab (2 of 3), under ``root/custody``: ``identity-keys.json``,
    ``blind.key`` and one file per custodian.

    Generated once per process (ten years of day keys take a moment) and copied into each
    lab, so every lab's gateways ratchet their own blind key.
    """
    import shutil
    import tempfile

    from matcher.custody import init_custody

    if "dir" not in _custody_cache:
        src = Path(tempfile.mkdtemp(prefix="bzgw-lab-custody-")) / "custody"
        init_custody(list(LAB_CUSTODIANS), 2, src, first_day=LAB_FIRST_DAY, days=LAB_DAYS)
        _custody_cache["dir"] = src
    dst = root / "custody"
    if not (dst / "identity-keys.json").exists():
        shutil.copytree(_custody_cache["dir"], dst, dirs_exist_ok=True)
    return dst


def gateway_identity_files(root: Path, folder: Path) -> tuple[Path, Path]:
    """``(identity-keys.json, blind.key)`` for one gateway: the public keys, and its own copy
    of the blind key (each gateway moves its copy forward)."""
    import shutil

    custody = custody_files(root)
    folder.mkdir(parents=True, exist_ok=True)
    blind = folder / "blind.key"
    if not blind.exists():
        shutil.copy2(custody / "blind.key", blind)
    return custody / "identity-keys.json", blind


def lab_opening(root: Path, scope: Sequence[Window] | None = None, *,
                lookup: bool = True) -> Opening:
    """An opening as two of the lab's custodians would approve it (for tests and benches
    that match what lab gateways sealed): the request, both approvals and the rebuild."""
    from contract.custody import load_identity_keys
    from matcher.custody import (
        REQUEST_TTL_S,
        Request,
        approve,
        load_share_file,
        open_request,
    )

    custody = custody_files(root)
    keys = load_identity_keys(custody / "identity-keys.json")
    now = time.time()
    windows = tuple(scope) if scope is not None else (Window("*", now - 21 * 86400, now),)
    request = Request(case="lab", f0="0" * 64, scope=windows, lookup=lookup, created=now,
                      expires=now + REQUEST_TTL_S, nonce=secrets.token_hex(16))
    approvals = [approve(request, load_share_file(custody / f"custodian-{name}.json"))
                 for name in LAB_CUSTODIANS[:2]]
    return open_request(keys, request, approvals)


def write_gateway_config(lab: Lab, gid: str, folder: Path, **sections: dict[str, object]
                         ) -> Path:
    """A complete ``bzgw run`` config for lab gateway ``gid`` in ``folder``.

    ``sections`` override or add top-level sections (``ble={...}``, ``status={...}``).
    """
    import yaml

    from contract.sealing import save_signing_key

    folder.mkdir(parents=True, exist_ok=True)
    lg = lab.gateways[gid]
    key = folder / "device.key"
    save_signing_key(key, lg.signing_key)
    _, pub = matcher_keys(lab)
    ik, blind = gateway_identity_files(lab.root, folder)
    m = lg.mqtt
    cfg: dict[str, object] = {
        "gateway": {"id": gid, "province": lg.entry.province, "venue": lg.entry.venue,
                    "district": lg.entry.district, "venue_name": lg.entry.venue_name},
        "sealing": {"matcher_public_key": str(pub), "device_key": str(key),
                    "identity_keys": str(ik), "blind_key": str(blind)},
        "outbox": {"path": str(folder / "outbox.db"), "flush_interval_s": 1},
        "mqtt": {"host": m.host, "port": m.port, "ca_file": str(m.ca_file),
                 "cert_file": str(m.cert_file), "key_file": str(m.key_file),
                 "keepalive_s": 10, "backoff_min_s": 0.05, "backoff_max_s": 1},
        "status": {"enabled": False, "health_interval_s": 5},
        "ble": {"source": "simulator",
                "simulator": {"venue": lg.entry.venue, "realtime": False, "duration_s": 600,
                              "bluezone_phones": 10, "en_phones": 3, "iphones": 0,
                              "background": 5}},
        "qr": {"source": "none"},
    }
    for name, value in sections.items():
        base = cfg.get(name)
        cfg[name] = {**base, **value} if isinstance(base, dict) else value
    path = folder / "gateway.yaml"
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path

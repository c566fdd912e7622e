"""Enrolment on the device: keys, CSR, certificate install; and the ``bzgw enroll`` commands.

Device side (``bzgw enroll``), run by ansible on each Pi (and, without a signing key, on the
matcher and the broker):

1. make the Ed25519 *signing* key (seals batches; its public half goes into the registry) and
   the EC P-256 *TLS* key (mTLS to the broker) if they are missing, both 0600;
2. write a CSR for the TLS key with CN = gateway id, and the signing public key as hex;
3. later, ``bzgw enroll --install-cert CERT --ca CA`` installs the certificate the provincial
   CA signed, after checking that it matches the key, names this gateway and chains to the CA.

The control-node side (``bzgw enroll init-ca``, ``sign``, ``revoke``: the provincial CA) is
in :mod:`gateway.enroll_ca`; its commands are defined at the end of this module. Only the CSR
and the public key travel; private keys never leave the host that made them. Every step is
idempotent (``changed`` says whether anything was written), so a second ansible run reports
no changes.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import click
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID

from core.errors import BzgwError
from core.keyfile import write_private
from core.settings import Section, load_model
from gateway.config import IdentityConfig, SealingConfig
from mqtt.config import MqttConfig
from mqtt.pki import cert_pem, key_pem, make_csr, new_key


class EnrollError(BzgwError):
    """Enrolment cannot proceed (wrong key type, certificate for another key, bad chain...).

    Attributes:
        path: the file the problem is about, if any.
    """

    def __init__(self, message: str, path: Path | None = None) -> None:
        self.path = path
        super().__init__(f"{path}: {message}" if path else message)


class _MatcherView(Section, kw_only=True, forbid_unknown_fields=False):
    mqtt: MqttConfig | None = None


class _EnrollView(Section, kw_only=True, forbid_unknown_fields=False):
    """What enrolment reads of a gateway or matcher config (the rest is ``bzgw config
    check``'s job; the gateway does not load the matcher's section models)."""

    gateway: IdentityConfig | None = None
    sealing: SealingConfig | None = None
    mqtt: MqttConfig | None = None
    matcher: _MatcherView | None = None


@dataclass(frozen=True)
class EnrollPaths:
    """Where one identity's files live on its host."""

    identity: str
    tls_key: Path
    csr: Path
    cert: Path
    ca: Path
    signing_key: Path | None = None  # None for identities that do not seal (matcher, broker)

    @property
    def signing_pub(self) -> Path | None:
        """The signing public key as hex (what ansible fetches into the registry)."""
        return None if self.signing_key is None else self.signing_key.with_suffix(".pub")

    @classmethod
    def in_state_dir(cls, folder: Path, identity: str, *, signing: bool = True) -> EnrollPaths:
        """The layout of ``--state-dir``: ``device.key``, ``tls.key``, ``tls.csr``..."""
        return cls(identity=identity, tls_key=folder / "tls.key", csr=folder / "tls.csr",
                   cert=folder / "tls.crt", ca=folder / "ca.crt",
                   signing_key=folder / "device.key" if signing else None)

    @classmethod
    def from_config(cls, config: Path, *, identity: str | None = None,
                    csr: Path | None = None) -> EnrollPaths:
        """Paths named by a gateway (or matcher) config file.

        The identity is ``gateway.id`` unless given; the TLS files come from ``mqtt`` (or
        ``matcher.mqtt``); the signing key from ``sealing.device_key``.

        Raises:
            ConfigError: the file is invalid.
            EnrollError: it names no identity or no MQTT client files.
        """
        cfg = load_model(config, _EnrollView)
        mqtt = cfg.mqtt or (cfg.matcher.mqtt if cfg.matcher is not None else None)
        if mqtt is None:
            raise EnrollError("no mqtt section: cannot tell where the TLS key and certificate "
                              "go", config)
        ident = identity or (cfg.gateway.id if cfg.gateway is not None else None)
        if not ident:
            raise EnrollError("no gateway section: pass --id", config)
        return cls(identity=ident, tls_key=mqtt.key_file,
                   csr=csr or mqtt.key_file.with_suffix(".csr"), cert=mqtt.cert_file,
                   ca=mqtt.ca_file,
                   signing_key=cfg.sealing.device_key if cfg.sealing is not None else None)


@dataclass
class EnrollResult:
    """What ``prepare`` did."""

    identity: str
    csr: Path
    signing_key_hex: str | None
    written: list[Path] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        """True if any file was created or rewritten."""
        return bool(self.written)

    def as_dict(self) -> dict[str, object]:
        """JSON-friendly form (``bzgw enroll --json``)."""
        return {"id": self.identity, "csr": str(self.csr), "signing_key": self.signing_key_hex,
                "written": [str(p) for p in self.written], "changed": self.changed}


# --- file helpers ----------------------------------------------------------------------------

def write_public(path: Path, data: bytes) -> bool:
    """Write a public file (0644) atomically; returns False when it already holds ``data``."""
    if path.is_file() and path.read_bytes() == data:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return True


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise EnrollError(f"cannot read {what}: {err.strerror}", path) from err


def _load_private(path: Path, what: str) -> object:
    try:
        return serialization.load_pem_private_key(_read(path, what), password=None)
    except (ValueError, TypeError) as err:
        raise EnrollError(f"{what} is not an unencrypted PEM private key", path) from err


def load_cert(path: Path, what: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(_read(path, what))
    except ValueError as err:
        raise EnrollError(f"{what} is not a PEM certificate", path) from err


def load_csr(path: Path) -> x509.CertificateSigningRequest:
    try:
        return x509.load_pem_x509_csr(_read(path, "CSR"))
    except ValueError as err:
        raise EnrollError("not a PEM certificate signing request", path) from err


def spki(key: object) -> bytes:
    """DER SubjectPublicKeyInfo: compares public keys of any type."""
    if not hasattr(key, "public_bytes"):
        raise EnrollError(f"not a public key: {type(key).__name__}")
    der: bytes = key.public_bytes(serialization.Encoding.DER,
                                  serialization.PublicFormat.SubjectPublicKeyInfo)
    return der


def common_name(name: x509.Name) -> str | None:
    attrs = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else None


def _check_private_mode(path: Path) -> None:
    if path.stat().st_mode & 0o077:
        raise EnrollError("private key is readable by group or others; chmod 600 it", path)


# --- device side -----------------------------------------------------------------------------

def signing_key(path: Path, written: list[Path]) -> Ed25519PrivateKey:
    """Load the Ed25519 signing key, creating it (0600) if missing."""
    if not path.exists():
        key = Ed25519PrivateKey.generate()
        write_private(path, key.private_bytes(serialization.Encoding.PEM,
                                              serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()))
        written.append(path)
        return key
    _check_private_mode(path)
    loaded = _load_private(path, "signing key")
    if not isinstance(loaded, Ed25519PrivateKey):
        raise EnrollError("signing key must be Ed25519", path)
    return loaded


def tls_key(path: Path, written: list[Path]) -> ec.EllipticCurvePrivateKey:
    """Load the TLS client key, creating an EC P-256 key (0600) if missing."""
    if not path.exists():
        key = new_key()
        write_private(path, key_pem(key))
        written.append(path)
        return key
    _check_private_mode(path)
    loaded = _load_private(path, "TLS key")
    if not isinstance(loaded, ec.EllipticCurvePrivateKey):
        raise EnrollError("TLS key must be an EC key", path)
    return loaded


def _csr_is_current(path: Path, key: ec.EllipticCurvePrivateKey, identity: str) -> bool:
    if not path.is_file():
        return False
    try:
        csr = x509.load_pem_x509_csr(path.read_bytes())
    except ValueError:
        return False
    return (csr.is_signature_valid and common_name(csr.subject) == identity
            and spki(csr.public_key()) == spki(key.public_key()))


def prepare(paths: EnrollPaths) -> EnrollResult:
    """Make missing keys, and a CSR if there is none for this key and identity.

    Existing keys are kept (re-enrolling never rotates a key by accident; delete the file to
    rotate). A CSR is rewritten only when it no longer matches the key or the identity,
    because ECDSA signatures differ on each run and a rewrite would look like a change.

    Raises:
        EnrollError: an existing key has the wrong type, is unreadable or world-readable.
    """
    written: list[Path] = []
    pub_hex: str | None = None
    if paths.signing_key is not None:
        sk = signing_key(paths.signing_key, written)
        pub_hex = sk.public_key().public_bytes(serialization.Encoding.Raw,
                                               serialization.PublicFormat.Raw).hex()
        pub_path = paths.signing_pub
        assert pub_path is not None
        if write_public(pub_path, (pub_hex + "\n").encode()):
            written.append(pub_path)
    key = tls_key(paths.tls_key, written)
    if not _csr_is_current(paths.csr, key, paths.identity):
        write_public(paths.csr, make_csr(key, paths.identity).public_bytes(
            serialization.Encoding.PEM))
        written.append(paths.csr)
    return EnrollResult(identity=paths.identity, csr=paths.csr, signing_key_hex=pub_hex,
                        written=written)


def check_certificate(cert: x509.Certificate, ca: x509.Certificate, *,
                      public_key: object, identity: str, now: dt.datetime | None = None,
                      where: Path | None = None) -> None:
    """Check that ``cert`` is for ``public_key`` and ``identity``, issued by ``ca``, valid now.

    Raises:
        EnrollError: naming the first check that failed.
    """
    now = now or dt.datetime.now(dt.UTC)
    if spki(cert.public_key()) != spki(public_key):
        raise EnrollError("certificate is for a different key than this host's TLS key "
                          "(was it signed from another host's CSR?)", where)
    cn = common_name(cert.subject)
    if cn != identity:
        raise EnrollError(f"certificate names {cn!r}, this host is {identity!r}", where)
    try:
        bc = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        bc = None
    if bc is None or not bc.ca:
        raise EnrollError("the --ca certificate is not a CA certificate", where)
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature) as err:
        raise EnrollError(f"certificate does not chain to the CA {common_name(ca.subject)!r}",
                          where) from err
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise EnrollError(f"certificate is not valid now (valid {cert.not_valid_before_utc:%F}"
                          f" to {cert.not_valid_after_utc:%F})", where)


def install_certificate(paths: EnrollPaths, cert_file: Path, ca_file: Path, *,
                        now: dt.datetime | None = None) -> list[Path]:
    """Check a signed certificate against this host's key and install it with its CA.

    Returns:
        The files written (empty when both were already installed).

    Raises:
        EnrollError: the certificate does not match, chain or is expired; nothing is written.
    """
    if not paths.tls_key.exists():
        raise EnrollError("no TLS key here: run `bzgw enroll` first", paths.tls_key)
    key = tls_key(paths.tls_key, [])
    cert = load_cert(cert_file, "certificate")
    ca = load_cert(ca_file, "CA certificate")
    check_certificate(cert, ca, public_key=key.public_key(), identity=paths.identity, now=now,
                      where=cert_file)
    written = []
    if write_public(paths.ca, cert_pem(ca)):
        written.append(paths.ca)
    if write_public(paths.cert, cert_pem(cert)):
        written.append(paths.cert)
    return written


# --- command-line front ends (options live in bzgw/commands/gateway.py) ---------------------------

def run_device_enroll(*, config: Path | None, state_dir: Path | None, identity: str | None,
                      csr_out: Path | None, no_signing_key: bool, install_cert: Path | None,
                      ca: Path | None, as_json: bool) -> None:
    """``bzgw enroll``: prepare keys and CSR, or install a signed certificate.

    Human-readable lines go to stderr; stdout carries only the result (the signing public key
    hex, or JSON with ``--json``) so scripts and ansible can read it.
    """
    if (config is None) == (state_dir is None):
        raise EnrollError("give exactly one of --config and --state-dir")
    if (install_cert is None) != (ca is None):
        raise EnrollError("--install-cert and --ca go together")
    if config is not None:
        paths = EnrollPaths.from_config(config, identity=identity, csr=csr_out)
    else:
        assert state_dir is not None
        if not identity:
            raise EnrollError("--state-dir needs --id (the certificate's common name)")
        paths = EnrollPaths.in_state_dir(state_dir, identity, signing=not no_signing_key)
        if csr_out is not None:
            paths = EnrollPaths(identity=paths.identity, tls_key=paths.tls_key, csr=csr_out,
                                cert=paths.cert, ca=paths.ca, signing_key=paths.signing_key)
    if no_signing_key and paths.signing_key is not None:
        paths = EnrollPaths(identity=paths.identity, tls_key=paths.tls_key, csr=paths.csr,
                            cert=paths.cert, ca=paths.ca)

    if install_cert is not None and ca is not None:
        written = install_certificate(paths, install_cert, ca)
        if as_json:
            click.echo(json.dumps({"id": paths.identity, "cert": str(paths.cert),
                                   "ca": str(paths.ca), "written": [str(p) for p in written],
                                   "changed": bool(written)}))
        else:
            click.echo(f"{paths.identity}: certificate "
                       f"{'installed at ' + str(paths.cert) if written else 'already installed'}",
                       err=True)
        return

    result = prepare(paths)
    if as_json:
        click.echo(json.dumps(result.as_dict()))
        return
    for p in result.written:
        click.echo(f"wrote {p}", err=True)
    click.echo(f"{result.identity}: CSR at {result.csr}"
               f"{'' if result.changed else ' (nothing changed)'}", err=True)
    if result.signing_key_hex is not None:
        click.echo(result.signing_key_hex)


@click.command("init-ca")
@click.option("--dir", "folder", required=True, type=click.Path(path_type=Path),
              help="Folder for ca.crt and ca.key (keep it on the control node only).")
@click.option("--cn", default="bzgw provincial CA", show_default=True,
              help="The CA's common name, e.g. 'bzgw CA Ha Noi'.")
@click.option("--days", default=3650, show_default=True, type=click.IntRange(1, 36500))
def init_ca_command(folder: Path, cn: str, days: int) -> None:
    """Create the provincial CA on the control node (no-op if it exists); renew its CRL.

    Prints "created" or "exists", and "CRL renewed" when the revocation list was written
    (missing, or within 30 days of expiry: run this regularly, every playbook does).

    Example:

        bzgw enroll init-ca --dir pki/hn/ca --cn "bzgw CA Ha Noi"
    """
    from gateway.enroll_ca import init_ca, refresh_crl

    created = init_ca(folder, cn, days=days)
    renewed = refresh_crl(folder)
    click.echo(f"{folder}: CA {'created' if created else 'exists'}"
               f"{'; CRL renewed' if renewed else ''}")


@click.command("sign")
@click.option("--ca-dir", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="Folder holding ca.crt and ca.key.")
@click.option("--csr", "csr_file", required=True,
              type=click.Path(path_type=Path, dir_okay=False), help="The CSR to sign.")
@click.option("--out", required=True, type=click.Path(path_type=Path, dir_okay=False),
              help="Where to write the certificate (PEM).")
@click.option("--expect-cn", default=None, help="Refuse a CSR for any other name.")
@click.option("--server", is_flag=True, help="A server certificate (broker) with SANs.")
@click.option("--host", "hosts", multiple=True, help="DNS name or IP for --server.")
@click.option("--days", default=825, show_default=True, type=click.IntRange(1, 3650))
def sign_command(ca_dir: Path, csr_file: Path, out: Path, expect_cn: str | None,
                 server: bool, hosts: tuple[str, ...], days: int) -> None:
    """Sign a device's CSR with the provincial CA (control node side of enrolment).

    Prints "signed" or "unchanged": an existing certificate for the same key, name and
    hosts, valid for more than 30 more days, is kept.

    Example:

        bzgw enroll sign --ca-dir ca --csr gw-1.csr --out gw-1.crt --expect-cn gw-1
    """
    from gateway.enroll_ca import sign_request

    written = sign_request(ca_dir, csr_file, out, expect_cn=expect_cn, server=server,
                           hosts=hosts, days=days)
    click.echo(f"{out}: {'signed' if written else 'unchanged'}")


@click.command("revoke")
@click.option("--ca-dir", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="Folder holding ca.crt, ca.key and crl.pem.")
@click.option("--cert", "cert_file", required=True,
              type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="The certificate to revoke (e.g. certs/<gateway id>.crt).")
def revoke_command(ca_dir: Path, cert_file: Path) -> None:
    """Revoke a device certificate (lost or stolen Pi).

    The broker refuses it once the broker role has installed the new CRL (ca-dir/crl.pem).

    Example:

        bzgw enroll revoke --ca-dir pki/hn/ca --cert pki/hn/certs/gw-hn-0002.crt
    """
    from gateway.enroll_ca import revoke

    written = revoke(ca_dir, load_cert(cert_file, "certificate"))
    click.echo(f"{cert_file}: {'revoked' if written else 'already revoked'}")


def register_ca_commands(group: click.Group) -> None:
    """Attach ``init-ca``, ``sign`` and ``revoke`` to the ``bzgw enroll`` group."""
    for cmd in (init_ca_command, sign_command, revoke_command):
        group.add_command(cmd)

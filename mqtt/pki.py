"""A small X.509 PKI for brokers and devices: CA, server and client certificates, CSRs.

Used by the demo and tests (everything generated into a state folder) and by enrolment
(the device makes its key and a CSR; the provincial CA signs it on the control node).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from core.errors import BzgwError
from core.keyfile import write_private

PrivateKey = ec.EllipticCurvePrivateKey


def new_key() -> PrivateKey:
    """An EC P-256 key (what Mosquitto/OpenSSL and paho all accept)."""
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: PrivateKey) -> bytes:
    """Unencrypted PKCS#8 PEM."""
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def cert_pem(cert: x509.Certificate) -> bytes:
    """PEM of a certificate."""
    return cert.public_bytes(serialization.Encoding.PEM)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass
class CA:
    """A certificate authority key and self-signed certificate."""

    key: PrivateKey
    cert: x509.Certificate

    @classmethod
    def create(cls, cn: str = "bzgw provincial CA", days: int = 3650) -> CA:
        """A new CA valid from one hour ago (tolerates small clock skew)."""
        key = new_key()
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(cn)).issuer_name(_name(cn))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_now() - dt.timedelta(hours=1))
            .not_valid_after(_now() + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                         crl_sign=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .sign(key, hashes.SHA256())
        )
        return cls(key, cert)

    @classmethod
    def load(cls, cert_path: Path, key_path: Path) -> CA:
        """Load a CA from PEM files."""
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise BzgwError(f"{key_path}: CA key must be an EC key")
        return cls(key, x509.load_pem_x509_certificate(cert_path.read_bytes()))

    def save(self, cert_path: Path, key_path: Path) -> None:
        """Write the CA certificate (0644) and key (0600)."""
        cert_path.parent.mkdir(parents=True, exist_ok=True)
        cert_path.write_bytes(cert_pem(self.cert))
        write_private(key_path, key_pem(self.key))

    def sign_csr(self, csr: x509.CertificateSigningRequest, *, server: bool = False,
                 days: int = 825, hosts: tuple[str, ...] = ()) -> x509.Certificate:
        """Issue a certificate for a CSR (client by default; server adds SANs).

        Raises:
            BzgwError: the CSR's self-signature does not verify or it has no CN.
        """
        if not csr.is_signature_valid:
            raise BzgwError("CSR signature is invalid")
        cns = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if not cns:
            raise BzgwError("CSR has no common name")
        b = (
            x509.CertificateBuilder()
            .subject_name(csr.subject).issuer_name(self.cert.subject)
            .public_key(csr.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_now() - dt.timedelta(hours=1))
            .not_valid_after(_now() + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False)
        )
        if hosts:
            sans: list[x509.GeneralName] = []
            for h in hosts:
                try:
                    sans.append(x509.IPAddress(ipaddress.ip_address(h)))
                except ValueError:
                    sans.append(x509.DNSName(h))
            b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return b.sign(self.key, hashes.SHA256())

    def issue(self, cn: str, *, server: bool = False,
              hosts: tuple[str, ...] = ()) -> tuple[PrivateKey, x509.Certificate]:
        """Make a key and a certificate for ``cn`` in one step (demo and tests)."""
        key = new_key()
        return key, self.sign_csr(make_csr(key, cn), server=server, hosts=hosts)


def make_csr(key: PrivateKey, cn: str) -> x509.CertificateSigningRequest:
    """A CSR for ``cn`` signed by ``key``."""
    return x509.CertificateSigningRequestBuilder().subject_name(_name(cn)).sign(
        key, hashes.SHA256())


def write_identity(folder: Path, name: str, key: PrivateKey, cert: x509.Certificate) -> tuple[
        Path, Path]:
    """Write ``name.crt`` and ``name.key`` into ``folder``; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    crt, keyp = folder / f"{name}.crt", folder / f"{name}.key"
    crt.write_bytes(cert_pem(cert))
    write_private(keyp, key_pem(key))
    return crt, keyp

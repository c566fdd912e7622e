"""The provincial CA on the control node: create it, sign device CSRs, revoke, keep a CRL.

``bzgw enroll init-ca``, ``bzgw enroll sign`` and ``bzgw enroll revoke`` (defined in
:mod:`gateway.enroll`) are thin wrappers over these functions; ansible's ``ca.yml`` and the
``enrolment`` role call them. The CA folder holds ``ca.crt``, ``ca.key`` (0600) and
``crl.pem``. A certificate replaced for a new key (a replaced Pi, rotated keys) is revoked at
once, and the broker role installs the CRL, so the old device can no longer connect.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization

from core.errors import BzgwError
from gateway.enroll import (
    EnrollError,
    check_certificate,
    common_name,
    load_csr,
    spki,
    write_public,
)
from mqtt.pki import CA, cert_pem

#: a certificate (or CRL) that expires sooner than this is re-signed
RENEW_BEFORE = dt.timedelta(days=30)
#: how long a CRL is valid (an expired CRL locks every client out of Mosquitto, so long);
#: every playbook run renews it within RENEW_BEFORE of expiry and whenever it changes
CRL_VALIDITY = dt.timedelta(days=730)


def ca_paths(folder: Path) -> tuple[Path, Path]:
    """``ca.crt`` and ``ca.key`` in a CA folder."""
    return folder / "ca.crt", folder / "ca.key"


def init_ca(folder: Path, cn: str, *, days: int = 3650) -> bool:
    """Create the CA in ``folder`` unless it exists; returns True if created.

    Raises:
        EnrollError: only one of ``ca.crt``/``ca.key`` exists (a half-copied CA).
    """
    crt, key = ca_paths(folder)
    if crt.exists() and key.exists():
        CA.load(crt, key)  # refuses a broken CA now rather than at signing time
        return False
    if crt.exists() or key.exists():
        raise EnrollError("holds only one of ca.crt and ca.key; restore the other", folder)
    CA.create(cn, days=days).save(crt, key)
    return True


# --- revocation: a replaced or stolen device's certificate stops working at the broker -------

def crl_path(folder: Path) -> Path:
    """The CA's revocation list (PEM), which the broker role installs."""
    return folder / "crl.pem"


def _load_ca(folder: Path) -> CA:
    crt, key = ca_paths(folder)
    if not (crt.exists() and key.exists()):
        raise EnrollError("no CA here: run `bzgw enroll init-ca` first", folder)
    return CA.load(crt, key)


def _write_crl(folder: Path, ca: CA, revoked: dict[int, dt.datetime], number: int,
               now: dt.datetime) -> None:
    b = (x509.CertificateRevocationListBuilder().issuer_name(ca.cert.subject)
         .last_update(now - dt.timedelta(hours=1)).next_update(now + CRL_VALIDITY)
         .add_extension(x509.CRLNumber(number), critical=False))
    for serial, when in sorted(revoked.items()):
        b = b.add_revoked_certificate(x509.RevokedCertificateBuilder().serial_number(serial)
                                      .revocation_date(when).build())
    write_public(crl_path(folder), b.sign(ca.key, hashes.SHA256()).public_bytes(
        serialization.Encoding.PEM))


def _read_crl(folder: Path, ca: CA) -> tuple[dict[int, dt.datetime], int, dt.datetime] | None:
    """Revoked serials, CRL number and next update of a valid CRL of this CA, else None."""
    try:
        crl = x509.load_pem_x509_crl(crl_path(folder).read_bytes())
    except (OSError, ValueError):
        return None
    if not crl.is_signature_valid(ca.key.public_key()) or crl.next_update_utc is None:
        return None
    try:
        number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        number = 0
    return ({r.serial_number: r.revocation_date_utc for r in crl}, number,
            crl.next_update_utc)


def refresh_crl(folder: Path, *, now: dt.datetime | None = None) -> bool:
    """Write the CRL if missing, unreadable or within :data:`RENEW_BEFORE` of expiry.

    An expired CRL makes Mosquitto refuse every client, so ``init-ca`` (run by every
    playbook) renews it well before. Returns True if written.
    """
    ca = _load_ca(folder)
    now = now or dt.datetime.now(dt.UTC)
    current = _read_crl(folder, ca)
    if current is not None and current[2] - now > RENEW_BEFORE:
        return False
    revoked, number = (current[0], current[1] + 1) if current else ({}, 1)
    _write_crl(folder, ca, revoked, number, now)
    return True


def revoke(folder: Path, cert: x509.Certificate, *, now: dt.datetime | None = None) -> bool:
    """Add a certificate this CA issued to the CRL; returns False if already revoked.

    Raises:
        EnrollError: the certificate was not issued by this CA.
    """
    ca = _load_ca(folder)
    try:
        cert.verify_directly_issued_by(ca.cert)
    except (ValueError, TypeError, InvalidSignature) as err:
        raise EnrollError("certificate was not issued by this CA", folder) from err
    now = now or dt.datetime.now(dt.UTC)
    revoked, number, _ = _read_crl(folder, ca) or ({}, 0, now)
    if cert.serial_number in revoked:
        return False
    revoked[cert.serial_number] = now
    _write_crl(folder, ca, revoked, number + 1, now)
    return True


def sign_request(ca_folder: Path, csr_file: Path, out: Path, *, expect_cn: str | None = None,
                 server: bool = False, hosts: tuple[str, ...] = (), days: int = 825,
                 now: dt.datetime | None = None) -> bool:
    """Sign a CSR with the CA in ``ca_folder`` into ``out``; returns True if written.

    An existing ``out`` for the same key and name, issued by this CA and valid for more than
    :data:`RENEW_BEFORE`, is kept, so repeated runs are quiet. An existing certificate of
    this CA for a *different* key (a replaced Pi, rotated keys) is revoked.

    Raises:
        EnrollError: the CSR's signature is invalid, or its CN is not ``expect_cn``.
    """
    ca = _load_ca(ca_folder)
    csr = load_csr(csr_file)
    if not csr.is_signature_valid:
        raise EnrollError("CSR signature is invalid", csr_file)
    cn = common_name(csr.subject)
    if expect_cn is not None and cn != expect_cn:
        raise EnrollError(f"CSR is for {cn!r}, expected {expect_cn!r}", csr_file)
    now = now or dt.datetime.now(dt.UTC)
    old = None
    if out.is_file():
        try:
            old = x509.load_pem_x509_certificate(out.read_bytes())
            check_certificate(old, ca.cert, public_key=csr.public_key(), identity=cn or "",
                              now=now)
            if old.not_valid_after_utc - now > RENEW_BEFORE and _hosts_of(old) == set(hosts):
                return False
        except (ValueError, EnrollError):
            pass  # unreadable or stale: sign afresh
    if old is not None and spki(old.public_key()) != spki(csr.public_key()):
        with contextlib.suppress(EnrollError):  # not ours (another CA): nothing to revoke
            revoke(ca_folder, old, now=now)
    try:
        cert = ca.sign_csr(csr, server=server, hosts=hosts, days=days)
    except BzgwError as err:
        raise EnrollError(str(err), csr_file) from err
    write_public(out, cert_pem(cert))
    return True


def _hosts_of(cert: x509.Certificate) -> set[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return {str(v.value) for v in san}

"""Enrolment: keys made on the device, CSR signed by the provincial CA, certificate installed.

The end-to-end test connects with the enrolled identity to a real Mosquitto (mTLS, CN as
username, generated ACL) and publishes on the gateway's own topic.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import stat
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID

from bzgw.cli import cli
from bzgw.lab import Lab
from gateway.enroll import EnrollError, EnrollPaths, install_certificate, prepare
from gateway.enroll_ca import crl_path, init_ca, refresh_crl, revoke, sign_request
from mqtt import topics
from mqtt.client import MqttClient
from mqtt.config import MqttConfig
from mqtt.pki import CA, make_csr, new_key


def invoke(*args: str) -> tuple[int, str, str]:
    res = CliRunner().invoke(cli, list(args))
    return res.exit_code, res.stdout, res.stderr


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def cn_of(name: x509.Name) -> str:
    return str(name.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def spki(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.DER,
                            serialization.PublicFormat.SubjectPublicKeyInfo)


def test_state_dir_makes_keys_csr_and_prints_the_signing_key(tmp_path: Path) -> None:
    d = tmp_path / "keys"
    code, out, err = invoke("enroll", "--state-dir", str(d), "--id", "gw-hn-0001")
    assert code == 0, err
    for name in ("device.key", "tls.key"):
        assert mode(d / name) == 0o600
    sk = serialization.load_pem_private_key((d / "device.key").read_bytes(), None)
    assert isinstance(sk, Ed25519PrivateKey)
    pub = sk.public_key().public_bytes(serialization.Encoding.Raw,
                                       serialization.PublicFormat.Raw).hex()
    assert out.strip() == pub  # stdout holds only the hex, for the registry
    assert (d / "device.pub").read_text() == pub + "\n"
    tls = serialization.load_pem_private_key((d / "tls.key").read_bytes(), None)
    assert isinstance(tls, ec.EllipticCurvePrivateKey) and tls.curve.name == "secp256r1"
    csr = x509.load_pem_x509_csr((d / "tls.csr").read_bytes())
    assert csr.is_signature_valid
    assert cn_of(csr.subject) == "gw-hn-0001"
    assert spki(csr.public_key()) == spki(tls.public_key())  # type: ignore[arg-type]
    # No private key material in anything that leaves the device.
    for shared in ("device.pub", "tls.csr"):
        assert b"PRIVATE" not in (d / shared).read_bytes()


def test_second_run_changes_nothing(tmp_path: Path) -> None:
    paths = EnrollPaths.in_state_dir(tmp_path, "gw-hn-0001")
    first = prepare(paths)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    second = prepare(paths)
    assert first.changed and not second.changed
    assert second.signing_key_hex == first.signing_key_hex
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_csr_is_rewritten_when_the_identity_changes(tmp_path: Path) -> None:
    prepare(EnrollPaths.in_state_dir(tmp_path, "gw-old"))
    key_before = (tmp_path / "tls.key").read_bytes()
    res = prepare(EnrollPaths.in_state_dir(tmp_path, "gw-new"))
    assert res.written == [tmp_path / "tls.csr"]
    assert cn_of(x509.load_pem_x509_csr((tmp_path / "tls.csr").read_bytes()).subject) == "gw-new"
    assert (tmp_path / "tls.key").read_bytes() == key_before  # a key is never rotated silently


def test_no_signing_key_for_tls_only_identities(tmp_path: Path) -> None:
    code, out, err = invoke("enroll", "--state-dir", str(tmp_path), "--id", "matcher-1",
                            "--no-signing-key", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["signing_key"] is None and result["id"] == "matcher-1"
    assert not (tmp_path / "device.key").exists()
    assert (tmp_path / "tls.key").exists() and (tmp_path / "tls.csr").exists()


def _gateway_config(tmp_path: Path) -> Path:
    cfg = {
        "gateway": {"id": "gw-hn-0002", "province": "hn", "district": "hoan-kiem",
                    "venue": "cho-dong-xuan", "venue_name": "Chợ Đồng Xuân"},
        "sealing": {"matcher_public_key": "keys/matcher.pub", "device_key": "keys/device.key"},
        "mqtt": {"host": "broker.example", "ca_file": "keys/ca.crt",
                 "cert_file": "keys/tls.crt", "key_file": "keys/tls.key"},
        "outbox": {"path": "state/outbox.db"},
    }
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    return path


def test_config_mode_uses_the_config_paths_and_gateway_id(tmp_path: Path) -> None:
    cfg = _gateway_config(tmp_path)
    code, out, err = invoke("enroll", "--config", str(cfg), "--json")
    assert code == 0, err
    result = json.loads(out)
    keys = tmp_path / "keys"
    assert result["id"] == "gw-hn-0002" and result["changed"] is True
    assert result["csr"] == str(keys / "tls.csr")
    assert (keys / "device.pub").read_text().strip() == result["signing_key"]
    assert mode(keys / "device.key") == 0o600 and mode(keys / "tls.key") == 0o600
    code, out, _ = invoke("enroll", "--config", str(cfg), "--json")
    assert json.loads(out)["changed"] is False


def test_config_mode_csr_out(tmp_path: Path) -> None:
    cfg = _gateway_config(tmp_path)
    csr = tmp_path / "out" / "gw.csr"
    code, _, err = invoke("enroll", "--config", str(cfg), "--csr-out", str(csr))
    assert code == 0, err
    assert cn_of(x509.load_pem_x509_csr(csr.read_bytes()).subject) == "gw-hn-0002"


def test_matcher_config_needs_an_id(tmp_path: Path) -> None:
    cfg = tmp_path / "matcher.yaml"
    cfg.write_text(yaml.safe_dump({"matcher": {
        "private_key": "k/hpke.key", "registry": "registry.yaml",
        "mqtt": {"host": "b", "ca_file": "k/ca.crt", "cert_file": "k/tls.crt",
                 "key_file": "k/tls.key"}}}))
    code, _, err = invoke("enroll", "--config", str(cfg))
    assert code == 1 and "pass --id" in err
    code, out, err = invoke("enroll", "--config", str(cfg), "--id", "matcher-1", "--json")
    assert code == 0, err
    assert json.loads(out)["signing_key"] is None  # a matcher does not seal
    assert (tmp_path / "k" / "tls.csr").exists()


def test_end_to_end_with_the_real_broker(lab: Lab, tmp_path: Path) -> None:
    """Enrol gw-a from scratch, sign with the lab's CA, install, then talk mTLS to Mosquitto."""
    dev = tmp_path / "pi" / "keys"
    ctl = tmp_path / "control"
    assert invoke("enroll", "--state-dir", str(dev), "--id", "gw-a")[0] == 0
    # Only the CSR crosses to the control node, where the provincial CA lives.
    ctl.mkdir()
    (ctl / "gw-a.csr").write_bytes((dev / "tls.csr").read_bytes())
    code, out, err = invoke("enroll", "sign", "--ca-dir", str(lab.root / "pki"),
                            "--csr", str(ctl / "gw-a.csr"), "--out", str(ctl / "gw-a.crt"),
                            "--expect-cn", "gw-a")
    assert code == 0 and "signed" in out, err
    code, out, _ = invoke("enroll", "sign", "--ca-dir", str(lab.root / "pki"),
                          "--csr", str(ctl / "gw-a.csr"), "--out", str(ctl / "gw-a.crt"))
    assert "unchanged" in out
    code, _, err = invoke("enroll", "--state-dir", str(dev), "--id", "gw-a",
                          "--install-cert", str(ctl / "gw-a.crt"),
                          "--ca", str(lab.root / "pki" / "ca.crt"))
    assert code == 0, err
    assert (dev / "tls.crt").read_bytes() == (ctl / "gw-a.crt").read_bytes()
    assert mode(dev / "tls.crt") == 0o644

    enrolled = MqttConfig(host="127.0.0.1", port=lab.broker.port, ca_file=dev / "ca.crt",
                          cert_file=dev / "tls.crt", key_file=dev / "tls.key")
    gw = lab.gateways["gw-a"].entry

    async def main() -> tuple[str, bytes]:
        async with MqttClient(lab.matcher_mqtt["matcher"], "matcher") as m, \
                MqttClient(enrolled, "gw-a") as g:
            await m.subscribe(topics.SHARED_BATCHES)
            await g.publish(topics.batch(gw.province, gw.venue, gw.id), b"sealed")

            async def first() -> tuple[str, bytes]:
                async for msg in m.messages():
                    return msg.topic, msg.payload
                raise AssertionError("no message")

            return await asyncio.wait_for(first(), 10)

    assert asyncio.run(main()) == (topics.batch(gw.province, gw.venue, gw.id), b"sealed")


@pytest.fixture
def enrolled(tmp_path: Path) -> tuple[EnrollPaths, Path]:
    paths = EnrollPaths.in_state_dir(tmp_path / "dev", "gw-hn-0003")
    prepare(paths)
    ca_dir = tmp_path / "ca"
    assert init_ca(ca_dir, "bzgw CA test")
    return paths, ca_dir


def test_install_refuses_a_certificate_for_another_key(
        enrolled: tuple[EnrollPaths, Path], tmp_path: Path) -> None:
    paths, ca_dir = enrolled
    other = tmp_path / "other.csr"
    other.write_bytes(make_csr(new_key(), paths.identity).public_bytes(
        serialization.Encoding.PEM))
    sign_request(ca_dir, other, tmp_path / "other.crt")
    with pytest.raises(EnrollError, match="different key"):
        install_certificate(paths, tmp_path / "other.crt", ca_dir / "ca.crt")
    assert not paths.cert.exists() and not paths.ca.exists()


def test_install_refuses_a_certificate_from_another_ca(
        enrolled: tuple[EnrollPaths, Path], tmp_path: Path) -> None:
    paths, ca_dir = enrolled
    sign_request(ca_dir, paths.csr, tmp_path / "gw.crt")
    rogue = tmp_path / "rogue"
    init_ca(rogue, "bzgw CA test")  # same name, different key
    code, _, err = invoke("enroll", "--state-dir", str(paths.tls_key.parent), "--id",
                          paths.identity, "--install-cert", str(tmp_path / "gw.crt"),
                          "--ca", str(rogue / "ca.crt"))
    assert code == 1
    assert "does not chain to the CA" in err and err.count("\n") == 1
    assert not paths.cert.exists()


def test_install_refuses_a_leaf_as_ca_and_a_wrong_name(
        enrolled: tuple[EnrollPaths, Path], tmp_path: Path) -> None:
    paths, ca_dir = enrolled
    sign_request(ca_dir, paths.csr, tmp_path / "gw.crt")
    with pytest.raises(EnrollError, match="not a CA certificate"):
        install_certificate(paths, tmp_path / "gw.crt", tmp_path / "gw.crt")
    renamed = EnrollPaths.in_state_dir(paths.tls_key.parent, "gw-hn-9999")
    with pytest.raises(EnrollError, match="names 'gw-hn-0003', this host is 'gw-hn-9999'"):
        install_certificate(renamed, tmp_path / "gw.crt", ca_dir / "ca.crt")


def test_install_refuses_an_expired_certificate(
        enrolled: tuple[EnrollPaths, Path], tmp_path: Path) -> None:
    paths, ca_dir = enrolled
    sign_request(ca_dir, paths.csr, tmp_path / "gw.crt", days=10)
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=11)
    with pytest.raises(EnrollError, match="not valid now"):
        install_certificate(paths, tmp_path / "gw.crt", ca_dir / "ca.crt", now=later)
    assert install_certificate(paths, tmp_path / "gw.crt", ca_dir / "ca.crt") == [
        paths.ca, paths.cert]
    assert install_certificate(paths, tmp_path / "gw.crt", ca_dir / "ca.crt") == []


def test_install_before_enrolment_says_what_to_do(tmp_path: Path) -> None:
    ca = tmp_path / "ca"
    init_ca(ca, "x")
    paths = EnrollPaths.in_state_dir(tmp_path / "empty", "gw-x")
    with pytest.raises(EnrollError, match="run `bzgw enroll` first"):
        install_certificate(paths, ca / "ca.crt", ca / "ca.crt")


def test_sign_checks_the_expected_name_and_the_csr_signature(
        enrolled: tuple[EnrollPaths, Path], tmp_path: Path) -> None:
    paths, ca_dir = enrolled
    with pytest.raises(EnrollError, match="expected 'gw-other'"):
        sign_request(ca_dir, paths.csr, tmp_path / "x.crt", expect_cn="gw-other")
    # Change the name inside the CSR: its self-signature no longer verifies.
    der = x509.load_pem_x509_csr(paths.csr.read_bytes()).public_bytes(
        serialization.Encoding.DER)
    forged = x509.load_der_x509_csr(der.replace(b"gw-hn-0003", b"gw-hn-0004"))
    bad = tmp_path / "bad.csr"
    bad.write_bytes(forged.public_bytes(serialization.Encoding.PEM))
    with pytest.raises(EnrollError, match="CSR signature is invalid"):
        sign_request(ca_dir, bad, tmp_path / "x.crt")
    assert not (tmp_path / "x.crt").exists()


def test_sign_renews_a_certificate_close_to_expiry(
        enrolled: tuple[EnrollPaths, Path], tmp_path: Path) -> None:
    paths, ca_dir = enrolled
    out = tmp_path / "gw.crt"
    assert sign_request(ca_dir, paths.csr, out, days=40)
    assert not sign_request(ca_dir, paths.csr, out, days=40)
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(days=20)
    assert sign_request(ca_dir, paths.csr, out, days=40, now=soon)


def test_server_certificate_for_the_broker(enrolled: tuple[EnrollPaths, Path],
                                           tmp_path: Path) -> None:
    _, ca_dir = enrolled
    broker = EnrollPaths.in_state_dir(tmp_path / "broker", "broker-hn-1", signing=False)
    prepare(broker)
    out = tmp_path / "broker.crt"
    code, _, err = invoke("enroll", "sign", "--ca-dir", str(ca_dir), "--csr", str(broker.csr),
                          "--out", str(out), "--server", "--host", "mqtt.hn.example",
                          "--host", "10.0.0.5")
    assert code == 0, err
    cert = x509.load_pem_x509_certificate(out.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {str(v.value) for v in san} == {"mqtt.hn.example", "10.0.0.5"}
    # Adding a host name re-signs; the same set does not.
    assert not sign_request(ca_dir, broker.csr, out, server=True,
                            hosts=("mqtt.hn.example", "10.0.0.5"))
    assert sign_request(ca_dir, broker.csr, out, server=True,
                        hosts=("mqtt.hn.example", "10.0.0.5", "mqtt2.hn.example"))


def test_init_ca_is_idempotent_and_refuses_half_a_ca(tmp_path: Path) -> None:
    code, out, _ = invoke("enroll", "init-ca", "--dir", str(tmp_path / "ca"), "--cn", "CA HN")
    assert code == 0 and "created" in out
    crt = (tmp_path / "ca" / "ca.crt").read_bytes()
    assert mode(tmp_path / "ca" / "ca.key") == 0o600
    code, out, _ = invoke("enroll", "init-ca", "--dir", str(tmp_path / "ca"))
    assert code == 0 and "exists" in out
    assert (tmp_path / "ca" / "ca.crt").read_bytes() == crt
    assert cn_of(CA.load(tmp_path / "ca" / "ca.crt", tmp_path / "ca" / "ca.key").cert.subject) \
        == "CA HN"
    os.unlink(tmp_path / "ca" / "ca.key")
    with pytest.raises(EnrollError, match="only one of"):
        init_ca(tmp_path / "ca", "CA HN")


def test_world_readable_or_wrong_type_keys_are_refused(tmp_path: Path) -> None:
    paths = EnrollPaths.in_state_dir(tmp_path, "gw-x")
    prepare(paths)
    os.chmod(tmp_path / "tls.key", 0o644)
    with pytest.raises(EnrollError, match="chmod 600"):
        prepare(paths)
    os.chmod(tmp_path / "tls.key", 0o600)
    (tmp_path / "device.key").write_bytes((tmp_path / "tls.key").read_bytes())
    with pytest.raises(EnrollError, match="must be Ed25519"):
        prepare(paths)
    (tmp_path / "device.key").write_bytes(b"\x00garbage")
    code, _, err = invoke("enroll", "--state-dir", str(tmp_path), "--id", "gw-x")
    assert code == 1 and "not an unencrypted PEM private key" in err


def test_option_mistakes_get_one_line_errors(tmp_path: Path) -> None:
    code, _, err = invoke("enroll")
    assert code == 1 and "exactly one of --config and --state-dir" in err
    code, _, err = invoke("enroll", "--state-dir", str(tmp_path))
    assert code == 1 and "needs --id" in err
    f = tmp_path / "x.pem"
    f.write_text("x")
    code, _, err = invoke("enroll", "--state-dir", str(tmp_path), "--id", "g",
                          "--install-cert", str(f))
    assert code == 1 and "go together" in err


def revoked_serials(ca_dir: Path) -> set[int]:
    crl = x509.load_pem_x509_crl(crl_path(ca_dir).read_bytes())
    ca = x509.load_pem_x509_certificate((ca_dir / "ca.crt").read_bytes())
    assert crl.is_signature_valid(ca.public_key())  # type: ignore[arg-type]
    return {r.serial_number for r in crl}


def test_init_ca_writes_an_empty_crl_and_renews_it_before_expiry(tmp_path: Path) -> None:
    ca_dir = tmp_path / "ca"
    code, out, _ = invoke("enroll", "init-ca", "--dir", str(ca_dir))
    assert code == 0 and "created" in out and "CRL renewed" in out
    assert revoked_serials(ca_dir) == set()
    code, out, _ = invoke("enroll", "init-ca", "--dir", str(ca_dir))
    assert "CRL renewed" not in out
    crl = x509.load_pem_x509_crl(crl_path(ca_dir).read_bytes())
    assert crl.next_update_utc is not None
    late = crl.next_update_utc - dt.timedelta(days=10)
    assert refresh_crl(ca_dir, now=late)
    renewed = x509.load_pem_x509_crl(crl_path(ca_dir).read_bytes())
    assert renewed.next_update_utc is not None and renewed.next_update_utc > crl.next_update_utc


def test_re_signing_for_a_new_key_revokes_the_old_certificate(
        enrolled: tuple[EnrollPaths, Path], tmp_path: Path) -> None:
    """A replaced Pi (new key, same gateway id): its predecessor's certificate is revoked."""
    paths, ca_dir = enrolled
    refresh_crl(ca_dir)
    out = tmp_path / "gw.crt"
    sign_request(ca_dir, paths.csr, out)
    old = x509.load_pem_x509_certificate(out.read_bytes())
    assert sign_request(ca_dir, paths.csr, out, now=dt.datetime.now(dt.UTC)
                        + dt.timedelta(days=800))  # renewal, same key: nothing revoked
    assert revoked_serials(ca_dir) == set()
    renewed = x509.load_pem_x509_certificate(out.read_bytes())
    replacement = tmp_path / "new.csr"
    replacement.write_bytes(make_csr(new_key(), paths.identity).public_bytes(
        serialization.Encoding.PEM))
    assert sign_request(ca_dir, replacement, out)
    assert revoked_serials(ca_dir) == {renewed.serial_number}
    assert old.serial_number != renewed.serial_number


def test_revoke_command(enrolled: tuple[EnrollPaths, Path], tmp_path: Path) -> None:
    paths, ca_dir = enrolled
    out = tmp_path / "gw.crt"
    sign_request(ca_dir, paths.csr, out)
    serial = x509.load_pem_x509_certificate(out.read_bytes()).serial_number
    code, text, err = invoke("enroll", "revoke", "--ca-dir", str(ca_dir), "--cert", str(out))
    assert code == 0 and "revoked" in text, err
    assert revoked_serials(ca_dir) == {serial}
    code, text, _ = invoke("enroll", "revoke", "--ca-dir", str(ca_dir), "--cert", str(out))
    assert "already revoked" in text
    foreign = tmp_path / "foreign"
    init_ca(foreign, "other")
    with pytest.raises(EnrollError, match="not issued by this CA"):
        revoke(foreign, x509.load_pem_x509_certificate(out.read_bytes()))

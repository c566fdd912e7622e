"""Sealing: HPKE to the matcher, Ed25519 by the device, every rejection reason."""

from __future__ import annotations

import os
import random
import stat
from pathlib import Path

import pytest
import zstandard
from crowd import crowd
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, x25519
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from contract import codec
from contract import sealing as sealer
from contract.batch import Batch
from contract.records import IdKind
from contract.registry import GatewayEntry, Registry
from contract.sealing import BatchHeader, Sealer, open_batch, peek_header
from core.clock import ClockEpoch, ClockSource
from core.errors import RejectedBatchError, SealError

EPOCH = ClockEpoch("boot-1", 1_699_990_000.5, False, ClockSource.NONE, float("inf"))


class Site:
    """Two registered gateways and one matcher key pair per suite."""

    def __init__(self) -> None:
        self.keys = {g: Ed25519PrivateKey.generate() for g in ("gw-a", "gw-b")}
        self.registry = Registry(gateways={
            g: GatewayEntry(id=g, province="hn", venue="cho-a",
                            signing_key=sealer.signing_public_hex(k))
            for g, k in self.keys.items()})
        self.matcher = {s: sealer.generate_matcher_keypair(s) for s in sealer.SUITES}

    def make(self, gw: str = "gw-a", suite: str = sealer.DEFAULT_SUITE) -> Sealer:
        return Sealer(gateway_id=gw, matcher_public_key=self.matcher[suite][1],
                      signing_key=self.keys[gw], suite=suite)

    def open(self, wire: bytes, suite: str = sealer.DEFAULT_SUITE,
             **kw: int) -> tuple[BatchHeader, Batch]:
        return open_batch(wire, registry=self.registry, private_key=self.matcher[suite][0],
                          **kw)


@pytest.fixture(scope="module")
def site() -> Site:
    return Site()


def reason(fn: object, *args: object, **kw: object) -> str:
    with pytest.raises(RejectedBatchError) as info:
        fn(*args, **kw)  # type: ignore[operator]
    return info.value.reason


@pytest.mark.parametrize("suite", sealer.SUITES)
def test_seal_open_round_trip(site: Site, suite: str) -> None:
    batch = crowd(IdKind.GAEN, 120)
    wire = site.make(suite=suite).seal(batch, seq=41, created_at=1_700_000_123.25,
                                         clock=EPOCH)
    header, opened = site.open(wire, suite)
    assert opened == batch
    assert header == BatchHeader(version=1, gateway_id="gw-a", seq=41,
                                 created_at=1_700_000_123.25, clock_synced=False,
                                 clock_source="none", clock_uncertainty=float("inf"),
                                 suite=suite)
    assert peek_header(wire) == header
    # nothing readable: no ID appears in the sealed bytes
    assert all(s.ident not in wire for s in batch.sightings)


def test_hybrid_suite_costs_only_the_bigger_encapsulation(site: Site) -> None:
    batch = crowd(IdKind.BLUEZONE, 200)
    a = site.make().seal(batch, seq=1, created_at=0.0, clock=EPOCH)
    b = site.make(suite=sealer.SUITES[1]).seal(batch, seq=1, created_at=0.0, clock=EPOCH)
    hdr_diff = len(sealer.SUITES[1]) - len(sealer.SUITES[0])
    assert len(b) - len(a) == 1120 - 32 + hdr_diff


def test_times_are_sealed_on_the_decisecond_grid(site: Site) -> None:
    batch = crowd(IdKind.BLUEZONE, 3)
    batch.sightings[0].first_seen = 1_700_000_000.1234
    batch.sightings[0].last_seen = 1_700_000_000.96
    _, opened = site.open(site.make().seal(batch, seq=1, created_at=0.0, clock=EPOCH))
    assert opened.sightings[0].first_seen == 1_700_000_000.1
    assert opened.sightings[0].last_seen == 1_700_000_001.0
    assert opened.sightings[1:] == batch.sightings[1:]


def test_any_change_to_the_signed_bytes_is_a_bad_signature(site: Site) -> None:
    wire = site.make().seal(crowd(IdKind.BLUEZONE, 10), seq=7, created_at=1.0, clock=EPOCH)
    header_len = int.from_bytes(wire[3:5], "big")
    for pos in (6, 5 + header_len - 1, 5 + header_len + 40, len(wire) - 70, len(wire) - 1):
        bad = bytearray(wire)
        bad[pos] ^= 0x01
        assert reason(site.open, bytes(bad)) in {"bad_signature", "malformed"}
    # the seq field itself (CBOR int under key "s") cannot be rewritten
    hdr = peek_header(wire)
    forged = BatchHeader(**{**hdr.__dict__, "seq": 8}).to_cbor()
    assert len(forged) == header_len
    assert reason(site.open, wire[:5] + forged + wire[5 + header_len:]) == "bad_signature"


def test_signature_is_checked_before_decryption(site: Site) -> None:
    wire = site.make().seal(crowd(IdKind.BLUEZONE, 10), seq=7, created_at=1.0, clock=EPOCH)
    bad = wire[:-1] + bytes([wire[-1] ^ 1])
    wrong_key = sealer.generate_matcher_keypair()[0]
    # both wrong: the signature verdict comes first
    assert reason(open_batch, bad, registry=site.registry, private_key=wrong_key) \
        == "bad_signature"
    assert reason(open_batch, wire, registry=site.registry, private_key=wrong_key) \
        == "decrypt_failed"


def test_a_gateway_cannot_speak_for_another(site: Site) -> None:
    # gw-b's key signing a header that says gw-a
    forger = Sealer(gateway_id="gw-a", matcher_public_key=site.matcher[sealer.DEFAULT_SUITE][1],
                    signing_key=site.keys["gw-b"])
    wire = forger.seal(crowd(IdKind.BLUEZONE, 5), seq=1, created_at=1.0, clock=EPOCH)
    assert reason(site.open, wire) == "bad_signature"
    stranger = Sealer(gateway_id="gw-zz", matcher_public_key=site.matcher[
        sealer.DEFAULT_SUITE][1], signing_key=Ed25519PrivateKey.generate())
    wire = stranger.seal(crowd(IdKind.BLUEZONE, 5), seq=1, created_at=1.0, clock=EPOCH)
    assert reason(site.open, wire) == "unknown_gateway"


def test_ciphertext_cannot_move_under_another_header(site: Site) -> None:
    key = site.keys["gw-a"]
    wire = site.make().seal(crowd(IdKind.BLUEZONE, 5), seq=1, created_at=1.0, clock=EPOCH)
    hl = int.from_bytes(wire[3:5], "big")
    ciphertext = wire[5 + hl:-64]
    hdr = BatchHeader(**{**peek_header(wire).__dict__, "seq": 2}).to_cbor()
    moved = wire[:3] + len(hdr).to_bytes(2, "big") + hdr + ciphertext
    moved += key.sign(moved)  # validly signed by the right device, yet bound to seq 1
    assert reason(site.open, moved) == "decrypt_failed"


def test_size_and_version_limits(site: Site) -> None:
    wire = site.make().seal(crowd(IdKind.BLUEZONE, 300), seq=1, created_at=1.0, clock=EPOCH)
    assert reason(site.open, wire, max_wire=len(wire) - 1) == "oversize"
    assert reason(site.open, wire[:2] + b"\x02" + wire[3:]) == "unsupported_version"
    assert reason(site.open, b"XX" + wire[2:]) == "malformed"
    assert reason(site.open, wire[:40]) == "malformed"
    assert reason(site.open, b"") == "malformed"
    # limits on the inflated plaintext
    assert reason(site.open, wire, max_plaintext=1000) == "decompression_bomb"


def _seal_raw(site: Site, plaintext: bytes, seq: int = 1) -> bytes:
    """Seal arbitrary plaintext exactly as a (compromised) registered gateway could."""
    hdr = BatchHeader(1, "gw-a", seq, 1.0, True, "ntp", 0.0, sealer.DEFAULT_SUITE).to_cbor()
    prefix = sealer._PREFIX.pack(sealer.MAGIC, 1, len(hdr)) + hdr
    ct = sealer._hpke_suite(sealer.DEFAULT_SUITE).encrypt(
        plaintext, x25519.X25519PublicKey.from_public_bytes(
            site.matcher[sealer.DEFAULT_SUITE][1]), info=sealer._INFO + prefix)
    return prefix + ct + site.keys["gw-a"].sign(prefix + ct)


def test_authentic_but_hostile_plaintext(site: Site) -> None:
    bomb = zstandard.ZstdCompressor().compress(bytes(200 * 1024 * 1024))
    assert reason(site.open, _seal_raw(site, codec.pad(bomb))) == "decompression_bomb"
    assert reason(site.open, _seal_raw(site, b"\x00\x00\x10\x00rest")) == "malformed"
    junk = zstandard.ZstdCompressor().compress(b"\xa1\x61v\x02")  # {"v": 2} is valid...
    assert site.open(_seal_raw(site, codec.pad(junk)))[1] == Batch()
    junk = zstandard.ZstdCompressor().compress(b"\xa1\x61v\x05")  # ...{"v": 5} is not
    assert reason(site.open, _seal_raw(site, codec.pad(junk))) == "malformed"


def test_fuzz_open_batch_only_rejects(site: Site) -> None:
    seed = int(os.environ.get("FUZZ_SEED", random.randrange(2**32)))
    print(f"FUZZ_SEED={seed}")
    rng = random.Random(seed)
    wire = site.make().seal(crowd(IdKind.GAEN, 30), seq=3, created_at=1.0, clock=EPOCH)
    reasons: dict[str, int] = {}
    for _ in range(600):
        b = bytearray(wire)
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(b))
            if rng.random() < 0.7:
                b[i] = rng.randrange(256)
            else:
                del b[i:i + rng.randint(1, 30)]
        if bytes(b) == wire:  # the random byte happened to be the same one
            continue
        r = reason(site.open, bytes(b))
        reasons[r] = reasons.get(r, 0) + 1
    assert set(reasons) <= {"malformed", "bad_signature", "unsupported_version",
                            "unknown_gateway"}
    assert reasons.get("bad_signature", 0) > 100


def test_mapping_of_keys_by_suite(site: Site) -> None:
    keys = {s: site.matcher[s][0] for s in sealer.SUITES}
    for s in sealer.SUITES:
        wire = site.make(suite=s).seal(Batch(), seq=1, created_at=0.0, clock=EPOCH)
        assert open_batch(wire, registry=site.registry, private_key=keys)[0].suite == s
    only_x = {sealer.SUITES[0]: keys[sealer.SUITES[0]]}
    wire = site.make(suite=sealer.SUITES[1]).seal(Batch(), seq=1, created_at=0.0, clock=EPOCH)
    assert reason(open_batch, wire, registry=site.registry, private_key=only_x) \
        == "decrypt_failed"


def test_sealer_refuses_wrong_keys(site: Site) -> None:
    with pytest.raises(SealError, match="1216 bytes"):
        Sealer(gateway_id="gw-a", matcher_public_key=site.matcher[sealer.SUITES[0]][1],
               signing_key=site.keys["gw-a"], suite=sealer.SUITES[1])
    with pytest.raises(SealError, match="unknown HPKE suite"):
        Sealer(gateway_id="gw-a", matcher_public_key=b"x" * 32, signing_key=site.keys["gw-a"],
               suite="rot13")


# ---------------------------------------------------------------- key files


@pytest.mark.parametrize("suite", sealer.SUITES)
def test_matcher_key_files(tmp_path: Path, suite: str) -> None:
    priv, pub = sealer.generate_matcher_keypair(suite)
    sealer.save_matcher_keypair(priv, pub, tmp_path / "m.key", tmp_path / "m.pub")
    assert stat.S_IMODE((tmp_path / "m.key").stat().st_mode) == 0o600
    assert sealer.load_matcher_private_key(tmp_path / "m.key") == priv
    assert sealer.load_matcher_public_key(tmp_path / "m.pub") == pub
    (tmp_path / "hex.pub").write_text(pub.hex() + "\n")
    assert sealer.load_matcher_public_key(tmp_path / "hex.pub") == pub


def test_matcher_pem_keys_and_errors(tmp_path: Path) -> None:
    k = x25519.X25519PrivateKey.generate()
    (tmp_path / "k.pem").write_bytes(k.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    (tmp_path / "p.pem").write_bytes(k.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    assert sealer.load_matcher_private_key(tmp_path / "k.pem") == k.private_bytes_raw()
    assert sealer.load_matcher_public_key(tmp_path / "p.pem") == k.public_key(
        ).public_bytes_raw()
    (tmp_path / "short").write_bytes(b"\x01" * 31)
    with pytest.raises(SealError, match="got 31"):
        sealer.load_matcher_public_key(tmp_path / "short")
    with pytest.raises(SealError, match="cannot read"):
        sealer.load_matcher_public_key(tmp_path / "missing")
    ec_pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())
    (tmp_path / "ec.pem").write_bytes(ec_pem)
    with pytest.raises(SealError, match="must be X25519"):
        sealer.load_matcher_private_key(tmp_path / "ec.pem")


def test_signing_key_files(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    sealer.save_signing_key(tmp_path / "dev.pem", key)
    assert stat.S_IMODE((tmp_path / "dev.pem").stat().st_mode) == 0o600
    back = sealer.load_signing_key(tmp_path / "dev.pem")
    assert sealer.signing_public_hex(back) == sealer.signing_public_hex(key)
    (tmp_path / "ec.pem").write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    with pytest.raises(SealError, match="must be Ed25519"):
        sealer.load_signing_key(tmp_path / "ec.pem")
    (tmp_path / "junk.pem").write_text("hello")
    with pytest.raises(SealError, match="not a PEM"):
        sealer.load_signing_key(tmp_path / "junk.pem")

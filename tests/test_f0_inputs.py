"""F0 inputs: signed envelopes, detached signatures, EN key exports, and every malformed case."""

from __future__ import annotations

import base64
import io
import json
import os
import random
import zipfile
from pathlib import Path

import gaen_vectors as gv
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from core.errors import F0InputError
from matcher import en_export, f0
from matcher.en_export import Tek

DK = "4C5224B397F8AB3896781D5AA0F3119F280513F1B592CA280EBDED6357E21084"
T0 = 1596844800
INFOF = {"data": [{"daily_key": DK, "time_start": T0, "time_end": T0 + 86399, "max": 96}]}


def _pem(key: Ed25519PrivateKey | ec.EllipticCurvePrivateKey, path: Path) -> Path:
    path.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return path


@pytest.fixture
def ed_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def p256_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture
def signers(tmp_path: Path, ed_key: Ed25519PrivateKey,
            p256_key: ec.EllipticCurvePrivateKey) -> list[f0.Signer]:
    return f0.load_signers([_pem(ed_key, tmp_path / "moh-ed.pem"),
                            _pem(p256_key, tmp_path / "moh-p256.pem")])


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def test_infof_envelope_yields_the_captured_ids(tmp_path: Path, ed_key: Ed25519PrivateKey,
                                                signers: list[f0.Signer]) -> None:
    env = f0.sign_f0(json.dumps(INFOF).encode(), ed_key, kind="bluezone-infof",
                     case="HN-0042")
    got = f0.load_f0(_write(tmp_path, "f0.json", env), signers)
    assert (got.format, got.signer, len(got.cases)) == ("bluezone-infof", f0.key_id(
        ed_key.public_key()), 1)
    case = got.cases[0]
    assert (case.label, case.kind, case.n_ids, case.tolerance_s) == ("HN-0042", "bluezone",
                                                                      96, 900.0)
    assert case.block is not None
    assert case.block.idents()[23].hex().upper() == "B9A665D754FE65E665D76A45"
    assert int(case.block.starts[23]) == T0 + 23 * 900


def test_ecdsa_signer_and_infof_as_push_string(tmp_path: Path, p256_key:
                                               ec.EllipticCurvePrivateKey,
                                               signers: list[f0.Signer]) -> None:
    second = os.urandom(32)
    push = {"InfoF": json.dumps({"data": [
        {"daily_key": DK, "time_start": str(T0), "time_end": (T0 + 3600) * 1000, "max": 96},
        {"daily_key": second.hex(), "time_start": T0, "time_end": T0 + 900, "max": 144}]})}
    env = f0.sign_f0(json.dumps(push).encode(), p256_key, kind="bluezone-infof")
    got = f0.load_f0(_write(tmp_path, "push.json", env), signers)
    assert [c.label for c in got.cases] == ["push #1", "push #2"]
    assert [c.n_ids for c in got.cases] == [5, 2]  # ms end time understood; slots inclusive
    from ble.ids import bluezone_ids

    block = got.cases[1].block
    assert block is not None and got.cases[1].tolerance_s == 600
    assert list(zip(block.starts.tolist(), block.idents(), strict=True)) == list(
        bluezone_ids(second, T0, T0 + 900, 144))


def test_detached_signature_next_to_the_file(tmp_path: Path, ed_key: Ed25519PrivateKey,
                                             signers: list[f0.Signer]) -> None:
    payload = json.dumps({"identities": [{"cccd": "001 099 012 345"}]}).encode()
    p = _write(tmp_path, "ids.json", payload)
    _write(tmp_path, "ids.json.sig", f0.sign_f0(payload, ed_key, detached=True))
    got = f0.load_f0(p, signers)
    assert got.cases[0].subjects == ("001099012345",)
    p.write_bytes(payload.replace(b"345", b"346"))
    with pytest.raises(F0InputError, match="does not verify"):
        f0.load_f0(p, signers)


def test_unsigned_or_foreign_input_is_refused(tmp_path: Path, ed_key: Ed25519PrivateKey,
                                              signers: list[f0.Signer]) -> None:
    with pytest.raises(F0InputError, match="not signed"):
        f0.load_f0(_write(tmp_path, "plain.json", json.dumps(INFOF).encode()), signers)
    stranger = Ed25519PrivateKey.generate()
    env = f0.sign_f0(json.dumps(INFOF).encode(), stranger, kind="bluezone-infof")
    with pytest.raises(F0InputError, match="not a configured F0 signer"):
        f0.load_f0(_write(tmp_path, "s.json", env), signers)
    good = json.loads(f0.sign_f0(json.dumps(INFOF).encode(), ed_key, kind="bluezone-infof"))
    good["case"] = "renamed"  # the label is signed too
    with pytest.raises(F0InputError, match="does not verify"):
        f0.load_f0(_write(tmp_path, "t.json", json.dumps(good).encode()), signers)
    with pytest.raises(F0InputError, match="no F0 signer"):
        f0.load_f0(tmp_path / "t.json", [])
    with pytest.raises(F0InputError, match="cannot read"):
        f0.load_f0(tmp_path / "missing.json", signers)


def test_signer_keys_must_be_ed25519_or_p256(tmp_path: Path) -> None:
    p384 = ec.generate_private_key(ec.SECP384R1())
    with pytest.raises(F0InputError, match="P-256"):
        f0.load_signers([_pem(p384, tmp_path / "p384.pem")])
    (tmp_path / "junk.pem").write_text("not a key")
    with pytest.raises(F0InputError, match="PEM"):
        f0.load_signers([tmp_path / "junk.pem"])
    with pytest.raises(F0InputError, match="P-256"):
        f0.sign_f0(b"{}", p384, kind="identity")  # type: ignore[arg-type]
    with pytest.raises(F0InputError, match="unknown F0 kind"):
        f0.sign_f0(b"{}", Ed25519PrivateKey.generate(), kind="csv")
    with pytest.raises(F0InputError, match="cannot tell"):
        f0.sign_f0(b"{}", Ed25519PrivateKey.generate())


def test_published_key_export_zip_verified_by_its_own_signature(
        tmp_path: Path, p256_key: ec.EllipticCurvePrivateKey,
        signers: list[f0.Signer]) -> None:
    tek = Tek(bytes.fromhex(gv.TEK), gv.TEK_START_INTERVAL, 144)
    junk = Tek(b"short", 1, 144)  # a malformed key in the export is skipped and counted
    z = en_export.build_export_zip([tek, junk], p256_key)
    got = f0.load_f0(_write(tmp_path, "export.zip", z), signers)
    assert (got.format, got.skipped, got.cases[0].kind) == ("gaen-export", 1, "gaen")
    assert got.signer == f0.key_id(p256_key.public_key())
    block = got.cases[0].block
    assert block is not None
    assert [r.hex() for r in block.idents()] == [rpi for rpi, _ in gv.INTERVALS]
    assert got.cases[0].tolerance_s == 7200
    other = en_export.build_export_zip([tek], ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(F0InputError, match="no signature verifies"):
        f0.load_f0(_write(tmp_path, "other.zip", other), signers)


def test_export_round_trips_every_field() -> None:
    keys = [Tek(os.urandom(16), 2_650_000, 144, 3, 1, -2), Tek(os.urandom(16), 2_650_144, 77)]
    exp = en_export.parse_export_bin(en_export.build_export_bin(keys, region="VN", start=5,
                                                                end=9))
    assert (exp.region, exp.start_timestamp, exp.end_timestamp) == ("VN", 5, 9)
    assert exp.keys == keys


def test_gaen_json_publish_shape(tmp_path: Path, ed_key: Ed25519PrivateKey,
                                 signers: list[f0.Signer]) -> None:
    k1, k2 = os.urandom(16), os.urandom(16)
    doc = {"temporaryExposureKeys": [
        {"key": base64.b64encode(k1).decode(), "rollingStartNumber": 2_700_000,
         "rollingPeriod": 144, "transmissionRisk": 4},
        {"key_data": k2.hex(), "rolling_start_interval_number": 2_700_144}]}
    env = f0.sign_f0(json.dumps(doc).encode(), ed_key, kind="gaen-json")
    got = f0.load_f0(_write(tmp_path, "teks.json", env), signers)
    block = got.cases[0].block
    assert block is not None and len(block) == 288
    from ble.ids import en_rpis

    assert block.idents()[:144] == en_rpis(k1, 2_700_000)
    assert block.idents()[144:] == en_rpis(k2, 2_700_144)


def test_bluezone_upload_expands_the_window_before_now(tmp_path: Path,
                                                       ed_key: Ed25519PrivateKey,
                                                       signers: list[f0.Signer]) -> None:
    from ble.ids import bluezone_ids, next_daily_key

    base = bytes.fromhex(DK)
    now = T0 + 30 * 86400 + 3600  # 30 days after install, 01:00 UTC
    src = _write(tmp_path, "up-src.json", json.dumps({"base_id": DK, "time": T0}).encode())
    signed = f0.sign_f0(src, ed_key, case="up", out=tmp_path / "signed" / "up.json")
    assert json.loads(signed.read_bytes())["kind"] == "bluezone-upload"  # detected
    got = f0.load_f0(signed, [ed_key.public_key()], now=now, window_days=2)
    block = got.cases[0].block
    assert block is not None
    dk = base
    for _ in range(28):
        dk = next_daily_key(dk)
    want = list(bluezone_ids(dk, T0 + 28 * 86400, now))
    assert block.idents() == [i for _, i in want]
    assert len(want) == 2 * 96 + 5


@pytest.mark.parametrize(("kind", "doc", "msg"), [
    ("bluezone-infof", {"data": []}, "non-empty list"),
    ("bluezone-infof", {"data": [{"daily_key": "zz", "time_start": 0, "time_end": 1}]},
     "daily_key: not hex"),
    ("bluezone-infof", {"data": [{"daily_key": "ab" * 31, "time_start": 0, "time_end": 1}]},
     "32 bytes"),
    ("bluezone-infof", {"data": [{"daily_key": DK, "time_start": 5, "time_end": 1}]},
     "before"),
    ("bluezone-infof", {"data": [{"daily_key": DK, "time_start": 0, "time_end": 1, "max": 7}]},
     "divide"),
    ("bluezone-infof", {"data": [{"daily_key": DK, "time_start": 0, "time_end": 9e6}]},
     "longer than 60"),
    ("bluezone-infof", {"data": [{"daily_key": DK, "time_start": True, "time_end": 1}]},
     "boolean"),
    ("bluezone-infof", {"data": ["x"]}, "expected an object"),
    ("bluezone-upload", {"base_id": DK, "time": T0 + 5}, "UTC midnight"),
    ("gaen-json", {"keys": [{"key": "AAAA", "rollingStartNumber": 1}]}, "16 bytes"),
    ("gaen-json", {"keys": [{"key": "!!", "rollingStartNumber": 1}]}, "base64"),
    ("gaen-json", {"keys": [{"key": "00" * 16, "rollingStartNumber": 1,
                             "rollingPeriod": 200}]}, "1..144"),
    ("gaen-json", {"temporaryExposureKeys": {}}, "non-empty list"),
    ("identity", {"identities": [{"cccd": "12345"}]}, "12 digits"),
    ("identity", {"identities": [{"phone": "call me"}]}, "not a phone"),
    ("identity", {"identities": [{"name": "x"}]}, "needs a cccd"),
    ("identity", {"identities": [{"cccd": "001099012345", "since": 9, "until": 1}]},
     "before since"),
])
def test_malformed_inner_files_name_the_problem(tmp_path: Path, ed_key: Ed25519PrivateKey,
                                                signers: list[f0.Signer], kind: str,
                                                doc: object, msg: str) -> None:
    env = f0.sign_f0(json.dumps(doc).encode(), ed_key, kind=kind)
    with pytest.raises(F0InputError, match=msg):
        f0.load_f0(_write(tmp_path, "bad.json", env), signers, now=T0 + 86400)


def test_malformed_envelopes(tmp_path: Path, ed_key: Ed25519PrivateKey,
                             signers: list[f0.Signer]) -> None:
    good = json.loads(f0.sign_f0(b"{}", ed_key, kind="identity"))
    cases = [({**good, "payload": "%%%"}, "base64"), ({**good, "kind": "pdf"}, "not one of"),
             ({**good, "signer": 5}, "strings"), ({**good, "signature": None}, "base64")]
    for env, msg in cases:
        with pytest.raises(F0InputError, match=msg):
            f0.load_f0(_write(tmp_path, "e.json", json.dumps(env).encode()), signers)
    with pytest.raises(F0InputError, match="not valid JSON"):
        f0.load_f0(_write(tmp_path, "e.json", b"{not json"), signers)
    env = f0.sign_f0(b"[1, 2", ed_key, kind="identity")  # signed, inner file broken
    with pytest.raises(F0InputError, match="identity: not valid JSON"):
        f0.load_f0(_write(tmp_path, "e.json", env), signers)


def test_zip_bombs_and_broken_zips(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   signers: list[f0.Signer]) -> None:
    monkeypatch.setattr(en_export, "MAX_MEMBER", 1 << 20)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("export.bin", en_export.HEADER + bytes(4 << 20))
        z.writestr("export.sig", b"")
    with pytest.raises(F0InputError, match="declares"):
        f0.load_f0(_write(tmp_path, "bomb.zip", buf.getvalue()), signers)
    with pytest.raises(F0InputError, match=r"no export\.sig"):
        en_export.read_export_zip(_zip_only_bin())
    with pytest.raises(F0InputError, match="readable"):
        f0.load_f0(_write(tmp_path, "cut.zip", buf.getvalue()[:200]), signers)


def _zip_only_bin() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("export.bin", en_export.HEADER)
    return buf.getvalue()


def test_protobuf_reader_fuzz_raises_only_f0_input_error() -> None:
    seed = int(os.environ.get("FUZZ_SEED", random.randrange(2**32)))
    print(f"FUZZ_SEED={seed}")
    rng = random.Random(seed)
    good = en_export.build_export_bin([Tek(os.urandom(16), 2_700_000, 144)] * 3)
    parsed = 0
    for _ in range(3000):
        data = bytearray(good)
        for _ in range(rng.randint(1, 8)):
            op = rng.random()
            pos = rng.randrange(len(en_export.HEADER), len(data))
            if op < 0.5:
                data[pos] = rng.randrange(256)
            elif op < 0.75:
                del data[pos:pos + rng.randint(1, 20)]
            else:
                data[pos:pos] = rng.randbytes(rng.randint(1, 20))
        try:
            exp = en_export.parse_export_bin(bytes(data))
        except F0InputError:
            continue
        parsed += 1
        assert all(len(k.key) == 16 and 1 <= k.rolling_period <= 144 for k in exp.keys)
        try:
            en_export.parse_signature_list(rng.randbytes(rng.randint(0, 64)))
        except F0InputError:
            pass
    assert parsed > 0  # mutations that keep the framing must still parse


def test_damaged_key_export_zip_is_refused_not_raised(p256_key: ec.EllipticCurvePrivateKey
                                                      ) -> None:
    # every single-byte change of a real export zip: read, or refused as F0InputError
    # (a corrupt deflate stream raised zlib.error, a bad offset ValueError, before)
    z = en_export.build_export_zip([Tek(bytes(range(16)), 2_650_000, 144)], p256_key)
    outcomes = set()
    for i in range(len(z)):
        for v in (0x00, 0xFF, z[i] ^ 0x55):
            damaged = z[:i] + bytes([v]) + z[i + 1:]
            try:
                en_export.read_export_zip(damaged)
                outcomes.add("read")
            except F0InputError:
                outcomes.add("refused")
    assert outcomes == {"read", "refused"}

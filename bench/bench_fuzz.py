"""Fuzzing every parser that reads untrusted bytes, with figures.

Each target starts from real, valid inputs (seeds built here with the product's own encoders)
and feeds its parser mutated copies: byte flips, "interesting" values (0, 0x7f, 0x80, 0xff),
truncations, insertions, duplicated and spliced slices, and wholly random bytes. A *crash* is
any exception other than the parser's documented refusal (``CaptureFormatError``,
``RejectedBatchError``, ``CodecError``, ``F0InputError``, ``HealthError``, ``ConfigError``,
``Base45Error``) or a parser that returns something out of contract.

The mutator is written here rather than taken from a coverage-guided engine (which would
add a native dependency) or Hypothesis (whose per-example overhead is meant for hundreds of
examples, not 10⁵): plain mutation of good seeds reaches the deep paths of these small
parsers, runs 10⁵ inputs per target in seconds, and a run is reproduced from its seed alone.

Rows: one per target with ``target``, ``inputs``, ``crashes`` (must be 0) and the rate.
``--quick`` runs 10,000 inputs per target, the full run 100,000 (``BZGW_FUZZ_INPUTS``
overrides both).
"""

from __future__ import annotations

import json
import logging
import os
import random
import sys
import tempfile
import time
import traceback
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TESTS = Path(__file__).resolve().parent.parent / "tests"
SEED = 20210801
INTERESTING = (0x00, 0x01, 0x7F, 0x80, 0xFF, 0xFE, 0x20, 0x7B, 0x7D, 0x22)


@dataclass
class Target:
    """One parser: its seeds, how to call it, and the refusals it documents."""

    name: str
    seeds: list[bytes]
    call: Callable[[bytes], object]
    refusals: tuple[type[BaseException], ...] = ()
    max_len: int = 4096  # mutated inputs are cut here (parsers have their own size limits)


@dataclass
class Outcome:
    """What one target's run found."""

    target: str
    inputs: int = 0
    refused: int = 0
    crashes: int = 0
    examples: list[str] = field(default_factory=list)
    seconds: float = 0.0


def mutate(rng: random.Random, data: bytes, seeds: list[bytes], max_len: int) -> bytes:
    """A mutated copy of ``data`` (1-6 edits); sometimes pure random bytes."""
    if rng.random() < 0.05:
        return rng.randbytes(rng.randint(0, 64))
    b = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        op = rng.randrange(8)
        n = len(b)
        if op == 0 and n:  # flip bits of a byte
            b[rng.randrange(n)] ^= 1 << rng.randrange(8)
        elif op == 1 and n:  # an interesting value
            b[rng.randrange(n)] = rng.choice(INTERESTING)
        elif op == 2 and n:  # truncate
            del b[rng.randrange(n):]
        elif op == 3:  # insert random bytes
            p = rng.randrange(n + 1)
            b[p:p] = rng.randbytes(rng.randint(1, 8))
        elif op == 4 and n:  # delete a slice
            p = rng.randrange(n)
            del b[p:p + rng.randint(1, 16)]
        elif op == 5 and n:  # duplicate a slice
            p = rng.randrange(n)
            b[p:p] = b[p:p + rng.randint(1, 64)]
        elif op == 6:  # splice in a piece of another seed
            other = rng.choice(seeds)
            if other:
                p, q = rng.randrange(len(other)), rng.randrange(n + 1)
                b[q:q] = other[p:p + rng.randint(1, 32)]
        elif n:  # overwrite a 16/32-bit field with an extreme
            p = rng.randrange(n)
            b[p:p + 2] = rng.choice((b"\xff\xff", b"\x00\x00", b"\x7f\xff", b"\x80\x00"))
    return bytes(b[:max_len])


def fuzz(t: Target, inputs: int, seed: int = SEED) -> Outcome:
    """Run ``inputs`` mutated inputs through ``t``; count refusals and crashes."""
    rng = random.Random(f"{seed}:{t.name}")
    out = Outcome(t.name)
    t0 = time.perf_counter()
    for seed_input in t.seeds:  # the seeds themselves must be accepted
        t.call(seed_input)
    for _ in range(inputs):
        data = mutate(rng, rng.choice(t.seeds), t.seeds, t.max_len)
        out.inputs += 1
        try:
            t.call(data)
        except t.refusals:
            out.refused += 1
        except Exception as err:  # noqa: BLE001 - anything else is what we are looking for
            out.crashes += 1
            if len(out.examples) < 3:
                where = traceback.extract_tb(err.__traceback__)[-1]
                out.examples.append(f"{type(err).__name__}: {err} at {where.filename}:"
                                    f"{where.lineno} on {data[:80].hex()}")
    out.seconds = time.perf_counter() - t0
    return out


# ---------------------------------------------------------------- targets


def _text(data: bytes) -> str:
    return data.decode("utf-8", "replace")


def ble_targets() -> list[Target]:
    """AD structures, HCI events, and the five capture containers."""
    sys.path.insert(0, str(TESTS))
    from test_ble_replay import _to_btmon, _to_h1, _to_pcap, _to_pcapng

    from ble.decoders import classify, decode_uncached
    from ble.hci import HciParser
    from ble.parser import parse_ad
    from ble.replay import ReplayStats, build_legacy_event, iter_events, write_btsnoop
    from contract.records import IdKind
    from core.errors import CaptureFormatError

    ads = [
        bytes.fromhex("020106" "0303564e" "0fffb522" "b9a665d754fe65e665d76a45"),
        bytes.fromhex("02011a03036ffd17166ffde932e8b0688dfaec0062b7d6d35eefb5eeaa91ac"),
        bytes.fromhex("02011a14ff4c000108" + "00" * 15),
        bytes.fromhex("0201061aff4c000215c7afef7b17884f4aa87d691d53bf21c400140014c5"),
        bytes.fromhex("1eff0600010920023fc865bbdae3400fd3c11c43d97329f8ab105a0a7566ad"),
        bytes.fromhex("0201061107" + "11" * 16 + "0909" + b"Bluezone".hex()),
    ]
    ident_len = {IdKind.BLUEZONE: 12, IdKind.GAEN: 16, IdKind.IBEACON: 20}

    def ad(data: bytes) -> None:
        d = decode_uncached(data)
        if d != classify(parse_ad(data)):
            raise AssertionError("one-pass decoder and full parser disagree")
        if d.ident is not None and len(d.ident) != ident_len[d.kind]:
            raise AssertionError(f"{d.kind} ID of {len(d.ident)} bytes")

    legacy = [build_legacy_event(i % 4, "C0:00:00:00:00:0" + str(i), 1, a, -60 + i)
              for i, a in enumerate(ads)]
    # extended advertising report (0x0D) with one report carrying the first AD seed
    ext_params = (bytes([0x0D, 1]) + (0x13).to_bytes(2, "little") + bytes([1])
                  + bytes.fromhex("010000000000c0")[::-1][:6] + bytes([1, 1, 0, 0x7F, 0xC4])
                  + (0).to_bytes(2, "little") + bytes([0]) + bytes(6) + bytes([len(ads[0])])
                  + ads[0])
    events = [*legacy, bytes([0x3E, len(ext_params)]) + ext_params]
    parser = HciParser()

    def hci(data: bytes) -> None:
        for rep in parser.parse_event(data):
            if not (rep.rssi is None or -128 <= rep.rssi <= 126) or len(rep.address) != 17:
                raise AssertionError(f"report out of range: {rep}")
            ad(rep.data)

    with tempfile.TemporaryDirectory() as tmp:
        good = Path(tmp) / "good.btsnoop"
        write_btsnoop(good, ((1_627_790_400 + i, legacy[i % len(legacy)]) for i in range(12)))
        raw = good.read_bytes()
    containers = {"btsnoop": raw, "btsnoop-h1": _to_h1(raw), "btmon": _to_btmon(raw),
                  "pcapng": _to_pcapng(raw), "pcap": _to_pcap(raw)}

    def capture(data: bytes) -> None:
        stats = ReplayStats()
        for _, ev in iter_events(data, stats, "fuzz"):
            hci(ev)

    out = [Target("AD structures (parse_ad, decode)", ads, ad, max_len=80),
           Target("HCI LE advertising events", events, hci, max_len=300)]
    out += [Target(f"capture file: {name}", [blob], capture, (CaptureFormatError,),
                   max_len=len(blob) + 256) for name, blob in containers.items()]
    return out


def qr_targets() -> list[Target]:
    """QR payload recognizers (CCCD, BHYT, DCC, bzgw) and base45."""
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from qr.base45 import Base45Error, b45decode, b45encode
    from qr.bzgwqr import keys_from, make_checkin_qr
    from qr.dcc import TrustedSigner, TrustList, encode_dcc
    from qr.recognizers import Recognizer
    from qr.records import Rejected

    now = 1_700_000_000
    ec_key = ec.generate_private_key(ec.SECP256R1())
    ed = Ed25519PrivateKey.generate()
    rec = Recognizer(trust_list=TrustList({b"fuzz-kid": TrustedSigner(ec_key.public_key(), 0,
                                                                      2e9)}),
                     checkin_keys=keys_from([ed.public_key()]))

    def classify(data: bytes) -> None:
        # scanners hand over text or raw bytes; both must end as a check-in or a rejection
        for payload in (data, _text(data)):
            got = rec.classify(payload, ts=now)
            if isinstance(got, Rejected):
                if not got.reason:
                    raise AssertionError("rejection without a reason")
            elif not got.subject or got.masked is None:
                raise AssertionError(f"check-in without subject: {got}")

    cccd = ["001099012345|123456789|Nguyễn Văn An|01011999|Nam|Số 1, Hà Nội|15082021",
            "079203001234||Trần Thị Bình|31121985|Nữ|12 Lê Lợi, Q1, TP HCM|01022021"]
    bhyt = ["DN4010123456789|" + "Nguyễn Văn An".encode().hex() + "|01/01/1990|1|x",
            "HS4797912345678|" + "Lê Cúc".encode().hex() + "|15/03/2001|2|79-024|01/01/2021"]
    dcc = [encode_dcc({"ver": "1.3.0", "nam": {"fn": "Nguyễn", "gn": "An"},
                       "dob": "1990-01-01", "v": [{"ci": "URN:UVCI:01:VN:X1#Y"}]},
                      key=ec_key, kid=b"fuzz-kid", iat=now - 9, exp=now + 99999)]
    bzgw = [make_checkin_qr(ed, kind="person", ident="p-1", name="Lê Cúc",
                            phone="+84901234567", iat=now - 9, exp=now + 99999)]

    def b45(data: bytes) -> None:
        text = _text(data)
        got = b45decode(text)  # Base45Error is the documented refusal
        if b45encode(got) != text:
            raise AssertionError("base45 decode is not the inverse of encode")

    b45_seeds = [b45encode(bytes(range(i, i + 20))).encode() for i in range(0, 200, 40)]
    return [Target("QR: CCCD chip ID card", [s.encode() for s in cccd], classify),
            Target("QR: BHYT health insurance card", [s.encode() for s in bhyt], classify),
            Target("QR: DCC (HC1:)", [s.encode() for s in dcc], classify, max_len=2048),
            Target("QR: bzgw check-in", [s.encode() for s in bzgw], classify, max_len=2048),
            Target("base45", b45_seeds, b45, (Base45Error,))]


def batch_targets() -> list[Target]:
    """Sealed batch open (signature, header, decryption) and the columnar codec."""
    import cbor2
    import zstandard
    from crowd import crowd
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from contract import codec
    from contract.records import IdKind
    from contract.registry import GatewayEntry, Registry
    from contract.sealing import (
        _INFO,
        _PREFIX,
        SIG_LEN,
        Sealer,
        generate_matcher_keypair,
        open_batch,
        signing_public_hex,
    )
    from core.clock import ClockEpoch, ClockSource
    from core.errors import RejectedBatchError, SealError

    sign = Ed25519PrivateKey.generate()
    priv, pub = generate_matcher_keypair()
    sealer = Sealer(gateway_id="gw-a", matcher_public_key=pub, signing_key=sign)
    reg = Registry(gateways={"gw-a": GatewayEntry(
        id="gw-a", province="hn", venue="cho-a", signing_key=signing_public_hex(sign))})
    epoch = ClockEpoch("boot", 0.0, True, ClockSource.NTP)
    batches = [crowd(IdKind.BLUEZONE, 5, seed=1), crowd(IdKind.GAEN, 3, seed=2)]
    wires = [sealer.seal(b, seq=i + 1, created_at=1.0, clock=epoch)
             for i, b in enumerate(batches)]

    def open_sealed(data: bytes) -> None:
        open_batch(data, registry=reg, private_key=priv)

    def resigned(data: bytes) -> None:
        # a registered gateway (buggy or taken over) signs whatever it sends: the header,
        # suite and ciphertext parsers must hold behind a valid signature too
        open_batch(data + sign.sign(data), registry=reg, private_key=priv)

    prefixes = [w[:_PREFIX.size + _PREFIX.unpack_from(w)[2]] for w in wires]

    def plaintext(data: bytes) -> None:
        # the padded plaintext of a correctly signed and encrypted batch: reaches unpad,
        # zstd and the column decoders through the real open path
        prefix = prefixes[len(data) % len(prefixes)]
        ct = sealer._hpke.encrypt(data, sealer._public, info=_INFO + prefix)
        signed = prefix + ct
        open_batch(signed + sign.sign(signed), registry=reg, private_key=priv)

    padded = [codec.encode_padded(b, quantize=True) for b in batches]
    docs = [cbor2.dumps(codec.to_document(b)) for b in batches]
    zc = zstandard.ZstdCompressor(level=1, write_content_size=True)

    def columnar(data: bytes) -> None:
        # mutate the CBOR document, not the zstd frame, so the column decoders are reached
        codec.decode(zc.compress(data))

    return [Target("sealed batch open", wires, open_sealed, (RejectedBatchError,),
                   max_len=8192),
            Target("sealed batch open, re-signed", [w[:-SIG_LEN] for w in wires], resigned,
                   (RejectedBatchError,), max_len=8192),
            Target("sealed batch open, encrypted plaintext", padded, plaintext,
                   (RejectedBatchError,), max_len=8192),
            Target("columnar codec (CBOR columns)", docs, columnar, (SealError,),
                   max_len=8192)]


def f0_targets() -> list[Target]:
    """F0 inputs: the signed envelope, JSON kinds, InfoF, protobuf export, zip."""
    import base64

    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from core.errors import F0InputError
    from matcher import en_export, f0
    from matcher.en_export import Tek

    ed = Ed25519PrivateKey.generate()
    p256 = ec.generate_private_key(ec.SECP256R1())
    signers = f0.as_signers([ed.public_key(), p256.public_key()])
    now, day = 1_700_006_400.0, 86400
    d0 = int(now) // day * day - day
    infof = json.dumps({"data": [{"daily_key": "4c" * 32, "time_start": d0,
                                  "time_end": d0 + day - 1, "max": 96}]}).encode()
    upload = json.dumps({"base_id": "4c" * 32, "time": d0, "max": 96}).encode()
    gaen_json = json.dumps({"temporaryExposureKeys": [
        {"key": base64.b64encode(b"k" * 16).decode(), "rollingStartNumber": 2_833_344,
         "rollingPeriod": 144, "transmissionRisk": 4},
        {"key_data": ("ab" * 16), "rolling_start_interval_number": 2_833_488}]}).encode()
    ident = json.dumps({"identities": [
        {"case": "c1", "cccd": "001099012345", "since": d0, "until": d0 + 3600},
        {"phone": "+84901234567", "since": d0, "until": d0 + 7200}]}).encode()
    teks = [Tek(b"t" * 16, 2_833_344, 144), Tek(b"u" * 16, 2_833_488, 144, 3, 1, -2)]
    export_bin = en_export.build_export_bin(teks, region="VN", start=1, end=2)
    export_zip = en_export.build_export_zip(teks, p256)

    def kind(k: str) -> Callable[[bytes], object]:
        return lambda data: f0._parse(k, data, "fuzz", "sid", "fuzz", now, 21)

    envelopes = [f0.sign_f0(infof, ed, kind="bluezone-infof"),
                 f0.sign_f0(gaen_json, ed, kind="gaen-json"), export_zip]

    def envelope(data: bytes) -> None:
        f0.parse_f0(data, signers, now=now)

    def export_protobuf(data: bytes) -> None:
        exp = en_export.parse_export_bin(data)
        if any(len(t.key) != 16 for t in exp.keys + exp.revised_keys):
            raise AssertionError("a key of the wrong length was kept")

    return [Target("F0: signed envelope", envelopes, envelope, (F0InputError,),
                   max_len=8192),
            Target("F0: JSON (GAEN keys)", [gaen_json], kind("gaen-json"), (F0InputError,)),
            Target("F0: Bluezone InfoF", [infof], kind("bluezone-infof"), (F0InputError,)),
            Target("F0: Bluezone upload", [upload], kind("bluezone-upload"),
                   (F0InputError,)),
            Target("F0: identities", [ident], kind("identity"), (F0InputError,)),
            Target("F0: protobuf key export", [export_bin], export_protobuf,
                   (F0InputError,)),
            Target("F0: key export zip", [export_zip], kind("gaen-export"), (F0InputError,),
                   max_len=8192)]


def report_targets() -> list[Target]:
    """Health and status documents, ack messages, MQTT topics, config YAML."""
    from bzgw.config import load
    from contract.ack import ACK_STATUSES, ack_payload
    from contract.health import HealthError, conditions, describe_state, parse_health
    from core.errors import ConfigError
    from matcher.dashboard_queries import _status_of
    from mqtt import topics
    from mqtt.client import Message
    from mqtt.sync import GatewaySync, SyncCounters

    sys.path.insert(0, str(TESTS))
    health_docs = [_health_doc(), _health_doc("off", full=True)]

    def health(data: bytes) -> None:
        doc = parse_health(data)
        describe_state(conditions(doc), now=1_700_000_000)

    def status(data: bytes) -> None:
        got = _status_of(data)
        if got is not None and got[0] not in ("online", "offline"):
            raise AssertionError(f"status state {got[0]!r}")

    ack_topic = topics.ack("hn", "cho-a", "gw-a")
    fake = types.SimpleNamespace(topic_ack=ack_topic, counters=SyncCounters())

    def ack(data: bytes) -> None:
        got = GatewaySync._parse_ack(fake, Message(ack_topic, data, 1, False))  # type: ignore[arg-type]
        if got is not None and (type(got.seq) is not int or got.seq < 0
                                or got.status not in ACK_STATUSES):
            raise AssertionError(f"ack accepted without an int seq and a known status: {got}")

    acks = [ack_payload(7, "stored", matcher_time=1.7e9),
            ack_payload(8, "rejected", matcher_time=1.7e9, reason="bad_signature")]

    def topic(data: bytes) -> None:
        got = topics.parse(_text(data))
        if got is not None and (len(got) != 4 or any("/" in p for p in got)):
            raise AssertionError(f"topic parsed into {got}")

    topic_seeds = [topics.batch("hn", "cho-a", "gw-a").encode(),
                   topics.health("hcm", "ben-xe", "gw-0001").encode(), b"$share/m/bz/v1/+/+/+"]
    tmp = Path(tempfile.mkdtemp(prefix="bzgw-fuzz-config-"))
    cfg_path = tmp / "gw.yaml"
    config = (b"gateway:\n  id: gw-hn-0001\n  province: hn\n  venue: cho-dong-xuan\n"
              b"sealing:\n  matcher_public_key: keys/matcher.pub\n  device_key: keys/d.key\n"
              b"  identity_keys: keys/identity-keys.json\n  blind_key: keys/blind.key\n"
              b"outbox: {path: outbox.db, max_age_days: 14}\nble:\n  source: replay\n"
              b"  replay_file: a.btsnoop\n  proximity: {near_dbm: -60, medium_dbm: -75}\n"
              b"qr:\n  source: folder\n  folder: in\nmqtt:\n  host: b\n  ca_file: ca\n"
              b"  cert_file: c\n  key_file: k\n  backoff_min_s: 1\n  backoff_max_s: 60\n"
              b"matcher:\n  private_key: m.key\n  registry: r.yaml\n  f0_signers: [a, b]\n")

    def config_yaml(data: bytes) -> None:
        cfg_path.write_bytes(data)
        load(cfg_path)

    return [Target("health documents", [d.encode() for d in health_docs], health,
                   (HealthError,), max_len=8192),
            Target("status documents", [b"online", b'{"state": "offline", "ts": 1.7e9}'],
                   status),
            Target("ack messages", acks, ack),
            Target("MQTT topics", topic_seeds, topic, max_len=200),
            Target("config YAML", [config], config_yaml, (ConfigError,))]


def _health_doc(radio: str = "scanning", full: bool = False) -> str:
    """A real health document, as the daemon builds it."""
    from core.clock import ClockEpoch, ClockSource
    from gateway.health import Component, build_health
    from gateway.outbox import OutboxStatus
    from gateway.pipeline import PipelineStats

    st = OutboxStatus(depth=3, bytes=9000, oldest_created_at=1_699_999_000.0,
                      dropped_batches=1, dropped_bytes=300, rejected=0, next_seq=40,
                      full=full, last_error="disk full" if full else None)
    doc = build_health(gateway_id="gw-a", now=1_700_000_000, uptime_s=3600, outbox=st,
                       outbox_max_bytes=1 << 20, outbox_dir=Path("."), stats=PipelineStats(),
                       radio=Component(radio), camera=Component("capturing"),
                       clock=ClockEpoch("boot", 0.0, True, ClockSource.NTP, 0.0),
                       connected=True, last_sync=1_699_999_990.0,
                       disk={"total_bytes": 100, "free_bytes": 70, "fill": 0.3, "error": ""})
    return json.dumps(doc)


def all_targets() -> list[Target]:
    """Every target, in report order."""
    return [*ble_targets(), *qr_targets(), *batch_targets(), *f0_targets(),
            *report_targets()]


def run(quick: bool) -> list[dict[str, Any]]:
    """Benchmark entry point for ``bzgw bench``."""
    sys.path.insert(0, str(TESTS))
    n = int(os.environ.get("BZGW_FUZZ_INPUTS") or (10_000 if quick else 100_000))
    rows = []
    logging.disable(logging.WARNING)  # parsers log every damaged record they skip
    try:
        outcomes = [fuzz(t, n) for t in all_targets()]
    finally:
        logging.disable(logging.NOTSET)
    for o in outcomes:
        print(f"  fuzz {o.target}: {o.inputs} inputs, {o.refused} refused, {o.crashes} crashes "
              f"in {o.seconds:.1f} s", file=sys.stderr)
        for ex in o.examples:
            print(f"    CRASH {ex}", file=sys.stderr)
        rows.append({"name": f"fuzz {o.target}", "target": o.target, "inputs": o.inputs,
                     "crashes": o.crashes, "refused": o.refused,
                     "value": round(o.inputs / o.seconds) if o.seconds else None,
                     "unit": "inputs/s", "seed": SEED})
    return rows


if __name__ == "__main__":
    for row in run("--quick" in sys.argv):
        print(row)

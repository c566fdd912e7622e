"""Fuzzing: parsers never raise on hostile bytes. A failing run prints its seed; replay it
with ``FUZZ_SEED=<seed> pytest tests/test_ble_fuzz.py``."""

from __future__ import annotations

import os
import random
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ble.decoders import classify, decode_uncached
from ble.hci import HciParser
from ble.parser import parse_ad
from ble.replay import ReplayStats, build_legacy_event, read_adverts, write_btsnoop
from contract.records import IdKind
from core.errors import CaptureFormatError

SEED = int(os.environ.get("FUZZ_SEED") or random.SystemRandom().randrange(2**32))
ROUNDS = int(os.environ.get("FUZZ_ROUNDS", "3000"))
SEEDS = [
    bytes.fromhex("020106" "0303564e" "0fffb522" "b9a665d754fe65e665d76a45"),
    bytes.fromhex("02011a03036ffd17166ffde932e8b0688dfaec0062b7d6d35eefb5eeaa91ac"),
    bytes.fromhex("02011a14ff4c000108" + "00" * 15),
    bytes.fromhex("0201061aff4c000215c7afef7b17884f4aa87d691d53bf21c400140014c5"),
    bytes.fromhex("1eff0600010920023fc865bbdae3400fd3c11c43d97329f8ab105a0a7566ad"),
]
IDENT_LEN = {IdKind.BLUEZONE: 12, IdKind.GAEN: 16, IdKind.IBEACON: 20}


@pytest.fixture
def rng() -> random.Random:
    print(f"FUZZ_SEED={SEED}")
    return random.Random(SEED)


def _mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(4)
        if op == 0 and b:
            b[rng.randrange(len(b))] = rng.randrange(256)
        elif op == 1 and b:
            del b[rng.randrange(len(b)):]
        elif op == 2:
            b.insert(rng.randrange(len(b) + 1), rng.randrange(256))
        else:
            b += rng.randbytes(rng.randint(0, 8))
    return bytes(b)


def _check_decoded(data: bytes) -> None:
    d = decode_uncached(data)
    assert d == classify(parse_ad(data))  # the one-pass decoder agrees with the full parser
    assert isinstance(d.kind, IdKind)
    if d.ident is not None:
        assert len(d.ident) == IDENT_LEN[d.kind]
    if d.kind is IdKind.GAEN:
        assert d.aem is not None and len(d.aem) == 4


def test_fuzz_ad_parser_and_decoder(rng: random.Random) -> None:
    for i in range(ROUNDS):
        data = rng.randbytes(rng.randint(0, 64)) if i % 2 else _mutate(rng, rng.choice(SEEDS))
        f = parse_ad(data)
        assert f.malformed >= 0
        assert all(0 <= c <= 0xFFFF for c in f.manufacturer)
        assert all(len(u) == 16 for u in f.uuids128)
        _check_decoded(data)


def test_fuzz_hci_events(rng: random.Random) -> None:
    p = HciParser()
    events = [build_legacy_event(3, "C0:00:00:00:00:01", 1, s, -60) for s in SEEDS]
    for i in range(ROUNDS):
        if i % 3 == 0:
            ev = bytes([0x3E, rng.randrange(256), rng.choice((0x02, 0x0D)),
                        rng.randrange(4)]) + rng.randbytes(rng.randint(0, 120))
        else:
            ev = _mutate(rng, rng.choice(events))
        for rep in p.parse_event(ev):
            assert rep.rssi is None or -128 <= rep.rssi <= 126
            assert len(rep.address) == 17
            assert rep.event_type <= (0x7F if rep.extended else 4)
            assert rep.address_type in (0, 1, 2, 3, 255)
            _check_decoded(rep.data)
    assert p.stats.reports > 0 and p.stats.malformed > 0


@pytest.mark.parametrize("container", ["btsnoop", "btsnoop-h1", "btmon", "pcapng", "pcap"])
def test_fuzz_capture_files(container: str, rng: random.Random, tmp_path: Path) -> None:
    from test_ble_replay import _to_btmon, _to_h1, _to_pcap, _to_pcapng

    good = tmp_path / "good.btsnoop"
    write_btsnoop(good, ((1_627_790_400 + i, build_legacy_event(0, "C0:00:00:00:00:01", 1,
                                                               SEEDS[i % len(SEEDS)], -60))
                         for i in range(40)))
    convert = {"btsnoop": bytes, "btsnoop-h1": _to_h1, "btmon": _to_btmon,
               "pcapng": _to_pcapng, "pcap": _to_pcap}[container]
    raw = convert(good.read_bytes())
    path = tmp_path / "fuzzed"
    for _ in range(ROUNDS // 10):
        b = bytearray(raw)
        for _ in range(rng.randint(1, 6)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        if rng.random() < 0.5:
            del b[rng.randrange(len(b)):]
        path.write_bytes(bytes(b))
        stats = ReplayStats()
        try:
            n = sum(1 for _ in read_adverts(path, stats))
        except CaptureFormatError as err:
            assert 0 <= err.offset <= len(b)
            continue
        assert n <= 40 + stats.hci.reports


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=80))
def test_any_bytes_parse(data: bytes) -> None:
    parse_ad(data)
    _check_decoded(data)


AD_TYPES = st.sampled_from([0x01, 0x03, 0x07, 0x09, 0x0A, 0x16, 0x20, 0x21, 0xFF, 0x2A])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(AD_TYPES, st.binary(min_size=0, max_size=25)), max_size=6))
def test_well_formed_structures_are_all_found(structs: list[tuple[int, bytes]]) -> None:
    data = b"".join(bytes([len(v) + 1, t]) + v for t, v in structs)
    f = parse_ad(data)
    mfr = {struct.unpack("<H", v[:2])[0]: v[2:] for t, v in structs if t == 0xFF and len(v) >= 2}
    assert f.manufacturer == mfr
    sd16 = {struct.unpack("<H", v[:2])[0]: v[2:] for t, v in structs if t == 0x16 and len(v) >= 2}
    assert f.service_data16 == sd16
    short = sum(1 for t, v in structs if (t in (0xFF, 0x16) and len(v) < 2)
                or (t in (0x01, 0x0A) and not v) or (t == 0x20 and len(v) < 4)
                or (t == 0x21 and len(v) < 16) or (t == 0x03 and len(v) % 2)
                or (t == 0x07 and len(v) % 16))
    assert f.malformed == short
    assert classify(f) == decode_uncached(data)

"""The device↔centre contract has one copy of each part: acks, phone classes, key files."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from ble.aggregator import WindowAggregator
from ble.config import ProximityThresholds
from ble.records import Advert
from contract.ack import ACK_STATUSES, Ack, ack_payload, parse_ack
from contract.records import PHONE_CLASS, IdKind, PhoneClass
from core.clock import ClockEpoch, ClockSource
from core.keyfile import write_private
from gateway.health import PhonesNow

DAY = 1_627_776_000
EP = ClockEpoch("boot-a", 0.0, True, ClockSource.NTP)


def test_ack_round_trip_and_what_is_refused() -> None:
    for status in ACK_STATUSES:
        got = parse_ack(ack_payload(7, status, matcher_time=1.5e9, reason="r"))
        assert got == Ack(seq=7, status=status, reason="r", matcher_time=1.5e9)
    assert parse_ack(ack_payload(3, "stored")).matcher_time is not None  # type: ignore[union-attr]
    for bad in [b"", b"nope", b"[]", b'{"seq": "1", "status": "stored"}',
                b'{"seq": true, "status": "stored"}', b'{"seq": -1, "status": "stored"}',
                b'{"seq": 1, "status": "maybe"}', b"\xff\xfe", b'{"seq": 1}' + b" " * 5000]:
        assert parse_ack(bad) is None, bad
    # a non-finite or odd matcher time is no time hint, but the ack still counts
    odd = parse_ack(b'{"seq": 1, "status": "duplicate", "matcher_time": "soon"}')
    assert odd == Ack(seq=1, status="duplicate", reason=None, matcher_time=None)
    assert parse_ack(json.dumps({"seq": 2, "status": "stored",
                                 "matcher_time": float("nan")})) == Ack(2, "stored")
    with pytest.raises(ValueError, match="status"):
        ack_payload(1, "ok")
    with pytest.raises(ValueError, match="seq"):
        ack_payload(-1, "stored")


def test_sync_matcher_and_stand_in_share_one_ack_codec() -> None:
    import matcher.ingest
    import mqtt.sync
    import tests.ackmatcher as stand_in

    assert mqtt.sync.parse_ack is parse_ack
    assert matcher.ingest.ack_payload is ack_payload
    assert stand_in.ack_payload is ack_payload


def _stream() -> list[Advert]:
    t = DAY + 60
    out = []
    kinds = [IdKind.BLUEZONE] * 5 + [IdKind.BLUEZONE_IOS] * 2 + [IdKind.GAEN] * 3 + \
        [IdKind.APPLE] * 4 + [IdKind.PHONE] * 2 + [IdKind.OTHER] * 6 + [IdKind.IBEACON] * 2
    for n, kind in enumerate(kinds):
        ident = None
        if kind is IdKind.BLUEZONE:
            ident = n.to_bytes(12, "big")
        elif kind is IdKind.GAEN:
            ident = n.to_bytes(16, "big")
        elif kind is IdKind.IBEACON:
            ident = bytes([n]) * 20
        for k in range(3):  # each device heard a few times, one address each
            out.append(Advert(t + n + k * 10, f"AA:00:00:00:00:{n:02X}", 1, -60, kind, ident,
                              b"\x00" * 4 if kind is IdKind.GAEN else None))
    return out


def test_status_page_share_and_batch_counts_agree() -> None:
    stream = _stream()
    agg = WindowAggregator(ProximityThresholds(), clock=EP, count_window_s=900)
    now = PhonesNow(window_s=900)
    for a in stream:
        agg.add(a)
        now.add(a)
    _, (count,) = agg.flush(DAY + 900, final=True)
    snap = now.snapshot(stream[-1].ts)
    assert (count.bluezone, count.gaen, count.other_phones, count.other_devices) == \
        (snap["bluezone"], snap["gaen"], snap["other_phones"], snap["devices"]) == (7, 3, 6, 8)
    assert count.phones == snap["phones"]
    assert count.bluezone_share == pytest.approx(snap["bluezone_share"], abs=1e-4)


def test_every_kind_has_one_phone_class() -> None:
    assert set(PHONE_CLASS) == set(IdKind)
    assert PHONE_CLASS[IdKind.BLUEZONE_IOS] is PhoneClass.BLUEZONE
    assert PHONE_CLASS[IdKind.IBEACON] is PhoneClass.DEVICE


def test_private_key_files_are_written_atomically_and_private(tmp_path: Path) -> None:
    key = tmp_path / "keys" / "device.key"
    write_private(key, b"first")
    write_private(key, b"second")
    assert key.read_bytes() == b"second"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert os.listdir(key.parent) == ["device.key"]  # no temporary file left behind

"""Capture replay: real Android btsnoop logs, the same packets as H1/btmon/pcapng/pcap,
truncated and damaged files."""

from __future__ import annotations

import logging
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from ble.replay import ReplayStats, read_adverts, read_reports, write_btsnoop
from ble.simulator import Crowd, Visit
from contract.records import IdKind
from core.errors import CaptureFormatError

CAPTURES = [
    "choonkiatlee__wban-python__btsnoop_hci.log.btsnoop",
    "cnrd__yeelock__btsnoop_hci.log.btsnoop",
    "crossnite__NovaX-Escooter__btsnoop_hci.log.btsnoop",
    "csacca__horizon-74-at-ble__btsnoop_hci.log.btsnoop",
    "scientistnobee__DSD6__btsnoop_hci.log.63758104325217312.btsnoop",
    "soaresden__IX7TrackerPro__btsnoop_hci.log.btsnoop",
]
EPOCH_DELTA_US = 0x00DCDDB30F2F8000


# -- an independent reader, written the plain way, to check ours against -------------------

def _records(raw: bytes) -> Iterator[tuple[int, int, bytes]]:
    """(flags, timestamp µs since year 0, packet) of every whole btsnoop record."""
    off = 16
    while off + 24 <= len(raw):
        _orig, incl, flags, _drops, ts = struct.unpack(">IIIIq", raw[off:off + 24])
        if off + 24 + incl > len(raw):
            return
        yield flags, ts, raw[off + 24:off + 24 + incl]
        off += 24 + incl


def _count_reports(raw: bytes) -> int:
    n = 0
    for _flags, _ts, pkt in _records(raw):
        # H4 event, LE Meta, advertising report (legacy or extended): Num_Reports at byte 4
        if len(pkt) > 4 and pkt[0] == 0x04 and pkt[1] == 0x3E and pkt[3] in (0x02, 0x0D):
            n += pkt[4]
    return n


@pytest.fixture(scope="module")
def captures(corpora: Path) -> Path:
    return corpora / "ble" / "captures"


@pytest.mark.parametrize("name", CAPTURES)
def test_corpus_capture_advert_count(name: str, captures: Path) -> None:
    path = captures / name
    stats = ReplayStats()
    adverts = list(read_adverts(path, stats))
    assert len(adverts) == _count_reports(path.read_bytes()) > 0
    assert stats.format == "btsnoop-h4" and stats.truncated == 0
    assert stats.hci.malformed == 0
    # Capture time is the clock: 2019–2025 for these logs, in order.
    ts = [a.ts for a in adverts]
    assert 1_546_300_800 < ts[0] <= ts[-1] < 1_767_225_600
    assert ts == sorted(ts)


def test_corpus_kinds_are_counted(captures: Path) -> None:
    kinds = {a.kind for name in CAPTURES for a in read_adverts(captures / name)}
    assert {IdKind.APPLE, IdKind.PHONE, IdKind.OTHER, IdKind.IBEACON} <= kinds


# -- the same packets in the other containers ---------------------------------------------

def _to_h1(raw: bytes) -> bytes:
    out = [b"btsnoop\x00" + struct.pack(">II", 1, 1001)]
    for flags, ts, pkt in _records(raw):
        body = pkt[1:]  # H1: no type byte; the flags say what it is
        out.append(struct.pack(">IIIIq", len(body), len(body), flags, 0, ts) + body)
    return b"".join(out)


def _to_btmon(raw: bytes) -> bytes:
    opcodes = {0x01: 2, 0x02: 4, 0x04: 3}  # command, ACL tx, event (btmon's monitor opcodes)
    out = [b"btsnoop\x00" + struct.pack(">II", 1, 2001)]
    for _flags, ts, pkt in _records(raw):
        if pkt[0] not in opcodes:
            continue
        body = pkt[1:]
        out.append(struct.pack(">IIIIq", len(body), len(body), opcodes[pkt[0]], 0, ts) + body)
    return b"".join(out)


def _pcapng_block(btype: int, body: bytes) -> bytes:
    body += bytes(-len(body) % 4)
    return struct.pack("<II", btype, len(body) + 12) + body + struct.pack("<I", len(body) + 12)


def _to_pcapng(raw: bytes) -> bytes:
    out = [_pcapng_block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1)),
           _pcapng_block(1, struct.pack("<HHI", 201, 0, 65535))]
    for flags, ts, pkt in _records(raw):
        us = ts - EPOCH_DELTA_US
        data = struct.pack(">I", flags & 1) + pkt  # 4-byte direction header
        out.append(_pcapng_block(6, struct.pack("<IIIII", 0, us >> 32, us & 0xFFFFFFFF,
                                                len(data), len(data)) + data))
    return b"".join(out)


def _to_pcap(raw: bytes) -> bytes:
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 201)]
    for flags, ts, pkt in _records(raw):
        us = ts - EPOCH_DELTA_US
        data = struct.pack(">I", flags & 1) + pkt
        out.append(struct.pack("<IIII", us // 1_000_000, us % 1_000_000, len(data), len(data))
                   + data)
    return b"".join(out)


@pytest.mark.parametrize("name", [CAPTURES[0], CAPTURES[2]])  # legacy and extended reports
@pytest.mark.parametrize(("convert", "fmt"), [(_to_h1, "btsnoop-h1"), (_to_btmon, "btmon"),
                                              (_to_pcapng, "pcapng"), (_to_pcap, "pcap")])
def test_every_container_gives_the_same_adverts(name: str, convert: object, fmt: str,
                                               captures: Path, tmp_path: Path) -> None:
    original = captures / name
    other = tmp_path / "capture"
    other.write_bytes(convert(original.read_bytes()))  # type: ignore[operator]
    stats = ReplayStats()
    got = [(round(t, 6), r) for t, r in read_reports(other, stats)]
    want = [(round(t, 6), r) for t, r in read_reports(original)]
    assert stats.format == fmt
    assert got == want and len(got) > 100


# -- damaged files ------------------------------------------------------------------------

def test_cut_off_final_record_is_a_warning_and_the_rest_is_read(
        captures: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    raw = (captures / CAPTURES[4]).read_bytes()
    cut = tmp_path / "cut.btsnoop"
    cut.write_bytes(raw[:-7])
    stats = ReplayStats()
    with caplog.at_level(logging.WARNING, logger="ble.replay"):
        got = list(read_adverts(cut, stats))
    full = _count_reports(raw)
    assert full - 1 <= len(got) <= full  # only the cut record can be missing
    assert len(got) == _count_reports(raw[:-7])
    assert stats.truncated == 1
    assert "cut off" in caplog.text


def test_header_only_file_has_no_adverts(tmp_path: Path) -> None:
    p = tmp_path / "empty.btsnoop"
    p.write_bytes(b"btsnoop\x00" + struct.pack(">II", 1, 1002))
    assert list(read_adverts(p)) == []


@pytest.mark.parametrize(("head", "offset", "text"), [
    (b"not a capture at all", 0, "not a btsnoop"),
    (b"btsnoop\x00" + struct.pack(">II", 2, 1002), 8, "version 2"),
    (b"btsnoop\x00" + struct.pack(">II", 1, 1004), 12, "datalink 1004"),
    (b"btsnoop\x00\x00\x00", 10, "cut short"),
    (b"", 0, "empty"),
])
def test_bad_file_header_names_the_offset(head: bytes, offset: int, text: str,
                                          tmp_path: Path) -> None:
    p = tmp_path / "bad"
    p.write_bytes(head)
    with pytest.raises(CaptureFormatError) as err:
        list(read_adverts(p))
    assert err.value.offset == offset
    assert text in str(err.value) and f"offset {offset}" in str(err.value)


def test_bad_record_header_names_the_offset(captures: Path, tmp_path: Path) -> None:
    raw = bytearray((captures / CAPTURES[1]).read_bytes())
    # Corrupt the third record's included length so it exceeds its original length.
    off = 16
    for _ in range(2):
        off += 24 + struct.unpack(">I", raw[off + 4:off + 8])[0]
    raw[off + 4:off + 8] = struct.pack(">I", 0xFFFF_FFF0)
    p = tmp_path / "bad-record.btsnoop"
    p.write_bytes(bytes(raw))
    with pytest.raises(CaptureFormatError) as err:
        list(read_adverts(p))
    assert err.value.offset == off


def test_pcapng_bad_block_length(tmp_path: Path, captures: Path) -> None:
    raw = bytearray(_to_pcapng((captures / CAPTURES[4]).read_bytes()))
    shb_len = struct.unpack("<I", raw[4:8])[0]
    raw[shb_len + 4:shb_len + 8] = struct.pack("<I", 13)  # IDB length not a multiple of 4
    p = tmp_path / "bad.pcapng"
    p.write_bytes(bytes(raw))
    with pytest.raises(CaptureFormatError) as err:
        list(read_adverts(p))
    assert err.value.offset == shb_len + 4


def test_pcapng_cut_off_is_a_warning(tmp_path: Path, captures: Path) -> None:
    raw = _to_pcapng((captures / CAPTURES[4]).read_bytes())
    p = tmp_path / "cut.pcapng"
    p.write_bytes(raw[:-30])
    stats = ReplayStats()
    got = list(read_adverts(p, stats))
    assert stats.truncated == 1 and len(got) > 0


# -- writing ------------------------------------------------------------------------------

def test_simulated_crowd_written_and_replayed(tmp_path: Path) -> None:
    from ble.replay import build_legacy_event

    t0 = 1_627_790_400
    crowd = Crowd(seed=3, start=t0)
    phone = crowd.add_bluezone_phone([Visit("cho-a", t0, t0 + 120, distance_m=1.0)])
    reports = list(crowd.reports("cho-a", t0, t0 + 120, rate_hz=2))
    path = tmp_path / "sim.btsnoop"
    n = write_btsnoop(path, ((r.ts, build_legacy_event(0, r.address, r.address_type, r.data,
                                                       r.rssi)) for r in reports))
    assert n == len(reports) == _count_reports(path.read_bytes())
    got = list(read_adverts(path))
    assert [a.ident for a in got] == [phone.id_at(r.ts) for r in reports]
    assert [a.rssi for a in got] == [r.rssi for r in reports]
    assert all(abs(a.ts - r.ts) < 1e-6 for a, r in zip(got, reports, strict=True))


# -- long replays --------------------------------------------------------------------------

def _mapped_rss_kb(path: Path) -> int:
    """Resident kB of this process's mappings of ``path`` (0 when not mapped)."""
    total, current = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            fields = line.split()
            if "-" in fields[0] and len(fields) >= 5 and ":" in fields[3]:
                current = len(fields) >= 6 and fields[5] == str(path)
            elif current and fields[0] == "Rss:":
                total += int(fields[1])
    return total


@pytest.mark.parametrize(("convert", "fmt"), [(None, "btsnoop-h4"), (_to_pcapng, "pcapng"),
                                              (_to_pcap, "pcap")])
def test_a_long_replay_does_not_keep_the_file_it_has_read(convert: object, fmt: str,
                                                          tmp_path: Path) -> None:
    # a mapped file's pages count in RSS once read: a capture replayed for hours must not
    # end up holding all of it
    if not Path("/proc/self/smaps").exists():
        pytest.skip("needs /proc/self/smaps (Linux)")
    from ble.replay import build_legacy_event

    path = tmp_path / "long.btsnoop"
    data = bytes([0x02, 0x01, 0x06, 0x1B, 0xFF]) + bytes(range(26))
    write_btsnoop(path, ((1_627_790_400 + i / 100, build_legacy_event(
        0, f"AA:BB:CC:{i >> 16 & 0xFF:02X}:{i >> 8 & 0xFF:02X}:{i & 0xFF:02X}", 1, data, -60))
        for i in range(120_000)))
    if convert is not None:
        path.write_bytes(convert(path.read_bytes()))  # type: ignore[operator]
    size_kb = path.stat().st_size // 1024
    assert size_kb > 6 * 1024
    stats = ReplayStats()
    reports = read_reports(path, stats)
    peak = n = 0
    for n, _ in enumerate(reports, 1):
        if n % 5000 == 0:
            peak = max(peak, _mapped_rss_kb(path))
    assert stats.format == fmt and n == 120_000
    assert 0 < peak <= 2 * 1024 + 64, f"{peak} kB of a {size_kb} kB file resident"

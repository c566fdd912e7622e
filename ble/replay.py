"""Capture readers: btsnoop (Android H4, H1, btmon monitor), pcapng and pcap → HCI events.

Formats (byte layouts in the corpora's FORMATS.md):

* btsnoop: 16-byte header (``btsnoop\\0``, version 1, datalink), then records with a 24-byte
  big-endian header. Datalink 1002 = H4 (type byte first; Android), 1001 = H1 (no type byte;
  the record flags say "event"), 2001 = Linux monitor as written by ``btmon -w`` (the flags
  hold ``index << 16 | opcode``; opcode 3 is an event).
* pcapng / pcap with linktype 201 (H4 with a 4-byte direction header), 187 (H4) or 254
  (Linux monitor header: adapter index, opcode).

The capture's own timestamps are the clock of a replay. A malformed file or record header is a
:class:`~core.errors.CaptureFormatError` naming the byte offset; a final record cut off by
a crash or copy is logged as a warning, counted in :class:`ReplayStats`, and everything before
it is still returned.
"""

from __future__ import annotations

import logging
import mmap
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from ble.decoders import advert_of, decode
from ble.hci import AdvReport, HciParser, HciStats
from ble.records import Advert
from core.errors import CaptureFormatError

log = logging.getLogger(__name__)

BTSNOOP_MAGIC = b"btsnoop\x00"
BTSNOOP_EPOCH_DELTA_US = 0x00DCDDB30F2F8000  # µs from year 0 to 1970 (Android, Wireshark)
DL_H1 = 1001
DL_H4 = 1002
DL_MONITOR = 2001
MONITOR_EVENT = 3  # btmon opcode of an HCI event
H4_EVENT = 0x04
PCAPNG_SHB = 0x0A0D0D0A
PCAPNG_BOM = 0x1A2B3C4D
LINKTYPE_H4 = 187
LINKTYPE_H4_PHDR = 201
LINKTYPE_MONITOR = 254
_MAX_PACKET = 65_544  # H4 type + ACL header + 64 KiB payload, with slack; above: bad header


class CaptureFormat(StrEnum):
    """Container and framing of a capture file."""

    BTSNOOP_H4 = "btsnoop-h4"
    BTSNOOP_H1 = "btsnoop-h1"
    BTMON = "btmon"
    PCAPNG = "pcapng"
    PCAP = "pcap"


@dataclass(slots=True)
class ReplayStats:
    """Counts from one replay; ``truncated`` records are the cut-off tail of a file."""

    format: str = ""
    records: int = 0
    events: int = 0
    truncated: int = 0
    skipped: int = 0  # records of an unsupported link type
    hci: HciStats = field(default_factory=HciStats)


def detect_format(head: bytes) -> CaptureFormat:
    """Identify a capture from its first 16 bytes.

    Raises:
        CaptureFormatError: not a capture this module reads (offset of the bad field).
    """
    if head[:8] == BTSNOOP_MAGIC:
        if len(head) < 16:
            raise CaptureFormatError("btsnoop header cut short", offset=len(head))
        version, datalink = struct.unpack_from(">II", head, 8)
        if version != 1:
            raise CaptureFormatError(f"unsupported btsnoop version {version}", offset=8)
        fmt = {DL_H4: CaptureFormat.BTSNOOP_H4, DL_H1: CaptureFormat.BTSNOOP_H1,
               DL_MONITOR: CaptureFormat.BTMON}.get(datalink)
        if fmt is None:
            raise CaptureFormatError(
                f"unsupported btsnoop datalink {datalink} (expected 1001, 1002 or 2001)",
                offset=12)
        return fmt
    if len(head) >= 4:
        if struct.unpack_from("<I", head)[0] == PCAPNG_SHB:
            return CaptureFormat.PCAPNG
        if head[:4] in (b"\xa1\xb2\xc3\xd4", b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\x3c\x4d",
                        b"\x4d\x3c\xb2\xa1"):
            return CaptureFormat.PCAP
    raise CaptureFormatError("not a btsnoop, btmon, pcapng or pcap capture", offset=0)


def iter_events(buf: bytes | mmap.mmap, stats: ReplayStats, name: str = "capture"
                ) -> Iterator[tuple[float, bytes]]:
    """``(unix_time, hci_event)`` for every controller event in a capture held in memory.

    The event bytes start with the event code (no H4 type byte).

    Raises:
        CaptureFormatError: bad file or record header, with its byte offset.
    """
    fmt = detect_format(bytes(buf[:16]))
    stats.format = fmt.value
    if fmt is CaptureFormat.PCAPNG:
        yield from _pcapng(buf, stats, name)
    elif fmt is CaptureFormat.PCAP:
        yield from _pcap(buf, stats, name)
    else:
        yield from _btsnoop(buf, stats, name, fmt)


_RELEASE_STEP = 1 << 20


def _release(buf: bytes | mmap.mmap, off: int) -> int:
    """Let go of the mapped pages before ``off`` (already read); returns the next offset to
    call again at. Pages of a mapped file count in the process's RSS once read: without this
    a capture replayed for hours would hold its whole file (page cache keeps them anyway)."""
    if isinstance(buf, mmap.mmap):
        upto = off - off % mmap.PAGESIZE
        if upto:
            buf.madvise(mmap.MADV_DONTNEED, 0, upto)
    return off + _RELEASE_STEP


def _cut(stats: ReplayStats, name: str, offset: int, need: int, have: int) -> None:
    stats.truncated += 1
    log.warning("%s: last record cut off at byte %d (%d of %d bytes present); "
                "everything before it was read", name, offset, have, need)


def _btsnoop(buf: bytes | mmap.mmap, stats: ReplayStats, name: str, fmt: CaptureFormat
             ) -> Iterator[tuple[float, bytes]]:
    n = len(buf)
    off = 16
    unpack = struct.Struct(">IIIIq").unpack_from
    release_at = _RELEASE_STEP
    while off < n:
        if n - off < 24:
            _cut(stats, name, off, 24, n - off)
            return
        orig, incl, flags, _drops, ts = unpack(buf, off)
        if incl > orig or incl > _MAX_PACKET:
            raise CaptureFormatError(
                f"bad btsnoop record header (included length {incl}, original {orig})",
                offset=off)
        start = off + 24
        if start + incl > n:
            _cut(stats, name, off, 24 + incl, n - off)
            return
        pkt = buf[start:start + incl]
        off = start + incl
        if off >= release_at:
            release_at = _release(buf, off)
        stats.records += 1
        t = (ts - BTSNOOP_EPOCH_DELTA_US) / 1e6
        if fmt is CaptureFormat.BTSNOOP_H4:
            if incl > 1 and pkt[0] == H4_EVENT:
                stats.events += 1
                yield t, bytes(pkt[1:])
        elif fmt is CaptureFormat.BTSNOOP_H1:
            if flags & 0x03 == 0x03:  # received, command/event channel
                stats.events += 1
                yield t, bytes(pkt)
        elif flags & 0xFFFF == MONITOR_EVENT:
            stats.events += 1
            yield t, bytes(pkt)


def _link_packet(linktype: int, pkt: bytes) -> bytes | None:
    """The HCI event inside one pcap/pcapng packet, or ``None``."""
    if linktype == LINKTYPE_H4_PHDR:
        if len(pkt) > 5 and pkt[4] == H4_EVENT:
            return pkt[5:]
    elif linktype == LINKTYPE_H4:
        if len(pkt) > 1 and pkt[0] == H4_EVENT:
            return pkt[1:]
    elif linktype == LINKTYPE_MONITOR and len(pkt) > 4 \
            and (pkt[2] << 8 | pkt[3]) == MONITOR_EVENT:
        return pkt[4:]
    return None


_SUPPORTED_LINKTYPES = (LINKTYPE_H4_PHDR, LINKTYPE_H4, LINKTYPE_MONITOR)


def _pcapng(buf: bytes | mmap.mmap, stats: ReplayStats, name: str
            ) -> Iterator[tuple[float, bytes]]:
    n = len(buf)
    off = 0
    endian = "<"
    ifaces: list[tuple[int, float]] = []  # (linktype, seconds per timestamp unit)
    last_ts = 0.0
    release_at = _RELEASE_STEP
    while off < n:
        if n - off < 12:
            _cut(stats, name, off, 12, n - off)
            return
        btype_le = struct.unpack_from("<I", buf, off)[0]
        if btype_le == PCAPNG_SHB:
            if n - off < 12:
                _cut(stats, name, off, 12, n - off)
                return
            bom = struct.unpack_from("<I", buf, off + 8)[0]
            if bom == PCAPNG_BOM:
                endian = "<"
            elif bom == 0x4D3C2B1A:
                endian = ">"
            else:
                raise CaptureFormatError("bad pcapng byte-order magic", offset=off + 8)
            ifaces = []
        btype, blen = struct.unpack_from(endian + "II", buf, off)
        if blen < 12 or blen % 4:
            raise CaptureFormatError(f"bad pcapng block length {blen}", offset=off + 4)
        if off + blen > n:
            _cut(stats, name, off, blen, n - off)
            return
        body = off + 8
        end = off + blen - 4
        if btype == 1:  # Interface Description Block
            if end - body < 8:
                raise CaptureFormatError("pcapng interface block too short", offset=off)
            linktype = struct.unpack_from(endian + "H", buf, body)[0]
            ifaces.append((linktype, _tsresol(buf, body + 8, end, endian)))
            if linktype not in _SUPPORTED_LINKTYPES:
                log.warning("%s: interface %d has link type %d, not Bluetooth HCI; its "
                            "packets are skipped", name, len(ifaces) - 1, linktype)
        elif btype == 6:  # Enhanced Packet Block
            if end - body < 20:
                raise CaptureFormatError("pcapng packet block too short", offset=off)
            iface, hi, lo, cap, _orig = struct.unpack_from(endian + "IIIII", buf, body)
            if iface >= len(ifaces) or body + 20 + cap > end:
                raise CaptureFormatError("pcapng packet block inconsistent", offset=off)
            linktype, unit = ifaces[iface]
            last_ts = ((hi << 32) | lo) * unit
            stats.records += 1
            yield from _emit(stats, linktype, bytes(buf[body + 20:body + 20 + cap]), last_ts)
        elif btype == 3:  # Simple Packet Block: interface 0, no timestamp
            if not ifaces or end - body < 4:
                raise CaptureFormatError("pcapng simple packet block inconsistent", offset=off)
            orig = struct.unpack_from(endian + "I", buf, body)[0]
            cap = min(orig, end - body - 4)
            stats.records += 1
            yield from _emit(stats, ifaces[0][0], bytes(buf[body + 4:body + 4 + cap]), last_ts)
        off += blen
        if off >= release_at:
            release_at = _release(buf, off)


def _emit(stats: ReplayStats, linktype: int, pkt: bytes, ts: float
          ) -> Iterator[tuple[float, bytes]]:
    if linktype not in _SUPPORTED_LINKTYPES:
        stats.skipped += 1
        return
    ev = _link_packet(linktype, pkt)
    if ev is not None:
        stats.events += 1
        yield ts, ev


def _tsresol(buf: bytes | mmap.mmap, off: int, end: int, endian: str) -> float:
    """Seconds per timestamp unit from an IDB's options (``if_tsresol``, default µs)."""
    while off + 4 <= end:
        code, length = struct.unpack_from(endian + "HH", buf, off)
        if code == 0:
            break
        if code == 9 and length >= 1 and off + 5 <= end:
            v = buf[off + 4]
            return 2.0 ** -(v & 0x7F) if v & 0x80 else 10.0 ** -v
        off += 4 + ((length + 3) & ~3)
    return 1e-6


def _pcap(buf: bytes | mmap.mmap, stats: ReplayStats, name: str
          ) -> Iterator[tuple[float, bytes]]:
    n = len(buf)
    if n < 24:
        raise CaptureFormatError("pcap header cut short", offset=n)
    magic = bytes(buf[:4])
    endian = "<" if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    frac = 1e-9 if magic in (b"\xa1\xb2\x3c\x4d", b"\x4d\x3c\xb2\xa1") else 1e-6
    linktype = struct.unpack_from(endian + "I", buf, 20)[0] & 0xFFFF
    if linktype not in _SUPPORTED_LINKTYPES:
        raise CaptureFormatError(
            f"pcap link type {linktype} is not Bluetooth HCI (expected 187, 201 or 254)",
            offset=20)
    off = 24
    release_at = _RELEASE_STEP
    rec = struct.Struct(endian + "IIII").unpack_from
    while off < n:
        if n - off < 16:
            _cut(stats, name, off, 16, n - off)
            return
        sec, sub, incl, _orig = rec(buf, off)
        if incl > _MAX_PACKET:
            raise CaptureFormatError(f"bad pcap record header (included length {incl})",
                                     offset=off)
        if off + 16 + incl > n:
            _cut(stats, name, off, 16 + incl, n - off)
            return
        pkt = bytes(buf[off + 16:off + 16 + incl])
        off += 16 + incl
        if off >= release_at:
            release_at = _release(buf, off)
        stats.records += 1
        yield from _emit(stats, linktype, pkt, sec + sub * frac)


class _Mapped:
    """A file mapped read-only (or read whole when it is empty)."""

    def __init__(self, path: Path) -> None:
        self._fh = path.open("rb")
        size = path.stat().st_size
        self.buf: bytes | mmap.mmap = (
            mmap.mmap(self._fh.fileno(), 0, access=mmap.ACCESS_READ) if size else b"")

    def close(self) -> None:
        if isinstance(self.buf, mmap.mmap):
            self.buf.close()
        self._fh.close()


def read_reports(path: Path | str, stats: ReplayStats | None = None
                 ) -> Iterator[tuple[float, AdvReport]]:
    """``(unix_time, report)`` for every advertising report in a capture file.

    Raises:
        CaptureFormatError: bad file or record header (offset given); an empty file.
        OSError: the file cannot be read.
    """
    p = Path(path)
    st = stats if stats is not None else ReplayStats()
    m = _Mapped(p)
    try:
        if not m.buf:
            raise CaptureFormatError(f"{p.name} is empty", offset=0)
        parser = HciParser()
        st.hci = parser.stats
        parse = parser.parse_event
        for ts, ev in iter_events(m.buf, st, p.name):
            for rep in parse(ev):
                yield ts, rep
    finally:
        m.close()


def report_to_advert(ts: float, rep: AdvReport) -> Advert:
    """Decode one report into an :class:`Advert` (payload decoding is cached)."""
    return advert_of(ts, rep.address, rep.address_type, rep.rssi, decode(rep.data),
                     rep.tx_power)


def read_adverts(path: Path | str, stats: ReplayStats | None = None) -> Iterator[Advert]:
    """Decoded adverts of a capture, timestamped by the capture.

    Raises:
        CaptureFormatError: bad file or record header (offset given).
    """
    for ts, rep in read_reports(path, stats):
        yield report_to_advert(ts, rep)


def build_legacy_event(event_type: int, address: str, address_type: int, data: bytes,
                       rssi: int | None) -> bytes:
    """One LE Advertising Report event (subevent 0x02, one report), without the H4 byte.

    Raises:
        ValueError: data longer than a legacy advert (31 bytes) or a malformed address.
    """
    if len(data) > 31:
        raise ValueError(f"legacy advertising data is at most 31 bytes, got {len(data)}")
    raw = bytes.fromhex(address.replace(":", ""))[::-1]
    if len(raw) != 6:
        raise ValueError(f"address must have 6 bytes: {address!r}")
    r = 127 if rssi is None else rssi & 0xFF
    params = bytes([0x02, 1, event_type, address_type]) + raw + bytes([len(data)]) + data \
        + bytes([r])
    return bytes([0x3E, len(params)]) + params


def write_btsnoop(path: Path | str, events: Iterable[tuple[float, bytes]]) -> int:
    """Write HCI events as an Android-style btsnoop file (datalink 1002, H4).

    Args:
        path: file to create.
        events: ``(unix_time, event_without_h4_byte)``.

    Returns:
        The number of records written.
    """
    n = 0
    with Path(path).open("wb") as fh:
        fh.write(BTSNOOP_MAGIC + struct.pack(">II", 1, DL_H4))
        for ts, ev in events:
            pkt = bytes([H4_EVENT]) + ev
            us = round(ts * 1e6) + BTSNOOP_EPOCH_DELTA_US
            fh.write(struct.pack(">IIIIq", len(pkt), len(pkt), 3, 0, us) + pkt)
            n += 1
    return n

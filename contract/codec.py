"""Compact plaintext of a :class:`~contract.batch.Batch`: columnar CBOR, zstd, size buckets.

Sightings dominate a batch, so they are stored by column, not by row: every ID concatenated
in one byte string, each integer field as a fixed-width little-endian array offset from the
column minimum (bytes transposed so zstd sees the mostly-constant high bytes together), RSSI
and TX power as 1-byte arrays with a null bitmap, enums and clock epochs as indices into small
tables. Times on the 0.1 s grid become integer deciseconds (``last_seen`` relative to
``first_seen``); any other float falls back to raw float64, so decoding is always exact.

The CBOR document is compressed with zstd (no trained dictionary: a dictionary would have to be
shipped and versioned, and random IDs do not compress anyway), prefixed with its length and
zero-padded to a size bucket so that the ciphertext length reveals the crowd size only
coarsely.

Decoding is for authenticated plaintext but still treats it as hostile: the declared and the
actual decompressed size are bounded (:class:`DecompressionBombError`), CBOR tags are refused,
nesting is shallow, and every column is checked for type and length before any record is built
(:class:`CodecError`).
"""

from __future__ import annotations

import io
import math
import struct
from collections.abc import Callable
from typing import Any, NoReturn

import cbor2
import zstandard

from contract.batch import Batch, ClockCorrection
from contract.columns import (
    CodecError,
    DecompressionBombError,
    as_bytes,
    as_float,
    as_int,
    as_list,
    as_str,
    as_str_map,
    blobs,
    cats,
    de_blobs,
    de_cats,
    de_ints,
    de_required,
    de_times,
    fail,
    ints,
    quantize_time,
    times,
)
from contract.custody import TAG_LEN
from contract.records import AdoptionCount, CheckIn, CheckInKind, IdKind, Proximity, Sighting
from core.clock import ClockEpoch, ClockSource

FORMAT = 2  # 2: check-in identities sealed for custodians (format 1 carried them plain)
ZSTD_LEVEL = 19  # bench/bench_sync.py: smallest output; one batch a minute affords it
MIN_BUCKET = 256
BUCKET_STEPS_PER_DOUBLING = 4  # buckets grow by 2^(1/4): at most 19 % padding
DEFAULT_MAX_PLAINTEXT = 16 * 1024 * 1024
MAX_ROWS = 200_000  # sightings per batch; bounds memory even where columns are constant
_LEN = struct.Struct(">I")


# ---------------------------------------------------------------- buckets and padding


def bucket_size(n: int) -> int:
    """The smallest padding bucket holding ``n`` bytes (multiples of 16, ratio 2^(1/4))."""
    if n <= MIN_BUCKET:
        return MIN_BUCKET
    k = math.ceil(BUCKET_STEPS_PER_DOUBLING * math.log2(n / MIN_BUCKET) - 1e-9)
    while True:
        b = -(-math.ceil(MIN_BUCKET * 2 ** (k / BUCKET_STEPS_PER_DOUBLING)) // 16) * 16
        if b >= n:
            return b
        k += 1


def pad(body: bytes) -> bytes:
    """Length-prefix ``body`` and zero-pad it to its bucket."""
    framed = _LEN.pack(len(body)) + body
    return framed + bytes(bucket_size(len(framed)) - len(framed))


def unpad(padded: bytes) -> bytes:
    """Inverse of :func:`pad`; the padding must be zeros.

    Raises:
        CodecError: too short, length beyond the data, or non-zero padding.
    """
    if len(padded) < _LEN.size:
        raise CodecError("plaintext shorter than its length prefix")
    (n,) = _LEN.unpack_from(padded)
    end = _LEN.size + n
    if end > len(padded):
        raise CodecError(f"plaintext declares {n} bytes but holds {len(padded) - _LEN.size}")
    if padded[end:].count(0) != len(padded) - end:
        raise CodecError("padding is not zeros")
    return padded[_LEN.size:end]


# ---------------------------------------------------------------- encode


def _epoch_row(e: ClockEpoch) -> list[Any]:
    return [e.boot_id, e.offset, e.synced, str(e.source), e.uncertainty]


def to_document(batch: Batch, *, quantize: bool = False) -> dict[str, Any]:
    """The CBOR-ready document of a batch (exposed for tests and size studies).

    With ``quantize``, sighting and check-in times go on the 0.1 s grid (as
    :func:`quantize` would) instead of travelling as float64 where they are off it.
    """
    epochs: dict[ClockEpoch, int] = {}
    by_id: dict[int, int] = {}  # records share epoch objects: skip hashing the dataclass

    def ep(e: ClockEpoch) -> int:
        i = by_id.get(id(e))
        if i is None:
            i = by_id[id(e)] = epochs.setdefault(e, len(epochs))
        return i

    doc: dict[str, Any] = {"v": FORMAT}
    ss = batch.sightings
    if ss:
        first = [s.first_seen for s in ss]
        doc["s"] = {
            "n": len(ss),
            "k": cats([s.kind for s in ss]),
            "id": blobs([s.ident for s in ss]),
            "sl": ints([s.slot_start for s in ss], delta=True),
            "t0": times(first, quantize=quantize),
            "t1": times([s.last_seen for s in ss], first, quantize=quantize),
            "c": ints([s.count for s in ss]),
            "rx": ints([s.rssi_max for s in ss]),
            "rm": ints([s.rssi_median for s in ss]),
            "tx": ints([s.tx_power for s in ss]),
            "px": cats([s.proximity for s in ss]),
            "ae": blobs([s.aem for s in ss]),
            "ep": ints([ep(s.clock) for s in ss], delta=True),
        }
    if batch.checkins:
        doc["c"] = [[quantize_time(c.ts) if quantize else c.ts, ep(c.clock), str(c.kind),
                     c.masked, c.key_day, list(c.tags), c.sealed] for c in batch.checkins]
    if batch.counts:
        doc["a"] = [[a.window_start, a.window_len, a.bluezone, a.gaen, a.other_phones,
                     a.other_devices, a.overflow, dict(a.by_kind)] for a in batch.counts]
    if batch.corrections:
        doc["k"] = [[k.boot_id, k.old_offset, k.new_offset, k.uncertainty, k.source]
                    for k in batch.corrections]
    doc["e"] = [_epoch_row(e) for e in epochs]
    return doc


def encode(batch: Batch, *, level: int = ZSTD_LEVEL, quantize: bool = False) -> bytes:
    """Columnar CBOR of ``batch``, zstd-compressed (not yet padded)."""
    raw = cbor2.dumps(to_document(batch, quantize=quantize))
    return zstandard.ZstdCompressor(level=level, write_content_size=True).compress(raw)


def encode_padded(batch: Batch, *, level: int = ZSTD_LEVEL, quantize: bool = False) -> bytes:
    """:func:`encode`, length-prefixed and padded to a size bucket: the sealer's plaintext."""
    return pad(encode(batch, level=level, quantize=quantize))


# ---------------------------------------------------------------- decode


def _reject_tag(_decoder: object, tag: object) -> NoReturn:
    raise CodecError(f"CBOR tag {getattr(tag, 'tag', tag)} not allowed")


# Built-in semantic tags of cbor2 (dates, regex, shared refs...) are never used here; only
# bignums (2, 3) are, for integers beyond 64 bits.
_NO_TAGS: dict[int, Callable[..., Any]] = {
    t: _reject_tag for t in (0, 1, 4, 5, 25, 28, 29, 30, 35, 36, 37, 52, 54, 100, 256,
                             258, 260, 261, 1004, 55799)}


def decompress(body: bytes, *, max_plaintext: int = DEFAULT_MAX_PLAINTEXT) -> bytes:
    """zstd-decompress at most ``max_plaintext`` bytes.

    Raises:
        DecompressionBombError: declared or actual output beyond the limit.
        CodecError: not a zstd frame.
    """
    try:
        declared = zstandard.frame_content_size(body)
    except zstandard.ZstdError as err:
        raise CodecError(f"not a zstd frame: {err}") from err
    if declared > max_plaintext:
        raise DecompressionBombError(
            f"declares {declared} bytes, limit {max_plaintext}", limit=max_plaintext)
    out = bytearray()
    try:
        reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(body))
        while chunk := reader.read(min(1 << 17, max_plaintext + 1 - len(out))):
            out += chunk
            if len(out) > max_plaintext:
                raise DecompressionBombError(
                    f"decompresses beyond {max_plaintext} bytes", limit=max_plaintext)
    except zstandard.ZstdError as err:
        raise CodecError(f"zstd: {err}") from err
    return bytes(out)


def _de_epochs(rows: object) -> list[ClockEpoch]:
    out = []
    for r in as_list(rows, "epochs"):
        boot, off, synced, source, unc = as_list(r, "epoch", 5)
        if type(synced) is not bool:
            fail("epoch: synced must be a boolean")
        try:
            src = ClockSource(as_str(source, "epoch source"))
        except ValueError as err:
            raise CodecError(f"epoch source: {err}") from err
        out.append(ClockEpoch(boot_id=as_str(boot, "epoch boot id"),
                              offset=as_float(off, "epoch offset"), synced=synced, source=src,
                              uncertainty=as_float(unc, "epoch uncertainty")))
    return out


def _epoch(epochs: list[ClockEpoch], i: object) -> ClockEpoch:
    j = as_int(i, "epoch index")
    if not 0 <= j < len(epochs):
        fail(f"epoch index {j} out of range")
    return epochs[j]


def _de_sightings(doc: object, epochs: list[ClockEpoch]) -> list[Sighting]:
    if type(doc) is not dict:
        fail("sightings: expected a map")
    try:
        n = as_int(doc["n"], "sightings count")
        if not 0 <= n <= MAX_ROWS:
            fail(f"sightings count {n} outside 0..{MAX_ROWS}")
        kinds = de_cats(doc["k"], n, "kind", IdKind)
        idents = de_blobs(doc["id"], n, "ident", nullable=False)
        slots = de_required(doc["sl"], n, "slot_start")
        first = de_times(doc["t0"], n, "first_seen")
        last = de_times(doc["t1"], n, "last_seen", first)
        counts = de_required(doc["c"], n, "count")
        rx = de_ints(doc["rx"], n, "rssi_max")
        rm = de_ints(doc["rm"], n, "rssi_median")
        tx = de_ints(doc["tx"], n, "tx_power")
        prox = de_cats(doc["px"], n, "proximity", Proximity)
        aem = de_blobs(doc["ae"], n, "aem", nullable=True)
        ep_idx = de_required(doc["ep"], n, "epoch")
    except KeyError as err:
        raise CodecError(f"sightings: missing column {err}") from err
    if ep_idx and not (min(ep_idx) >= 0 and max(ep_idx) < len(epochs)):
        fail("sightings: epoch index out of range")
    ep = [epochs[i] for i in ep_idx]
    return [Sighting(kind=k, ident=i, slot_start=sl, first_seen=f,
                     last_seen=la, count=c, rssi_max=x, rssi_median=m, clock=e, tx_power=t,
                     proximity=p, aem=a)
            for k, i, sl, f, la, c, x, m, e, t, p, a in zip(
                kinds, idents, slots, first, last, counts, rx, rm, ep, tx, prox, aem,
                strict=True)]


def _de_checkin(row: object, epochs: list[ClockEpoch]) -> CheckIn:
    ts, ep, kind, masked, key_day, tags, sealed = as_list(row, "check-in", 7)
    try:
        k = CheckInKind(as_str(kind, "check-in kind"))
    except ValueError as err:
        raise CodecError(f"check-in kind: {err}") from err
    tag_list = tuple(as_bytes(t, "check-in tag") for t in as_list(tags, "check-in tags"))
    if len(tag_list) > 2 or any(len(t) != TAG_LEN for t in tag_list):
        fail("check-in tags: at most two of 16 bytes")
    return CheckIn(ts=as_float(ts, "check-in ts"), clock=_epoch(epochs, ep), kind=k,
                   masked=as_str(masked, "check-in masked"),
                   key_day=as_int(key_day, "check-in key day"), tags=tag_list,
                   sealed=as_bytes(sealed, "check-in sealed identity"))


def _de_count(row: object) -> AdoptionCount:
    r = as_list(row, "count", 8)
    ws, wl, bz, gaen, phones, devices, overflow = (as_int(x, "count") for x in r[:7])
    return AdoptionCount(window_start=ws, window_len=wl, bluezone=bz, gaen=gaen,
                         other_phones=phones, other_devices=devices, overflow=overflow,
                         by_kind=as_str_map(r[7], "count by_kind", as_int))


def _de_correction(row: object) -> ClockCorrection:
    boot, old, new, unc, source = as_list(row, "correction", 5)
    return ClockCorrection(boot_id=as_str(boot, "correction boot id"),
                           old_offset=as_float(old, "correction old offset"),
                           new_offset=as_float(new, "correction new offset"),
                           uncertainty=as_float(unc, "correction uncertainty"),
                           source=as_str(source, "correction source"))


def from_document(doc: object) -> Batch:
    """Build a batch from a decoded CBOR document, checking every field.

    Raises:
        CodecError: any structural or type problem.
    """
    if type(doc) is not dict:
        fail("batch document: expected a map")
    if doc.get("v") != FORMAT:
        fail(f"batch document version {doc.get('v')!r} (this build reads {FORMAT})")
    unknown = set(doc) - {"v", "e", "s", "c", "a", "k"}
    if unknown:
        fail(f"batch document: unknown keys {sorted(map(str, unknown))}")
    epochs = _de_epochs(doc.get("e", []))
    return Batch(
        sightings=_de_sightings(doc["s"], epochs) if "s" in doc else [],
        checkins=[_de_checkin(r, epochs) for r in as_list(doc.get("c", []), "check-ins")],
        counts=[_de_count(r) for r in as_list(doc.get("a", []), "counts")],
        corrections=[_de_correction(r) for r in as_list(doc.get("k", []), "corrections")],
    )


def decode(body: bytes, *, max_plaintext: int = DEFAULT_MAX_PLAINTEXT) -> Batch:
    """Inverse of :func:`encode`.

    Raises:
        DecompressionBombError: the body inflates beyond ``max_plaintext``.
        CodecError: anything else wrong with it.
    """
    raw = decompress(body, max_plaintext=max_plaintext)
    try:
        doc = cbor2.loads(raw, max_depth=8, allow_duplicate_keys=False,
                          semantic_decoders=_NO_TAGS, tag_hook=_reject_tag)
        return from_document(doc)
    except CodecError:
        raise
    except (cbor2.CBORDecodeError, ValueError, TypeError, IndexError, KeyError,
            OverflowError, RecursionError, AttributeError) as err:
        raise CodecError(f"malformed batch document: {type(err).__name__}: {err}") from err


def decode_padded(padded: bytes, *, max_plaintext: int = DEFAULT_MAX_PLAINTEXT) -> Batch:
    """Inverse of :func:`encode_padded`."""
    return decode(unpad(padded), max_plaintext=max_plaintext)


def quantize(batch: Batch) -> Batch:
    """A copy of ``batch`` with sighting and check-in times on the 0.1 s grid.

    The sealer applies this so times travel as 2-byte deltas; a tenth of a second is far
    below what BLE timing or a door check-in can tell apart.
    """
    from dataclasses import replace

    return Batch(
        sightings=[replace(s, first_seen=quantize_time(s.first_seen),
                           last_seen=quantize_time(s.last_seen)) for s in batch.sightings],
        checkins=[replace(c, ts=quantize_time(c.ts)) for c in batch.checkins],
        counts=list(batch.counts),
        corrections=list(batch.corrections),
    )

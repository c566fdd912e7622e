"""Columnar CBOR + zstd batch codec: exact round trip, compactness, hostile plaintext."""

from __future__ import annotations

import contextlib
import os
import random
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import cbor2
import pytest
import zstandard
from crowd import crowd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contract import codec, columns
from contract.batch import Batch, ClockCorrection
from contract.records import AdoptionCount, CheckIn, CheckInKind, IdKind, Proximity, Sighting
from core.clock import ClockEpoch, ClockSource

# ---------------------------------------------------------------- strategies

finite = st.floats(allow_nan=False)
grid_time = st.integers(-10**13, 10**13).map(lambda k: k / 10)
any_time = st.one_of(grid_time, finite)
small_text = st.text(max_size=12)

epochs = st.builds(ClockEpoch, boot_id=small_text, offset=finite, synced=st.booleans(),
                   source=st.sampled_from(list(ClockSource)), uncertainty=finite)
wide_int = st.one_of(st.integers(-200, 200), st.integers(-2**70, 2**70))


@st.composite
def sightings(draw: st.DrawFn, clocks: list[ClockEpoch]) -> Sighting:
    return Sighting(kind=draw(st.sampled_from(list(IdKind))), ident=draw(st.binary(max_size=20)),
                    slot_start=draw(wide_int), first_seen=draw(any_time),
                    last_seen=draw(any_time), count=draw(wide_int),
                    rssi_max=draw(st.none() | st.integers(-128, 20)),
                    rssi_median=draw(st.none() | wide_int), clock=draw(st.sampled_from(clocks)),
                    tx_power=draw(st.none() | st.integers(-100, 20)),
                    proximity=draw(st.sampled_from(list(Proximity))),
                    aem=draw(st.none() | st.binary(max_size=6)))


@st.composite
def batches(draw: st.DrawFn) -> Batch:
    clocks = draw(st.lists(epochs, min_size=1, max_size=3))
    checkins = st.builds(CheckIn, ts=any_time, clock=st.sampled_from(clocks),
                         kind=st.sampled_from(list(CheckInKind)), masked=small_text,
                         key_day=st.integers(0, 2**31), sealed=st.binary(max_size=300),
                         tags=st.lists(st.binary(min_size=16, max_size=16), max_size=2
                                       ).map(tuple))
    counts = st.builds(AdoptionCount, window_start=wide_int, window_len=wide_int,
                       bluezone=wide_int, gaen=wide_int, other_phones=wide_int,
                       other_devices=wide_int, overflow=wide_int,
                       by_kind=st.dictionaries(small_text, wide_int, max_size=3))
    corrections = st.builds(ClockCorrection, boot_id=small_text, old_offset=finite,
                            new_offset=finite, uncertainty=finite, source=small_text)
    return Batch(sightings=draw(st.lists(sightings(clocks), max_size=25)),
                 checkins=draw(st.lists(checkins, max_size=4)),
                 counts=draw(st.lists(counts, max_size=3)),
                 corrections=draw(st.lists(corrections, max_size=2)))


# ---------------------------------------------------------------- round trip


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches())
def test_every_field_round_trips_exactly(batch: Batch) -> None:
    assert codec.decode(codec.encode(batch, level=1)) == batch
    assert codec.decode_padded(codec.encode_padded(batch, level=1)) == batch


@settings(max_examples=100, deadline=None)
@given(batches())
def test_quantize_is_idempotent_and_keeps_everything_else(batch: Batch) -> None:
    q = codec.quantize(batch)
    assert codec.quantize(q) == q
    assert codec.decode(codec.encode(q, level=1)) == q
    assert [s.ident for s in q.sightings] == [s.ident for s in batch.sightings]
    assert q.counts == batch.counts and q.corrections == batch.corrections
    for a, b in zip(q.sightings, batch.sightings, strict=True):
        # half a grid step, plus float rounding of the difference (0.2 - 0.15 > 0.05)
        assert abs(a.first_seen - b.first_seen) <= 0.05 + 1e-9 or a.first_seen == b.first_seen


@contextlib.contextmanager
def _column_path(numpy_min: int) -> Iterator[None]:
    """Force the numpy path (0) or the struct/array path (a huge threshold) of the columns."""
    old = columns.NUMPY_MIN
    columns.NUMPY_MIN = numpy_min
    try:
        yield
    finally:
        columns.NUMPY_MIN = old


def _both_paths(batch: Batch, quantize: bool = False) -> tuple[bytes, bytes]:
    """The batch encoded by each path; each path also decodes the other's bytes alike."""
    with _column_path(0):
        by_numpy = codec.encode(batch, level=1, quantize=quantize)
        numpy_reads = codec.decode(by_numpy)
    with _column_path(10**9):
        by_struct = codec.encode(batch, level=1, quantize=quantize)
        assert codec.decode(by_numpy) == numpy_reads
    if not quantize:
        assert numpy_reads == batch
    return by_numpy, by_struct


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches(), st.booleans())
def test_numpy_and_struct_paths_give_identical_bytes(batch: Batch, quantize: bool) -> None:
    by_numpy, by_struct = _both_paths(batch, quantize=quantize)
    assert by_numpy == by_struct


@pytest.mark.parametrize("kind", [IdKind.BLUEZONE, IdKind.GAEN])
def test_numpy_and_struct_paths_agree_on_a_venue(kind: IdKind) -> None:
    # wide integer columns (slots, times) and nullable ones (TX power, AEM) of a real crowd
    batch = crowd(kind, 300)
    by_numpy, by_struct = _both_paths(batch)
    assert by_numpy == by_struct
    assert len(by_numpy) > 300 * 16  # not trivially equal: every ID is in there


def test_sealing_a_small_batch_does_not_import_numpy() -> None:
    # a gateway seals a few hundred sightings a minute; numpy would cost it ~16 MB
    code = ("import sys; from contract import codec; from crowd import crowd; "
            "from contract.records import IdKind; b = crowd(IdKind.GAEN, 300); "
            "assert codec.decode(codec.encode(b)) == b; print('numpy' in sys.modules)")
    here = Path(__file__).parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(here), str(here.parent)])}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr


def test_times_on_the_grid_travel_as_integers() -> None:
    batch = crowd(IdKind.BLUEZONE, 50)
    doc = codec.to_document(batch)
    assert doc["s"]["t0"][0] == "q" and doc["s"]["t1"][0] == "q"
    # ordered first-seen times are stored as differences (the 5th element holds the start)
    assert doc["s"]["t0"][1][4] == round(batch.sightings[0].first_seen * 10)
    off_grid = Batch(sightings=[*batch.sightings[:-1], Sighting(
        **{**{f: getattr(batch.sightings[-1], f) for f in Sighting.__slots__},
           "first_seen": 1.234567})])
    assert codec.to_document(off_grid)["s"]["t0"][0] == "f"
    assert codec.decode(codec.encode(off_grid)) == off_grid


@pytest.mark.parametrize(("kind", "limit"), [(IdKind.BLUEZONE, 24), (IdKind.GAEN, 32)])
def test_padded_plaintext_per_sighting_stays_in_budget(kind: IdKind, limit: int) -> None:
    batch = crowd(kind, 500)
    padded = codec.encode_padded(batch)
    # random IDs are incompressible: the ID itself must be nearly all of it
    ident = len(batch.sightings[0].ident) + (4 if kind == IdKind.GAEN else 0)
    assert ident < len(padded) / 500 < limit
    assert codec.decode_padded(padded) == batch


# ---------------------------------------------------------------- padding buckets


def test_buckets_cover_and_grow_by_a_fourth_root_of_two() -> None:
    last = 0
    for n in [*range(0, 5000, 7), *range(5000, 3_000_000, 997)]:
        b = codec.bucket_size(n)
        assert b >= n and b % 16 == 0 and b >= last
        assert b <= max(codec.MIN_BUCKET, n * 2 ** 0.25 + 16)
        last = b
    # many sizes share a bucket: the length does not give the crowd away exactly
    sizes = {len(codec.encode_padded(crowd(IdKind.BLUEZONE, n))) for n in range(400, 440)}
    assert len(sizes) <= 3


def test_unpad_refuses_damage() -> None:
    padded = codec.pad(b"abc")
    assert codec.unpad(padded) == b"abc"
    with pytest.raises(codec.CodecError, match="padding"):
        codec.unpad(padded[:-1] + b"\x01")
    with pytest.raises(codec.CodecError, match="declares"):
        codec.unpad(struct.pack(">I", 10_000) + padded[4:])
    with pytest.raises(codec.CodecError):
        codec.unpad(b"\x00\x00")


# ---------------------------------------------------------------- hostile plaintext


def test_decompression_bomb_with_declared_size_is_refused_unread() -> None:
    bomb = zstandard.ZstdCompressor(level=3).compress(bytes(64 * 1024 * 1024))
    assert len(bomb) < 10_000
    with pytest.raises(codec.DecompressionBombError) as info:
        codec.decode(bomb, max_plaintext=1024 * 1024)
    assert info.value.limit == 1024 * 1024


def test_decompression_bomb_without_declared_size_stops_at_the_limit() -> None:
    cctx = zstandard.ZstdCompressor(level=3, write_content_size=False)
    bomb = cctx.compress(bytes(8 * 1024 * 1024))
    assert zstandard.frame_content_size(bomb) == -1
    with pytest.raises(codec.DecompressionBombError):
        codec.decode(bomb, max_plaintext=256 * 1024)
    # the same frame under a sufficient limit is merely not a batch document
    with pytest.raises(codec.CodecError) as info:
        codec.decode(bomb, max_plaintext=16 * 1024 * 1024)
    assert not isinstance(info.value, codec.DecompressionBombError)


def _z(obj: object) -> bytes:
    return zstandard.ZstdCompressor().compress(cbor2.dumps(obj))


@pytest.mark.parametrize("doc", [
    [], {"v": 1}, {"v": 3}, {"v": 2, "x": 1}, {"v": 2, "e": "no"},
    {"v": 2, "s": {"n": 10**9}},
    {"v": 2, "s": {"n": 1, "k": [["bluezone"], [0, 0, b"", None, None]]}},
    {"v": 2, "e": [["b", 0.0, True, "ntp", 0.0]], "c": [[0.0, 5, "cccd", "m", 1, [], b""]]},
    # a format-1 check-in carried the identity in the clear: refused, not stored
    {"v": 2, "e": [["b", 0.0, True, "ntp", 0.0]], "c": [[0.0, 0, "cccd", "s", "m", {}]]},
    {"v": 2, "e": [["b", 0.0, True, "ntp", 0.0]],
     "c": [[0.0, 0, "cccd", "m", 1, [b"short"], b"x"]]},
    {"v": 2, "e": [["b", 0.0, True, "ntp", 0.0]],
     "c": [[0.0, 0, "cccd", "m", 1, [bytes(16)] * 3, b"x"]]},
    {"v": 2, "e": [["b", 0.0, "yes", "ntp", 0.0]]},
    {"v": 2, "e": [["b", 0.0, True, "sundial", 0.0]]},
    {"v": 2, "a": [[1, 2, 3, 4, 5, 6, True, {}]]},
    {"v": 2, "k": [["b", 1.0, 2.0, 3.0]]},
])
def test_malformed_documents_are_codec_errors(doc: object) -> None:
    with pytest.raises(codec.CodecError):
        codec.decode(_z(doc))


def test_cbor_tags_are_refused() -> None:
    import datetime as dt

    doc = {"v": 2, "e": [["b", dt.datetime(2021, 7, 1, tzinfo=dt.UTC), True, "ntp", 0.0]]}
    with pytest.raises(codec.CodecError):
        codec.decode(_z(doc))
    with pytest.raises(codec.CodecError):
        codec.decode(_z({"v": 2, "e": [cbor2.CBORTag(9999, 1)]}))


def _mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        op = rng.random()
        i = rng.randrange(len(b)) if b else 0
        if op < 0.5 and b:
            b[i] = rng.randrange(256)
        elif op < 0.75:
            b[i:i] = rng.randbytes(rng.randint(1, 8))
        else:
            del b[i:i + rng.randint(1, 8)]
    return bytes(b)


def test_fuzz_decode_never_raises_anything_but_codec_errors() -> None:
    seed = int(os.environ.get("FUZZ_SEED", random.randrange(2**32)))
    print(f"FUZZ_SEED={seed}")
    rng = random.Random(seed)
    good_doc = cbor2.dumps(codec.to_document(crowd(IdKind.GAEN, 20, seed=seed % 1000)))
    good_body = codec.encode(crowd(IdKind.BLUEZONE, 20, seed=seed % 997))
    outcomes = {"ok": 0, "err": 0}
    for i in range(1500):
        if i % 3 == 0:  # damage to the CBOR document, recompressed (passes zstd)
            data = zstandard.ZstdCompressor().compress(_mutate(rng, good_doc))
        elif i % 3 == 1:  # damage to the compressed frame
            data = _mutate(rng, good_body)
        else:
            data = rng.randbytes(rng.randint(0, 300))
        try:
            codec.decode(data, max_plaintext=1 << 20)
            outcomes["ok"] += 1
        except codec.CodecError:
            outcomes["err"] += 1
    assert outcomes["err"] > 500  # the damage was noticed, not silently accepted en masse

"""Column primitives of the batch codec: integer, categorical, time and byte columns.

Each column is a short CBOR list that zstd compresses well: integers as fixed-width
little-endian offsets from the column minimum (byte planes transposed so the mostly-constant
high bytes sit together), optionally as successive differences; nulls as a packed bitmap;
times on the 0.1 s grid as integer deciseconds, anything else as exact float64. The ``de_*``
readers check type and length of every part and raise :class:`CodecError`, never anything
else, on hostile input.

Two implementations give the same bytes: numpy for large columns (the matcher reads batches
of up to 200,000 rows), and ``struct``/``array`` for small ones. A gateway seals a few dozen
to a few hundred sightings a minute, so it never imports numpy: its import alone is ~16 MB of
resident memory on a device with 512 MB (``bench/bench_footprint.py``).
"""

from __future__ import annotations

import math
import struct
import sys
from array import array
from collections.abc import Callable, Sequence
from itertools import accumulate, pairwise
from typing import TYPE_CHECKING, Any, NoReturn

from core.errors import SealError

if TYPE_CHECKING:
    import numpy as np

TIME_SCALE = 10  # deciseconds: finer than any BLE or QR timing the matcher can use
_LITTLE = sys.byteorder == "little"


class CodecError(SealError):
    """Plaintext that is not a well-formed batch document."""


class DecompressionBombError(CodecError):
    """Plaintext that decompresses (or claims to) beyond the configured limit.

    Attributes:
        limit: the maximum plaintext size in bytes.
    """

    def __init__(self, message: str, *, limit: int) -> None:
        self.limit = limit
        super().__init__(message)


_SAFE = 1 << 62  # numpy int64 arithmetic on values inside ±2^62 cannot overflow
# Columns of at least this many values go through numpy (imported then); shorter ones through
# struct/array, which is as fast below a few thousand values and needs no numpy import.
NUMPY_MIN = 4096
_CODE = {1: "B", 2: "H", 4: "I", 8: "Q"}  # standard sizes under "<"


def _width(span: int) -> int:
    return 1 if span < 1 << 8 else 2 if span < 1 << 16 else 4 if span < 1 << 32 else 8


def _pack(a: np.ndarray, base: int, span: int, nulls: bytes | None,
          first: int | None) -> list[Any]:
    if span == 0:
        return [base, 0, b"", nulls, first]
    import numpy as np

    width = _width(span)
    u = (a - base).astype(f"<u{width}")
    # byte planes: all low bytes, then the next... (high bytes are mostly 0 → zstd)
    planes = u.view(np.uint8).reshape(len(a), width).T.tobytes()
    return [base, width, planes, nulls, first]


def _pack_py(a: Sequence[int], base: int, span: int, nulls: bytes | None,
             first: int | None) -> list[Any]:
    """:func:`_pack` without numpy: the same byte planes."""
    if span == 0:
        return [base, 0, b"", nulls, first]
    width = _width(span)
    raw = struct.pack(f"<{len(a)}{_CODE[width]}", *[v - base for v in a])
    planes = raw if width == 1 else b"".join(raw[j::width] for j in range(width))
    return [base, width, planes, nulls, first]


def ints(values: Sequence[int | None], *, delta: bool = False) -> list[Any]:
    """``[base, width, data, nulls, first]``: values as ``base + unsigned(width bytes)``.

    ``width`` 0 means every present value equals ``base``; ``-1`` means ``data`` is a plain
    list (ranges beyond 62 bits). ``nulls`` is a packed bitmap (bit ``i % 8`` of byte
    ``i // 8``) or ``None``. With ``delta`` (no nulls), successive differences are stored
    instead when their range is smaller (times arrive roughly in order) and ``first`` holds
    the first value.
    """
    n = len(values)
    present = [v for v in values if v is not None]
    if not present:
        return [0, 0, b"", None if n == 0 else _bitmap([True] * n), None]
    lo, hi = min(present), max(present)
    if not (lo > -_SAFE and hi < _SAFE):
        return [0, -1, list(values), None, None]
    if n < NUMPY_MIN:
        return _ints_py(values, present, lo, hi, delta)
    import numpy as np

    if len(present) == n:
        a = np.array(values, dtype=np.int64)
        if delta and n > 1:
            d = np.diff(a, prepend=a[:1])
            dlo, dhi = int(d.min()), int(d.max())
            if dhi - dlo < hi - lo:
                return _pack(d, dlo, dhi - dlo, None, int(a[0]))
        return _pack(a, lo, hi - lo, None, None)
    mask = [v is None for v in values]
    a = np.array([lo if v is None else v for v in values], dtype=np.int64)
    return _pack(a, lo, hi - lo, _bitmap(mask), None)


def _ints_py(values: Sequence[int | None], present: list[int], lo: int, hi: int,
             delta: bool) -> list[Any]:
    """:func:`ints` without numpy (values already checked to lie inside ±2^62)."""
    n = len(values)
    if len(present) == n:
        if delta and n > 1:
            d = [0, *(b - a for a, b in pairwise(present))]
            dlo, dhi = min(d), max(d)
            if dhi - dlo < hi - lo:
                return _pack_py(d, dlo, dhi - dlo, None, present[0])
        return _pack_py(present, lo, hi - lo, None, None)
    filled = [lo if v is None else v for v in values]
    return _pack_py(filled, lo, hi - lo, _bitmap([v is None for v in values]), None)


def _bitmap(mask: Sequence[bool]) -> bytes:
    """Bit ``i % 8`` of byte ``i // 8`` set where ``mask[i]`` (numpy's little bit order)."""
    if len(mask) >= NUMPY_MIN:
        import numpy as np

        return bytes(np.packbits(np.array(mask, dtype=bool), bitorder="little"))
    out = bytearray((len(mask) + 7) // 8)
    for i, m in enumerate(mask):
        if m:
            out[i >> 3] |= 1 << (i & 7)
    return bytes(out)


def cats(values: Sequence[object]) -> list[Any]:
    """``[table, ints]``: categorical values (enums, text) as indices into a first-use table
    of their ``str()``."""
    table: dict[object, int] = {}
    idx = [table.setdefault(v, len(table)) for v in values]
    return [[str(v) for v in table], ints(idx)]


def on_grid(x: float) -> bool:
    """Whether ``x`` survives the decisecond round trip exactly."""
    return math.isfinite(x) and abs(x) < 1e14 and round(x * TIME_SCALE) / TIME_SCALE == x


def _grid(values: Sequence[float], quantize: bool) -> list[int] | None:
    """``values`` in deciseconds if all are on the grid (or ``quantize``), else ``None``."""
    if len(values) < NUMPY_MIN:
        return _grid_py(values, quantize)
    import numpy as np

    try:
        v = np.array(values, dtype=np.float64)
    except (OverflowError, TypeError, ValueError):
        return None
    if not bool(np.all(np.isfinite(v))) or (v.size and float(np.abs(v).max()) >= 1e14):
        return None
    q = np.round(v * TIME_SCALE)  # half to even, as Python's round()
    if not quantize and bool(np.any(q / TIME_SCALE != v)):
        return None
    return [int(k) for k in q.astype(np.int64).tolist()]


def _grid_py(values: Sequence[float], quantize: bool) -> list[int] | None:
    """:func:`_grid` without numpy: ``round`` is half to even on floats, as ``np.round``."""
    try:
        v = [float(x) for x in values]
    except (OverflowError, TypeError, ValueError):
        return None
    if not all(math.isfinite(x) and abs(x) < 1e14 for x in v):
        return None
    q = [round(x * TIME_SCALE) for x in v]
    if not quantize and any(k / TIME_SCALE != x for k, x in zip(q, v, strict=True)):
        return None
    return q


def times(values: Sequence[float], ref: Sequence[float] | None = None, *,
          quantize: bool = False) -> list[Any]:
    """``["q", ints]`` in deciseconds (relative to ``ref`` when given) or ``["f", float64]``.

    With ``quantize``, finite times are rounded to the grid (what :func:`quantize_time`
    does) instead of falling back to float64.
    """
    q = _grid(values, quantize)
    r = None if ref is None or q is None else _grid(ref, quantize)
    if q is not None and (ref is None or r is not None):
        if r is not None:
            q = [a - b for a, b in zip(q, r, strict=True)]
        return ["q", ints(q, delta=ref is None)]
    arr = array("d", values)
    if not _LITTLE:
        arr.byteswap()
    return ["f", arr.tobytes()]


def blobs(values: Sequence[bytes | None]) -> list[Any]:
    """``[concatenated, lengths]`` (a ``None`` has a null length)."""
    return [b"".join(v for v in values if v is not None),
            ints([None if v is None else len(v) for v in values])]


def fail(msg: str) -> NoReturn:
    """Raise :class:`CodecError`."""
    raise CodecError(msg)


def as_int(x: object, what: str) -> int:
    """``x`` if it is an integer (not a bool), else :class:`CodecError` naming ``what``."""
    if type(x) is not int:
        fail(f"{what}: expected an integer")
    return x


def as_float(x: object, what: str) -> float:
    """``x`` as a float if it is a number (not a bool)."""
    if type(x) is float:
        return x
    if type(x) is int:
        return float(x)
    fail(f"{what}: expected a number")


def as_str(x: object, what: str) -> str:
    """``x`` if it is text."""
    if type(x) is not str:
        fail(f"{what}: expected text")
    return x


def as_list(x: object, what: str, n: int | None = None) -> list[Any]:
    """``x`` if it is a list (of exactly ``n`` items when given)."""
    if type(x) is not list or (n is not None and len(x) != n):
        fail(f"{what}: expected a list" + (f" of {n}" if n is not None else ""))
    return x


def as_bytes(x: object, what: str) -> bytes:
    """``x`` if it is a byte string."""
    if type(x) is not bytes:
        fail(f"{what}: expected bytes")
    return x


def as_str_map(x: object, what: str, value: Callable[[object, str], Any]) -> dict[str, Any]:
    """``x`` if it is a map of text keys, each value checked by ``value``."""
    if type(x) is not dict:
        fail(f"{what}: expected a map")
    return {as_str(k, what): value(v, what) for k, v in x.items()}


def de_ints(col: object, n: int, what: str) -> list[Any]:
    """Read an :func:`ints` column of ``n`` values (``None`` where null)."""
    base, width, data, nulls, first = as_list(col, what, 5)
    base, width = as_int(base, what), as_int(width, what)
    if nulls is not None and (first is not None or len(as_bytes(nulls, what)) != (n + 7) // 8):
        fail(f"{what}: null bitmap")
    vals: list[Any]
    if width == -1:
        vals = as_list(data, what, n)
        if any(v is not None and type(v) is not int for v in vals):
            fail(f"{what}: expected integers")
        nulls = None
    elif width == 0:
        if as_bytes(data, what):
            fail(f"{what}: constant column with data")
        vals = [base] * n
    else:
        if width not in (1, 2, 4, 8):
            fail(f"{what}: width {width}")
        raw = as_bytes(data, what)
        if len(raw) != n * width:
            fail(f"{what}: {len(raw)} bytes for {n} values of width {width}")
        vals = _unpack(raw, n, width, base)
    if first is not None:
        if None in vals:
            fail(f"{what}: null in a difference column")
        return list(accumulate(vals, initial=as_int(first, what)))[1:]
    if nulls is not None:
        for i in _set_bits(nulls, n):
            vals[i] = None
    return vals


def _set_bits(bitmap: bytes, n: int) -> list[int]:
    """Indices ``i < n`` whose bit is set in a :func:`_bitmap`."""
    if n < NUMPY_MIN:
        return [i for i in range(n) if bitmap[i >> 3] >> (i & 7) & 1]
    import numpy as np

    bits = np.unpackbits(np.frombuffer(bitmap, np.uint8), bitorder="little")[:n]
    return list(np.flatnonzero(bits).tolist())


def _unpack(raw: bytes, n: int, width: int, base: int) -> list[Any]:
    """``base`` + the ``n`` unsigned offsets stored as ``width`` byte planes in ``raw``."""
    if n < NUMPY_MIN:
        if width == 1:
            return [base + v for v in raw]
        inter = bytearray(n * width)
        for j in range(width):
            inter[j::width] = raw[j * n:(j + 1) * n]
        return [base + v for v in struct.unpack(f"<{n}{_CODE[width]}", inter)]
    import numpy as np

    u = np.ascontiguousarray(np.frombuffer(raw, np.uint8).reshape(width, n).T)
    offsets = u.view(f"<u{width}").reshape(n)
    if width < 8 and -_SAFE < base < _SAFE:
        return list((offsets.astype(np.int64) + base).tolist())
    return [base + v for v in offsets.tolist()]


def de_required(col: object, n: int, what: str) -> list[int]:
    """Read an :func:`ints` column that may not hold nulls."""
    vals = de_ints(col, n, what)
    if None in vals:
        fail(f"{what}: unexpected null")
    return vals


def de_cats(col: object, n: int, what: str, enum: Callable[[str], Any]) -> list[Any]:
    """Read a :func:`cats` column, each table entry converted by ``enum``."""
    table, idx = as_list(col, what, 2)
    try:
        values = [enum(as_str(t, what)) for t in as_list(table, what)]
    except ValueError as err:
        raise CodecError(f"{what}: {err}") from err
    ix = de_required(idx, n, what)
    if ix and not (min(ix) >= 0 and max(ix) < len(values)):
        fail(f"{what}: index out of range")
    return [values[i] for i in ix]


def de_times(col: object, n: int, what: str, ref: list[float] | None = None) -> list[float]:
    """Read a :func:`times` column (``ref`` as given to the encoder)."""
    kind, data = as_list(col, what, 2)
    if kind == "f":
        raw = as_bytes(data, what)
        if len(raw) != 8 * n:
            fail(f"{what}: {len(raw)} bytes for {n} floats")
        arr = array("d")
        arr.frombytes(raw)
        if not _LITTLE:
            arr.byteswap()
        return list(arr)
    if kind != "q":
        fail(f"{what}: unknown time encoding")
    q = de_required(data, n, what)
    if ref is not None:
        q = [a + round(r * TIME_SCALE) for a, r in zip(q, ref, strict=True)]
    return [v / TIME_SCALE for v in q]


def de_blobs(col: object, n: int, what: str, nullable: bool) -> list[bytes | None]:
    """Read a :func:`blobs` column."""
    data, lengths = as_list(col, what, 2)
    data = as_bytes(data, what)
    lens = de_ints(lengths, n, what)
    if n and lengths[1] == 0 and lengths[3] is None and lengths[4] is None:
        size = lens[0]  # one length for all (IDs of one kind): slice by stride
        if size < 0 or size * n != len(data):
            fail(f"{what}: {n} values of {size} bytes in {len(data)} bytes")
        return [data[i:i + size] for i in range(0, len(data), size)] if size else [b""] * n
    out: list[bytes | None] = []
    pos = 0
    for ln in lens:
        if ln is None:
            if not nullable:
                fail(f"{what}: unexpected null")
            out.append(None)
            continue
        if ln < 0 or pos + ln > len(data):
            fail(f"{what}: lengths exceed the data")
        out.append(data[pos:pos + ln])
        pos += ln
    if pos != len(data):
        fail(f"{what}: {len(data) - pos} trailing bytes")
    return out


def quantize_time(x: float) -> float:
    """``x`` on the 0.1 s grid the compact time columns use (idempotent)."""
    if not math.isfinite(x) or abs(x) >= 1e14:
        return x
    return round(x * TIME_SCALE) / TIME_SCALE

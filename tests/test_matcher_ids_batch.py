"""Batch ID derivation equals the per-key reference (real vectors and random keys)."""

from __future__ import annotations

import os

import gaen_vectors as gv
import numpy as np
import pytest

from ble import ids as ref
from matcher import ids

DK = bytes.fromhex("4C5224B397F8AB3896781D5AA0F3119F280513F1B592CA280EBDED6357E21084")
T0 = 1596844800


def test_bluezone_block_holds_the_captured_upload_ids() -> None:
    block = ids.bluezone_block([(DK, T0, T0 + 27 * 900, 96)])
    got = block.idents()
    assert len(block) == 28
    assert [g.hex().upper() for g in got[23:28]] == [
        "B9A665D754FE65E665D76A45", "3AA8DFC0A15682B27216FC31", "B9A232358A6C89E7A00B673C",
        "C5DAD2EC90AFFA065D1E0A70", "E376E0B409BCE18ECF5F2ED4"]
    assert int(block.starts[23]) == T0 + 23 * 900
    assert int(block.ends[23]) == T0 + 24 * 900


@pytest.mark.parametrize("mx", [96, 144, 1])
def test_bluezone_block_equals_reference_across_days(mx: int) -> None:
    keys = [(os.urandom(32), T0 + 86400 * i, T0 + 86400 * i + 3 * 86400 - 1, mx)
            for i in range(3)] + [(DK, T0, T0, mx)]
    block = ids.bluezone_block(keys)
    want = [row for k in keys for row in ref.bluezone_ids(*k)]
    assert block.idents() == [i for _, i in want]
    assert block.starts.tolist() == [t for t, _ in want]
    assert (block.ends - block.starts).tolist() == [86400 // mx] * len(want)


def test_bluezone_block_in_worker_processes_equals_in_process(monkeypatch:
                                                               pytest.MonkeyPatch) -> None:
    keys = [(os.urandom(32), T0, T0 + 2 * 86400 - 1, 96) for _ in range(6)]
    single = ids.bluezone_block(keys)
    monkeypatch.setattr(ids, "_POOL_MIN_IDS", 1)
    pooled = ids.bluezone_block(keys, workers=2)
    assert pooled.packed == single.packed
    assert np.array_equal(pooled.starts, single.starts)


def test_bluezone_block_refuses_bad_entries() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        ids.bluezone_block([(b"short", T0, T0, 96)])
    with pytest.raises(ValueError, match="divide"):
        ids.bluezone_block([(DK, T0, T0, 7)])
    with pytest.raises(ValueError, match="before"):
        ids.bluezone_block([(DK, T0, T0 - 1, 96)])
    assert len(ids.bluezone_block([])) == 0


def test_en_block_matches_google_vectors() -> None:
    tek, start = bytes.fromhex(gv.TEK), gv.TEK_START_INTERVAL
    block = ids.en_block([(tek, start, 144)])
    assert [r.hex() for r in block.idents()] == [rpi for rpi, _ in gv.INTERVALS]
    assert int(block.starts[0]) == start * 600 and int(block.ends[-1]) == (start + 144) * 600


def test_en_block_equals_reference_for_random_keys() -> None:
    teks = [(os.urandom(16), 2_700_000 + 144 * i, 144 - i) for i in range(20)]
    block = ids.en_block(teks)
    want = [r for t, s, n in teks for r in ref.en_rpis(t, s, n)]
    assert block.idents() == want
    for t, _, _ in teks[:3]:
        assert ids._hkdf16(t, b"EN-RPIK") == ref.en_rpik(t)
        assert ids._hkdf16(t, b"EN-AEMK") == ref.en_aemk(t)


def test_en_block_refuses_bad_keys() -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        ids.en_block([(b"x" * 15, 0, 144)])
    with pytest.raises(ValueError, match="period"):
        ids.en_block([(b"x" * 16, 0, 145)])
    with pytest.raises(ValueError, match="range"):
        ids.en_block([(b"x" * 16, 2**32 - 10, 144)])

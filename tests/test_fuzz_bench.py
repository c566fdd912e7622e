"""The fuzz bench: every untrusted-bytes parser is a target, the harness really finds
crashes, and a short slice of each target runs clean here (the figures come from
``bzgw bench --only fuzz``)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

import bench_fuzz  # noqa: E402

INPUTS = 300  # per target here; 10,000 in --quick, 100,000 in the full bench

REQUIRED = ["AD structures", "HCI", "btsnoop", "btsnoop-h1", "btmon", "pcapng", "pcap",
            "CCCD", "BHYT", "DCC", "bzgw check-in", "base45", "sealed batch open",
            "columnar codec", "F0: JSON", "InfoF", "protobuf", "zip", "health documents",
            "config YAML", "ack messages", "MQTT topics"]


@pytest.fixture(scope="module")
def targets() -> list[bench_fuzz.Target]:
    return bench_fuzz.all_targets()


def test_every_untrusted_parser_is_a_target(targets: list[bench_fuzz.Target]) -> None:
    names = [t.name for t in targets]
    for want in REQUIRED:
        assert any(want in n for n in names), f"no fuzz target for {want}: {names}"
    assert len(set(names)) == len(names)


def test_harness_counts_crashes_and_refusals() -> None:
    def parser(data: bytes) -> None:
        if len(data) < 3:
            raise ValueError("documented refusal")
        if data[0] == 0xFF:
            raise IndexError("the kind of bug fuzzing is for")

    t = bench_fuzz.Target("toy", [b"\x00\x01\x02\x03"], parser, (ValueError,))
    o = bench_fuzz.fuzz(t, 3000)
    assert o.inputs == 3000 and o.refused > 0 and o.crashes > 0
    assert o.examples and o.examples[0].startswith("IndexError")
    assert bench_fuzz.fuzz(t, 3000).crashes == o.crashes  # seeded: reproducible


def test_every_target_runs_clean(targets: list[bench_fuzz.Target]) -> None:
    bad = {}
    for t in targets:
        o = bench_fuzz.fuzz(t, INPUTS, seed=bench_fuzz.SEED + 1)
        assert o.inputs == INPUTS
        if o.crashes:
            bad[t.name] = o.examples
    assert bad == {}


def test_bench_rows_carry_target_inputs_crashes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BZGW_FUZZ_INPUTS", "50")
    rows = bench_fuzz.run(quick=True)
    assert len(rows) >= len(REQUIRED)
    for r in rows:
        assert r["inputs"] == 50 and r["crashes"] == 0 and r["target"]

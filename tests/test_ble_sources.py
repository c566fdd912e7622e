"""Source selection, replay and simulator sources, the iOS GATT resolver, queue bounds."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from ble.config import BleConfig
from ble.ios import IosResolver
from ble.records import Advert
from ble.replay import build_legacy_event, read_adverts, write_btsnoop
from ble.simulator import Crowd, Visit
from ble.sources import SourceError, SourceKind, open_source, source_kind
from ble.sources.base import AdvertSource, QueueSource
from ble.sources.replay_source import ReplaySource
from ble.sources.simulator_source import SimulatorSource
from contract.records import IdKind
from core.clock import ReplayClock, SystemClock
from core.errors import CaptureFormatError
from core.settings import KeyProblem, convert

T0 = 1_627_790_400


async def _all(src: AdvertSource) -> list[Advert]:
    out = [a async for a in src]
    await src.close()
    return out


def _capture(tmp_path: Path) -> tuple[Path, Crowd]:
    crowd = Crowd(seed=21, start=T0)
    crowd.add_bluezone_phones(3, venues=["v"])
    crowd.add_en_phones(2, venues=["v"])
    path = tmp_path / "sim.btsnoop"
    write_btsnoop(path, ((r.ts, build_legacy_event(0, r.address, 1, r.data, r.rssi))
                         for r in crowd.reports("v", T0, T0 + 1200, rate_hz=1)))
    return path, crowd


def test_source_kind_follows_the_config() -> None:
    for name in ("bleak", "bluepy", "replay", "simulator"):
        cfg = BleConfig(source=name, replay_file=Path("x.btsnoop"))  # type: ignore[arg-type]
        assert source_kind(cfg) is SourceKind(name)


def test_replay_source_runs_on_capture_time(tmp_path: Path) -> None:
    path, _ = _capture(tmp_path)
    clock = ReplayClock()
    src = open_source(BleConfig(source="replay", replay_file=path), clock)
    assert isinstance(src, ReplaySource)
    got = asyncio.run(_all(src))
    assert got == list(read_adverts(path))
    assert clock.now() == got[-1].ts  # the clock followed the capture
    assert src.diagnostics()["adverts"] == len(got)


def test_replay_source_without_a_file_is_a_clear_error() -> None:
    with pytest.raises(KeyProblem, match="needs replay_file"):
        BleConfig(source="replay")  # refused by the config check already
    # and by the source itself, for a config changed after the check
    cfg = BleConfig()
    cfg.source = "replay"
    with pytest.raises(SourceError, match="replay_file"):
        open_source(cfg, ReplayClock())


def test_replay_source_surfaces_a_bad_capture(tmp_path: Path) -> None:
    bad = tmp_path / "bad.log"
    bad.write_bytes(b"garbage" * 4)
    src = ReplaySource(bad, ReplayClock())
    with pytest.raises(CaptureFormatError):
        asyncio.run(_all(src))


def test_simulator_source_from_config_settings() -> None:
    cfg = convert({"source": "simulator", "simulator": {
        "seed": 3, "venue": "cho-a", "start": T0, "duration_s": 600, "bluezone_phones": 4,
        "en_phones": 2, "iphones": 1, "background": 3, "rate_hz": 1, "realtime": False}},
                  BleConfig)
    clock = ReplayClock()
    src = open_source(cfg, clock)
    assert isinstance(src, SimulatorSource) and len(src.crowd.devices) == 10
    got = asyncio.run(_all(src))
    assert got and all(T0 <= a.ts < T0 + 600 for a in got)
    assert clock.now() == got[-1].ts


def test_simulator_source_resolves_iphones_over_simulated_gatt() -> None:
    crowd = Crowd(seed=5, start=T0)
    iphone = crowd.add_iphone([Visit("v", T0, T0 + 900, 1.0)])
    crowd.add_bluezone_phones(2, venues=["v"])
    clock = ReplayClock(T0)
    cfg = convert({"source": "simulator", "ios_gatt_read": True, "gatt_reads_per_minute": 2,
                   "simulator": {"realtime": False}}, BleConfig)
    src = open_source(cfg, clock, crowd=crowd, venue="v")
    got = asyncio.run(_all(src))
    ios = [a for a in got if a.kind is IdKind.BLUEZONE_IOS]
    resolved = [a for a in ios if a.ident is not None]
    assert resolved and all(a.ident == iphone.id_at(a.ts) for a in resolved)
    assert ios[0].ident is None  # the first advert triggers the read
    reader = src._feed.resolver._reader if isinstance(src, SimulatorSource) \
        and src._feed.resolver else None
    assert reader is not None and 1 <= reader.reads <= 4  # one per slot-address, budget 2/min


class _SlowReader:
    def __init__(self, answers: list[bytes | None]) -> None:
        self.answers = answers
        self.calls = 0

    async def read_id(self, address: str, address_type: int) -> bytes | None:
        self.calls += 1
        await asyncio.sleep(0)
        return self.answers.pop(0)


def _ios(ts: float, addr: str = "C0:00:00:00:00:01") -> Advert:
    return Advert(ts, addr, 1, -60, IdKind.BLUEZONE_IOS)


def test_resolver_cache_lasts_until_the_slot_changes() -> None:
    ident = bytes(range(12))
    reader = _SlowReader([ident, ident])
    res = IosResolver(reader, reads_per_minute=60)

    async def go() -> list[bytes | None]:
        out = [res.resolve(_ios(T0 + 1)).ident]
        await res.drain()
        out.append(res.resolve(_ios(T0 + 2)).ident)
        out.append(res.resolve(_ios(T0 + 899)).ident)
        out.append(res.resolve(_ios(T0 + 900)).ident)  # new slot: the ID has changed
        await res.drain()
        out.append(res.resolve(_ios(T0 + 901)).ident)
        return out

    assert asyncio.run(go()) == [None, ident, ident, None, ident]
    assert reader.calls == 2


def test_resolver_rate_limit_and_failures() -> None:
    reader = _SlowReader([None, b"short", None, None])
    res = IosResolver(reader, reads_per_minute=2)

    async def go() -> None:
        for i in range(6):
            res.resolve(_ios(T0 + i, addr=f"C0:00:00:00:00:{i:02X}"))
            await res.drain()

    asyncio.run(go())
    assert res.stats.reads == 2 and reader.calls == 2  # a burst of one minute's budget
    assert res.stats.failed == 2 and res.stats.ok == 0
    assert res.stats.rate_limited == 4


def test_resolver_leaves_other_adverts_alone() -> None:
    res = IosResolver(_SlowReader([]), reads_per_minute=6)
    adv = Advert(T0, "C0:00:00:00:00:01", 1, -60, IdKind.BLUEZONE, bytes(12))
    assert res.resolve(adv) is adv


def _raw(ts: float, n: int = 1) -> tuple[float, str, int, int, bytes]:
    """A raw report of a Bluezone Android phone (what radio callbacks queue)."""
    return (ts, f"C0:00:00:00:00:{n:02X}", 1, -60, b"\x0f\xff\xb5\x22" + bytes([n]) * 12)


def test_queue_source_drops_and_counts_when_full() -> None:
    async def go() -> tuple[list[Advert], dict[str, object]]:
        q = QueueSource(queue_size=3)
        for i in range(5):
            q._put(_raw(T0 + i))
        await q.close()
        got = [a async for a in q]
        return got, q.diagnostics()

    got, diag = asyncio.run(go())
    assert [a.ts for a in got] == [T0, T0 + 1, T0 + 2]
    assert [a.kind for a in got] == [IdKind.BLUEZONE] * 3 and got[0].ident == bytes([1]) * 12
    assert diag["received"] == 5 and diag["dropped"] == 2


def test_queue_source_hands_over_raw_batches() -> None:
    async def go() -> list[list[tuple[float, str, int, int | None, bytes]]]:
        q = QueueSource(queue_size=10)
        q.BATCH_MAX = 3
        for i in range(5):
            q._put(_raw(T0 + i, i))
        await q.close()
        return [b async for b in q.batches()]

    got = asyncio.run(go())
    assert [len(b) for b in got] == [3, 2]
    assert [r for b in got for r in b] == [_raw(T0 + i, i) for i in range(5)]


def test_importing_ble_needs_no_bluepy(tmp_path: Path) -> None:
    path, _ = _capture(tmp_path)
    code = (
        "import sys; sys.modules['bluepy'] = None; sys.modules['bluepy.btle'] = None\n"
        "import ble, ble.sources, ble.aggregator, ble.simulator\n"
        "from ble.config import BleConfig\n"
        "from ble.sources import open_source\n"
        "from core.clock import ReplayClock\n"
        f"src = open_source(BleConfig(source='replay', replay_file={str(path)!r}), "
        "ReplayClock())\n"
        "print(type(src).__name__, 'bluepy' in sys.modules and sys.modules['bluepy'])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60)
    assert out.stdout.split() == ["ReplaySource", "None"]


def test_bluepy_missing_is_a_dependency_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from core.errors import DependencyMissingError

    monkeypatch.setitem(sys.modules, "bluepy", None)
    monkeypatch.setitem(sys.modules, "bluepy.btle", None)
    src = open_source(BleConfig(source="bluepy"), SystemClock())

    async def go() -> None:
        try:
            await src.__anext__()
        finally:
            await src.close()

    with pytest.raises(DependencyMissingError, match="bluepy"):
        asyncio.run(go())
